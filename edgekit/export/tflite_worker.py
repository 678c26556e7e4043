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

Result: the artifact-layout signature (``perm`` per tensor), the signature names inside the
.tflite, the quantization each I/O tensor got, the op histogram, what stripping removed and notes.

ONNX → TF goes through onnx2tf, which returns a Keras model (NHWC inside). onnx2tf fetches sample
images from GitHub when every input is a fixed-batch 3-channel image; :func:`_offline_onnx2tf`
hands it the job's own samples instead, so conversion never touches the network.
TF → TFLite goes through ``tf.lite.TFLiteConverter`` on a ``tf.function`` whose signature carries
the source's input and output names (LiteRT then finds tensors by name, not by position).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

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
        model = _onnx_to_keras(Path(src["path"]), job, sample, workdir)
    else:
        model = _load_tf(src)
    in_perms = _input_perms(model, job["inputs"], onnx2tf_made=src["kind"] == "onnx")
    fn, names = _serving_function(tf, model, job, in_perms)
    report_progress(workdir, f"tflite: converting ({job['mode']})", 0.5)
    calib = _load_npz(job["calib"]) if job.get("calib") else None
    saved = _save_serving(tf, fn, model, workdir / "serving")
    blob, notes = _convert(tf, saved, job, calib, in_perms, names["inputs"])
    _smoke_check(blob)  # on the converter's file: its errors name tensors, which stripping drops
    feeds = _signature_feeds(job, sample, in_perms, names["inputs"])
    blob, stripped = _strip(blob, feeds, job, notes)
    out = Path(job["out"])
    out.write_bytes(blob)
    alternatives = []
    for i, alt in enumerate(job.get("alternatives") or []):
        report_progress(workdir, f"tflite: converting the alternative ({', '.join(f'{k}={v}' for k, v in alt.items() if k != 'out')})",
                        0.6 + 0.2 * i / len(job["alternatives"]))
        alternatives.append(_alternative(tf, saved, job, alt, calib, in_perms, names["inputs"], feeds))
    report_progress(workdir, "tflite: checking layout", 0.9)
    out_perms = _output_perms(tf, fn, job, sample, in_perms, names)
    return {
        "inputs": [_spec(s, in_perms[s["name"]]) for s in job["inputs"]],
        "outputs": [_spec(s, out_perms[s["name"]]) for s in job["outputs"]],
        "tflite_names": names,
        "ops": _op_histogram(blob),
        "stripped": stripped,
        "notes": notes,
        "alternatives": alternatives,
        "versions": _versions(),
    }


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


# ---------------------------------------------------------------- ONNX → Keras (onnx2tf), offline


def _onnx_to_keras(path: Path, job: dict, sample: dict[str, np.ndarray], workdir: Path):
    import onnx2tf

    _offline_onnx2tf(sample, job)
    try:
        # disable_model_save: onnx2tf only builds the Keras model; edgekit writes the .tflite itself
        model = onnx2tf.convert(input_onnx_file_path=str(path), output_folder_path=str(workdir / "onnx2tf"),
                                disable_model_save=True, non_verbose=True)
    except SystemExit:
        raise _onnx2tf_failure(workdir) from None
    except Exception as e:  # noqa: BLE001
        raise _onnx2tf_failure(workdir, e) from None
    if model is None:
        raise _onnx2tf_failure(workdir)
    return model


