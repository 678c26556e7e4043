"""What a ``.tflite`` conversion will do, decided in edgekit's process before the TF worker runs, and the worker's job.

:func:`plan` picks the float model to convert, the mode (fp32, fp16, dynamic or full-integer int8),
the I/O type, a TensorFlow origin to convert instead of the ONNX model, and for int8 the rewrites
that make int8 kernels fast (:mod:`edgekit.export.tflite_prep`, :mod:`edgekit.onnx_rewrites`).
:func:`job` writes what the worker needs (:mod:`edgekit.export.tflite_worker`), including, for a
searched int8 conversion, the data the variants are judged on (:mod:`edgekit.export.tflite_measure`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from device_agent.contract.manifest import TensorSpec
from edgekit.errors import ExportError
from edgekit.export.config import TfliteConfig, TfliteIO
from edgekit.export.tflite_prep import count_ops, explicit_maxpool_padding, hard_sigmoid_as_relu6
from edgekit.onnx_model import io_specs, load_onnx
from edgekit.onnx_rewrites import ceil_mode_maxpool, space_to_depth_stem
from edgekit.preprocess import PREFIX as PREPROCESS_PREFIX

if TYPE_CHECKING:
    from edgekit.export.base import ExportSource
    from edgekit.reference import Reference

__all__ = ["QUANTIZATION", "SAMPLE_COUNT", "TF_SOURCE_KEY", "TF_SOURCE_KIND_KEY", "Conversion", "job", "onnx2tf_ops", "plan", "tflite_mode"]

#: metadata key an importer sets on an ONNX model converted from TensorFlow: the original model's path
TF_SOURCE_KEY = "edgekit.tf_source"
TF_SOURCE_KIND_KEY = "edgekit.tf_source_kind"
SAMPLE_COUNT = 8
QUANTIZATION = {"fp32": "none", "fp16": "float16", "dynamic": "dynamic-range int8", "int8": "full-integer int8"}
#: rewrites of the float model before a full-integer int8 conversion, in order (each exact; see their docstrings)
INT8_REWRITES = (("maxpool_ceil_mode_made_explicit", ceil_mode_maxpool), ("maxpool_padding_made_explicit", explicit_maxpool_padding),
                 ("space_to_depth_stem", space_to_depth_stem), ("hard_sigmoid_as_relu6", hard_sigmoid_as_relu6))


def tflite_mode(precision: str, has_calibration_data: bool) -> str:
    """The TFLite conversion for an artifact precision: fp32, fp16, dynamic (int8 weights) or int8 (full integer)."""
    if precision in ("fp32", "fp16"):
        return precision
    return "int8" if has_calibration_data else "dynamic"


@dataclass(frozen=True)
class Conversion:
    """One conversion as decided before the worker runs: what is converted, how, and where."""

    float_model: onnx.ModelProto  # the float model the .tflite is made from
    float_path: Path  # ...saved, for the parity reference
    source_model: onnx.ModelProto  # the run's source (a TensorFlow origin and the reference outputs are only valid for it)
    mode: str  # fp32 | fp16 | dynamic | int8
    io: TfliteIO
    tf_source: dict[str, str] | None  # convert the original TensorFlow model instead of the ONNX one
    rewrites: dict[str, int]  # exact rewrites applied before an int8 conversion (ONNX graph, and onnx2tf's pseudo ops)
    pseudo_ops: tuple[str, ...]  # ops onnx2tf writes as elementwise ops ("hardswish")
    work: Path


def plan(source: ExportSource, precision: str, config: TfliteConfig) -> Conversion:
    """Decide the conversion: the float model, the mode, the I/O type, the TensorFlow origin and the rewrites; check it can be done."""
    ref = source.reference
    source_model = load_onnx(ref.source_path)
    float_model = source.float_model
    if float_model is None:
        # no float model handed over: the float model is the source itself (no float-changing step ran)
        float_model = source.model if precision == "fp32" else source_model
    mode = tflite_mode(precision, ref.calib_data is not None)
    io = config.io
    if io == TfliteIO.INT8 and mode != "int8":
        note = f"--tflite-io int8 applies to full-integer int8 models (--int8 with --data); the {QUANTIZATION[mode]} .tflite keeps float inputs/outputs"
        source.log.note(note, shown=f"tflite: {note}")
        io = TfliteIO.FLOAT
    inputs, _ = io_specs(float_model)
    _check_static(inputs, baked=[s.name for s in inputs if _feeds_baked_preprocessing(float_model, s.name)])
    _check_ops(float_model)
    work = source.workdir.resolve() / "tflite"
    work.mkdir(parents=True, exist_ok=True)
    float_path = work / "float.onnx"
    onnx.save(float_model, str(float_path))
    tf_source = _tf_source(float_model, source_model)
    rewrites: dict[str, int] = {}
    pseudo: tuple[str, ...] = ()
    if mode == "int8" and not tf_source:
        prepared = float_model
        baked = any(n.name.startswith(PREPROCESS_PREFIX) for n in prepared.graph.node)
        for key, rewrite in INT8_REWRITES:
            if baked and key == "space_to_depth_stem":
                continue  # onnx2tf cannot lay out a SpaceToDepth behind baked preprocessing (its input stays NHWC)
            prepared, n = rewrite(prepared)
            if n:
                rewrites[key] = n
        swish = count_ops(prepared, "HardSwish")
        if swish:
            rewrites["hard_swish_as_elementwise_ops"] = swish
            pseudo = ("hardswish",)
        if rewrites:
            onnx.save(prepared, str(work / "float.prepared.onnx"))
    return Conversion(float_model, float_path, source_model, mode, io, tf_source, rewrites, pseudo, work)


def job(conv: Conversion, ref: Reference, out: Path, stem: str, config: TfliteConfig, *, judge: dict[str, Any] | None,
        threads: int) -> dict[str, Any]:
    """The worker's job document (:mod:`edgekit.export.tflite_worker`); ``judge`` makes an int8 conversion a search."""
    inputs, outputs = io_specs(conv.float_model)
    rewritten = bool(conv.rewrites)
    convert_path = conv.work / "float.prepared.onnx" if rewritten else conv.float_path
    calib = ref.calib_data
    return {
        "source": conv.tf_source or {"kind": "onnx", "path": str(convert_path)},
        "out": str(out.resolve()),  # the worker runs in its own directory
        "mode": conv.mode,
        "io": str(conv.io),
        "calib_samples": config.calib_samples,
        "strip": bool(config.strip),
        "per_channel": config.per_channel is not False,
        "alternatives": [{"per_channel": False, "out": str(conv.work / f"{stem}.per-tensor.tflite")}]
        if conv.mode == "int8" and config.per_channel is None else [],
        "inputs": [_spec_doc(s) for s in inputs],
        "outputs": [_spec_doc(s) for s in outputs],
        "sample": str(save_npz(conv.work / "sample.npz", ref.eval_data.subset(SAMPLE_COUNT).inputs)),
        "calib": str(save_npz(conv.work / "calib.npz", calib.subset(config.calib_samples).inputs)) if conv.mode == "int8" and calib else None,
        "pseudo_ops": list(conv.pseudo_ops),
        # a raw uint8 NHWC image in front of baked preprocessing is already channel-last: onnx2tf must not transpose it
        "keep_inputs": [s.name for s in inputs if _feeds_baked_preprocessing(conv.float_model, s.name)],
        "judge": judge,
        "baseline": {"path": str(conv.float_path)} if judge and rewritten else None,
        "objective": str(config.objective),
        "threads": threads,
    }


