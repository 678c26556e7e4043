"""A PyTorch teacher (``--teacher nets.py:big_net``) exported to ONNX, so the run has a source like any other.

The exported file is kept next to the output: the manifest records its sha256 and the report
compares the student with it, so both must stay reproducible. Input names and shapes come from
the data file: one array is the single input; several are matched to ``forward``'s parameter names.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from edgekit.data import LABEL_KEYS
from edgekit.errors import DataError, ExportError, InputError
from edgekit.torchbench.convert import DEFAULT_EXPORT_OPSET, load_factory, require_torch, run_torch

__all__ = ["export_torch_teacher", "is_factory_spec"]


def is_factory_spec(spec: str) -> bool:
    """``module:function`` / ``file.py:function`` rather than a model file."""
    return ":" in spec and not Path(spec).exists() and not spec.endswith(".onnx")


def export_torch_teacher(spec: str, data: Path, dest: Path) -> Path:
    """Build the teacher from ``spec``, export it to ``dest`` (ONNX, symbolic batch) and return ``dest``."""
    require_torch("a PyTorch teacher")
    import torch

    net = load_factory(spec, what="--teacher")()
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"--teacher {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    net.eval()
    arrays = _arrays(data)
    names = _input_order(net, arrays, spec)
    example = tuple(torch.from_numpy(np.ascontiguousarray(arrays[n][:2])) for n in names)
    with torch.no_grad():
        outs = run_torch(net, example)
    out_names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    dynamic = {n: {0: "N"} for n in (*names, *out_names)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(net, example, str(dest), input_names=names, output_names=out_names, dynamic_axes=dynamic,
                          opset_version=DEFAULT_EXPORT_OPSET, dynamo=False)
    except Exception as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"exporting the teacher {spec!r} to ONNX failed: {line}; export it yourself and pass the .onnx file") from None
    return dest


def _arrays(data: Path) -> dict[str, np.ndarray]:
    if data.suffix not in (".npz", ".npy") or not data.is_file():
        raise DataError(f"a PyTorch teacher takes its input shapes from a .npz or .npy file; {data} is neither. "
                        "Export the teacher to ONNX and pass the .onnx file to use an image folder")
    if data.suffix == ".npy":
        return {"x": np.load(data, allow_pickle=False)}
    with np.load(data, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k not in LABEL_KEYS}


def _input_order(net, arrays: dict[str, np.ndarray], spec: str) -> list[str]:
    if len(arrays) == 1:
        return list(arrays)
    params = [p for p in inspect.signature(net.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params]
    missing = [n for n in names if n not in arrays and params[names.index(n)].default is inspect.Parameter.empty]
    if missing:
        raise DataError(f"--teacher {spec!r}: forward() takes {', '.join(names)} but the data has arrays {', '.join(sorted(arrays))}; "
                        "name each array after a forward() argument")
    return [n for n in names if n in arrays]
