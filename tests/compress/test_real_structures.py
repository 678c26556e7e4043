"""`edgekit compress` on small models built like the real ones that used to break it (issue 13, parts 4-5).

Each model reproduces one structure of a third-party model in benchmarks/zoo.py: a Paddle export's -1 batch and
Constant-node weights (PP-OCR's classifier), an LSTM-like state batched on axis 1 and a scalar sample rate
compared in the graph (silero-vad), token ids indexing a 2-row table (all-MiniLM), an opset-12 convnet (DNSMOS),
an input length only the application knows (silero's 576 samples).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.cli.main import cli

SEARCH = ("--search-time", "20")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _save(model: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _init(rng, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def paddle_classifier(path) -> str:
    """x [-1, 3, 8, 8] (dim_value -1), weights in Constant nodes, an output named like Paddle's, opset 11."""
    rng = np.random.default_rng(0)
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in
              (_init(rng, "conv_w", 8, 3, 3, 3), _init(rng, "fc_w", 8, 2))]
    nodes = consts + [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["save_infer_model/scale_0.tmp_1"], axis=1),
    ]
    g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])],
                          [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_1", TensorProto.FLOAT, [-1, 2])])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]), path)


def stateful(path, *, reflect_pad: bool = False) -> str:
    """silero-vad's signature: input [?, ?], state [2, ?, 32] (batch on axis 1), sr [] compared with 16000.

    ``reflect_pad``: the input is reflect-padded by 4, so it needs at least 5 samples (silero's STFT padding).
    """
    rng = np.random.default_rng(1)
    k = helper.make_node("Constant", [], ["k16"], value=numpy_helper.from_array(np.array(16000, np.int64)))
    nodes = [k]
    x = "input"
    if reflect_pad:
        nodes.append(helper.make_node("Pad", ["input", "pads"], ["padded"], mode="reflect"))
        x = "padded"
    nodes += [
        helper.make_node("ReduceMean", [x, "ax1"], ["level"], keepdims=1),  # [N, 1]
        helper.make_node("MatMul", ["level", "w_in"], ["h"], name="fc_in"),  # [N, 32]
        helper.make_node("ReduceSum", ["state", "ax0"], ["s"], keepdims=0),  # [N, 32]
        helper.make_node("Add", ["h", "s"], ["hs"]),
        helper.make_node("Tanh", ["hs"], ["t"]),
        helper.make_node("MatMul", ["t", "w_out"], ["o"], name="fc_out"),  # [N, 1]
        helper.make_node("Equal", ["sr", "k16"], ["is16k"]),
        helper.make_node("Neg", ["o"], ["neg"]),
        helper.make_node("Where", ["is16k", "o", "neg"], ["output"]),
        helper.make_node("Unsqueeze", ["t", "ax0"], ["t3"]),
        helper.make_node("Concat", ["t3", "t3"], ["stateN"], axis=0),
    ]
    inits = [_init(rng, "w_in", 1, 32), _init(rng, "w_out", 32, 1), numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"), numpy_helper.from_array(np.array([0, 4, 0, 4], np.int64), "pads")]
    ins = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
           helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 32]),
           helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    outs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [None, None, None])]
    return _save(helper.make_model(helper.make_graph(nodes, "vad", ins, outs, inits), opset_imports=[helper.make_opsetid("", 18)]), path)


def vad_data(path, n: int = 12) -> str:
    rng = np.random.default_rng(2)
    np.savez(path, input=rng.standard_normal((n, 16)).astype(np.float32), state=rng.standard_normal((2, n, 32)).astype(np.float32),
             sr=np.full(n, 16000, np.int64))
    return str(path)


def test_a_paddle_export_with_a_minus_one_batch(tmp_path):
    model = paddle_classifier(tmp_path / "cls.onnx")
    res = run("compress", "--int8", *SEARCH, "-o", str(tmp_path / "nodata"), model)
    assert res.exit_code == 0, res.output
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(3).standard_normal((16, 3, 8, 8)).astype(np.float32))
    res = run("compress", "--int8", *SEARCH, "--data", str(tmp_path / "d.npz"), "--input-shape", "x:1,3,8,8", "-o", str(tmp_path / "data"),
              model)
    assert res.exit_code == 0, res.output
    m = load_manifest(tmp_path / "data")
    assert m.inputs[0].shape[1:] == (3, 8, 8) and m.outputs[0].name == "save_infer_model/scale_0.tmp_1"