def _offline_onnx2tf(sample: dict[str, np.ndarray], job: dict) -> None:
    """Make onnx2tf's test-image download return the job's own data (NHWC), never the internet.

    onnx2tf calls ``download_test_image_data()`` when every input is a 4-D, 3-channel, fixed-batch
    tensor, and resizes what it returns to the model's input size for its shape estimation.
    """
    import onnx2tf.onnx2tf as o2t
    import onnx2tf.utils.common_functions as cf

    images = [sample[s["name"]] for s in job["inputs"] if s["name"] in sample and sample[s["name"]].ndim == 4]
    if images and images[0].shape[1] == 3:
        data = np.ascontiguousarray(images[0].transpose(0, 2, 3, 1), dtype=np.float32)
    else:
        data = np.zeros((1, 8, 8, 3), np.float32)
    reps = -(-20 // len(data))
    data = np.concatenate([data] * reps)[:20]

    def offline_test_data() -> np.ndarray:
        return data

    o2t.download_test_image_data = offline_test_data
    cf.download_test_image_data = offline_test_data


_OP_LINE = re.compile(r"onnx_op_type:\s*(\S+)\s+onnx_op_name:\s*(\S+)")
_NOT_IMPLEMENTED = re.compile(r"(\w+) OP is not yet implemented")


def _onnx2tf_failure(workdir: Path, exc: BaseException | None = None) -> WorkerError:
    log = _strip_ansi((workdir / "worker.log").read_text(errors="replace")) if (workdir / "worker.log").exists() else ""
    m = _NOT_IMPLEMENTED.search(log)
    if m:
        return WorkerError("unsupported_op", f"onnx2tf has no converter for op {m.group(1)}", op_type=m.group(1))
    ops = _OP_LINE.findall(log)
    if ops:
        op_type, node = ops[-1]
        return WorkerError("op_failed", f"onnx2tf could not convert node {node!r} ({op_type})"
                           + (f": {_first_line(exc)}" if exc else ""), op_type=op_type, node=node)
    detail = _first_line(exc) if exc else next((ln for ln in reversed(log.splitlines()) if "ERROR" in ln), "no error message")
    return WorkerError("onnx2tf", f"onnx2tf failed: {detail.strip()[:300]}")


# ---------------------------------------------------------------- Keras / SavedModel sources


def _load_tf(src: dict):
    if src["kind"] == "keras":
        import keras

        return keras.saving.load_model(src["path"], compile=False)
    import tensorflow as tf

    return _SavedModelCallable(tf.saved_model.load(src["path"]), src.get("signature") or "serving_default")


class _SavedModelCallable:
    """A SavedModel signature called with positional inputs, answering a list of outputs."""

    def __init__(self, loaded, key: str) -> None:
        self.loaded = loaded
        self.fn = loaded.signatures[key]
        self.in_names = [t.name for t in self.fn.structured_input_signature[1].values()]
        self.in_keys = list(self.fn.structured_input_signature[1].keys())
        self.inputs = list(self.fn.structured_input_signature[1].values())
        self.out_keys = sorted(self.fn.structured_outputs)

    def __call__(self, xs):
        xs = xs if isinstance(xs, (list, tuple)) else [xs]
        res = self.fn(**dict(zip(self.in_keys, xs, strict=False)))
        return [res[k] for k in self.out_keys]


# ---------------------------------------------------------------- layout


def _tf_input_shapes(model) -> list[list]:
    return [[None if d is None else int(d) for d in t.shape] for t in model.inputs]


def _candidates(rank: int) -> list[tuple[int, ...] | None]:
    """Identity, and channel-last (NCHW → NHWC and its 3-D/5-D kin) for ranks 3-5."""
    out: list[tuple[int, ...] | None] = [None]
    if 3 <= rank <= 5:
        out.append((0, *range(2, rank), 1))
    return out


def _fits(src_shape: list, art_shape: list, perm: tuple[int, ...] | None) -> bool:
    if len(src_shape) != len(art_shape):
        return False
    order = perm or tuple(range(len(src_shape)))
    for i, p in enumerate(order):
        a, s = art_shape[i], src_shape[p]
        if isinstance(a, int) and a >= 0 and isinstance(s, int) and s != a:
            return False
    return True


def _input_perms(model, inputs: list[dict], *, onnx2tf_made: bool) -> dict[str, tuple[int, ...] | None]:
    shapes = _tf_input_shapes(model)
    if len(shapes) != len(inputs):
        raise WorkerError("signature", f"the TensorFlow model has {len(shapes)} inputs; the source has {len(inputs)}")
    perms = {}
    for s, shape in zip(inputs, shapes, strict=False):
        fit = [p for p in _candidates(len(s["shape"])) if _fits(s["shape"], shape, p)]
        if not fit:
            raise WorkerError("signature", f"input {s['name']!r}: TensorFlow shape {shape} does not match the source {s['shape']} in any layout")
        # both fit only when the dims are equal (e.g. [1, 8, 8, 8]); onnx2tf always makes 3-5-D inputs channel-last
        perms[s["name"]] = fit[-1] if len(fit) > 1 and onnx2tf_made else fit[0]
    return perms


def _output_perms(tf, fn, job: dict, sample: dict[str, np.ndarray], in_perms: dict, names: dict) -> dict[str, tuple[int, ...] | None]:
    """Each output's perm: by shape, and where shapes cannot tell, by comparing values with the ONNX model."""
    feeds = [_as_tf_input(_one_request(sample[s["name"]], s), in_perms[s["name"]]) for s in job["inputs"]]
    tf_out = {k: np.asarray(v) for k, v in fn(*[tf.constant(x) for x in feeds]).items()}
    ref = None
    perms = {}
    for s in job["outputs"]:
        y = tf_out[names["outputs"][s["name"]]]
        fit = [p for p in _candidates(len(s["shape"])) if _fits(s["shape"], list(y.shape), p)]
        if not fit:
            raise WorkerError("signature", f"output {s['name']!r}: TensorFlow gives shape {list(y.shape)}; the source has {s['shape']}")
        if len(fit) > 1 and job["source"]["kind"] == "onnx":
            ref = ref if ref is not None else _onnx_reference(job, sample)
            r = ref[s["name"]]
            errs = [float(np.abs(np.transpose(r, p) - y).max()) if p else float(np.abs(r - y).max()) for p in fit]
            fit = [fit[int(np.argmin(errs))]]
        perms[s["name"]] = fit[0]
    return perms


def _onnx_reference(job: dict, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(job["source"]["path"], providers=["CPUExecutionProvider"])
    feeds = {s["name"]: _one_request(sample[s["name"]], s) for s in job["inputs"]}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=False))


