"""Classical pipelines (scikit-learn, LightGBM, XGBoost converted to ONNX) before int8: what can be quantized is made so.

- Tree ensembles (``ai.onnx.ml`` TreeEnsemble*) have no int8 form: they stay float, and the run says so once.
- An MLP or linear head that edgekit converted in double (to match scikit-learn's float64 to 1e-5) has double
  MatMul/Gemm weights, which onnxruntime's quantizers skip: for int8 those layers run in float32 between two
  Casts, so the linear layers of the pipeline can be quantized (the artifact is still judged against the source).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS, iter_graphs
from edgekit.onnx_rewrites import unique_name

__all__ = ["TREE_OPS", "classical_parts"]

TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble")


def classical_parts(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, object]]:
    """``model`` with its double linear layers in float32, and what the int8 record says of the classical parts."""
    record: dict[str, object] = {}
    trees = [n for g in iter_graphs(model.graph) for n in g.node if n.op_type in TREE_OPS]
    if trees:
        decisions = sum(len(a.ints) for n in trees for a in n.attribute if a.name == "nodes_featureids")
        record["trees_float"] = (f"{len(trees)} tree ensemble(s) ({decisions:,} decision nodes) stay float: a tree compares features "
                                 "with thresholds, and ONNX has no int8 tree ensemble")
    model, n = double_linear_as_float(model)
    if n:
        record["double_linear_as_float"] = n
    return model, record


def double_linear_as_float(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Each MatMul/Gemm of the main graph whose weight is a double initializer, run in float32 between Casts."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    nodes: list[onnx.NodeProto] = []
    n = 0
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        if w is None or w.data_type != TensorProto.DOUBLE or int(np.prod(w.dims)) < MIN_WEIGHT_ELEMENTS:
            nodes.append(node)
            continue
        n += 1
        tag = unique_name(f"{node.name or node.op_type}_f32_{n}", g)  # the Casts and tensors added here carry it: unique
        x32 = f"{tag}/x"
        nodes.append(helper.make_node("Cast", [node.input[0]], [x32], to=TensorProto.FLOAT, name=f"{tag}/in"))
        node.input[0] = x32
        for i in range(1, len(node.input)):
            t = inits.get(node.input[i])
            if t is not None and t.data_type == TensorProto.DOUBLE:
                name = f"{tag}/w{i}"
                g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), name))
                node.input[i] = name
        y = node.output[0]
        node.output[0] = f"{tag}/y"
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [node.output[0]], [y], to=TensorProto.DOUBLE, name=f"{tag}/out"))
    if n:
        del g.node[:]
        g.node.extend(nodes)
        used = {i for nd in g.node for i in nd.input}
        for t in [t for t in g.initializer if t.data_type == TensorProto.DOUBLE and t.name not in used]:
            g.initializer.remove(t)
    return out, n
