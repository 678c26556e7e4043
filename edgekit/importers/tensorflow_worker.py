"""TensorFlow → ONNX with tf2onnx, in a child process (see :mod:`edgekit.tf_process`).

Job: ``{"kind": "keras"|"saved_model", "path", "out", "input_shapes": {name|"": [dims]}, "opset"}``.
The model is wrapped in a ``tf.function`` (positional inputs in the model's order, outputs as a
list) so a Keras 3 file, a tf_keras model and a SavedModel signature export alike; the ONNX graph's
inputs are named after the model's inputs and its outputs ``output_0``, ``output_1``, ...
(the tflite exporter builds its signature from the same order). Result: the signature.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from edgekit.tf_process import WorkerError, report_progress, worker_main


def run(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    report_progress(workdir, "loading TensorFlow", 0.05)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    fn_inputs, call = _load(tf, job)
    shapes = job.get("input_shapes") or {}
    specs = []
    for i, (name, spec) in enumerate(fn_inputs):
        shape = list(spec.shape)
        given = shapes.get(name) or (shapes.get("") if len(fn_inputs) == 1 else None)
        if given:
            if len(given) != len(shape):
                raise WorkerError("shape", f"--input-shape for {name!r} has {len(given)} dims; the model's input is {_fmt(shape)}")
            shape = [int(g) for g in given]
        bad = [j for j, d in enumerate(shape) if d is None and j > 0]
        if bad:
            raise WorkerError("dynamic", f"input {name!r} has dynamic dims {_fmt(shape)}; pass --input-shape {name}:"
                              + ",".join(("1" if j == 0 else "?") if d is None else str(d) for j, d in enumerate(shape)) + " with the sizes filled in", input=name)
        specs.append(tf.TensorSpec([None] + shape[1:] if shape else shape, spec.dtype, name=_safe(name, i)))
    fn = tf.function(lambda *xs: call(list(xs)), input_signature=specs)
    report_progress(workdir, "TensorFlow → ONNX (tf2onnx)", 0.3)
    import onnx
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        # freeze first: tf2onnx converts a plain graph reliably, whatever captured the variables (Keras 3, a SavedModel signature)
        frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
        model_proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
                                                        output_names=[t.name for t in frozen.outputs], opset=int(job.get("opset", 17)))
    except Exception as e:  # noqa: BLE001
        raise WorkerError("tf2onnx", f"tf2onnx could not convert the model: {type(e).__name__}: {_line(e)}") from None
    in_names = [n for n, _ in fn_inputs]
    _rename_io(model_proto, in_names, [f"output_{i}" for i in range(len(model_proto.graph.output))])
    onnx.save(model_proto, job["out"])
    _check(tf, fn, specs, job["out"])
    return {"inputs": in_names, "outputs": [o.name for o in model_proto.graph.output]}


def _load(tf, job: dict):
    """(the model's inputs as [(name, TensorSpec-like)], a callable taking a list and returning a list)."""
    path = job["path"]
    if job["kind"] == "keras":
        import keras

        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as e:  # noqa: BLE001
            raise WorkerError("load", f"Keras cannot load {Path(path).name}: {type(e).__name__}: {_line(e)}") from None
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise WorkerError("load", f"{Path(path).name} is a subclassed Keras model without known inputs; save a functional or Sequential model")
        named = [(getattr(t, "name", f"input_{i}").split(":")[0], t) for i, t in enumerate(inputs)]

        def call(xs):
            y = model(xs if len(xs) > 1 else xs[0], training=False)
            return _as_list(y)

        return named, call
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001
        raise WorkerError("load", f"TensorFlow cannot load the SavedModel {path}: {type(e).__name__}: {_line(e)}") from None
    sigs = loaded.signatures
    if not sigs:
        raise WorkerError("load", f"the SavedModel {path} has no signatures; export it with tf.saved_model.save(model, path, signatures=...)")
    key = "serving_default" if "serving_default" in sigs else next(iter(sigs.keys()))
    sig = sigs[key]
    in_specs = sig.structured_input_signature[1]
    out_keys = sorted(sig.structured_outputs)

    def call(xs, _keep=loaded):  # the loaded object owns the variables: keep it alive while the signature is used
        res = sig(**dict(zip(in_specs.keys(), xs, strict=False)))
        return [res[k] for k in out_keys]

    return list(in_specs.items()), call


def _check(tf, fn, specs, path: str) -> None:
    """ONNX Runtime must reproduce TensorFlow's outputs on a random input: catches a silently wrong conversion."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal([d or 1 for d in s.shape]).astype(s.dtype.as_numpy_dtype) for s in specs]
    refs = [np.asarray(y) for y in fn(*[tf.constant(x) for x in xs])]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = sess.run(None, dict(zip([i.name for i in sess.get_inputs()], xs, strict=False)))
    for i, (r, y) in enumerate(zip(refs, outs, strict=False)):
        err = float(np.abs(r.astype(np.float64) - y.astype(np.float64)).max(initial=0.0))
        scale = max(1.0, float(np.abs(r).max(initial=0.0)))
        if err > 1e-3 * scale:
            raise WorkerError("mismatch", f"the ONNX conversion differs from TensorFlow: output_{i} max abs error {err:.4g} (allowed {1e-3 * scale:.4g})")


def _as_list(y) -> list:
    if isinstance(y, dict):
        return list(y.values())
    if isinstance(y, (list, tuple)):
        return list(y)
    return [y]


def _rename_io(model, inputs: list[str], outputs: list[str]) -> None:
    """Give graph inputs/outputs clean names (tf2onnx appends ``:0`` and names outputs ``Identity:0``)."""
    mapping = {}
    for vi, new in zip(model.graph.input, inputs, strict=False):
        mapping[vi.name] = new
    for vi, new in zip(model.graph.output, outputs, strict=False):
        mapping[vi.name] = new
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.name = mapping.get(vi.name, vi.name)
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param.startswith("unk__"):
            dims[0].dim_param = "N"  # tf2onnx names unknown dims unk__<n>; the batch axis reads better as N
    from edgekit.export.compact import rename_tensors

    rename_tensors(model.graph, mapping)


def _safe(name: str, i: int) -> str:
    import re

    s = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip("_")
    return s if s and s[0].isalpha() else f"input_{i}"


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


if __name__ == "__main__":
    sys.exit(worker_main(run))
