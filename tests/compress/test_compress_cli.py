"""`edgekit compress`: what a user gets, on models the tests build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.choices import Objective
from edgekit.cli.main import cli
from edgekit.onnx_model import weight_stats
from edgekit.quantize.choose import Option, choose
from tests.conftest import build_mlp


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def digits_int8(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "out"
    res = run("compress", "--int8", "--data", str(digits["eval"]), "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    return out, res.output


@pytest.fixture(scope="module")
def digits_smallest(digits, tmp_path_factory):
    """--objective size: the smallest accurate candidate, whatever its speed on this CPU (int8 whatever the timing)."""
    out = tmp_path_factory.mktemp("int8-size") / "out"
    res = run("compress", "--int8", "--objective", "size", "--data", str(digits["eval"]), "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    return out


def test_int8_static_writes_every_artifact_and_a_valid_manifest(digits_int8):
    out, output = digits_int8
    names = sorted(p.name for p in out.iterdir())
    assert names == ["digits.int8.onnx", "digits.int8.ort", "digits.int8.required_operators.config", "edgekit.json", "report.html",
                     "report.json"]
    m = load_manifest(out, verify_files=True)
    assert m.task == "classification"
    assert [a.format for a in m.artifacts] == ["onnx", "ort"]
    # the float model is a candidate too: an artifact is fp32 exactly when int8 did not pay off for it on this CPU
    assert all((a.precision == "fp32") == (a.extra["candidate"] == "float") for a in m.artifacts)
    assert all(a.precision in ("fp32", "int8", "mixed") for a in m.artifacts)
    # every artifact runs as any program opens it: no session option lives in the manifest
    assert not any("session_config" in a.extra for a in m.artifacts)
    assert "ai.onnx;" in (out / "digits.int8.required_operators.config").read_text()
    # printed table: size, latency and accuracy before/after, and the chosen candidate with why
    assert "digits.int8.onnx" in output and "accuracy" in output and "int8 (balanced): chose " in output and "candidates (latency" in output


def test_int8_static_keeps_accuracy_and_shrinks(digits_smallest):
    m = load_manifest(digits_smallest)
    src_acc = m.metrics["source"]["accuracy"]
    for art in ("digits.int8.onnx", "digits.int8.ort"):
        assert src_acc - m.metrics[art]["accuracy"] <= 0.5
        assert m.metrics[art]["parity"]["ok"] if "parity" in m.metrics[art] else True
    assert m.metrics["digits.int8.onnx"]["size_ratio"] < 0.35
    weights = m.artifact("digits.int8.onnx").extra["weights"]
    assert weights["quantized_share"] > 0.95 and weights["quantized_nodes"] == weights["weighted_nodes"] == 5


def _options(search: dict, *, ort: bool) -> list[Option]:
    lat, size = ("ort_latency", "ort_size_bytes") if ort else ("latency", "size_bytes")
    return [Option(c["name"], c[lat]["p50_ms"], c[size], c["quality"]["drop_pts"], c["accepted"], c["kind"] != "float")
            for c in search["candidates"] if c["status"] == "ok" and c.get(lat)]


def test_int8_search_ships_what_its_rule_picks_from_the_numbers_it_recorded(digits_int8):
    out, _ = digits_int8
    search = json.loads((out / "report.json").read_text())["steps"][0]["result"]["search"]
    ok = [c for c in search["candidates"] if c["status"] == "ok"]
    assert {c["name"] for c in ok} >= {"static-qdq-u8s8-perchannel", "static-qdq-s8s8-perchannel", "dynamic-linear-only", "float"}
    # candidates that cannot win once static int8 is built are not built, and the record says why (a conv model, balanced)
    skipped = {c["name"]: c["reason"] for c in search["candidates"] if c["status"] == "skipped"}
    assert "only --objective size can take it" in skipped["weight-only"]
    assert "faster and more accurately than ConvInteger" in skipped["dynamic"]
    assert search["objective"] == "balanced" and search["met_accuracy_bound"] is True
    base, size = search["baseline"]["latency"]["p50_ms"], search["baseline"]["size_bytes"]
    # the run ships an .ort too: every candidate's .ort was converted and timed, and the .ort gets its own choice
    assert all(c["ort_latency"]["p50_ms"] > 0 and c["ort_size_bytes"] > 0 for c in ok)
    for ort_form, key in ((False, "chosen"), (True, "chosen_ort")):
        fallback = search["baseline"]["ort_latency"]["p50_ms"] if ort_form else None
        picked = choose(_options(search, ort=ort_form), baseline_ms=base, baseline_size=size, objective=Objective.BALANCED,
                        max_drop=1.0, label=" as .ort" if ort_form else "", fallback_ms=fallback)
        assert search[key] == picked.name
    m = load_manifest(out)
    assert m.artifact("digits.int8.onnx").extra["candidate"] == search["chosen"]
    assert m.artifact("digits.int8.ort").extra["candidate"] == search["chosen_ort"]
    ort_parity = m.metrics["digits.int8.ort"]["parity"]
    assert ort_parity["ok"] and ort_parity["agreement"] == 100.0


def test_manifest_records_signature_steps_profile_and_selftests(digits_int8):
    out, _ = digits_int8
    m = load_manifest(out)
    raw = m.raw
    assert [s.to_dict()["shape"] for s in m.inputs] == [["N", 1, 8, 8]]
    assert raw["source"]["file"] == "digits.onnx" and len(raw["source"]["sha256"]) == 64
    assert raw["steps"][0]["name"] == "int8" and raw["steps"][0]["params"]["max_drop"] == 1.0
    assert raw["data"]["samples"] == 540 and raw["data"]["labelled"] is True
    assert {"onnx", "onnxruntime", "edgekit"} <= set(raw["tools"])
    (feature,) = m.features  # one channel -> one feature
    assert feature.input == "x" and feature.axis == 1 and sum(feature.counts) == 540 * 64
    assert len(feature.edges) == len(feature.counts) + 1
    for art in m.artifacts:
        vectors = m.selftest_vectors(art.file)
        assert len(vectors) == 3
        sess = ort.InferenceSession(str(out / art.file), providers=["CPUExecutionProvider"])
        tol = m.selftest_tolerance(art.file)
        for inputs, expected in vectors:
            got = sess.run(None, inputs)[0]
            np.testing.assert_allclose(got, expected["logits"], atol=tol["atol"], rtol=tol["rtol"])


def test_int8_without_data_goes_next_to_the_model_and_says_data_helps(digits, tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(digits["model"], model)
    res = run("compress", "--int8", "--objective", "size", str(model))
    assert res.exit_code == 0, res.output
    out = tmp_path / "model.int8"
    assert (out / "model.int8.onnx").is_file() and (out / "model.int8.ort").is_file()
    assert "Calibration data (--data) gives a faster, more accurate model" in res.output
    m = load_manifest(out, verify_files=True)
    assert m.raw["data"]["generated"] is True
    search = m.raw["steps"][0]["result"]["search"]
    assert all(c["status"] == "skipped" for c in search["candidates"] if c["name"].startswith("static"))
    assert m.metrics["model.int8.onnx"]["size_ratio"] < 0.35
    assert m.artifact("model.int8.onnx").extra["weights"]["quantized_share"] > 0.95


def test_fp16_keeps_float32_io_and_halves_the_file(digits, tmp_path):
    out = tmp_path / "fp16"
    res = run("compress", "--fp16", "--data", str(digits["eval"]), "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    m = load_manifest(out, verify_files=True)
    assert m.metrics["digits.fp16.onnx"]["size_ratio"] < 0.6
    sess = ort.InferenceSession(str(out / "digits.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    assert m.metrics["source"]["accuracy"] - m.metrics["digits.fp16.onnx"]["accuracy"] <= 0.5


def test_weights_in_constant_nodes_are_folded_and_quantized(tmp_path, mlp_data):
    model = tmp_path / "const.onnx"
    onnx.save(build_mlp(constant_weights=True), model)
    assert not onnx.load(str(model)).graph.initializer
    res = run("compress", "--int8", "--objective", "size", "--data", str(mlp_data), "-o", str(tmp_path / "out"), str(model))
    assert res.exit_code == 0, res.output
    m = load_manifest(tmp_path / "out")
    assert m.raw["steps"][0]["result"]["constants_folded"] == 4
    stats = weight_stats(onnx.load(str(tmp_path / "out" / "const.int8.onnx")))
    assert stats.quantized_share > 0.9 and stats.float_params < 100


def _if_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def branch(name: str, seed: int) -> onnx.GraphProto:
        w = numpy_helper.from_array((np.random.default_rng(seed).standard_normal((16, 32)) / 4).astype(np.float32), f"{name}_w")
        nodes = [helper.make_node("Constant", [], [f"{name}_w"], value=w), helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 32])])

    w2 = numpy_helper.from_array((rng.standard_normal((32, 4)) / 4).astype(np.float32), "w2")
    zero = numpy_helper.from_array(np.array(0, np.float32), "zero")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["h"], then_branch=branch("then", 1), else_branch=branch("else", 2)),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["logits"]),
    ]
    g = helper.make_graph(nodes, "ifnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=[w2, zero])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_weights_inside_if_subgraphs_are_quantized(tmp_path, mlp_data):
    model = tmp_path / "ifnet.onnx"
    onnx.save(_if_model(), model)
    res = run("compress", "--int8", "--objective", "size", "--data", str(mlp_data), "-o", str(tmp_path / "out"), str(model))
    assert res.exit_code == 0, res.output
    q = onnx.load(str(tmp_path / "out" / "ifnet.int8.onnx"))
    stats = weight_stats(q)
    assert stats.quantized_share > 0.9, stats
    # every whole-model int8 candidate is int8-sized: ORT's quantizers skip subgraphs, edgekit stores the rest as int8
    search = load_manifest(tmp_path / "out").raw["steps"][0]["result"]["search"]
    whole = [c for c in search["candidates"] if c["status"] == "ok" and c["kind"] != "float" and "int8_nodes" not in c]
    assert whole and all(c["quantized_share"] > 0.9 for c in whole)


def test_an_already_quantized_model_is_reported_not_quantized_twice(digits_smallest, tmp_path):
    out = digits_smallest
    res = run("compress", "--int8", "-o", str(tmp_path / "again"), str(out / "digits.int8.onnx"))
    assert res.exit_code == 0, res.output
    assert "model is already quantized" in res.output and "not quantizing it again" in res.output
    before = onnx.load(str(out / "digits.int8.onnx"))
    after = onnx.load(str(tmp_path / "again" / "digits.int8.int8.onnx"))
    assert [n.op_type for n in after.graph.node].count("QuantizeLinear") == [n.op_type for n in before.graph.node].count("QuantizeLinear")


def _embedding_model() -> onnx.ModelProto:
    """float features + int64 token ids + a scalar float rate: only the float weights get quantized."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "table")
    w = numpy_helper.from_array((rng.standard_normal((16, 4)) / 4).astype(np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),  # [N, 16]
        helper.make_node("Add", ["emb", "x"], ["h"]),
        helper.make_node("Mul", ["h", "rate"], ["hs"]),
        helper.make_node("MatMul", ["hs", "w"], ["logits"]),
    ]
    g = helper.make_graph(
        nodes, "emb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("rate", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=[table, w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_int_and_scalar_inputs_pass_through_untouched(tmp_path):
    model = tmp_path / "emb.onnx"
    onnx.save(_embedding_model(), model)
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    n = 256  # random weights give near-tied logits: one flipped sample of 64 (1.56 pts) was over a 1-pt bound with 7-bit weights
    np.savez(data, x=rng.standard_normal((n, 16)).astype(np.float32), ids=rng.integers(0, 50, n), rate=np.full(n, 0.5, np.float32))
    # objective size: an int8 model ships (balanced keeps the float one where int8 is not faster), within a 3-pt bound
    res = run("compress", "--int8", "--objective", "size", "--max-drop", "3", "--data", str(data), "-o", str(tmp_path / "out"), str(model))
    assert res.exit_code == 0, res.output
    sess = ort.InferenceSession(str(tmp_path / "out" / "emb.int8.onnx"), providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    assert types == {"x": "tensor(float)", "ids": "tensor(int64)", "rate": "tensor(float)"}
    m = load_manifest(tmp_path / "out")
    assert m.artifact("emb.int8.onnx").precision == "int8"
    assert m.metrics["emb.int8.onnx"]["agreement"] >= 97.0  # ids fed wrong would pick other table rows: far below this
    assert [f.input for f in m.features].count("ids") == 0  # token ids are not binned for drift


def test_json_output_is_the_report(digits, tmp_path):
    res = run("compress", "--int8", "--data", str(digits["calib"]), "-o", str(tmp_path / "o"), "--json", str(digits["model"]))
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["schema"] == "edgekit.report" and rep["rows"][0]["file"] == "digits.int8.onnx"
    assert "agreement" in rep["rows"][0]  # calib.npz has no labels


def test_unmet_accuracy_bound_keeps_the_best_and_exits_3(tmp_path, mlp_data):
    model = tmp_path / "reg.onnx"
    onnx.save(build_mlp(classes=1), model)  # one output column: a regressor, judged by cosine
    res = CliRunner().invoke(cli, ["compress", "--int8", "--max-drop", "0", "--data", str(mlp_data), "-o", str(tmp_path / "o"), str(model)])
    assert res.exit_code == 3, res.output
    assert "no int8 candidate met the 0-pt accuracy bound; kept the most accurate" in res.output
    assert (tmp_path / "o" / "reg.int8.onnx").is_file()
    assert load_manifest(tmp_path / "o").raw["steps"][0]["result"]["search"]["met_accuracy_bound"] is False


@pytest.mark.parametrize("args", [["--help"], ["compress", "--help"]])
def test_help_is_fast_and_imports_no_framework(args):
    code = (
        "import sys\nfrom edgekit.cli.main import main\n"
        f"sys.argv = ['edgekit'] + {args!r}\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_ort_only_keeps_the_onnx_as_parity_reference_but_does_not_ship_it(mlp_model, mlp_data, tmp_path):
    out = tmp_path / "o"
    res = run("compress", "--int8", "--data", str(mlp_data), "--format", "ort", "-o", str(out), str(mlp_model))
    assert res.exit_code == 0, res.output
    m = load_manifest(out, verify_files=True)
    assert [a.file for a in m.artifacts] == ["mlp.int8.ort"]
    assert not (out / "mlp.int8.onnx").exists()
    assert m.metrics["mlp.int8.ort"]["parity"]["against"] == "mlp.int8.onnx" and m.metrics["mlp.int8.ort"]["parity"]["ok"]


def test_eval_data_is_held_out_from_calibration(digits, tmp_path):
    out = tmp_path / "o"
    res = run("compress", "--int8", "--data", str(digits["calib"]), "--eval-data", str(digits["eval"]), "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    m = load_manifest(out)
    # calibrated on the unlabelled calib set, scored with the labelled held-out set
    assert m.raw["data"]["samples"] == 256 and "accuracy" in m.metrics["digits.int8.onnx"]
    assert m.metrics["source"]["accuracy"] > 95


def test_parity_fails_tiny_outputs_that_point_elsewhere():
    from types import SimpleNamespace

    from edgekit.artifacts import artifact_parity

    rng = np.random.default_rng(0)
    ref = {"y": (rng.standard_normal((20, 10)) * 1e-9).astype(np.float32)}
    art = SimpleNamespace(parent="m.onnx", precision="int8", parity_tolerance=None)
    same = artifact_parity(art, ref, {"y": ref["y"] * 1.001}, classifier=False, first_output="y")
    other = artifact_parity(art, ref, {"y": (rng.standard_normal((20, 10)) * 1e-9).astype(np.float32)}, classifier=False, first_output="y")
    assert same["ok"] and same["cosine"] > 0.999
    # the absolute error is far below the bound, yet the outputs are unrelated: parity must fail
    assert other["max_abs_error"] < other["allowed"] and other["cosine"] < 0.5 and not other["ok"]