def _one_request(x: np.ndarray, s: dict) -> np.ndarray:
    """Samples for one call: the fixed batch (repeating samples if there are fewer), else one."""
    b = s["shape"][0] if _fixed_batch(s) else 1
    return x[np.arange(b) % len(x)]


def _fixed_batch(s: dict) -> bool:
    return bool(s["shape"]) and isinstance(s["shape"][0], int)


def _as_tf_input(x: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, perm)) if perm else x


def _spec(s: dict, perm: tuple[int, ...] | None) -> dict:
    shape = [s["shape"][p] for p in perm] if perm else list(s["shape"])
    layout = None
    if perm and len(shape) == 4:
        layout = "NHWC"
    elif not perm and len(shape) == 4:
        layout = s.get("layout")
    return {"name": s["name"], "dtype": s["dtype"], "shape": shape, "layout": layout, "perm": list(perm) if perm else None}


# ---------------------------------------------------------------- Keras → TFLite


def _sig_name(name: str, taken: set[str]) -> str:
    """A TF-safe signature name for a source tensor name (``input.1`` → ``input_1``)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "t"
    base = base if base[0].isalpha() else f"t_{base}"
    out, i = base, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


def _serving_function(tf, model, job: dict, in_perms: dict):
    taken: set[str] = set()
    in_sig = [_sig_name(s["name"], taken) for s in job["inputs"]]
    out_sig = [_sig_name(s["name"], taken) for s in job["outputs"]]
    specs = []
    for s, name, t in zip(job["inputs"], in_sig, model.inputs, strict=False):
        # the source's (static) sizes in the artifact's layout; only a symbolic batch axis stays dynamic
        shape = _spec(s, in_perms[s["name"]])["shape"]
        specs.append(tf.TensorSpec([d if isinstance(d, int) else None for d in shape], t.dtype, name=name))

    def call(*xs):
        ys = model(list(xs)) if len(xs) > 1 else model(xs[0])
        ys = list(ys.values()) if isinstance(ys, dict) else (list(ys) if isinstance(ys, (list, tuple)) else [ys])
        if len(ys) != len(out_sig):
            raise WorkerError("signature", f"the TensorFlow model returns {len(ys)} outputs; the source has {len(out_sig)}")
        return dict(zip(out_sig, ys, strict=False))

    fn = tf.function(call, input_signature=specs)
    names = {"inputs": dict(zip([s["name"] for s in job["inputs"]], in_sig, strict=False)),
             "outputs": dict(zip([s["name"] for s in job["outputs"]], out_sig, strict=False))}
    return fn, names


def _save_serving(tf, fn, model, path: Path) -> str:
    """The serving function as a SavedModel: TFLiteConverter's best-supported input, whatever holds the variables."""
    try:
        archive_cls = _export_archive(model)
        if archive_cls is not None:
            # Keras' own exporter tracks Keras variables the way TFLiteConverter can freeze them (a bare
            # tf.Module around a Keras 3 model leaves READ_VARIABLE ops that break int8 calibration)
            archive = archive_cls()
            archive.track(model)
            archive.add_endpoint("serving_default", fn)
            archive.write_out(str(path))
        else:
            module = tf.Module()
            module.weights_owner = getattr(model, "loaded", model)  # tracked, so its variables are saved
            module.serve = fn
            tf.saved_model.save(module, str(path), signatures={"serving_default": fn.get_concrete_function()})
    except Exception as e:  # noqa: BLE001
        raise WorkerError("saved_model", f"saving the TensorFlow model failed: {type(e).__name__}: {_first_line(e)}") from None
    return str(path)