def test_a_stateful_model_with_and_without_data(tmp_path):
    model = stateful(tmp_path / "vad.onnx")
    res = run("compress", "--int8", *SEARCH, "--data", vad_data(tmp_path / "vad.npz"), "-o", str(tmp_path / "data"), model)
    assert res.exit_code == 0, res.output
    res = run("compress", "--int8", *SEARCH, "-o", str(tmp_path / "nodata"), model)
    assert res.exit_code == 0, res.output
    assert "generated inputs: sr 16000 (the values the graph compares it with)" in res.output
    m = load_manifest(tmp_path / "nodata")
    assert "sr 16000" in m.raw["data"]["description"]


def test_a_size_only_the_application_knows_is_one_clean_line(tmp_path):
    model = stateful(tmp_path / "vad.onnx", reflect_pad=True)
    res = run("compress", "--int8", *SEARCH, "-o", str(tmp_path / "out"), model)
    assert res.exit_code == 1, res.output
    line = res.output.strip().splitlines()[-1]
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert line.startswith("error: vad.onnx does not run on generated inputs (")
    assert ("edgekit cannot know the size of input 'input' [?, ?] axis 1 without data and generated 1. Pass the sizes your "
            "application feeds, --input-shape input:1,SIZE (SIZE filled in), or real inputs with --data") in line
    res = run("compress", "--int8", *SEARCH, "--input-shape", "input:1,16", "-o", str(tmp_path / "out"), model)
    assert res.exit_code == 0, res.output


def test_data_that_does_not_fit_the_model_is_one_clean_line(tmp_path):
    model = stateful(tmp_path / "vad.onnx", reflect_pad=True)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "short.npz", input=rng.standard_normal((4, 2)).astype(np.float32), state=np.zeros((2, 4, 32), np.float32),
             sr=np.full(4, 16000))
    res = run("compress", "--int8", *SEARCH, "--data", str(tmp_path / "short.npz"), "-o", str(tmp_path / "out"), model)
    assert res.exit_code == 1, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: vad.onnx does not run on short.npz: ")
    assert line.endswith("Check that each array holds what its input expects (samples stacked: 'state' on axis 1)")


