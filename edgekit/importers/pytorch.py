"""PyTorch models → ONNX: a ``module:factory`` (plus ``--weights``) or a ``torch.export`` ``.pt2`` file.

``module:factory`` names a Python file (``nets.py:build``) or an importable module
(``mypkg.nets:build``) and a callable returning an ``nn.Module`` (a class works too). Weights are
read with ``torch.load(weights_only=True)``: a state_dict (or a checkpoint dict holding one) is
accepted, pickled objects are refused, never executed. Importing the module runs its code:
that is the user's own code, named on the command line.

Export uses the TorchScript-based ``torch.onnx.export`` (weights as initializers, a symbolic
batch axis), falling back to the ``torch.export``-based exporter; a ``.pt2`` always goes through
the latter. Every export is checked: ONNX Runtime must reproduce the module's outputs.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ExportError, InputError, MissingExtraError

__all__ = ["export_factory", "export_pt2", "load_factory", "load_weights"]

OPSET = 17


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingExtraError("PyTorch input", "torch") from None
    return torch


def load_factory(spec: str):
    """The callable named by ``file.py:factory`` or ``package.module:factory``."""
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise InputError(f"{spec!r} is not a PyTorch model spec; write FILE.py:FACTORY or package.module:FACTORY")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise InputError(f"{path} not found (from the model spec {spec!r})")
        mod = _import_file(path, spec)
    else:
        try:
            mod = importlib.import_module(module_part)
        except Exception as e:  # noqa: BLE001 - the user's module may raise anything on import
            raise InputError(f"cannot import module {module_part!r} for {spec!r}: {type(e).__name__}: {_line(e)}") from None
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__)
        raise InputError(f"{module_part} has no callable {attr!r}" + (f"; it defines: {', '.join(names)}" if names else ""))
    return fn


def _import_file(path: Path, spec: str):
    from edgekit.importers.userfile import import_user_file

    try:
        return import_user_file(path)
    except Exception as e:  # noqa: BLE001 - the user's file may raise anything on import
        raise InputError(f"importing {path} failed: {type(e).__name__}: {_line(e)}") from None


def build_module(spec: str):
    torch = _torch()
    fn = load_factory(spec)
    try:
        net = fn()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{spec} raised {type(e).__name__}: {_line(e)} (the factory is called with no arguments)") from None
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"{spec} returned {type(net).__module__}.{type(net).__qualname__}, not a torch.nn.Module")
    return net


def load_weights(net, path: Path) -> None:
    """Load a state_dict into ``net`` with ``torch.load(weights_only=True)``; strict key matching."""
    torch = _torch()
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, ...
        raise InputError(
            f"{path.name} cannot be read as plain weights ({_line(e)[:200]}). edgekit loads weights with "
            "torch.load(weights_only=True) and never unpickles arbitrary objects: save a state_dict with "
            "torch.save(model.state_dict(), path)"
        ) from None
    state = _state_dict(obj, path)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    missing, unexpected = _key_diff(net, state)
    own = net.state_dict()
    wrong = [f"{k} is {list(v.shape)} in the file, {list(own[k].shape)} in the module" for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es): {'; '.join(wrong[:2])}")
        if missing:
            parts.append(f"missing {len(missing)} key(s) such as {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {', '.join(unexpected[:3])}")
        raise InputError(f"{path.name} does not fit the module: {'; '.join(parts)}. Check that the factory builds the same architecture")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path.name} does not fit the module: {_line(e)}") from None


def _state_dict(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if all(isinstance(k, str) for k in obj):
            return obj
    raise InputError(f"{path.name} holds a {type(obj).__name__}, not a state_dict; save it with torch.save(model.state_dict(), path)")


def _key_diff(net, state: dict) -> tuple[list[str], list[str]]:
    own = set(net.state_dict())
    given = set(state)
    return sorted(own - given), sorted(given - own)


def export_factory(spec: str, out: Path, *, weights: Path | None, input_shapes: dict[str | None, tuple[int, ...]],
                   say=lambda m: None) -> Path:
    """Build ``spec``'s module, load ``weights``, export it to ``out`` (.onnx) and check it with ORT."""
    torch = _torch()
    if not input_shapes:
        raise InputError(f"a PyTorch module:factory needs the input shape: pass --input-shape, e.g. --input-shape 1,3,224,224 ({spec})")
    net = build_module(spec)
    if weights is not None:
        load_weights(net, Path(weights))
    else:
        say(f"no --weights given: exporting {spec} with the weights its factory created")
    net.eval()
    names = [n or ("input" if len(input_shapes) == 1 else f"input_{i}") for i, n in enumerate(input_shapes)]
    torch.manual_seed(0)
    example = tuple(torch.randn(*shape) for shape in input_shapes.values())
    with torch.no_grad():
        try:
            ref = net(*example)
        except Exception as e:  # noqa: BLE001
            shapes = ", ".join(str(list(s)) for s in input_shapes.values())
            raise InputError(f"{spec} fails on inputs of shape {shapes}: {type(e).__name__}: {_line(e)}. Check --input-shape") from None
    refs = _flatten(ref)
    out_names = ["output"] if len(refs) == 1 else [f"output_{i}" for i in range(len(refs))]
    dynamic = {n: {0: "N"} for n in names + out_names}
    try:
        torch.onnx.export(net, example, str(out), input_names=names, output_names=out_names, opset_version=OPSET,
                          dynamic_axes=dynamic, dynamo=False)
    except Exception as first:  # noqa: BLE001 - fall back to the torch.export-based exporter
        try:
            torch.onnx.export(net, example, str(out), input_names=names, output_names=out_names, opset_version=18, dynamo=True,
                              dynamic_shapes=None, verbose=False)
        except Exception:  # noqa: BLE001
            raise ExportError(f"torch.onnx.export could not export {spec}: {type(first).__name__}: {_line(first)}") from None
    _check(out, dict(zip(names, example, strict=False)), refs, spec)
    return out