def _export_archive(model):
    """``ExportArchive`` of the Keras that built ``model`` (tf_keras for onnx2tf, Keras 3 for .keras files), if any."""
    for module in ("tf_keras", "keras"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        if isinstance(model, mod.Model):
            return mod.export.ExportArchive
    return None


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
            notes.append(f"some ops have no int8 kernel and stay float in the .tflite ({_first_line(e)[:160]})")
        builtins = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return _run_converter(converter(builtins)), notes


_TF_OPS = re.compile(r"tf\.(\w+)")


def _run_converter(c) -> bytes:
    try:
        return c.convert()
    except Exception as e:  # noqa: BLE001 - ConverterError and friends
        text = _strip_ansi(str(e))
        if "not supported by" in text or "Select TF ops" in text or "Flex" in text:
            ops = sorted(set(_TF_OPS.findall(text)))
            raise WorkerError("unsupported_tf_ops", "TFLite has no builtin kernel for TensorFlow op(s) "
                              + (", ".join(ops) if ops else "(unnamed)"), ops=ops) from None
        raise WorkerError("converter", f"TFLiteConverter failed: {_first_line(e)}") from None


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
                b = s["shape"][0] if _fixed_batch(s) else 1
                part = x[np.arange(i, i + b) % len(x)]
                sample[sig_names[s["name"]]] = _as_tf_input(part, in_perms[s["name"]]).astype(s["dtype"])
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
        raise WorkerError("runtime", f"LiteRT cannot run the converted model: {_first_line(e)}") from None


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
    return {sig_names[s["name"]]: _as_tf_input(_one_request(sample[s["name"]], s), in_perms[s["name"]]).astype(s["dtype"])
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _first_line(e: BaseException | None) -> str:
    if e is None:
        return ""
    lines = [ln for ln in _strip_ansi(str(e)).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


if __name__ == "__main__":
    sys.exit(worker_main(run))