def judge_files(conv: Conversion, ref: Reference, float_outputs: dict[str, np.ndarray], tolerance: float | None) -> dict[str, Any]:
    """What the int8 search judges variants with, as files: the evaluation data, the source's and the float model's outputs."""
    arrays = dict(ref.eval_data.inputs)
    if ref.eval_data.labels is not None:
        arrays["labels"] = ref.eval_data.labels
    return {
        "eval": str(save_npz(conv.work / "eval.npz", arrays)),
        "source_outputs_file": str(save_npz(conv.work / "source_outputs.npz", ref.ref_outputs)),
        "float_outputs_file": str(save_npz(conv.work / "float_outputs.npz", float_outputs)),
        "source_inputs": [_spec_doc(s) for s in ref.inputs],
        "source_outputs": [_spec_doc(s) for s in ref.outputs],
        "classifier": ref.classifier,
        "generated": ref.eval_data.generated,
        "ref_accuracy": ref.ref_accuracy,
        "tolerance": tolerance,
        "precision": "int8",
    }


def onnx2tf_ops() -> set[str] | None:
    """ONNX op types onnx2tf has a converter for (module files in ``onnx2tf/ops``), found without importing it."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        return None
    ops_dir = Path(next(iter(spec.submodule_search_locations))) / "ops"
    return {p.stem for p in ops_dir.glob("*.py") if not p.stem.startswith("_")} or None


def _check_static(inputs: tuple[TensorSpec, ...], *, baked: list[str]) -> None:
    for s in inputs:
        dynamic = [i for i, d in enumerate(s.shape) if i > 0 and not isinstance(d, int)]
        if dynamic and s.name in baked:
            raise ExportError(f"input {s.name!r} takes images of any size {shape_text(s.shape)}; a .tflite needs one size. Add "
                              "raw_size: [height, width] (the camera's frame) to the --preprocess spec")
        if dynamic:
            example = ",".join(str(d) if isinstance(d, int) else ("1" if i == 0 else "?") for i, d in enumerate(s.shape))
            raise ExportError(
                f"input {s.name!r} has dynamic dims {shape_text(s.shape)}; a .tflite needs fixed sizes except the batch axis. "
                f"Pass --input-shape {s.name}:{example} with the sizes filled in"
            )


def _check_ops(model: onnx.ModelProto) -> None:
    known = onnx2tf_ops()
    if known is None:
        return
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise ExportError(f"onnx2tf cannot convert op {op} (node {node.name or '(unnamed)'!r}), so no .tflite was written")


def _tf_source(float_model: onnx.ModelProto, source_model: onnx.ModelProto) -> dict[str, str] | None:
    """The original TensorFlow model, when the float model is exactly what an importer converted from it."""
    meta = {p.key: p.value for p in float_model.metadata_props}
    path, kind = meta.get(TF_SOURCE_KEY), meta.get(TF_SOURCE_KIND_KEY)
    if not path or kind not in ("keras", "saved_model") or not Path(path).exists():
        return None
    if source_model.graph.SerializeToString() != float_model.graph.SerializeToString():
        return None  # a step changed the float model (e.g. pruning): convert what was compressed
    return {"kind": kind, "path": path}


def _spec_doc(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "layout": s.layout}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``arrays`` in an uncompressed .npz at ``path``."""
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool (allow_pickle)
    return path


def shape_text(shape: tuple[Any, ...]) -> str:
    """``[N, 3, 224, 224]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _feeds_baked_preprocessing(model: onnx.ModelProto, name: str) -> bool:
    readers = [n for n in model.graph.node if name in n.input]
    return bool(readers) and all(n.name.startswith(PREPROCESS_PREFIX) for n in readers)