def export_pt2(path: Path, out: Path, *, say=lambda m: None) -> Path:
    """Export a ``torch.export`` ExportedProgram (``.pt2``) to ONNX and check it with ORT."""
    import logging
    import zipfile

    torch = _torch()
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path.name} is not a torch.export program (torch.export.load failed: not a .pt2 archive); save one with torch.export.save")
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.CRITICAL)  # torch logs a full traceback before raising; the error below says it in one line
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path.name} is not a torch.export program (torch.export.load failed: {_line(e)}); save one with torch.export.save") from None
    finally:
        log.setLevel(level)
    example = getattr(ep, "example_inputs", None)
    args = tuple(example[0]) if example else ()
    if not args:
        raise InputError(f"{path.name} holds no example inputs; re-export it with torch.export.export(model, (example,)) and save again")
    with torch.no_grad():
        refs = _flatten(ep.module()(*args))
    try:
        program = torch.onnx.export(ep, args, dynamo=True, verbose=False)
        program.save(str(out))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"torch.onnx.export could not export {path.name}: {type(e).__name__}: {_line(e)}") from None
    import onnx

    model = onnx.load(str(out))
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    _check(out, dict(zip(names, args, strict=False)), refs, path.name)
    return out


def _flatten(y) -> list:
    if isinstance(y, (list, tuple)):
        return [t for item in y for t in _flatten(item)]
    if isinstance(y, dict):
        return [t for item in y.values() for t in _flatten(item)]
    return [y]


def _check(path: Path, feeds: dict, refs: list, what: str) -> None:
    """ONNX Runtime must reproduce the PyTorch outputs: catches a silently wrong export early."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the ONNX export of {what} does not run in onnxruntime: {_line(e)}") from None
    for i, (r, y) in enumerate(zip(refs, outs, strict=False)):
        r = r.detach().cpu().numpy()
        err = float(np.abs(r.astype(np.float64) - y.astype(np.float64)).max(initial=0.0))
        scale = max(1.0, float(np.abs(r).max(initial=0.0)))
        if err > 1e-3 * scale:
            raise ExportError(f"the ONNX export of {what} differs from PyTorch: output {i} max abs error {err:.4g} (allowed {1e-3 * scale:.4g})")


def _line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
