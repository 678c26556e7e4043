"""A fitted scikit-learn pipeline → one ONNX graph (skl2onnx; onnxmltools for LightGBM and XGBoost).

One input per column, ``[N, 1]``: strings stay ``string``, numbers are ``double`` (a JSON number
is a double, and scikit-learn computes the column transformers in float64). Outputs:
``probabilities`` (float32 ``[N, classes]``, first, a plain tensor: no ZipMap) and ``label``.

Matching scikit-learn to 1e-5 needs each part in the precision scikit-learn computes it in:

- the transformers (imputers, scalers, encoders) run in double;
- the final estimator gets the features cast to what it casts them to itself: float32 for the
  tree ensembles of ``sklearn.tree`` (a random forest compares float32 features with its
  thresholds), XGBoost and LightGBM; double for HistGradientBoosting (float64 thresholds),
  linear models and MLPs. A float32 scaler in front of a forest moves values across thresholds
  (15 of 344 penguins changed probabilities by up to 0.1 that way);
- string imputers (``missing_values=nan`` in a DataFrame) replace ``""``, the missing string in
  the graph: skl2onnx converts only string-valued missing markers;
- ONNX Runtime has no double ``Imputer``: it becomes ``Where(IsNaN(x), value, x)``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import InputError, MissingExtraError

__all__ = ["FLOAT32_ESTIMATORS", "SUPPORTED", "TREE_ENSEMBLES", "convert_pipeline", "steps_of"]

#: what edgekit converts and checks, by class name
SUPPORTED = {
    "Pipeline": "sklearn", "ColumnTransformer": "sklearn", "SimpleImputer": "sklearn", "StandardScaler": "sklearn",
    "MinMaxScaler": "sklearn", "MaxAbsScaler": "sklearn", "RobustScaler": "sklearn", "OneHotEncoder": "sklearn",
    "LogisticRegression": "sklearn", "RandomForestClassifier": "sklearn", "ExtraTreesClassifier": "sklearn",
    "DecisionTreeClassifier": "sklearn", "GradientBoostingClassifier": "sklearn", "HistGradientBoostingClassifier": "sklearn",
    "MLPClassifier": "sklearn", "LGBMClassifier": "lightgbm", "XGBClassifier": "xgboost",
}
#: final estimators that compute on float32 features
FLOAT32_ESTIMATORS = {"RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier", "GradientBoostingClassifier",
                      "LGBMClassifier", "XGBClassifier"}
TREE_ENSEMBLES = FLOAT32_ESTIMATORS | {"HistGradientBoostingClassifier"}
OPSET = {"": 17, "ai.onnx.ml": 3}


def steps_of(est: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every estimator inside ``est`` (Pipeline steps, ColumnTransformer branches), with a path naming it (``pre/num/scale``)."""
    yield path or type(est).__name__, est
    children: list[tuple[str, Any]] = []
    if hasattr(est, "steps"):
        children = list(est.steps)
    elif hasattr(est, "transformers_"):
        children = [(name, t) for name, t, _ in est.transformers_]
    for name, child in children:
        if isinstance(child, str):  # "passthrough" / "drop"
            continue
        yield from steps_of(child, f"{path}/{name}" if path else name)


def check_supported(est: Any, file: str) -> None:
    """InputError naming the first step edgekit does not convert, and what it does."""
    for path, step in steps_of(est):
        name = type(step).__name__
        if name not in SUPPORTED:
            raise InputError(f"{file}: step {path!r} is a {name}, which edgekit does not convert; supported: {', '.join(sorted(SUPPORTED))}")
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    if not hasattr(final, "predict_proba"):
        raise InputError(f"{file}: the final step is a {type(final).__name__}; edgekit converts classifiers "
                         "(LogisticRegression, forests, boosted trees, MLPClassifier, LightGBM, XGBoost)")


def convert_pipeline(est: Any, columns: list[tuple[str, bool]], *, file: str) -> onnx.ModelProto:
    """``est`` (not modified) as one ONNX model; ``columns`` is (name, is_string) per input, in the pipeline's order."""
    check_supported(est, file)
    try:
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
    except ImportError:
        raise MissingExtraError("Converting scikit-learn pipelines", "sklearn") from None
    est = copy.deepcopy(est)
    _string_imputers_take_empty(est)
    pre, final = (est[:-1], est.steps[-1][1]) if hasattr(est, "steps") and len(est.steps) > 1 else (None, est[-1] if hasattr(est, "steps") else est)
    types = [(c, StringTensorType([None, 1]) if s else DoubleTensorType([None, 1])) for c, s in columns]
    width = _n_features(pre, final)
    f32 = type(final).__name__ in FLOAT32_ESTIMATORS
    head = _convert(final, [("features", (FloatTensorType if f32 else DoubleTensorType)([None, width]))], classifier=True, file=file)
    if pre is not None and any(s for _, s in columns) or pre is not None and type(pre.steps[0][1]).__name__ == "ColumnTransformer":
        body = _convert(pre, types, classifier=False, file=file)
        features = body.graph.output[0].name
    else:
        body, features = _concat(columns, pre, file)
    model = _join(body, features, head, TensorProto.FLOAT if f32 else TensorProto.DOUBLE)
    _imputers_as_where(model)
    return _outputs(model)


def _n_features(pre: Any, final: Any) -> int:
    n = getattr(final, "n_features_in_", None)
    if n is None:
        raise InputError(f"the final step {type(final).__name__} is not fitted; fit the pipeline before saving it")
    return int(n)


