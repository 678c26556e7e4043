"""Students: ``auto:W`` (the teacher, every prunable layer's width × W) or a user's ``module:function``.

``auto:W`` starts from the teacher's most important channels (torch-pruning ranks them), which
converges much faster than a random initialisation. A factory is called with no arguments and
returns an untrained (or pre-trained) ``torch.nn.Module`` taking the teacher's inputs in order.
Either way the student's output shapes must equal the teacher's; that is checked before training.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgekit.errors import InputError, RecipeError
from edgekit.reference import Reference
from edgekit.torchbench.convert import load_factory, run_torch

if TYPE_CHECKING:
    from edgekit.torchbench.workbench import TorchModel

__all__ = ["build_student", "check_outputs", "parse_width"]

_AUTO = re.compile(r"^auto:(?P<w>[0-9]*\.?[0-9]+)$")


def parse_width(spec: str) -> float | None:
    """W for ``auto:W`` (0 < W < 1), None for a factory spec."""
    if not spec.startswith("auto"):
        return None
    m = _AUTO.match(spec)
    w = float(m["w"]) if m else None
    if w is None or not 0 < w < 1:
        raise RecipeError(f"student {spec!r}: give auto:W with a width factor 0 < W < 1 (e.g. auto:0.5), or module:function")
    return w


def build_student(spec: str, teacher: onnx.ModelProto, ref: Reference, *, keep: tuple[str, ...] = (),
                  round_to: int | None = None) -> tuple[TorchModel, dict[str, Any]]:
    """The student in PyTorch, ready to train, and what to record about it."""
    import torch

    from edgekit.torchbench.channels import output_layer_nodes, prunable_layers, prune_channels, resolve_layers
    from edgekit.torchbench.workbench import TorchModel, example, load_torch

    w = parse_width(spec)
    if w is not None:
        tm = load_torch(teacher, ref, what=f"student {spec}")
        display = tm.display()
        layers = {display[m]: m for m in prunable_layers(tm.net)}
        outputs = {m for d, m in layers.items() if d in set(output_layer_nodes(teacher))}
        kept = set(resolve_layers(keep, layers, what="distill --keep").values()) | outputs
        res = prune_channels(tm.net, example(teacher, ref.eval_data), ratio=1 - w, keep=frozenset(kept), round_to=round_to)
        if res.params_after == res.params_before:
            raise InputError(f"student {spec!r}: the teacher has no Conv or Linear (Gemm) layer whose width can shrink "
                             "(MatMul weights are not structurally prunable); give your own student as module:function")
        return tm, {"student": spec, "kind": "auto", "width": w, **res.to_dict(),
                    "out_channels": {display.get(k, k): v for k, v in res.to_dict()["out_channels"].items()},
                    "never_pruned": sorted(display.get(m, m) for m in kept)}
    net = load_factory(spec, what="--student")()
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"--student {spec!r} returned {type(net).__name__}; the factory must return a torch.nn.Module")
    tm = TorchModel(net, teacher, {})
    check_outputs(tm, teacher, ref, spec)
    params = sum(p.numel() for p in net.parameters())
    return tm, {"student": spec, "kind": "factory", "params": {"after": params}}


def check_outputs(tm: TorchModel, teacher: onnx.ModelProto, ref: Reference, spec: str) -> None:
    """Raise before training when the student's outputs cannot be compared with the teacher's."""
    import torch

    from edgekit.torchbench.workbench import example

    args = example(teacher, ref.eval_data)
    try:
        with torch.no_grad():
            got = run_torch(tm.net.eval(), args)
    except Exception as e:
        shapes = ", ".join(f"{s.name} {list(a.shape)} {a.dtype}" for s, a in zip(ref.inputs, args, strict=False))
        raise InputError(f"student {spec!r} fails on the teacher's inputs ({shapes}): {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:200]}. It must take the teacher's inputs in order") from None
    want = [(s.name, tuple(ref.ref_outputs[s.name].shape[1:])) for s in ref.outputs]
    have = [tuple(y.shape[1:]) for y in got]
    if len(have) != len(want) or any(h != w for h, (_, w) in zip(have, want, strict=False)):
        fmt = lambda shapes: ", ".join(f"[N, {', '.join(map(str, s))}]" for s in shapes)  # noqa: E731
        raise InputError(
            f"student {spec!r} outputs {fmt(have)}, the teacher outputs {fmt([w for _, w in want])} "
            f"({', '.join(n for n, _ in want)}); the student's outputs must have the teacher's shapes "
            "(e.g. the same number of classes in its last layer)"
        )
    if any(not np.issubdtype(np.dtype(str(y.dtype).replace("torch.", "")), np.floating) for y in got):
        raise InputError(f"student {spec!r} returns non-float outputs; it must return the logits / values the teacher returns")
