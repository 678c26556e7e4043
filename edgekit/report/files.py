"""What a report row knows about a model file before running it: format, precision, sizes, weights.

``expand`` turns the command line's paths into report entries: a model file is one entry; an
edgekit output directory expands to its artifacts (in manifest order, each with its manifest
record for layout and session settings), preceded by its source model when the directory is the
first argument and the source sits next to it unchanged (same sha256).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import MANIFEST_NAME, Artifact, Manifest, ManifestError, file_sha256, load_manifest
from edgekit.errors import InputError

__all__ = ["Entry", "expand", "file_facts", "gzip_size", "onnx_facts", "tflite_weight_stats"]

FORMATS = {".onnx": "onnx", ".ort": "ort", ".tflite": "tflite"}
#: TFLite ops whose input 1 is a weight tensor
_TFLITE_WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "CONV_3D"}


@dataclass
class Entry:
    """One model file to report on, with what its manifest (if any) says about it."""

    path: Path
    format: str
    artifact: Artifact | None = None  # the manifest's record: layout perms, session config, tflite names
    manifest: Manifest | None = None
    precision: str | None = None
    stats: dict[str, Any] | None = None  # weight_stats().to_dict() or the TFLite equivalent
    notes: list[str] = field(default_factory=list)

    @property
    def file(self) -> str:
        return self.path.name


def gzip_size(path: Path) -> int:
    """Bytes after gzip -9 (deterministic: no name, no mtime): what an OTA download of the file costs."""
    data = path.read_bytes()
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def expand(paths: list[str | Path]) -> tuple[list[Entry], list[str]]:
    """Report entries for the given files and output directories, and notes on what was assumed."""
    entries: list[Entry] = []
    notes: list[str] = []
    for i, raw in enumerate(paths):
        p = Path(raw)
        if not p.exists():
            raise InputError(f"not found: {p}; pass model files (.onnx, .ort, .tflite) or edgekit output directories")
        if p.is_dir():
            entries += _expand_dir(p, first=i == 0, notes=notes)
        else:
            entries.append(_entry(p))
    if not entries:
        raise InputError("nothing to report: pass at least one model file or output directory")
    seen: set[Path] = set()
    unique = []
    for e in entries:
        key = e.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(e)
    return unique, notes


def _expand_dir(d: Path, *, first: bool, notes: list[str]) -> list[Entry]:
    if not (d / MANIFEST_NAME).is_file():
        models = sorted(f for f in d.iterdir() if f.suffix in FORMATS)
        if not models:
            raise InputError(f"{d} has no {MANIFEST_NAME} and no model files; pass an edgekit output directory or model files")
        notes.append(f"{d} has no {MANIFEST_NAME}; reporting its model files in name order")
        return [_entry(f) for f in models]
    try:
        m = load_manifest(d)
    except ManifestError as e:
        raise InputError(f"{d}: {e}") from None
    out = []
    if first:
        src = d.parent / m.raw.get("source", {}).get("file", "")
        want = m.raw.get("source", {}).get("sha256")
        if src.is_file() and want and file_sha256(src) == want:
            out.append(_entry(src))
        else:
            notes.append(f"the source model {m.raw.get('source', {}).get('file')} was not found unchanged next to {d}; "
                         "the first artifact is the baseline. Pass the source model first to compare against it")
    for a in m.artifacts:
        f = d / a.file
        if not f.is_file():
            notes.append(f"{a.file} is listed in {d / MANIFEST_NAME} but missing; skipped")
            continue
        out.append(_entry(f, a, m))
    return out


def _entry(p: Path, artifact: Artifact | None = None, manifest: Manifest | None = None) -> Entry:
    fmt = FORMATS.get(p.suffix)
    if fmt is None:
        raise InputError(f"{p.name}: unknown model format {p.suffix!r}; pass .onnx, .ort or .tflite files or an output directory")
    if artifact is None:
        artifact, manifest = _find_in_manifest(p)
    e = Entry(p, fmt, artifact, manifest)
    e.precision, e.stats = file_facts(e)
    return e


def _find_in_manifest(p: Path) -> tuple[Artifact | None, Manifest | None]:
    """A file inside an output directory carries its manifest record (layout, session config) with it."""
    if not (p.parent / MANIFEST_NAME).is_file():
        return None, None
    try:
        m = load_manifest(p.parent)
        return m.artifact(p.name), m
    except ManifestError:
        return None, None


def file_facts(e: Entry) -> tuple[str | None, dict | None]:
    """(precision, weight stats) for an entry: from the file, else from its manifest."""
    precision = e.artifact.precision if e.artifact else None
    stats = None
    if e.format == "onnx":
        p, stats = onnx_facts(e.path)
        precision = precision or p
    elif e.format == "tflite":
        stats = tflite_weight_stats(e.path)
        if stats is not None and precision is None:
            precision = _precision_from(stats)
    elif e.format == "ort" and e.manifest is not None:
        # an .ort holds the same weights as the .onnx it was converted from
        parent = ((e.manifest.metrics.get(e.file) or {}).get("parity") or {}).get("against")
        if parent and (e.path.parent / parent).is_file():
            _, stats = onnx_facts(e.path.parent / parent)
    if stats is None and e.artifact is not None:
        stats = e.artifact.extra.get("weights")
    return precision, stats


def onnx_facts(path: Path) -> tuple[str, dict]:
    import onnx

    from edgekit.onnx_model import weight_stats

    m = onnx.load(str(path))
    stats = weight_stats(m).to_dict()
    stats["fp16_params"] = _fp16_params(m)
    return _precision_from(stats), stats


def _fp16_params(m) -> int:
    import onnx

    from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS, iter_graphs

    n = 0
    for g in iter_graphs(m.graph):
        for t in g.initializer:
            size = int(np.prod(t.dims)) if len(t.dims) else 1
            if t.data_type == onnx.TensorProto.FLOAT16 and size >= MIN_WEIGHT_ELEMENTS:
                n += size
    return n


def _count_constants(it: Any, constants: set[int], min_elements: int) -> tuple[int, int, int, int, int, dict[int, np.dtype]]:
    """Float, int8, fp16 and other values in the constant tensors of at least ``min_elements``, the zeros, and every constant's dtype."""
    f = i8 = f16 = other = zeros = 0
    dtypes: dict[int, np.dtype] = {}
    for idx in sorted(constants):
        try:
            arr = it.get_tensor(idx)
        except ValueError:
            continue
        dtypes[idx] = arr.dtype
        n = int(arr.size)
        if n < min_elements:
            continue
        if arr.dtype in (np.int8, np.uint8):
            i8 += n
            zeros += n - int(np.count_nonzero(arr))
        elif np.issubdtype(arr.dtype, np.floating):
            f += n
            f16 += n if arr.dtype == np.float16 else 0
            zeros += n - int(np.count_nonzero(arr))
        else:
            other += n  # int32 biases of int8 models
    return f, i8, f16, other, zeros, dtypes