@contextlib.contextmanager
def _tree_attrs_as_ints() -> Iterator[None]:
    """skl2onnx 1.20 passes Python bools into an ints attribute for HistGradientBoosting, which protobuf ≥ 5 refuses."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(kwargs["nodes_missing_value_tracks_true"])
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def _convert(est: Any, types: list[tuple[str, Any]], *, classifier: bool, file: str) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn

    _register_boosters()
    options = {id(est): {"zipmap": False}} if classifier else None
    try:
        with _tree_attrs_as_ints():
            return convert_sklearn(est, initial_types=types, options=options, target_opset=OPSET)
    except Exception as e:  # noqa: BLE001 - skl2onnx raises many types
        raise InputError(f"{file}: skl2onnx cannot convert {type(est).__name__}: {str(e).splitlines()[0][:300]}") from None


def _register_boosters() -> None:
    """LightGBM and XGBoost classifiers inside a Pipeline, through onnxmltools' converters (when installed)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    with contextlib.suppress(ImportError):
        from lightgbm import LGBMClassifier
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes, convert_lightgbm,
                                    options=options)
    with contextlib.suppress(ImportError):
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier

        update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes, convert_xgboost,
                                    options=options)


def _string_imputers_take_empty(est: Any) -> None:
    """Imputers of string columns replace ``""`` (how a missing string reaches the graph) instead of NaN."""
    for _, step in steps_of(est):
        if type(step).__name__ == "SimpleImputer" and getattr(step, "statistics_", np.zeros(0)).dtype.kind in "OUS":
            step.missing_values = ""


def _concat(columns: list[tuple[str, bool]], pre: Any, file: str) -> tuple[onnx.ModelProto, str]:
    """Numeric columns joined into one [N, F] double tensor, for a pipeline fitted on a plain feature matrix."""
    from skl2onnx.common.data_types import DoubleTensorType

    if pre is None:
        nodes = [helper.make_node("Concat", [c for c, _ in columns], ["edgekit_features"], axis=1, name="edgekit/columns")]
        graph = helper.make_graph(nodes, "columns", [helper.make_tensor_value_info(c, TensorProto.DOUBLE, [None, 1]) for c, _ in columns],
                                  [helper.make_tensor_value_info("edgekit_features", TensorProto.DOUBLE, [None, len(columns)])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSET.items()])
        return model, "edgekit_features"
    body = _convert(pre, [("edgekit_columns", DoubleTensorType([None, len(columns)]))], classifier=False, file=file)
    body.graph.node.insert(0, helper.make_node("Concat", [c for c, _ in columns], ["edgekit_columns"], axis=1, name="edgekit/columns"))
    del body.graph.input[:]
    body.graph.input.extend(helper.make_tensor_value_info(c, TensorProto.DOUBLE, [None, 1]) for c, _ in columns)
    return body, body.graph.output[0].name


def _join(body: onnx.ModelProto, features: str, head: onnx.ModelProto, dtype: int) -> onnx.ModelProto:
    """``body``'s features, cast to ``dtype``, feed ``head``'s one input; ``head``'s names are prefixed ``clf/``."""
    out = onnx.ModelProto()
    out.CopyFrom(body)
    g, h = out.graph, head.graph
    fin = h.input[0].name
    rename = {n: f"clf/{n}" for node in h.node for n in node.output} | {t.name: f"clf/{t.name}" for t in h.initializer}
    rename[fin] = "edgekit_features_cast"
    g.node.append(helper.make_node("Cast", [features], ["edgekit_features_cast"], to=dtype, name="edgekit/features_cast"))
    for node in h.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"clf/{node.name}"
        new.input[:] = [rename.get(i, i) for i in node.input]
        new.output[:] = [rename.get(o, o) for o in node.output]
        g.node.append(new)
    for t in h.initializer:
        nt = onnx.TensorProto()
        nt.CopyFrom(t)
        nt.name = rename[t.name]
        g.initializer.append(nt)
    del g.output[:]
    for o in h.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        vi.name = rename.get(o.name, o.name)
        g.output.append(vi)
    have = {(o.domain, o.version) for o in out.opset_import}
    out.opset_import.extend(o for o in head.opset_import if (o.domain, o.version) not in have and o.domain not in {d for d, _ in have})
    return out


def _imputers_as_where(model: onnx.ModelProto) -> None:
    """ai.onnx.ml Imputer on doubles (ONNX Runtime runs it on floats only) as ``Where(IsNaN(x), values, x)``."""
    g = model.graph
    nodes = []
    for n in g.node:
        if n.op_type != "Imputer" or n.domain != "ai.onnx.ml":
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        values = np.array(attrs.get("imputed_value_floats") or attrs.get("imputed_value_int64s"), dtype=np.float64).reshape(1, -1)
        g.initializer.append(numpy_helper.from_array(values, f"{n.name}/values"))
        nodes += [helper.make_node("IsNaN", [n.input[0]], [f"{n.name}/isnan"], name=f"{n.name}/isnan"),
                  helper.make_node("Where", [f"{n.name}/isnan", f"{n.name}/values", n.input[0]], [n.output[0]], name=n.name)]
    del g.node[:]
    g.node.extend(nodes)


def _outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Outputs ``probabilities`` (float32, first: it is what quality is judged on) and ``label``."""
    g = model.graph
    label, proba = g.output[0], g.output[1]
    if proba.type.tensor_type.elem_type != TensorProto.FLOAT:
        g.node.append(helper.make_node("Cast", [proba.name], ["probabilities"], to=TensorProto.FLOAT, name="edgekit/probabilities"))
    else:
        g.node.append(helper.make_node("Identity", [proba.name], ["probabilities"], name="edgekit/probabilities"))
    g.node.append(helper.make_node("Identity", [label.name], ["label"], name="edgekit/label"))
    label_type = label.type.tensor_type.elem_type
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, None]),
                     helper.make_tensor_value_info("label", label_type, [None])])
    return model