def token_model(path) -> str:
    """all-MiniLM's embedding front: token ids into a 50-row table, token types into a 2-row one, a 0/1 mask."""
    rng = np.random.default_rng(4)
    inits = [_init(rng, "word", 50, 16), _init(rng, "types", 2, 16), _init(rng, "head", 16, 4),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    nodes = [
        helper.make_node("Gather", ["word", "input_ids"], ["we"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["te"]),
        helper.make_node("Add", ["we", "te"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "ax2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceMean", ["em", "ax1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["embedding"], name="head"),
    ]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "T"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    g = helper.make_graph(nodes, "tokens", ins, [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])], inits)
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_token_ids_are_generated_inside_their_tables(tmp_path):
    model = token_model(tmp_path / "minilm.onnx")
    res = run("compress", "--int8", *SEARCH, "--input-shape", "input_ids:1,8", "--input-shape", "attention_mask:1,8",
              "--input-shape", "token_type_ids:1,8", "-o", str(tmp_path / "out"), model)
    assert res.exit_code == 0, res.output
    assert ("generated inputs: input_ids integers in [0, 50) (the rows of word it indexes), attention_mask 0/1 (nothing in the "
            "graph bounds it), token_type_ids 0/1 (the rows of types it indexes)") in res.output


def opset12_convnet(path) -> str:
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["scores"]),
    ]
    g = helper.make_graph(nodes, "dnsmos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                          [_init(rng, "w1", 16, 1, 3, 3), _init(rng, "w2", 3, 16, 3, 3)])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)]), path)


def test_an_opset_12_model_is_converted_up_for_static_int8(tmp_path):
    model = opset12_convnet(tmp_path / "old.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(6).standard_normal((16, 1, 16, 16)).astype(np.float32))
    # random weights pooled into 3 near-tied scores: one flip of 16 samples is 6.25 pts, so agreement is not the point here
    # (the per-channel candidates keep cosine 0.9998 yet flip ~10% of such ties with 7-bit weights); the upgrade is
    res = run("compress", "--int8", *SEARCH, "--max-drop", "100", "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "out"), model)
    assert res.exit_code == 0, res.output
    step = load_manifest(tmp_path / "out").raw["steps"][-1]["result"]
    assert step["opset_upgraded"] == {"from": 12, "to": 13, "why": "per-channel int8 needs opset 13"}
    static = [c for c in step["search"]["candidates"] if c["kind"] == "static"]
    assert static and all(c["status"] == "ok" for c in static), static


def test_no_buildable_candidate_keeps_the_fp32_model(tmp_path, monkeypatch, make_mlp):
    import edgekit.quantize.search as search

    def broken(*args, **kwargs):
        raise RuntimeError("DequantizeLinear: unrecognized attribute: axis")

    monkeypatch.setattr(search, "build", broken)
    model = _save(make_mlp(), tmp_path / "mlp.onnx")
    res = run("compress", "--int8", *SEARCH, "-o", str(tmp_path / "out"), model)
    assert res.exit_code == 3, res.output
    assert "int8 quantization failed: no int8 candidate could be built (" in res.output and "the fp32 model was kept" in res.output
    m = load_manifest(tmp_path / "out", verify_files=True)
    assert {a.precision for a in m.artifacts} == {"fp32"} and m.raw["steps"][-1]["result"]["kept"] == "fp32"


def test_a_format_that_fails_its_check_costs_only_itself(tmp_path, monkeypatch, make_mlp):
    import edgekit.artifacts as artifacts

    real = artifacts.artifact_parity

    def ort_mismatch(a, parent, outputs, **kw):
        p = real(a, parent, outputs, **kw)
        return p | {"ok": False} if a.path.suffix == ".ort" else p

    monkeypatch.setattr(artifacts, "artifact_parity", ort_mismatch)
    model = _save(make_mlp(), tmp_path / "mlp.onnx")
    res = run("compress", "--int8", *SEARCH, "-o", str(tmp_path / "out"), model)
    assert res.exit_code == 1, res.output
    assert "error: mlp.int8.ort does not match " in res.output and f"Still written to {tmp_path / 'out'}: mlp.int8.onnx" in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["edgekit.json", "mlp.int8.onnx", "report.html", "report.json"]
    assert [a.file for a in load_manifest(tmp_path / "out", verify_files=True).artifacts] == ["mlp.int8.onnx"]


def test_a_plain_conversion_writes_checked_fp32_artifacts(tmp_path, make_mlp):
    model = _save(make_mlp(), tmp_path / "mlp.onnx")
    res = run("compress", "--format", "onnx,ort", model)
    assert res.exit_code == 0, res.output
    out = tmp_path / "mlp.fp32"
    m = load_manifest(out, verify_files=True)
    assert [(a.file, a.precision) for a in m.artifacts] == [("mlp.fp32.onnx", "fp32"), ("mlp.fp32.ort", "fp32")]
    assert m.metrics["mlp.fp32.ort"]["parity"]["ok"] and m.raw["steps"] == []
    assert json.loads((out / "report.json").read_text())["rows"]
    res = run("compress", str(tmp_path / "mlp.onnx"))
    assert res.exit_code == 2 and "or --format onnx,ort,tflite for a plain fp32 conversion" in res.output


def test_quantization_pre_processing_leaves_the_working_directory_alone(tmp_path, monkeypatch):
    """ORT's symbolic shape inference saves sym_shape_infer_temp.onnx into the cwd when an op defeats it."""
    from edgekit.quantize.candidates import pre_process

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Foo", ["r"], ["y"], domain="com.example")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir()
    work.mkdir()
    monkeypatch.chdir(cwd)
    pre_process(model, work)
    assert list(cwd.iterdir()) == [] and os.getcwd() == str(cwd)


def test_ort_conversion_does_not_import_torch(tmp_path, make_mlp):
    model = _save(make_mlp(), tmp_path / "mlp.onnx")
    code = ("import sys; from pathlib import Path; from edgekit.export.ort_mobile import convert_to_ort; "
            f"print(convert_to_ort(Path({model!r}), Path({str(tmp_path)!r}), 'm')[0].name, 'torch' in sys.modules)")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.stdout.split() == ["m.ort", "False"], p.stderr[-2000:]


@pytest.fixture(autouse=True)
def _restore_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