def _weighted_ops(ops: list[dict[str, Any]], dtypes: dict[int, np.dtype]) -> tuple[int, int]:
    """How many conv / fully-connected ops have a constant weight, and how many of those weights are int8 (through a DEQUANTIZE too)."""
    by_output = {int(o): op for op in ops for o in op["outputs"]}
    weighted = quantized = 0
    for op in ops:
        if op["op_name"] not in _TFLITE_WEIGHTED or len(op["inputs"]) < 2:
            continue
        w = int(op["inputs"][1])
        src = by_output.get(w)
        if src is not None and src["op_name"] == "DEQUANTIZE":
            w = int(src["inputs"][0])
        if w not in dtypes:
            continue  # an activation (e.g. BATCH_MATMUL of two inputs), not a weight
        weighted += 1
        quantized += dtypes[w] in (np.int8, np.uint8)
    return weighted, int(quantized)


def _precision_from(stats: dict) -> str:
    if stats.get("quantized_share", 0) >= 0.5:
        return "int8"
    if stats.get("fp16_params", 0) * 2 > stats.get("float_params", 0):
        return "fp16"
    return "fp32"


def tflite_weight_stats(path: Path) -> dict | None:
    """Weights of a .tflite, counted like :func:`edgekit.onnx_model.weight_stats` counts ONNX ones.

    Constant tensors of at least ``MIN_WEIGHT_ELEMENTS`` values are weights; a conv /
    fully-connected op is quantized when its filter is int8. fp16 weights (behind a DEQUANTIZE op)
    count as float; ``fp16_params`` says how many. None when no LiteRT runtime is installed.
    """
    from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS

    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        return None
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    ops = [op for op in it._get_ops_details() if op["op_name"] != "DELEGATE"]  # LiteRT's only per-op view
    produced = {int(o) for op in ops for o in op["outputs"]}
    graph_inputs = {int(d["index"]) for d in it.get_input_details()}
    constants = {int(i) for op in ops for i in op["inputs"] if int(i) >= 0} - produced - graph_inputs
    f, i8, f16, other, zeros, dtypes = _count_constants(it, constants, MIN_WEIGHT_ELEMENTS)
    weighted, quantized = _weighted_ops(ops, dtypes)
    total = f + i8
    return {
        "params": f + i8 + other,
        "float_params": f,
        "int8_params": i8,
        "fp16_params": f16,
        "quantized_share": round(i8 / total, 4) if total else 0.0,
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "weighted_nodes": weighted,
        "quantized_nodes": int(quantized),
    }
