"""Per-layer int8 error: it names the layer that loses the most, and excluding that layer removes the loss."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.data import Dataset
from edgekit.onnx_model import io_specs
from edgekit.quantize.layers import layer_errors


def _three_layers(path) -> None:
    """x[N,32] → fc1 → relu → fc2 → relu → fc3 → y[N,8]; fc2's weights hold one huge outlier.

    With per-tensor int8 weights the outlier sets fc2's scale, and every other fc2 weight rounds to
    a few levels: fc2 is the layer that loses, by construction.
    """
    rng = np.random.default_rng(0)
    ws = {
        "w1": rng.standard_normal((32, 64)) / np.sqrt(32),
        "w2": rng.standard_normal((64, 64)) / np.sqrt(64),
        "w3": rng.standard_normal((64, 8)) / np.sqrt(64),
    }
    ws["w2"][3, 5] = 40.0
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in ws.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"), helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"), helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3"),
    ]
    g = helper.make_graph(nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


class _Reader:
    def __init__(self, x):
        self._it = iter([{"x": x[i : i + 16]} for i in range(0, len(x), 16)])

    def get_next(self):
        return next(self._it, None)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    d = tmp_path_factory.mktemp("three")
    _three_layers(d / "f.onnx")
    x = np.random.default_rng(1).standard_normal((160, 32)).astype(np.float32)
    return d, x


def _quantize(d, x, name, fmt, exclude=()):
    from onnxruntime.quantization import QuantType, quantize_static

    quantize_static(str(d / "f.onnx"), str(d / name), _Reader(x[:64]), quant_format=fmt, per_channel=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
    return d / name


@pytest.mark.parametrize("fmt_name", ["QDQ", "QOperator"])
def test_the_outlier_layer_is_named_first_and_excluding_it_helps(three, fmt_name):
    from onnxruntime.quantization import QuantFormat

    d, x = three
    fmt = getattr(QuantFormat, fmt_name)
    data = Dataset({"x": x})
    inputs, _ = io_specs(onnx.load(d / "f.onnx"))
    errs = layer_errors(d / "f.onnx", _quantize(d, x, f"q_{fmt_name}.onnx", fmt), data, inputs)
    assert errs[0].node == "fc2"  # the name --exclude takes, whatever the quantized op is called
    assert errs[0].op_type in ("MatMul", "QLinearMatMul")
    assert errs[0].added_rel_error > max(e.added_rel_error for e in errs[1:])
    assert errs[0].sqnr_db is not None and errs[0].sqnr_db < min(e.sqnr_db for e in errs if e.node in ("fc1", "(input x)"))
    fixed = layer_errors(d / "f.onnx", _quantize(d, x, f"q_{fmt_name}_ex.onnx", fmt, exclude=["fc2"]), data, inputs)
    by_node = {e.node: e for e in fixed}
    final = next(e for e in fixed if e.tensor == "y")
    assert final.rel_error < 0.5 * next(e for e in errs if e.tensor == "y").rel_error
    assert by_node.get("fc2") is None or by_node["fc2"].added_rel_error < 0.2 * errs[0].added_rel_error


def test_an_unquantized_copy_has_no_error_and_unrelated_models_match_nothing(three, tmp_path):
    d, x = three
    inputs, _ = io_specs(onnx.load(d / "f.onnx"))
    same = layer_errors(d / "f.onnx", d / "f.onnx", Dataset({"x": x}), inputs)
    assert same and all(e.sqnr_db is None and e.rel_error == 0 and e.added_rel_error == 0 for e in same)
    other = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"], name="id")], "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])], [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 32])]),
        opset_imports=[helper.make_opsetid("", 17)])
    other.ir_version = 8
    onnx.save(other, tmp_path / "other.onnx")
    assert [e.tensor for e in layer_errors(d / "f.onnx", tmp_path / "other.onnx", Dataset({"x": x}), inputs)] == ["x"]


def test_large_activations_shrink_the_batch_and_the_samples(three, monkeypatch):
    """PP-OCR's detector exposes 281 MB of intermediate tensors per sample: batches and sample counts follow a byte budget."""
    from onnxruntime.quantization import QuantFormat

    import edgekit.quantize.layers as layers

    d, x = three
    inputs, _ = io_specs(onnx.load(d / "f.onnx"))
    q = _quantize(d, x, "q_budget.onnx", QuantFormat.QDQ)
    full = layers.measure_layers(d / "f.onnx", q, Dataset({"x": x}), inputs)
    assert (full.samples, full.batch) == (128, 32) and full.note(128) is None
    per_sample = full.sample_bytes
    monkeypatch.setattr(layers, "BATCH_BYTES", 3 * per_sample)
    monkeypatch.setattr(layers, "TOTAL_BYTES", 10 * per_sample)
    small = layers.measure_layers(d / "f.onnx", q, Dataset({"x": x}), inputs)
    assert (small.samples, small.batch, small.sample_bytes) == (10, 3, per_sample)
    assert small.errors[0].node == "fc2"  # the same answer from fewer samples
    assert small.note(128) == (f"intermediate tensors take {per_sample / 2**20:,.0f} MB per sample: measured on 10 of 128 samples, "
                               f"3 at a time (at most {3 * per_sample // 2**20} MB per batch, {10 * per_sample // 2**30} GB in all)")
