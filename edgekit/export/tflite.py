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

A full-integer int8 conversion is never slower than the float .tflite by construction: LiteRT's
XNNPACK delegate lacks int8 kernels for some ops (HARD_SWISH, DIV, SQRT, AVERAGE_POOL_2D, ...), and on
a CPU without int8 dot products its int8 convolutions gain nothing. Ops with an exact int8-friendly form
are rewritten first (:mod:`edgekit.export.tflite_plan`, :mod:`edgekit.export.tflite_prep`); then the
model is calibrated once and quantized in variants that keep ops float, each checked for parity and
timed against the float .tflite, and ``TfliteConfig.objective`` picks one
(:mod:`edgekit.export.tflite_search`, :mod:`edgekit.export.tflite_select`). ``extra["tflite"]["int8_search"]``
records every variant, which ops stayed float and why; ``search=False`` ships the whole-model conversion.

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

from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import TensorSpec
from edgekit.choices import Format, Precision
from edgekit.export.base import ExportSource, exporter
from edgekit.export.config import TfliteConfig, TfliteIO
from edgekit.export.tflite_plan import (
    QUANTIZATION,
    SAMPLE_COUNT,
    TF_SOURCE_KEY,
    TF_SOURCE_KIND_KEY,
    Conversion,
    judge_files,
    onnx2tf_ops,
    plan,
    shape_text,
    tflite_mode,
)
from edgekit.export.tflite_plan import job as make_job
from edgekit.reference import Reference
from edgekit.results import ExportedArtifact
from edgekit.tf_process import require, run_worker

__all__ = ["SAMPLE_COUNT", "TF_SOURCE_KEY", "TF_SOURCE_KIND_KEY", "check_available", "export_tflite", "onnx2tf_ops", "tflite_mode"]


def check_available() -> None:
    """Raise ``MissingExtraError`` (pip install 'edgekit[tflite]') unless the TFLite toolchain is installed."""
    require(("tensorflow", "tf_keras", "onnx2tf", "onnx_graphsurgeon", "ai_edge_litert"), "TFLite export", "tflite")


@exporter(Format.TFLITE, TfliteConfig)
def export_tflite(source: ExportSource, out_dir: Path, stem: str, config: TfliteConfig) -> list[ExportedArtifact]:
    """Write ``<stem>.tflite`` for the ``.onnx`` artifact (converted from the float model) and describe it.

    ``config.per_channel`` (full-integer int8 only): True/False forces per-channel/per-tensor weight scales;
    None converts both and ships the smaller one if it is as accurate and as fast
    (:mod:`edgekit.export.tflite_weights`). ``config.search`` (full-integer int8, default): ops slower or
    too inaccurate in int8 stay float, measured against the float .tflite, and ``config.objective``
    picks the variant (:mod:`edgekit.export.tflite_search`).

    Raises ``MissingExtraError`` without the tflite extra and ``ExportError`` naming the op, the
    input or TensorFlow's own message when the conversion cannot be done.
    """
    check_available()
    onnx_artifact = source.parent(Format.TFLITE)
    conv = plan(source, onnx_artifact.precision, config)
    reference, label = _reference(conv, source.reference, source.threads)
    tolerance = _int8_tolerance(onnx_artifact, reference, source.reference, source.threads) if conv.mode in ("int8", "dynamic") else None
    judge = judge_files(conv, source.reference, reference, tolerance) if conv.mode == "int8" and config.search else None
    job = make_job(conv, source.reference, out_dir / f"{stem}.tflite", stem, config, judge=judge, threads=source.threads)
    source.log.progress(f"tflite: converting to {QUANTIZATION[conv.mode]}", 0.1)
    result = run_worker("edgekit.export.tflite_worker", job, conv.work / "job", what=f"TFLite conversion of {onnx_artifact.path.name}",
                        on_error=lambda err: _explain(err, onnx_artifact), progress=source.log.progress)
    art = _describe(Path(job["out"]), result, conv, source, onnx_artifact, config)
    return [_finish(art, result, source, reference, label, tolerance)]


