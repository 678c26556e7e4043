"""Reading a signature the way real models write it: Paddle's -1 sizes, state inputs batched on axis 1, token ids."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import TensorSpec
from edgekit.data import generate, load_data
from edgekit.errors import DataError
from edgekit.evaluate import one_sample, run_dataset
from edgekit.onnx_model import int_input_ranges, io_specs, upgrade_opset
from edgekit.signature import batch_axes, batch_size, calibration_batch, fixed_batch


def _paddle_model() -> onnx.ModelProto:
    """x [-1, 4] -> Gemm -> [-1, 2], as a Paddle export writes a dynamic batch (dim_value -1)."""
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["save_infer_model/scale_0.tmp_1"])], "paddle",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])],
                          [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_1", TensorProto.FLOAT, [-1, 2])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])


def test_a_negative_size_is_symbolic():
    inputs, outputs = io_specs(_paddle_model())
    assert inputs[0].shape == ("?", 4) and outputs[0].shape == ("?", 2)
    assert batch_axes(inputs) == {"x": 0}
    assert fixed_batch(inputs) is None and batch_size(inputs, 32) == 32


SILERO = (TensorSpec("input", "float32", ("?", "?")), TensorSpec("state", "float32", (2, "?", 128)), TensorSpec("sr", "int64", ()))


def test_a_state_batches_on_the_axis_sharing_the_batch_symbol():
    assert batch_axes(SILERO) == {"input": 0, "state": 1, "sr": None}
    named = (TensorSpec("x", "float32", ("N", 4)), TensorSpec("h", "float32", (2, "N", 8)), TensorSpec("c", "float32", (2, "S", 8)))
    assert batch_axes(named) == {"x": 0, "h": 1, "c": None}  # 'S' is not the batch: c is fed whole
    # an unnamed size counts only when it is the input's one unknown size
    assert batch_axes((TensorSpec("x", "float32", ("?", 4)), TensorSpec("img", "float32", (1, 3, "?", "?"))))["img"] is None
    fixed = (TensorSpec("x", "float32", (8, 4)), TensorSpec("y", "float32", (8, 2)))
    assert batch_axes(fixed) == {"x": 0, "y": 0} and fixed_batch(fixed) == 8


def test_batches_for_evaluation_and_calibration():
    assert batch_size(SILERO, 32) == 1  # a scalar takes one sample's value
    assert calibration_batch(SILERO, 100) == 16  # ...which is the same for a batch: calibration batches
    whole = (TensorSpec("x", "float32", ("N", 4)), TensorSpec("c", "float32", (2, "S", 8)))
    assert batch_size(whole, 32) == 1 and calibration_batch(whole, 100) == 1


def test_generated_inputs_stack_samples_on_each_batch_axis():
    ds = generate(SILERO, 5, sizes={"input": (1, 576)}, int_ranges={})
    assert ds.inputs["input"].shape == (5, 576) and ds.inputs["state"].shape == (2, 5, 128) and ds.inputs["sr"].shape == (5,)
    assert ds.n == 5
    feeds = ds.take(2, 2)
    assert feeds["input"].shape == (2, 576) and feeds["state"].shape == (2, 2, 128) and feeds["sr"].shape == ()
    np.testing.assert_array_equal(feeds["state"], ds.inputs["state"][:, 2:4])
    sub = ds.subset(3)
    assert sub.n == 3 and sub.inputs["state"].shape == (2, 3, 128) and sub.axes == ds.axes
    assert one_sample(ds, SILERO)["state"].shape == (2, 1, 128)


def test_data_with_the_state_on_its_batch_axis_loads(tmp_path):
    p = tmp_path / "vad.npz"
    np.savez(p, input=np.zeros((6, 576), np.float32), state=np.zeros((2, 6, 128), np.float32), sr=np.full(6, 16000))
    ds = load_data(p, SILERO)
    assert ds.n == 6 and ds.axes == {"input": 0, "state": 1, "sr": None}
    np.savez(p, input=np.zeros((6, 576), np.float32), state=np.zeros((6, 2, 128), np.float32), sr=np.full(6, 16000))
    with pytest.raises(DataError, match=r"Input 'state' expects shape \[2, \?, 128\] \(float32\); vad.npz gives \[6, 2, 128\] \(float32\)\. "
                                        r"Its samples are stacked on axis 1"):
        load_data(p, SILERO)
    np.savez(p, input=np.zeros((6, 576), np.float32), state=np.zeros((2, 5, 128), np.float32), sr=np.full(6, 16000))
    with pytest.raises(DataError, match=r"different sample counts \[5, 6\]; every array needs the same first axis \(the batch axis: "
                                        r"'state' on axis 1\)"):
        load_data(p, SILERO)


def test_fixed_batch_pads_the_last_batch():
    specs = (TensorSpec("x", "float32", (4, 3)), TensorSpec("sr", "int64", ()))

    class Echo:
        def run(self, feeds):
            assert feeds["x"].shape == (4, 3) and feeds["sr"].shape == ()
            return {"y": feeds["x"] * 2, "stateN": np.zeros((2, 4, 3), np.float32)}

    ds = generate(specs, 6)
    out = run_dataset(Echo(), ds, specs)
    assert out["y"].shape == (6, 3)
    np.testing.assert_array_equal(out["y"], ds.inputs["x"] * 2)


def _token_model() -> onnx.ModelProto:
    """all-MiniLM's embedding front: token ids and token types index tables of 50 and 2 rows; a 0/1 attention mask."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("word", (50, 16)), ("types", (2, 16)), ("head", (16, 4)))]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes = [
        helper.make_node("Gather", ["word", "input_ids"], ["we"]),
        helper.make_node("Cast", ["token_type_ids"], ["tt"], to=TensorProto.INT32),
        helper.make_node("Gather", ["types", "tt"], ["te"]),
        helper.make_node("Add", ["we", "te"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceMean", ["em", "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "T"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    g = helper.make_graph(nodes, "tokens", ins, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_integer_ranges_come_from_the_tables_they_index():
    ranges = int_input_ranges(_token_model())
    assert (ranges["input_ids"].low, ranges["input_ids"].high) == (0, 50)
    assert (ranges["token_type_ids"].low, ranges["token_type_ids"].high) == (0, 2)  # through the Cast
    assert "attention_mask" not in ranges
    inputs, _ = io_specs(_token_model())
    ds = generate(inputs, 64, int_ranges=ranges)
    assert ds.inputs["token_type_ids"].max() == 1 and ds.inputs["input_ids"].max() >= 10
    assert set(np.unique(ds.inputs["attention_mask"])) == {0, 1}
    assert ds.description == ("64 generated samples (standard normal; no data given); integer inputs: input_ids integers in [0, 50) "
                              "(the rows of word it indexes), attention_mask 0/1 (nothing in the graph bounds it), token_type_ids "
                              "0/1 (the rows of types it indexes)")


def test_an_integer_compared_with_constants_takes_them():
    c = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(16000, np.int64)))
    g = helper.make_graph([c, helper.make_node("Equal", ["sr", "k"], ["is16k"])], "sr",
                          [helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("is16k", TensorProto.BOOL, [])])
    r = int_input_ranges(helper.make_model(g))["sr"]
    assert r.values == (16000,) and r.describe() == "16000 (the values the graph compares it with)"
    assert set(generate((TensorSpec("sr", "int64", ()),), 8, int_ranges={"sr": r}).inputs["sr"]) == {16000}


def test_an_old_opset_is_converted_up():
    model = _paddle_model()
    up, old = upgrade_opset(model, 13)
    assert old == 11 and next(o.version for o in up.opset_import if o.domain == "") == 13
    same, none = upgrade_opset(up, 13)
    assert same is up and none is None
