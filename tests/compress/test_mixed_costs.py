"""The per-layer int8 search's parts, on models and numbers given here (no timing): units, event placement, the cut."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.quantize.costmodel import CostModel, best_split
from edgekit.quantize.graph import float_graph, name_nodes, regions
from edgekit.quantize.mincut import INF, min_cut
from edgekit.quantize.nodemap import Costs, map_profile
from edgekit.quantize.profiler import RunNode, parse_events

QUANTIZABLE = frozenset({"Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "GlobalAveragePool", "Flatten", "MaxPool"})


def _conv(name: str, x: str, cin: int, cout: int, k: int, rng, group: int = 1) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // group, k, k)) * 0.1).astype(np.float32), f"{name}.w")
    return helper.make_node("Conv", [x, w.name], [f"{name}_out"], name=name, pads=[k // 2] * 4, group=group), [w]


def _mobile_block() -> onnx.ModelProto:
    """conv3x3+Relu → depthwise → 1x1 + HardSwish (inlined: HardSigmoid + Mul, unnamed) → SE (GAP → 1x1 → Relu → 1x1 →
    HardSigmoid → Mul) → GAP → Flatten → Gemm."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for node, ws in (_conv("stem", "x", 3, 8, 3, rng), _conv("dw", "stem_relu", 8, 8, 3, rng, group=8), _conv("pw", "dw_out", 8, 16, 1, rng)):
        nodes.append(node)
        inits += ws
        if node.name == "stem":
            nodes.append(helper.make_node("Relu", ["stem_out"], ["stem_relu"], name="stem/relu"))
    nodes += [helper.make_node("HardSigmoid", ["pw_out"], ["hs_gate"]), helper.make_node("Mul", ["pw_out", "hs_gate"], ["pw_hswish_output_0"])]
    nodes.append(helper.make_node("GlobalAveragePool", ["pw_hswish_output_0"], ["se_pool"], name="se/pool"))
    for node, ws in (_conv("se/fc1", "se_pool", 16, 4, 1, rng), _conv("se/fc2", "se_relu", 4, 16, 1, rng)):
        nodes.append(node)
        inits += ws
        if node.name == "se/fc1":
            nodes.append(helper.make_node("Relu", ["se/fc1_out"], ["se_relu"], name="se/relu"))
    nodes += [helper.make_node("HardSigmoid", ["se/fc2_out"], ["se_gate"], name="se/gate"),
              helper.make_node("Mul", ["pw_hswish_output_0", "se_gate"], ["se_out"], name="se/scale"),
              helper.make_node("GlobalAveragePool", ["se_out"], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], name="fc", transB=1)]
    inits.append(numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.1).astype(np.float32), "fc.w"))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def test_nameless_nodes_are_named_after_their_output_and_every_name_is_unique():
    m = name_nodes(_mobile_block())
    names = [n.name for n in m.graph.node]
    assert len(set(names)) == len(names) and all(names)
    assert "pw_hswish" in names  # the inlined HardSwish's Mul, named as the HardSwish was


def test_activations_join_their_layer_and_squeeze_excitation_is_recognised():
    g = float_graph(name_nodes(_mobile_block()), QUANTIZABLE)
    assert g.unit_of["stem/relu"] == "stem"
    assert g.unit_of["pw_hswish"] == "pw" and g.unit_of["hs_gate"] == "pw"  # HardSigmoid + Mul = HardSwish, fused with its conv
    assert g.unit_of["se/gate"] == "se/fc2" and g.unit_of["se/scale"] == "se/scale"  # the SE scale reads two layers: its own
    assert {u for u, unit in g.units.items() if unit.gated} == {"se/pool", "se/fc1", "se/fc2", "se/scale", "pw"}
    assert (g.units["dw"].kind, g.units["pw"].kind, g.units["stem"].kind, g.units["fc"].kind) == ("depthwise", "conv1x1", "conv", "linear")
    assert g.edges["stem_relu"].producer == "stem" and g.edges["stem_relu"].consumers == ("dw",)
    assert g.edges["pw_hswish_output_0"].consumers == ("se/pool", "se/scale") and g.edges["pw_hswish_output_0"].elems == 16 * 16 * 16
    assert g.edges["logits"].to_output and g.edges["x"].producer is None
    named = regions(g)
    assert named["all but depthwise convs"] == frozenset(g.labelable()) - {"dw"}
    assert named["1x1 convs only"] == {"pw", "se/fc1", "se/fc2"}


