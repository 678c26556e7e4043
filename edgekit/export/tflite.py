"""The ``.tflite`` artifact: ONNX → onnx2tf → ``tf.lite.TFLiteConverter``, run by LiteRT on the device.

Which TFLite model is written follows the ONNX artifact's precision:

=========  ==============================================================================
fp32       float32 weights and compute
fp16       float16 weights (``supported_types=[tf.float16]``), float compute on CPU
int8       full-integer int8, calibrated on the same data as the ONNX int8 model
           (representative dataset); without data, dynamic-range int8 (int8 weights)
=========  ==============================================================================

TFLite quantizes the *float* model with its own calibrator (the ONNX int8 model's QDQ nodes
are not something TFLite can import), so the exporter always converts the float model that
preceded the quantization step. The .tflite's parity is therefore checked against that float
model's outputs (``reference_outputs``), not against the ONNX int8 artifact.

Inputs/outputs are float by default so callers never quantize; ``io=int8`` (``--tflite-io int8``)
makes a full-integer model take and return int8 tensors, for integer-only accelerators.

onnx2tf makes image tensors channel-last: each artifact spec carries ``perm`` (source → artifact
layout) and ``layout``; LiteRT backends transpose so every caller keeps the source layout.

The converter's file is then stripped of what the LiteRT interpreter never reads (intermediate
tensor names, the description, calibration min/max; see :mod:`edgekit.export.tflite_strip`), the
same for every precision, and shipped only if it computes bit-identical outputs. ``strip=False``
(``TfliteConfig(strip=False)``) keeps the names, e.g. to read the graph in Netron.
``extra["tflite"]["stripped"]`` records the converter's size beside the shipped one.

Full-integer weights get per-channel scales (TFLiteConverter's default) or one scale per weight tensor,
whichever is smaller while as accurate and as fast on the evaluation data: both are converted and
measured (:mod:`edgekit.export.tflite_weights`). Per-tensor saves the float32 scale and int64 zero point
each channel of a weight and of its int32 bias carries (0.285x -> 0.270x the fp32 size on the digits
CNN, 1.3 % of it on MobileNetV2) and costs accuracy where channel ranges differ (trained depthwise
convolutions most). ``per_channel=True``/``False`` (``--tflite-weights per-channel|per-tensor``,
``TfliteConfig(per_channel=False)``) skips the choice.

All TensorFlow work runs in a child process (:mod:`edgekit.tf_process`): TF's logs, aborts and
onnx2tf's ``sys.exit`` stay there and come back as one ``ExportError`` line.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from device_agent.contract.manifest import TensorSpec
from edgekit.choices import Format, Precision
from edgekit.errors import ExportError
from edgekit.export.base import ExportSource, exporter
from edgekit.export.config import TfliteConfig, TfliteIO
from edgekit.export.tflite_prep import explicit_maxpool_padding
from edgekit.onnx_model import io_specs, load_onnx
from edgekit.onnx_rewrites import ceil_mode_maxpool, space_to_depth_stem
from edgekit.reference import Reference
from edgekit.results import ExportedArtifact
from edgekit.tf_process import require, run_worker

__all__ = ["TF_SOURCE_KEY", "TF_SOURCE_KIND_KEY", "check_available", "export_tflite", "onnx2tf_ops", "tflite_mode"]

#: metadata key an importer sets on an ONNX model converted from TensorFlow: the original model's path
TF_SOURCE_KEY = "edgekit.tf_source"
TF_SOURCE_KIND_KEY = "edgekit.tf_source_kind"
SAMPLE_COUNT = 8
_QUANTIZATION = {"fp32": "none", "fp16": "float16", "dynamic": "dynamic-range int8", "int8": "full-integer int8"}


def check_available() -> None:
    """Raise ``MissingExtraError`` (pip install 'edgekit[tflite]') unless the TFLite toolchain is installed."""
    require(("tensorflow", "tf_keras", "onnx2tf", "onnx_graphsurgeon", "ai_edge_litert"), "TFLite export", "tflite")


def tflite_mode(precision: str, has_calibration_data: bool) -> str:
    """The TFLite conversion for an artifact precision: fp32, fp16, dynamic (int8 weights) or int8 (full integer)."""
    if precision in ("fp32", "fp16"):
        return precision
    return "int8" if has_calibration_data else "dynamic"


@dataclass(frozen=True)
class _Conversion:
    """One conversion as decided before the worker runs: what is converted, how, and where."""

    float_model: onnx.ModelProto  # the float model the .tflite is made from
    float_path: Path  # ...saved, for the parity reference
    source_model: onnx.ModelProto  # the run's source (a TensorFlow origin and the reference outputs are only valid for it)
    mode: str  # fp32 | fp16 | dynamic | int8
    io: TfliteIO
    tf_source: dict[str, str] | None  # convert the original TensorFlow model instead of the ONNX one
    rewrites: dict[str, int]  # exact ONNX rewrites applied before an int8 conversion
    work: Path


@exporter(Format.TFLITE, TfliteConfig)
def export_tflite(source: ExportSource, out_dir: Path, stem: str, config: TfliteConfig) -> list[ExportedArtifact]:
    """Write ``<stem>.tflite`` for the ``.onnx`` artifact (converted from the float model) and describe it.

    ``config.per_channel`` (full-integer int8 only): True/False forces per-channel/per-tensor weight scales;
    None converts both and ships the smaller one if it is as accurate and as fast
    (:mod:`edgekit.export.tflite_weights`).

    Raises ``MissingExtraError`` without the tflite extra and ``ExportError`` naming the op, the
    input or TensorFlow's own message when the conversion cannot be done.
    """
    check_available()
    onnx_artifact = source.parent(Format.TFLITE)
    conv = _plan(source, onnx_artifact.precision, config)
    job = _job(conv, source.reference, out_dir / f"{stem}.tflite", stem, config)
    source.log.progress(f"tflite: converting to {_QUANTIZATION[conv.mode]}", 0.1)
    result = run_worker("edgekit.export.tflite_worker", job, conv.work / "job", what=f"TFLite conversion of {onnx_artifact.path.name}",
                        on_error=lambda err: _explain(err, onnx_artifact), progress=source.log.progress)
    return [_describe(Path(job["out"]), result, conv, source, onnx_artifact, config)]


def _plan(source: ExportSource, precision: Precision, config: TfliteConfig) -> _Conversion:
    """Decide the conversion: the float model, the mode, the I/O type, the TensorFlow origin and the rewrites; check it can be done."""
    ref = source.reference
    source_model = load_onnx(ref.source_path)
    float_model = source.float_model
    if float_model is None:
        # no float model handed over: the float model is the source itself (no float-changing step ran)
        float_model = source.model if precision == Precision.FP32 else source_model
    mode = tflite_mode(precision, ref.calib_data is not None)
    io = config.io
    if io == TfliteIO.INT8 and mode != "int8":
        note = f"--tflite-io int8 applies to full-integer int8 models (--int8 with --data); the {_QUANTIZATION[mode]} .tflite keeps float inputs/outputs"
        source.log.note(note, shown=f"tflite: {note}")
        io = TfliteIO.FLOAT
    inputs, _ = io_specs(float_model)
    _check_static(inputs)
    _check_ops(float_model)
    work = source.workdir.resolve() / "tflite"
    work.mkdir(parents=True, exist_ok=True)
    float_path = work / "float.onnx"
    onnx.save(float_model, str(float_path))
    tf_source = _tf_source(float_model, source_model)
    rewrites: dict[str, int] = {}
    if mode == "int8" and not tf_source:
        prepared = float_model
        for key, rewrite in (("maxpool_ceil_mode_made_explicit", ceil_mode_maxpool), ("maxpool_padding_made_explicit", explicit_maxpool_padding),
                             ("space_to_depth_stem", space_to_depth_stem)):
            prepared, n = rewrite(prepared)
            if n:
                rewrites[key] = n
        if rewrites:
            onnx.save(prepared, str(work / "float.prepared.onnx"))
    return _Conversion(float_model, float_path, source_model, mode, io, tf_source, rewrites, work)


def _job(conv: _Conversion, ref: Reference, out: Path, stem: str, config: TfliteConfig) -> dict[str, Any]:
    """The worker's job document (:mod:`edgekit.export.tflite_worker`)."""
    inputs, outputs = io_specs(conv.float_model)
    convert_path = conv.work / "float.prepared.onnx" if conv.rewrites else conv.float_path
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
        "sample": str(_save(conv.work / "sample.npz", ref.eval_data.subset(SAMPLE_COUNT).inputs)),
        "calib": str(_save(conv.work / "calib.npz", calib.subset(config.calib_samples).inputs)) if conv.mode == "int8" and calib else None,
    }


