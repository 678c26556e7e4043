"""What the training steps share: the model in PyTorch, the data as arrays, the teacher's outputs,
scoring on the evaluation data, checkpoints that survive Ctrl-C, and the way back to ONNX.

Functions take what they read: the run's :class:`~edgekit.reference.Reference` to score and check
against, the step :class:`~edgekit.pipeline.Context` only to train (data, threads, scratch space, log).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from device_agent.contract.manifest import TensorSpec
from edgekit.data import Dataset
from edgekit.errors import InputError
from edgekit.pipeline import Context
from edgekit.reference import Reference
from edgekit.torchbench.config import TrainingConfig, training_settings
from edgekit.torchbench.convert import load_factory, module_names, promote_buffers, run_torch, to_onnx, to_torch

if TYPE_CHECKING:
    import torch

    from edgekit.torchbench.trainer import FitResult

__all__ = ["TorchModel", "checkpoint_dir", "example", "load_torch", "ordered_inputs", "score_fn", "teacher_outputs", "train"]


@dataclass
class TorchModel:
    """A model in PyTorch with what is needed to export it back: the ONNX it came from and its node names."""

    net: torch.nn.Module
    like: onnx.ModelProto
    names: dict[str, str]  # module name -> ONNX node name ({} for a user's PyTorch model)

    def display(self) -> dict[str, str]:
        """Module name → the name users see (the ONNX node name when there is one)."""
        return {m: self.names.get(m) or m for m, _ in self.net.named_modules() if m}

    def export(self) -> onnx.ModelProto:
        return to_onnx(self.net, self.like, example=example(self.like), names=self.names or None)


def example(like: onnx.ModelProto, data: Dataset | None = None) -> tuple[torch.Tensor, ...]:
    """A batch of two inputs for ``like``: from ``data`` when given, else generated."""
    from edgekit.torchbench.convert import example_inputs

    return example_inputs(like, data.inputs if data is not None else None, batch=2)


def load_torch(model: onnx.ModelProto, ref: Reference, *, what: str, factory: str | None = None) -> TorchModel:
    """``model`` in PyTorch: converted by onnx2torch, or built by the user's ``module:function`` factory.

    A factory's model must compute what the ONNX model computes; it is checked on a few samples.
    """
    if factory is None:
        return TorchModel(to_torch(model, what=what), model, module_names(model))
    import torch

    net = load_factory(factory, what="--torch-model")()
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"--torch-model {factory!r} returned {type(net).__name__}, not a torch.nn.Module")
    net.eval()
    args = example(model, ref.eval_data)
    with torch.no_grad():
        got = [y.numpy() for y in run_torch(net, args)]
    want = [ref.ref_outputs[s.name][: len(args[0])] for s in ref.outputs]
    if len(got) != len(want) or any(g.shape != w.shape or not np.allclose(g, w, rtol=1e-3, atol=1e-3) for g, w in zip(got, want, strict=False)):
        raise InputError(f"--torch-model {factory!r} does not compute what {ref.source_path.name} computes on the data "
                         "(different outputs); give the factory that returns the same trained model")
    return TorchModel(net, model, {})


def ordered_inputs(data: Dataset, specs: tuple[TensorSpec, ...]) -> list[np.ndarray]:
    """``data``'s arrays in the model's input order (``specs``): positional arguments for the torch model."""
    return [data.inputs[s.name] for s in specs]


def teacher_outputs(teacher: onnx.ModelProto, data: Dataset, ctx: Context, *, name: str = "teacher") -> list[np.ndarray]:
    """The teacher's outputs on ``data`` (ONNX Runtime), in the model's output order: the soft targets."""
    from device_agent.runtime import OrtBackend
    from edgekit.evaluate import run_dataset

    path = ctx.workdir / f"{name}.onnx"
    onnx.save(teacher, str(path))
    out = run_dataset(OrtBackend(path, threads=ctx.threads), data, ctx.ref.inputs)
    return [out[s.name] for s in ctx.ref.outputs]


def score_fn(reference: Reference) -> tuple[str, Callable[[torch.nn.Module], float]]:
    """A higher-is-better score on the evaluation data: accuracy with labels, agreement with the source, else 100·cosine."""
    import torch

    x = [torch.from_numpy(np.ascontiguousarray(a)) for a in ordered_inputs(reference.eval_data, reference.inputs)]
    labels = reference.eval_data.labels if reference.classifier else None
    ref = [reference.ref_outputs[s.name] for s in reference.outputs]

    def outputs(net: torch.nn.Module) -> list[np.ndarray]:
        net.eval()
        with torch.no_grad():
            parts = [run_torch(net, tuple(a[i:i + 256] for a in x)) for i in range(0, len(x[0]), 256)]
        return [torch.cat([p[k] for p in parts]).numpy() for k in range(len(parts[0]))]

    if labels is not None:
        return "accuracy", lambda net: float((outputs(net)[0].argmax(1) == labels).mean() * 100)
    if reference.classifier:
        return "agreement", lambda net: float((outputs(net)[0].argmax(1) == ref[0].argmax(1)).mean() * 100)

    def cosine(net: torch.nn.Module) -> float:
        o = outputs(net)[0].reshape(len(ref[0]), -1).astype(np.float64)
        r = ref[0].reshape(len(ref[0]), -1).astype(np.float64)
        c = (o * r).sum(1) / np.maximum(np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1), 1e-30)
        return float(c.mean() * 100)

    return "cosine×100", cosine


def checkpoint_dir(source_path: Path, config: TrainingConfig, step: str) -> Path:
    """Where the best checkpoint lives while training: ``--checkpoint-dir``, else next to the model (or here, for a converted one)."""
    if config.checkpoint_dir:
        return Path(config.checkpoint_dir)
    parent = source_path.parent
    if parent.name.startswith("edgekit."):
        # a model edgekit converted (PyTorch / TensorFlow input) lives in a temp dir removed at exit: keep it here instead
        parent = Path.cwd()
    d = parent / f"{source_path.stem}.{step}.ckpt"
    try:
        d.mkdir(parents=True, exist_ok=True)
        return d
    except OSError:  # read-only model directory: a temp dir that outlives the run's workdir
        return Path(tempfile.mkdtemp(prefix=f"edgekit-{step}-ckpt-"))


def train(tm: TorchModel, teacher: onnx.ModelProto | None, ctx: Context, config: TrainingConfig, *, step: str,
          default_epochs: int, masks: dict | None = None, use_teacher: bool = True) -> FitResult | None:
    """Fine-tune ``tm.net`` in place on ``ctx.train_data`` with ``teacher``'s soft targets; None when no epochs."""
    from edgekit.torchbench.trainer import fit

    data = ctx.train_data
    settings = training_settings(config, default_epochs=default_epochs if data is not None else 0, threads=ctx.threads)
    if settings.epochs == 0:
        return None
    if data is None:
        raise InputError(f"{step}: training for {settings.epochs} epoch(s) needs data: pass --data train.npz (labels optional)")
    promote_buffers(tm.net)  # MatMul / Add weights onnx2torch keeps as buffers train too
    targets = teacher_outputs(teacher, data, ctx) if (teacher is not None and use_teacher) else None
    ckpt = checkpoint_dir(ctx.ref.source_path, config, step)

    def save_onnx(net: torch.nn.Module) -> Path:
        path = ckpt / "best.onnx"
        onnx.save(tm.export(), str(path))
        return path

    result = fit(
        tm.net, ordered_inputs(data, ctx.ref.inputs), settings=settings, classifier=ctx.ref.classifier,
        labels=data.labels if ctx.ref.classifier else None, teacher=targets, checkpoint_dir=ckpt, on_interrupt=save_onnx,
        masks=masks, progress=ctx.log.progress, label=step,
    )
    if not config.checkpoint_dir:
        # only kept when training did not finish; remove what this run wrote, and the directory if that empties it
        for f in ("best.pt", "best.onnx"):
            (ckpt / f).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            ckpt.rmdir()
    ctx.log.say(f"{step}: {result.epochs_run} epoch(s), best epoch {result.best_epoch}: {result.metric} "
            f"{result.initial:.4g} → {result.best:.4g}" + (" (stopped early)" if result.stopped_early else ""))
    return result
