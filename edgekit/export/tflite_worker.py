"""The TensorFlow side of the ``.tflite`` export. Runs in a child process (``edgekit.tf_process``).

Job (``job.json``, written by :mod:`edgekit.export.tflite`)::

    source      {"kind": "onnx", "path": float .onnx} | {"kind": "keras"|"saved_model", "path": ...}
    out         where to write the .tflite
    mode        fp32 | fp16 | dynamic | int8      (int8 = full-integer, calibrated on ``calib``)
    io          float | int8                      (int8: the model takes/returns int8 tensors)
    inputs, outputs   the source signature [{name, dtype, shape}] (source layout, ONNX names)
    calib       .npz of source-layout arrays named after the inputs (int8), or null
    sample      .npz of a few source-layout samples: onnx2tf's shape-estimation data, layout check
    strip       true (default) | false            drop what LiteRT does not read (tensor names, ...)
    per_channel true (default) | false            int8: one weight scale per channel, or per tensor
    alternatives [{"out": path, option: value}]   the same model converted again with other options
                                                  (e.g. per_channel false), for the caller to choose from
    pseudo_ops  ["hardswish"] | []                ONNX ops onnx2tf writes as elementwise ops (int8: see tflite_prep)
    judge       what the int8 search measures variants with (:mod:`edgekit.export.tflite_measure`); with it,
                int8 keeps float the ops that are slower or too inaccurate in int8 (:mod:`edgekit.export.tflite_search`)
    baseline    {"path": float .onnx}: the float .tflite the search times int8 against, when ``source`` was rewritten
    objective, threads                            which variant ships (:mod:`edgekit.export.tflite_select`); LiteRT threads

Result: the artifact-layout signature (``perm`` per tensor), the signature names inside the
.tflite, the quantization each I/O tensor got, the op histogram, what stripping removed, notes,
and for a searched int8 conversion ``int8_search`` (the variants, the choice and why).

ONNX → TF goes through onnx2tf, which returns a Keras model (NHWC inside); the TensorFlow model
handling (offline onnx2tf, layouts, the serving signature) is :mod:`edgekit.export.tflite_keras`.
TF → TFLite goes through ``tf.lite.TFLiteConverter`` on a ``tf.function`` whose signature carries
the source's input and output names (LiteRT then finds tensors by name, not by position).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.export.tflite_keras import (
    artifact_spec,
    as_tf_input,
    first_line,
    fixed_batch,
    input_perms,
    load_tf,
    one_request,
    onnx_to_keras,
    output_perms,
    save_serving,
    serving_function,
    strip_ansi,
)
from edgekit.tf_process import WorkerError, report_progress, worker_main

MODES = ("fp32", "fp16", "dynamic", "int8")


def run(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    report_progress(workdir, "tflite: loading TensorFlow", 0.05)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    sample = _load_npz(job["sample"])
    src = job["source"]
    if src["kind"] == "onnx":
        report_progress(workdir, "tflite: ONNX → TensorFlow (onnx2tf)", 0.15)
        model = onnx_to_keras(Path(src["path"]), job, sample, workdir, pseudo_ops=tuple(job.get("pseudo_ops") or ()))
    else:
        model = load_tf(src)
    in_perms = input_perms(model, job["inputs"], onnx2tf_made=src["kind"] == "onnx", keep=job.get("keep_inputs") or ())
    fn, names = serving_function(tf, model, job, in_perms)
    report_progress(workdir, "tflite: checking layout", 0.3)
    out_perms = output_perms(tf, fn, job, sample, in_perms, names)
    calib = _load_npz(job["calib"]) if job.get("calib") else None
    saved = save_serving(tf, fn, model, workdir / "serving")
    feeds = _signature_feeds(job, sample, in_perms, names["inputs"])
    search = None
    if job["mode"] == "int8" and job.get("judge"):
        blob, notes, search, alternatives = _searched(tf, saved, job, sample, calib, in_perms, out_perms, names, workdir)
    else:
        report_progress(workdir, f"tflite: converting ({job['mode']})", 0.5)
        blob, notes = _convert(tf, saved, job, calib, in_perms, names["inputs"])
    _smoke_check(blob)  # on the converter's file: its errors name tensors, which stripping drops
    blob, stripped = _strip(blob, feeds, job, notes)
    Path(job["out"]).write_bytes(blob)
    if search is not None:
        alternatives = [_finish_alternative(alt, feeds, job) for alt in alternatives]
    else:
        alternatives = []
        for i, alt in enumerate(job.get("alternatives") or []):
            report_progress(workdir, f"tflite: converting the alternative ({', '.join(f'{k}={v}' for k, v in alt.items() if k != 'out')})",
                            0.6 + 0.2 * i / len(job["alternatives"]))
            alternatives.append(_alternative(tf, saved, job, alt, calib, in_perms, names["inputs"], feeds))
    return {
        "inputs": [artifact_spec(s, in_perms[s["name"]]) for s in job["inputs"]],
        "outputs": [artifact_spec(s, out_perms[s["name"]]) for s in job["outputs"]],
        "tflite_names": names,
        "ops": _op_histogram(blob),
        "stripped": stripped,
        "notes": notes,
        "alternatives": alternatives,
        "int8_search": search,
        "versions": _versions(),
    }


def _searched(tf, saved: str, job: dict, sample: dict, calib, in_perms: dict, out_perms: dict, names: dict,
              workdir: Path) -> tuple[bytes, list[str], dict[str, Any], list[dict[str, Any]]]:
    """The int8 variant the search chooses (:mod:`edgekit.export.tflite_int8`), its facts and its per-tensor alternatives."""
    from edgekit.export.tflite_int8 import baseline_float, run_int8

    report_progress(workdir, "tflite: converting the float .tflite to time int8 against", 0.4)
    float_path = baseline_float(tf, job, saved, sample, in_perms=in_perms, workdir=workdir,
                                convert_fp32=lambda path: _convert(tf, path, {**job, "mode": "fp32"}, None, in_perms, names["inputs"])[0])
    gen = _representative(job, calib, in_perms, names["inputs"])
    return run_int8(tf, saved, job, gen=gen, names=names, in_perms=in_perms, out_perms=out_perms, float_path=float_path,
                    workdir=workdir, progress=lambda m, f: report_progress(workdir, m, f))


def _finish_alternative(alt: dict, feeds: dict, job: dict) -> dict[str, Any]:
    """An alternative the search quantized (bytes in ``alt["blob"]``): checked, stripped and written to ``alt["out"]``."""
    options = {k: v for k, v in alt.items() if k not in ("out", "blob", "error")}
    if alt.get("error"):
        return {**options, "error": alt["error"]}
    notes: list[str] = []
    try:
        _smoke_check(alt["blob"])
        blob, stripped = _strip(alt["blob"], feeds, job, notes)
    except WorkerError as e:
        return {**options, "error": str(e)}
    Path(alt["out"]).write_bytes(blob)
    return {**options, "out": alt["out"], "ops": _op_histogram(blob), "stripped": stripped, "notes": notes}


def _alternative(tf, saved: str, job: dict, alt: dict, calib, in_perms: dict, sig_names: dict, feeds: dict) -> dict[str, Any]:
    """Convert the same SavedModel again with ``alt``'s options (e.g. ``per_channel: false``) to ``alt["out"]``.

    Same graph, same signature and layout as the main .tflite: only the quantization differs. A
    conversion that fails is reported (``error``), not fatal: the main .tflite stands.
    """
    options = {k: v for k, v in alt.items() if k != "out"}
    notes: list[str] = []
    try:
        blob, notes = _convert(tf, saved, {**job, **options}, calib, in_perms, sig_names)
        _smoke_check(blob)
        blob, stripped = _strip(blob, feeds, job, notes)
    except WorkerError as e:
        return {**options, "error": str(e)}
    Path(alt["out"]).write_bytes(blob)
    return {**options, "out": alt["out"], "ops": _op_histogram(blob), "stripped": stripped, "notes": notes}


def _convert(tf, saved: str, job: dict, calib: dict[str, np.ndarray] | None, in_perms: dict,
             sig_names: dict[str, str]) -> tuple[bytes, list[str]]:
    mode, io = job["mode"], job.get("io", "float")
    if mode not in MODES:
        raise WorkerError("config", f"unknown TFLite mode {mode!r}; known: {', '.join(MODES)}")
    notes: list[str] = []

    def converter(ops):
        c = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
        c.target_spec.supported_ops = ops
        if mode == "fp16":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.target_spec.supported_types = [tf.float16]
        elif mode == "dynamic":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
        elif mode == "int8":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = _representative(job, calib, in_perms, sig_names)
            # one scale per weight tensor saves 24 bytes a channel (weight + bias) but may lose accuracy (depthwise convs most)
            c._experimental_disable_per_channel = not job.get("per_channel", True)  # noqa: SLF001 - TF's only switch for it
            if io == "int8":
                c.inference_input_type = tf.int8
                c.inference_output_type = tf.int8
        return c

    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode == "int8":
        try:
            return _run_converter(converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8])), notes
        except WorkerError as e:
            if e.kind != "unsupported_tf_ops" and "quantiz" not in str(e).lower():
                raise
            notes.append(f"some ops have no int8 kernel and stay float in the .tflite ({first_line(e)[:160]})")
        builtins = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return _run_converter(converter(builtins)), notes


_TF_OPS = re.compile(r"tf\.(\w+)")


def _run_converter(c) -> bytes:
    try:
        return c.convert()
    except Exception as e:  # noqa: BLE001 - ConverterError and friends
        text = strip_ansi(str(e))
        if "not supported by" in text or "Select TF ops" in text or "Flex" in text:
            ops = sorted(set(_TF_OPS.findall(text)))
            raise WorkerError("unsupported_tf_ops", "TFLite has no builtin kernel for TensorFlow op(s) "
                              + (", ".join(ops) if ops else "(unnamed)"), ops=ops) from None
        raise WorkerError("converter", f"TFLiteConverter failed: {first_line(e)}") from None


def _representative(job: dict, calib: dict[str, np.ndarray] | None, in_perms: dict, sig_names: dict[str, str]):
    if not calib:
        raise WorkerError("config", "full-integer int8 needs calibration data")
    n = min(len(next(iter(calib.values()))), int(job.get("calib_samples") or 256))

    def gen():
        # keyed by signature input name: a list would be matched to inputs in an order TF chooses
        for i in range(n):
            sample = {}
            for s in job["inputs"]:
                x = calib[s["name"]]
                b = s["shape"][0] if fixed_batch(s) else 1
                part = x[np.arange(i, i + b) % len(x)]
                sample[sig_names[s["name"]]] = as_tf_input(part, in_perms[s["name"]]).astype(s["dtype"])
            yield sample

    return gen


def _smoke_check(blob: bytes) -> None:
    """Load and run the .tflite here, with LiteRT's default (XNNPACK) delegate as on the device.

    A model the runtime rejects, or that aborts it, fails in this child process with a clear message
    instead of in edgekit's (or the device agent's) own process.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob)
    for t in it.get_tensor_details():
        scales = np.asarray((t.get("quantization_parameters") or {}).get("scales", []), dtype=np.float64)
        if scales.size and (not np.all(np.isfinite(scales)) or scales.max() > 1e10):
            raise WorkerError("quantization", f"int8 calibration gave tensor {t['name']!r} a degenerate scale ({scales.max():.3g}); "
                              "its calibration range is not finite (often a padding or masking constant such as -inf)")
    try:
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
        it.invoke()
    except (RuntimeError, ValueError) as e:
        raise WorkerError("runtime", f"LiteRT cannot run the converted model: {first_line(e)}") from None