def _describe(path: Path, result: dict[str, Any], conv: _Conversion, source: ExportSource, onnx_artifact: ExportedArtifact,
              config: TfliteConfig) -> ExportedArtifact:
    """The artifact record: its signature in its own layout, what the conversion did, and its parity reference."""
    ref, mode, io = source.reference, conv.mode, conv.io
    quantized_io = io == TfliteIO.INT8
    art_inputs = tuple(_spec(d, quantized_io) for d in result["inputs"])
    art_outputs = tuple(_spec(d, quantized_io) for d in result["outputs"])
    calib_n = min(config.calib_samples, ref.calib_data.n) if mode == "int8" and ref.calib_data is not None else 0
    extra: dict[str, Any] = {
        "tflite": {
            "quantization": _QUANTIZATION[mode],
            "io": str(io),
            "weights": ("per-tensor" if config.per_channel is False else "per-channel") if mode == "int8" else None,
            "converter": "TFLiteConverter (from the TensorFlow source)" if conv.tf_source else "onnx2tf + TFLiteConverter",
            "calibration_samples": calib_n,
            "ops": result.get("ops", {}),
            "stripped": result.get("stripped", {}),
            "onnx_rewrites": conv.rewrites,
            "versions": result.get("versions", {}),
        },
        "tflite_names": result["tflite_names"],
    }
    reference, label = _reference(conv, ref, source.threads)
    tolerance = _int8_tolerance(onnx_artifact, reference, ref, source.threads) if mode in ("int8", "dynamic") else None
    art = ExportedArtifact(path, Format.TFLITE, onnx_artifact.precision, art_inputs, art_outputs, parent=label, extra=extra,
                           reference_outputs=reference, parity_tolerance=tolerance)
    notes = result.get("notes", [])
    if result.get("alternatives"):
        notes = _choose_weights(art, result, source, reference)
    for note in notes:
        source.log.note(f"{path.name}: {note}")
    weights = f", {extra['tflite']['weights']} weights" if mode == "int8" else ""
    source.log.say(f"tflite: wrote {path.name} ({_QUANTIZATION[mode]}{weights}, {io} I/O, layout {_layouts(art_inputs)})")
    return art


