"""Mixed precision end to end: int8 where it pays off, float where it does not, and the manifest says which and why."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from device_agent.contract.manifest import load_manifest
from edgekit.choices import Objective
from edgekit.cli.main import cli
from edgekit.errors import RecipeError
from edgekit.options import CompressOptions
from edgekit.recipes import parse_recipe


def _depthwise_then_dense(path) -> None:
    """Three depthwise 3x3 convs with HardSwish on a wide 96x96 map (memory-bound: int8 adds Quantize/Dequantize passes
    around an activation onnxruntime has no int8 kernel for, so they run slower in int8), then dense 3x3 convs on a small
    map (compute-bound: several times faster in int8), pooled into a classifier."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(name: str, x: str, cin: int, cout: int, act: str, *, group: int = 1, stride: int = 1) -> str:
        w = (rng.standard_normal((cout, cin // group, 3, 3)) * np.sqrt(2 / (cin // group * 9))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.out"], name=name, pads=[1] * 4, group=group,
                                      strides=[stride] * 2))
        nodes.append(helper.make_node(act, [f"{name}.out"], [f"{name}.act"], name=f"{name}/{act}"))
        return f"{name}.act"

    x = "x"
    for i in range(3):
        x = conv(f"dw{i + 1}", x, 32, 32, "HardSwish", group=32)
    x = conv("down", x, 32, 64, "Relu", stride=4)
    x = conv("dense1", x, 64, 128, "Relu")
    x = conv("dense2", x, 128, 128, "Relu")
    inits += [numpy_helper.from_array((rng.standard_normal((10, 128)) * 0.1).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"), helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 96, 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    _depthwise_then_dense(d / "dw.onnx")
    np.savez(d / "data.npz", x=np.random.default_rng(1).standard_normal((32, 32, 96, 96)).astype(np.float32))
    # random weights give near-tied logits, so agreement is not the point here: the split is
    res = CliRunner().invoke(cli, ["compress", "--int8", "--data", str(d / "data.npz"), "--max-drop", "100", "--format", "onnx",
                                   "--search-time", "90", "-o", str(d / "out"), str(d / "dw.onnx")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return d / "out", res.output


def test_layers_slower_in_int8_stay_float_and_the_manifest_names_them_and_why(mixed_run):
    out, output = mixed_run
    m = load_manifest(out, verify_files=True)
    art = m.artifact("dw.int8.onnx")
    assert art.precision == "mixed" and art.extra["candidate"].startswith("mixed-")
    assert {"dw1", "dw2", "dw3"} <= set(art.extra["mixed"]["float_layers"])
    assert "session_config" not in art.extra
    search = m.raw["steps"][0]["result"]["search"]
    chosen = next(c for c in search["candidates"] if c["name"] == search["chosen"])
    why = {f["layer"]: f for f in chosen["float_layers"]}
    assert all(why[f"dw{i}"]["why"].startswith("slower in int8") and why[f"dw{i}"]["int8_us"] > why[f"dw{i}"]["float_us"] for i in (1, 2, 3))
    # the measured alternatives: the whole-int8 model and the splits the per-layer costs priced
    assert any(c["name"] == "static-qdq-u8s8-perchannel" and c["status"] == "ok" for c in search["candidates"])
    assert {s["name"] for s in search["mixed"]["onnx"]["splits"]} >= {"cost model", "all layers", "all but depthwise convs"}
    assert search["mixed"]["onnx"]["iterations"][0]["split"] == "whole model int8"
    # what a user reads: the table line and the report page
    assert f"{search['chosen']}: " in output and "slower in int8" in output
    html = (out / "report.html").read_text()
    assert "keeps in float" in html and "dw1" in html


def test_the_objective_is_a_checked_choice_everywhere(tmp_path, mlp_model):
    res = CliRunner().invoke(cli, ["compress", "--int8", "--objective", "fastest", str(mlp_model)])
    assert res.exit_code == 2
    assert "Invalid value for '--objective': 'fastest' is not one of 'balanced', 'latency', 'size'." in res.output
    with pytest.raises(RecipeError, match=r"^unknown objective 'sise' in r.yaml:2 \(objective\); did you mean 'size'\? "
                                          r"Allowed: balanced, latency, size$"):
        parse_recipe("steps: [int8]\nobjective: sise\n", "r.yaml")
    with pytest.raises(ValidationError, match="objective\n  Input should be 'balanced', 'latency' or 'size'"):
        CompressOptions(objective="fast")


def test_a_recipe_objective_reaches_the_options_and_the_flag_overrides_it(tmp_path):
    recipe = parse_recipe("steps: [int8]\nobjective: size\n", "r.yaml")
    assert CompressOptions().with_recipe(recipe).objective is Objective.SIZE
    assert CompressOptions(objective="latency").with_recipe(parse_recipe("steps: [int8]\n", "r.yaml")).objective is Objective.LATENCY
    from edgekit.recipes import Override

    flagged = recipe.with_overrides([Override("--objective", ("objective",), "latency")])
    assert flagged.objective == "latency" and flagged.document()["objective"] == "latency"
    assert json.loads(json.dumps(flagged.document()))["resolved_from"]["overrides"] == {"--objective": "latency"}


def test_exclude_keeps_a_layer_float_in_what_ships(tmp_path, mlp_model, mlp_data):
    # objective size: an int8 model ships whatever this CPU times, so what --exclude left float can be read off it
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["compress", "--int8", "--objective", "size", "--exclude", "fc2", "--data", str(mlp_data), "-o", str(out),
                                   str(mlp_model)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    search = load_manifest(out).raw["steps"][0]["result"]["search"]
    shipped = onnx.load(str(out / "mlp.int8.onnx"))
    float_weights = [t for t in shipped.graph.initializer if t.data_type == TensorProto.FLOAT and list(t.dims) == [64, 4]]
    assert float_weights, f"fc2's weight stays float in what ships ({search['chosen']})"
    # every int8 candidate left it float, whatever its quantizer calls the node (the dynamic one splits Gemm into MatMul + Add)
    assert all(c["quantized_share"] < 0.9 for c in search["candidates"] if c["status"] == "ok" and c["kind"] != "float")
    for c in search["candidates"]:
        if c["status"] == "ok" and c.get("float_layers"):
            assert {"layer": "fc2", "why": "--exclude"}.items() <= next(f for f in c["float_layers"] if f["layer"] == "fc2").items()


def test_a_split_that_keeps_layers_float_is_mixed_however_few_weights_they_hold():
    """Depthwise convs hold under 5% of a model's weights: a split that keeps them float is still `mixed` (README), while a
    layer no candidate can quantize (no int8 kernel) does not make a whole-int8 model mixed."""
    from edgekit.choices import Precision
    from edgekit.quantize.candidates import Candidate, Kind
    from edgekit.quantize.int8 import _precision
    from edgekit.quantize.mixed import NO_INT8_KERNEL
    from edgekit.quantize.outcome import CandidateResult

    split = Candidate("mixed-all-but-depthwise-convs", Kind.STATIC, nodes=("down", "dense1"))
    dw = {"layer": "dw1", "op": "Conv", "kind": "depthwise", "why": "slower in int8 (900 vs 700 µs)", "float_us": 700.0, "int8_us": 900.0}
    no_kernel = {**dw, "layer": "norm", "op": "LayerNormalization", "why": NO_INT8_KERNEL}
    assert _precision(CandidateResult(split, "ok", float_layers=[dw]), 0.99) is Precision.MIXED
    assert _precision(CandidateResult(split, "ok", float_layers=[no_kernel]), 0.99) is Precision.INT8
    assert _precision(CandidateResult(split, "ok"), 0.5) is Precision.MIXED  # most weights float: mixed by the share alone
    assert _precision(CandidateResult(Candidate("float", Kind.FLOAT), "ok"), 0.0) is Precision.FP32