def _describe(path: Path, result: dict[str, Any], conv: Conversion, source: ExportSource, onnx_artifact: ExportedArtifact,
              config: TfliteConfig) -> ExportedArtifact:
    """The artifact record (before parity facts): its signature in its own layout and what the conversion did."""
    ref, mode = source.reference, conv.mode
    search = result.get("int8_search")
    if search:
        precision = Precision(search["precision"])
    elif mode in ("int8", "dynamic"):  # a whole-model conversion quantizes every layer it can, whatever the ONNX int8 kept float
        precision = Precision.INT8
    else:
        precision = onnx_artifact.precision
    shipped_float = bool(search) and precision == Precision.FP32  # the search shipped the float .tflite: float I/O
    io = TfliteIO.FLOAT if shipped_float else conv.io
    quantized_io = io == TfliteIO.INT8
    calib_n = min(config.calib_samples, ref.calib_data.n) if mode == "int8" and ref.calib_data is not None else 0
    quantization = QUANTIZATION[mode]
    if search and precision == Precision.FP32:
        quantization = "none (every layer float: see int8_search)"
    elif search and precision == Precision.MIXED:
        quantization = "full-integer int8, some layers float"
    extra: dict[str, Any] = {
        "tflite": {
            "quantization": quantization,
            "io": str(io),
            "weights": ("per-tensor" if config.per_channel is False else "per-channel") if mode == "int8" and not shipped_float else None,
            "converter": "TFLiteConverter (from the TensorFlow source)" if conv.tf_source else "onnx2tf + TFLiteConverter",
            "calibration_samples": calib_n,
            "ops": result.get("ops", {}),
            "stripped": result.get("stripped", {}),
            "onnx_rewrites": conv.rewrites,
            "versions": result.get("versions", {}),
        },
        "tflite_names": result["tflite_names"],
    }
    if search:
        extra["tflite"]["int8_search"] = search
    return ExportedArtifact(path, Format.TFLITE, precision, tuple(_spec(d, quantized_io) for d in result["inputs"]),
                            tuple(_spec(d, quantized_io) for d in result["outputs"]), extra=extra)


def _finish(art: ExportedArtifact, result: dict[str, Any], source: ExportSource, reference: dict[str, np.ndarray], label: str,
            tolerance: float | None) -> ExportedArtifact:
    """The record with its parity reference; the weights choice made; what happened said."""
    from dataclasses import replace

    art = replace(art, parent=label, reference_outputs=reference, parity_tolerance=tolerance)
    notes = result.get("notes", [])
    if result.get("alternatives"):
        notes = _choose_weights(art, result, source, reference)
    for note in notes:
        source.log.note(f"{art.path.name}: {note}")
    search = art.extra["tflite"].get("int8_search")
    if search:
        floats = len(search["float_layers"])
        source.log.say(f"tflite: int8 search ({search['objective']}): {search['why']}"
                       + (f"; {floats} op(s) float" if floats else "") + f" [{search['seconds']:.0f} s]")
        if search.get("note"):
            source.log.note(f"{art.path.name}: {search['note']}", shown=f"tflite: {search['note']}")
    facts = art.extra["tflite"]
    weights = f", {facts['weights']} weights" if facts["weights"] else ""
    source.log.say(f"tflite: wrote {art.path.name} ({facts['quantization']}{weights}, {facts['io']} I/O, layout {_layouts(art.inputs)})")
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





def _explain(err: dict[str, Any], onnx_artifact: ExportedArtifact) -> str:
    kind = err.get("kind")
    if kind == "unsupported_op":
        return f"onnx2tf cannot convert op {err.get('op_type')}, so no .tflite was written"
    if kind in ("op_failed", "quantization", "runtime"):
        return f"{err['message']}; no .tflite was written"
    if kind == "unsupported_tf_ops":
        return f"{err['message']}; no .tflite was written (edgekit builds .tflite files from builtin ops only, which LiteRT runs)"
    return f"TFLite conversion of {onnx_artifact.path.name} failed: {err['message']}"



def _reference(conv: Conversion, ref: Reference, threads: int) -> tuple[dict[str, np.ndarray], str]:
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



def _spec(d: dict[str, Any], quantized_io: bool) -> TensorSpec:
    dtype = "int8" if quantized_io and d["dtype"] == "float32" else d["dtype"]
    return TensorSpec(d["name"], dtype, tuple(d["shape"]), d.get("layout"), tuple(d["perm"]) if d.get("perm") else None)



def _layouts(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name} {s.layout or shape_text(s.shape)}" for s in specs)