def _choose_weights(art: ExportedArtifact, result: dict[str, Any], source: ExportSource, reference: dict[str, np.ndarray]) -> list[str]:
    """Keep the per-channel .tflite at ``art.path`` or move the per-tensor one there; record both. Returns its notes."""
    from edgekit.export.tflite_weights import WeightsCandidate, choose, measure

    path = art.path
    cands = [WeightsCandidate("per-channel", path, path.stat().st_size, result)]
    for alt in result["alternatives"]:
        name = "per-tensor" if alt.get("per_channel") is False else "per-channel"
        if alt.get("error"):
            cands.append(WeightsCandidate(name, None, error=alt["error"]))
        else:
            alt_path = Path(alt["out"])
            cands.append(WeightsCandidate(name, alt_path, alt_path.stat().st_size, alt))
    source.log.progress("tflite: per-channel or per-tensor weights", 0.8)
    measure(cands, source.reference, art, parent_outputs=reference, tolerance=art.parity_tolerance, threads=source.threads)
    best, why = choose(cands, n_eval=source.reference.eval_data.n)
    facts = art.extra["tflite"]
    if best.path != path and best.path is not None:
        best.path.replace(path)
        facts.update(ops=best.facts.get("ops", {}), stripped=best.facts.get("stripped", {}))
    facts["weights"] = best.weights
    facts["weights_choice"] = {"chosen": best.weights, "why": why, "candidates": [c.to_dict() for c in cands]}
    source.log.say(f"tflite: weights {why}")
    return list(best.facts.get("notes", []))


def _check_static(inputs: tuple[TensorSpec, ...]) -> None:
    for s in inputs:
        dynamic = [i for i, d in enumerate(s.shape) if i > 0 and not isinstance(d, int)]
        if dynamic:
            example = ",".join(str(d) if isinstance(d, int) else ("1" if i == 0 else "?") for i, d in enumerate(s.shape))
            raise ExportError(
                f"input {s.name!r} has dynamic dims {_shape(s.shape)}; a .tflite needs fixed sizes except the batch axis. "
                f"Pass --input-shape {s.name}:{example} with the sizes filled in"
            )


