"""The TensorFlow model behind a ``.tflite``: ONNX → Keras (onnx2tf, offline), Keras / SavedModel sources,
the artifact layout of every input and output, and the serving signature TFLiteConverter converts.

Runs inside the TFLite worker process (:mod:`edgekit.export.tflite_worker`), never in edgekit's own.
onnx2tf fetches sample images from GitHub when every input is a fixed-batch 3-channel image;
:func:`offline_onnx2tf` hands it the job's own samples instead, so conversion never touches the network.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgekit.tf_process import WorkerError

__all__ = ["artifact_spec", "as_tf_input", "first_line", "fixed_batch", "input_perms", "load_tf", "offline_onnx2tf", "one_request",
           "onnx2tf_failure", "onnx_to_keras", "output_perms", "save_serving", "serving_function", "strip_ansi"]


# ---------------------------------------------------------------- ONNX → Keras (onnx2tf), offline


def onnx_to_keras(path: Path, job: dict, sample: dict[str, np.ndarray], workdir: Path, *, pseudo_ops: tuple[str, ...] = ()):
    """The Keras model onnx2tf builds from the ONNX file at ``path``; a WorkerError naming the op when it cannot."""
    import onnx2tf

    offline_onnx2tf(sample, job)
    try:
        # disable_model_save: onnx2tf only builds the Keras model; edgekit writes the .tflite itself.
        # pseudo_ops: ops onnx2tf should write as elementwise ops (["hardswish"] for int8, see tflite_prep)
        model = onnx2tf.convert(input_onnx_file_path=str(path), output_folder_path=str(workdir / "onnx2tf"),
                                disable_model_save=True, non_verbose=True, replace_to_pseudo_operators=list(pseudo_ops) or None,
                                keep_shape_absolutely_input_names=list(job.get("keep_inputs") or []) or None)
    except SystemExit:
        raise onnx2tf_failure(workdir) from None
    except Exception as e:  # noqa: BLE001
        raise onnx2tf_failure(workdir, e) from None
    if model is None:
        raise onnx2tf_failure(workdir)
    return model


def offline_onnx2tf(sample: dict[str, np.ndarray], job: dict) -> None:
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


def onnx2tf_failure(workdir: Path, exc: BaseException | None = None) -> WorkerError:
    """The WorkerError for a failed onnx2tf run, read off its log: the unsupported op, or the node that failed."""
    log = strip_ansi((workdir / "worker.log").read_text(errors="replace")) if (workdir / "worker.log").exists() else ""
    m = _NOT_IMPLEMENTED.search(log)
    if m:
        return WorkerError("unsupported_op", f"onnx2tf has no converter for op {m.group(1)}", op_type=m.group(1))
    ops = _OP_LINE.findall(log)
    if ops:
        op_type, node = ops[-1]
        return WorkerError("op_failed", f"onnx2tf could not convert node {node!r} ({op_type})"
                           + (f": {first_line(exc)}" if exc else ""), op_type=op_type, node=node)
    detail = first_line(exc) if exc else next((ln for ln in reversed(log.splitlines()) if "ERROR" in ln), "no error message")
    return WorkerError("onnx2tf", f"onnx2tf failed: {detail.strip()[:300]}")


# ---------------------------------------------------------------- Keras / SavedModel sources


def load_tf(src: dict):
    """The TensorFlow source of the job: a Keras model, or a SavedModel signature called like one."""
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


def input_perms(model, inputs: list[dict], *, onnx2tf_made: bool, keep: tuple[str, ...] | list[str] = ()) -> dict[str, tuple[int, ...] | None]:
    """Each input's perm from the source layout to the TensorFlow model's (None: the same). ``keep``: inputs onnx2tf
    was told to leave as they are (raw NHWC images in front of baked preprocessing)."""
    shapes = _tf_input_shapes(model)
    if len(shapes) != len(inputs):
        raise WorkerError("signature", f"the TensorFlow model has {len(shapes)} inputs; the source has {len(inputs)}")
    perms = {}
    for s, shape in zip(inputs, shapes, strict=False):
        fit = [p for p in _candidates(len(s["shape"])) if _fits(s["shape"], shape, p)]
        if not fit:
            raise WorkerError("signature", f"input {s['name']!r}: TensorFlow shape {shape} does not match the source {s['shape']} in any layout")
        # both fit only when the dims are equal (e.g. [1, 8, 8, 8]); onnx2tf always makes 3-5-D inputs channel-last
        perms[s["name"]] = fit[-1] if len(fit) > 1 and onnx2tf_made and s["name"] not in keep else fit[0]
    return perms


def output_perms(tf, fn, job: dict, sample: dict[str, np.ndarray], in_perms: dict, names: dict) -> dict[str, tuple[int, ...] | None]:
    """Each output's perm: by shape, and where shapes cannot tell, by comparing values with the ONNX model."""
    feeds = [as_tf_input(one_request(sample[s["name"]], s), in_perms[s["name"]]) for s in job["inputs"]]
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
    feeds = {s["name"]: one_request(sample[s["name"]], s) for s in job["inputs"]}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=False))


def one_request(x: np.ndarray, s: dict) -> np.ndarray:
    """Samples for one call: the fixed batch (repeating samples if there are fewer), else one."""
    b = s["shape"][0] if fixed_batch(s) else 1
    return x[np.arange(b) % len(x)]


def fixed_batch(s: dict) -> bool:
    """Whether the source signature entry ``s`` has a fixed batch size."""
    return bool(s["shape"]) and isinstance(s["shape"][0], int)


def as_tf_input(x: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
    """``x`` (source layout) in the TensorFlow model's layout."""
    return np.ascontiguousarray(np.transpose(x, perm)) if perm else x


def artifact_spec(s: dict, perm: tuple[int, ...] | None) -> dict:
    """The signature entry ``s`` as the artifact sees it: shape and layout after ``perm``, and the perm itself."""
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


def serving_function(tf, model, job: dict, in_perms: dict):
    """A ``tf.function`` whose signature carries the source's input and output names, and those names (source → signature)."""
    taken: set[str] = set()
    in_sig = [_sig_name(s["name"], taken) for s in job["inputs"]]
    out_sig = [_sig_name(s["name"], taken) for s in job["outputs"]]
    specs = []
    for s, name, t in zip(job["inputs"], in_sig, model.inputs, strict=False):
        # the source's (static) sizes in the artifact's layout; only a symbolic batch axis stays dynamic
        shape = artifact_spec(s, in_perms[s["name"]])["shape"]
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


def save_serving(tf, fn, model, path: Path) -> str:
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
        raise WorkerError("saved_model", f"saving the TensorFlow model failed: {type(e).__name__}: {first_line(e)}") from None
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (onnx2tf colours its log)."""
    return _ANSI.sub("", text)


def first_line(e: BaseException | None) -> str:
    """The first non-empty line of an exception's message (at most 300 characters), for one-line errors."""
    if e is None:
        return ""
    lines = [ln for ln in strip_ansi(str(e)).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