# ---------------------------------------------------------------- stripping


def _strip(blob: bytes, feeds: dict[str, np.ndarray], job: dict, notes: list[str]) -> tuple[bytes, dict[str, Any]]:
    """The .tflite without what LiteRT does not read (:mod:`edgekit.export.tflite_strip`), proven to compute the same.

    A stripped model whose outputs differ in any bit from the converter's is not shipped: the
    converter's file is, with a note.
    """
    if not job.get("strip", True):
        return blob, {"converter_bytes": len(blob), "bytes": len(blob), "removed": {}}
    from edgekit.export.tflite_strip import strip_tflite

    stripped, facts = strip_tflite(blob)
    if stripped is blob:
        return blob, facts
    before, after = _signature_outputs(blob, feeds), _signature_outputs(stripped, feeds)
    differ = sorted(k for k in before if before[k].tobytes() != after.get(k, np.empty(0)).tobytes())
    if differ or before.keys() != after.keys():
        notes.append(f"kept the converter's .tflite unstripped: output(s) {', '.join(differ) or 'names'} changed when "
                     "tensor names were dropped")
        return blob, {"converter_bytes": len(blob), "bytes": len(blob), "removed": {}}
    return stripped, facts


def _signature_feeds(job: dict, sample: dict[str, np.ndarray], in_perms: dict, sig_names: dict[str, str]) -> dict[str, np.ndarray]:
    """One request of real samples in the artifact's layout, keyed by signature name (float; quantized per model)."""
    return {sig_names[s["name"]]: as_tf_input(one_request(sample[s["name"]], s), in_perms[s["name"]]).astype(s["dtype"])
            for s in job["inputs"]}


def _signature_outputs(blob: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob, num_threads=1)
    runner = it.get_signature_runner("serving_default")
    details = runner.get_input_details()
    return runner(**{k: _as_input(x, details[k]) for k, x in feeds.items()})


def _as_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as the input takes it: quantized with the tensor's own scale for int8 I/O models."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind == "f" or not scale:  # float, or an integer input that is not quantized (ids, indices)
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


# ---------------------------------------------------------------- facts


def _op_histogram(blob: bytes) -> dict[str, int]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=blob)
        counts: dict[str, int] = {}
        for op in it._get_ops_details():  # noqa: SLF001 - the only way to list ops without a flatbuffer parser
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
        return dict(sorted(counts.items()))
    except Exception:  # noqa: BLE001 - informational only
        return {}


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("tensorflow", "onnx2tf", "tf-keras", "ai-edge-litert", "tf2onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _load_npz(path: str | None) -> dict[str, np.ndarray]:
    if not path:
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


if __name__ == "__main__":
    sys.exit(worker_main(run))
