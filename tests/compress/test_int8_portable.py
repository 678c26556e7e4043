"""An int8 model computes the same on every CPU: on x86-64 without VNNI the weights get 7 bits (onnxruntime's u8 x s8
kernels saturate with 8), so what edgekit measures here is what an ARM device or a VNNI CPU computes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.compress import compress
from edgekit.options import CompressOptions
from edgekit.pipeline import StepSpec
from edgekit.quantize.candidates import seven_bit_weights


def _conv_net(path) -> None:
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((32, 3, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32)
    fc = (rng.standard_normal((32, 10)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (fc, "fc"))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="c1"), helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4, name="c2"), helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"), helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc")]
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 24, 24])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def test_int8_weights_fit_the_kernels_of_this_cpu_and_the_record_says_why(tmp_path):
    _conv_net(tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).uniform(0, 4, (32, 3, 24, 24)).astype(np.float32))
    opts = CompressOptions(steps=[StepSpec("int8", {"max_drop": 100.0, "mixed": False})], formats=("onnx",), output=tmp_path / "out")
    result = compress(tmp_path / "net.onnx", tmp_path / "calib.npz", opts)
    m = load_manifest(result.output)
    art = next(a for a in m.artifacts if a.format == "onnx")
    record = next(s for s in m.raw["steps"] if s["name"] == "int8")
    model = onnx.load(str(result.output / art.file))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.dims and len(t.dims) > 1]
    if art.precision == "fp32" or not weights:
        raise AssertionError(f"no int8 weights to check ({art.precision}); the search chose {record['result'].get('search', {}).get('chosen')}")
    low, high = (-64, 64) if seven_bit_weights() else (-127, 127)  # symmetric: 255 * 64 * 2 < 2**15
    assert all(w.min() >= low and w.max() <= high for w in weights), [(int(w.min()), int(w.max())) for w in weights]
    assert ("weights_7bit" in record["result"]) is seven_bit_weights()