def test_a_space_to_depth_stem_is_one_layer_with_its_conv():
    from edgekit.onnx_rewrites import space_to_depth_stem

    rng = np.random.default_rng(1)
    node, ws = _conv("stem", "x", 3, 8, 3, rng)
    node.attribute.append(helper.make_attribute("strides", [2, 2]))
    graph = helper.make_graph([node], "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("stem_out", TensorProto.FLOAT, None)], ws)
    rewritten, n = space_to_depth_stem(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    g = float_graph(name_nodes(rewritten), QUANTIZABLE)
    assert n == 1 and list(g.units) == ["stem"] and len(g.units["stem"].nodes) == 2


def _events(run: dict[str, float], ops: dict[str, str], eight_bit: set[str] = frozenset()) -> list[dict]:
    """onnxruntime's profile JSON for one run of nodes taking ``run[name]`` µs."""
    return [{"cat": "Session", "name": "model_run", "dur": sum(run.values())}] + [
        {"cat": "Node", "name": f"{n}_kernel_time", "dur": us,
         "args": {"op_name": ops[n], "input_type_shape": [{"uint8" if n in eight_bit else "float": [1]}]}} for n, us in run.items()]


def test_profile_events_are_placed_on_layers_and_borders_by_name_and_by_the_run_graph():
    g = float_graph(name_nodes(_mobile_block()), QUANTIZABLE)
    # what onnxruntime ran: x quantized and transposed, a fused QLinearConv, an NCHWc float conv named after its
    # (Relu) output, a reorder back, glue with no float name, and a node no rule places
    run = [RunNode("x_QuantizeLinear", "QuantizeLinear", ("x",), ("x_q",)),
           RunNode("Transpose", "Transpose", ("x_q",), ("x_t",)),
           RunNode("stem_token_3", "QLinearConv", ("x_t",), ("stem_q",)),
           RunNode("stem_relu_DequantizeLinear", "DequantizeLinear", ("stem_q",), ("stem_relu",)),
           RunNode("dw_out_nchwc", "Conv", ("stem_relu",), ("dw_out_nchwc",)),
           RunNode("ReorderOutput_token_9", "ReorderOutput", ("dw_out_nchwc",), ("dw_out",)),
           RunNode("se/scale", "QLinearMul", ("a", "b"), ("se_out_q",)),
           RunNode("pw_hswish/HardSwishFusion/", "HardSwish", ("pw_out",), ("fused_out",)),
           RunNode("MysteryOp_12", "Einsum", ("zz",), ("yy",))]
    us = {"x_QuantizeLinear": 10.0, "Transpose": 5.0, "stem_token_3": 40.0, "stem_relu_DequantizeLinear": 7.0, "dw_out_nchwc": 30.0,
          "ReorderOutput_token_9": 3.0, "se/scale": 2.0, "pw_hswish/HardSwishFusion/": 4.0, "MysteryOp_12": 1.0}
    ops = {n.name: n.op_type for n in run}
    prof = parse_events(_events(us, ops, {"stem_token_3", "se/scale"}), {n.name: n for n in run})
    c = map_profile(g, prof)
    assert c.unit_us == {"stem": 40.0, "dw": 30.0, "se/scale": 2.0, "pw": 4.0}  # a fusion named under its first node
    assert c.edge_us == {"x": 15.0, "stem_relu": 7.0, "dw_out": 3.0}  # the Transpose walks up to x; the reorder to dw's output
    assert c.int8_units == {"stem", "se/scale"} and c.unmapped_us == 1.0


def _chain(costs: dict[str, tuple[float, float]], borders: dict[str, tuple[float, float]]) -> CostModel:
    """A cost model over the mobile block with the given (float, int8) unit costs and (q, dq) border costs."""
    g = float_graph(name_nodes(_mobile_block()), QUANTIZABLE)
    m = CostModel(g)
    for u in g.units:
        f, q = costs.get(u, (0.0, 0.0))
        m.float_us[u], m.int8_us[u] = [f], [q]
    for t, (q, dq) in borders.items():
        m.q_us[t], m.dq_us[t] = [q], [dq]
    return m


def test_the_cut_keeps_a_layer_float_when_int8_is_slower_or_its_borders_cost_more():
    m = _chain({"stem": (100, 30), "dw": (40, 80), "pw": (50, 40), "fc": (20, 5)},
               {"x": (10, 10), "stem_relu": (15, 15), "dw_out": (20, 20), "pw_hswish_output_0": (20, 20), "flat": (1, 1)})
    split, cost = best_split(m, ["stem", "dw", "pw", "fc"])
    # stem gains 70 for a 10 border in and 15 out; dw is slower in int8; pw gains 10 but would need two 20 µs borders
    assert split == {"stem", "fc"}
    assert cost == pytest.approx(m.predict(split))


@pytest.mark.parametrize("seed", range(12))
def test_the_cut_is_the_exact_optimum_of_the_cost_model(seed):
    rng = np.random.default_rng(seed)
    g = float_graph(name_nodes(_mobile_block()), QUANTIZABLE)
    costs = {u: (float(rng.uniform(0, 100)), float(rng.uniform(0, 100))) for u in g.units}
    borders = {t: (float(rng.uniform(0, 60)), float(rng.uniform(0, 60))) for t in g.edges}
    m = _chain(costs, borders)
    allowed = sorted(g.labelable())
    split, cost = best_split(m, allowed)
    brute = min(m.predict(frozenset(c)) for r in range(len(allowed) + 1) for c in itertools.combinations(allowed, r))
    assert cost == pytest.approx(brute)


def test_a_border_never_seen_is_priced_per_element_at_the_rate_of_those_seen():
    m = _chain({}, {})
    m.q_us.clear()
    m.dq_us.clear()
    m.observe(frozenset({"stem"}), Costs({}, frozenset(), {"stem_relu": 2.0 + 0.01 * 8 * 16 * 16}, 0.0, 0.0))  # dq border on stem's output
    e = m.graph.edges["pw_hswish_output_0"]
    assert m.rate("dq") < 0.01  # one small border is shrunk toward the default (per-element, not per-launch)
    assert m.border_cost(e, "dq") == pytest.approx(2.0 + e.elems * m.rate("dq"))


def test_min_cut_on_a_small_graph():
    value, side = min_cut([("s", "a", 3), ("s", "b", 2), ("a", "b", 1), ("a", "t", 2), ("b", "t", 3), ("b", "a", INF)], "s", "t")
    assert value == 5 and side == {"s"}
    with pytest.raises(ValueError, match="no finite cut"):
        min_cut([("s", "t", INF)], "s", "t")