def onnx2tf_ops() -> set[str] | None:
    """ONNX op types onnx2tf has a converter for (module files in ``onnx2tf/ops``), found without importing it."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        return None
    ops_dir = Path(next(iter(spec.submodule_search_locations))) / "ops"
    return {p.stem for p in ops_dir.glob("*.py") if not p.stem.startswith("_")} or None


def _check_ops(model: onnx.ModelProto) -> None:
    known = onnx2tf_ops()
    if known is None:
        return
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise ExportError(f"onnx2tf cannot convert op {op} (node {node.name or '(unnamed)'!r}), so no .tflite was written")


def _explain(err: dict[str, Any], onnx_artifact: ExportedArtifact) -> str:
    kind = err.get("kind")
    if kind == "unsupported_op":
        return f"onnx2tf cannot convert op {err.get('op_type')}, so no .tflite was written"
    if kind in ("op_failed", "quantization", "runtime"):
        return f"{err['message']}; no .tflite was written"
    if kind == "unsupported_tf_ops":
        return f"{err['message']}; no .tflite was written (edgekit builds .tflite files from builtin ops only, which LiteRT runs)"
    return f"TFLite conversion of {onnx_artifact.path.name} failed: {err['message']}"


def _tf_source(float_model: onnx.ModelProto, source_model: onnx.ModelProto) -> dict[str, str] | None:
    """The original TensorFlow model, when the float model is exactly what an importer converted from it."""
    meta = {p.key: p.value for p in float_model.metadata_props}
    path, kind = meta.get(TF_SOURCE_KEY), meta.get(TF_SOURCE_KIND_KEY)
    if not path or kind not in ("keras", "saved_model") or not Path(path).exists():
        return None
    if source_model.graph.SerializeToString() != float_model.graph.SerializeToString():
        return None  # a step changed the float model (e.g. pruning): convert what was compressed
    return {"kind": kind, "path": path}


def _reference(conv: _Conversion, ref: Reference, threads: int) -> tuple[dict[str, np.ndarray], str]:
    """Outputs of the float model the .tflite came from, over the evaluation data (the parity reference)."""
    if conv.source_model.graph.SerializeToString() == conv.float_model.graph.SerializeToString():
        return ref.ref_outputs, f"{ref.source_path.name} (float source)"
    from device_agent.runtime import OrtBackend
    from edgekit.evaluate import run_dataset

    outs = run_dataset(OrtBackend(conv.float_path, threads=threads), ref.eval_data, ref.inputs)
    return outs, "float model before quantization"


def _int8_tolerance(onnx_artifact: ExportedArtifact, reference: dict[str, np.ndarray], ref: Reference, threads: int) -> float | None:
    """How far an int8 .tflite may be from the float model: 1.5x as far as the int8 .onnx, which passed the int8 step.

    TFLite quantizes the float model with its own calibrator, so it is checked against the float model, not
    the int8 .onnx; the fixed int8 tolerance alone would fail models whose accepted int8 .onnx is as far off
    (small logit margins). A broken conversion (a wrong layout, a lost op) is still far outside this bound.
    """
    if onnx_artifact.precision not in ("int8", "mixed"):
        return None
    from device_agent.runtime import OrtBackend
    from edgekit.evaluate import run_dataset

    outs = run_dataset(OrtBackend(onnx_artifact.path, onnx_artifact.record(), threads=threads), ref.eval_data, ref.inputs)
    err = max(float(np.abs(reference[k].astype(np.float64) - outs[k].astype(np.float64)).max(initial=0.0)) for k in reference)
    return 1.5 * err


def _spec_doc(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "layout": s.layout}


def _spec(d: dict[str, Any], quantized_io: bool) -> TensorSpec:
    dtype = "int8" if quantized_io and d["dtype"] == "float32" else d["dtype"]
    return TensorSpec(d["name"], dtype, tuple(d["shape"]), d.get("layout"), tuple(d["perm"]) if d.get("perm") else None)


def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool (allow_pickle)
    return path


def _layouts(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name} {s.layout or _shape(s.shape)}" for s in specs)


def _shape(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
