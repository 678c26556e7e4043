"""Image preprocessing baked into the artifacts, checked against Pillow on real photos (scikit-image's bundled images)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from device_agent.contract.manifest import load_manifest
from device_agent.runtime.model import load_model
from edgekit.choices import Objective
from edgekit.compress import compress
from edgekit.errors import DataError
from edgekit.onnx_model import io_specs
from edgekit.options import CompressOptions
from edgekit.pipeline import StepSpec
from edgekit.preprocess.bake import bake
from edgekit.preprocess.pillow import fit_raw, reference_input
from edgekit.preprocess.spec import ImageSpec

skdata = pytest.importorskip("skimage.data")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")
NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _photos() -> dict[str, np.ndarray]:
    return {n: getattr(skdata, n)()[..., :3] for n in PHOTOS}


def _cnn(size: int = 32, classes: int = 5, seed: int = 0, *, channels: int = 3, layout: str = "NCHW") -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, channels, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, classes))).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x" if layout == "NCHW" else "x_nchw", "w1"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"), helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc")]
    shape = ["N", channels, size, size]
    if layout == "NHWC":  # a network that takes channel-last images
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2], name="to_nchw"))
        shape = ["N", size, size, channels]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _levels(got: np.ndarray, want: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """|got - want| in pixel levels (0..255 before the scale and the mean/std), for one image in the spec's layout."""
    shape = [1, 1, 1]
    shape[0 if spec.layout == "NCHW" else -1] = len(spec.std)
    return np.abs(got.astype(np.float64) - want) * (np.array(spec.std, np.float64) / spec.scale).reshape(shape)


def _preprocess(spec_doc: dict, *, channels: int = 3, layout: str = "NCHW"):
    """(ORT session of the baked preprocessing alone, the completed spec) for a 224x224 network."""
    model = _cnn(224, channels=channels, layout=layout)
    baked = bake(model, ImageSpec.from_dict(spec_doc), io_specs(model)[0])
    return ort.InferenceSession(baked.preprocess.SerializeToString(), providers=["CPUExecutionProvider"]), baked.spec


CHANNEL_CASES = [("rgb", "NCHW"), ("bgr", "NHWC"), ("gray", "NCHW")]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("raw_size", [None, (480, 640), (333, 517)])
@pytest.mark.parametrize(("channels", "layout"), CHANNEL_CASES)
def test_the_baked_ops_match_pillow_within_one_pixel_level_on_photos(interpolation, raw_size, channels, layout):
    doc = {"resize_short": 256, "center_crop": [224, 224], "interpolation": interpolation, "channels": "bgr" if channels == "bgr" else "rgb",
           **(NORM if channels != "gray" else {"mean": [0.45], "std": [0.226]}), "raw_size": list(raw_size) if raw_size else None}
    sess, spec = _preprocess(doc, channels=1 if channels == "gray" else 3, layout=layout)
    worst = 0.0
    for img in _photos().values():
        raw = fit_raw(img, raw_size) if raw_size else img  # any size: each photo at its own size
        got = sess.run(None, {"x": raw[None]})[0][0]
        worst = max(worst, float(_levels(got, reference_input(raw, spec), spec).max()))
    if interpolation == "nearest" and raw_size is None:
        assert worst <= 255  # Pillow's tie-breaking is not replayed at any size: documented
    else:
        assert worst <= 1.0 + 1e-3
    if interpolation == "nearest" and raw_size is not None:
        assert worst < 1e-3  # Pillow's own sampling, replayed exactly


@pytest.mark.parametrize(("channels", "layout"), CHANNEL_CASES)
@pytest.mark.parametrize(("resize", "exact"), [({"center_crop": [224, 224]}, True), ({}, True),
                                               ({"resize_short": 256, "center_crop": [224, 224]}, False),
                                               ({"interpolation": "bicubic"}, False)])
def test_the_fixed_size_graph_agrees_with_the_any_size_graph(channels, layout, resize, exact):
    """At the size it was built for, the fixed-size graph gives the any-size graph's values: the very same where
    neither resamples (a crop, or an image already at the network's size: the same slices and channel ops), within
    one level where both resample (Pillow's tables against ONNX Resize)."""
    doc = {**resize, "channels": "bgr" if channels == "bgr" else "rgb", **(NORM if channels != "gray" else {"mean": [0.45], "std": [0.226]})}
    raw_size = (224, 224) if not resize else (300, 400)
    kw = {"channels": 1 if channels == "gray" else 3, "layout": layout}
    fixed, spec = _preprocess({**doc, "raw_size": list(raw_size)}, **kw)
    any_size, _ = _preprocess(doc, **kw)
    for img in _photos().values():
        raw = fit_raw(img, raw_size)[None]
        got, want = fixed.run(None, {"x": raw})[0], any_size.run(None, {"x": raw})[0]
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            assert float(_levels(got[0], want[0], spec).max()) <= 1.0 + 1e-3


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("channels", ["rgb", "bgr", "gray"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_a_whole_baked_model_of_any_size_loads_in_a_default_session_whatever_the_networks_layout(interpolation, channels, layout):
    """onnxruntime's transpose optimizer pushes an NHWC network's opening Transpose up into the preprocessing; through
    a Resize with an ``axes`` attribute it left an empty ``sizes`` and the model failed to load (an "internal error"
    from ``edgekit compress``). The whole model answers as its two halves run one after the other."""
    c = 1 if channels == "gray" else 3
    model = _cnn(224, channels=c, layout=layout)
    doc = {"resize_short": 256, "center_crop": [224, 224], "interpolation": interpolation, "channels": channels,
           **(NORM if channels != "gray" else {"mean": [0.45], "std": [0.226]})}
    baked = bake(model, ImageSpec.from_dict(doc), io_specs(model)[0])
    whole = ort.InferenceSession(baked.model.SerializeToString(), providers=["CPUExecutionProvider"])
    pre = ort.InferenceSession(baked.preprocess.SerializeToString(), providers=["CPUExecutionProvider"])
    net = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for img in list(_photos().values())[:3]:
        x = net.run(None, {"x": pre.run(None, {"x": img[None]})[0]})[0]
        np.testing.assert_allclose(whole.run(None, {"x": img[None]})[0], x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("channels", ["bgr", "gray"])
@pytest.mark.parametrize("raw_size", [(480, 640), (100, 150)])
def test_no_gather_of_the_fixed_size_graph_reads_along_the_innermost_axis(interpolation, channels, raw_size):
    """A Gather along the innermost axis copies element by element (a 640x480 photo's column pass took ~25 ms in ORT,
    ~7x the whole graph now): every Gather copies whole rows. Checked on the graph, not timed."""
    model = _cnn(224, channels=1 if channels == "gray" else 3)
    doc = {"resize_short": 256, "center_crop": [224, 224], "interpolation": interpolation, "channels": "bgr" if channels == "bgr" else "rgb",
           "raw_size": list(raw_size)}
    pre = onnx.shape_inference.infer_shapes(bake(model, ImageSpec.from_dict(doc), io_specs(model)[0]).preprocess, strict_mode=True)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in [*pre.graph.input, *pre.graph.value_info]}
    gathers = [n for n in pre.graph.node if n.op_type == "Gather"]
    assert len(gathers) >= 2 + (channels == "bgr")  # the columns, the rows, the channel order
    for node in gathers:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        assert axis % ranks[node.input[0]] != ranks[node.input[0]] - 1, node.name


@pytest.mark.parametrize("raw_size", [None, [300, 400]])
def test_compress_bakes_the_preprocessing_agrees_with_pillow_and_the_agent_serves_raw_images(tmp_path, raw_size):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, img in _photos().items():
        Image.fromarray(img).save(photos / f"{name}.png")
    onnx.save(_cnn(), str(tmp_path / "cnn.onnx"))
    spec = ImageSpec.from_dict({"resize_short": 36, "center_crop": [32, 32], **NORM, "raw_size": raw_size})
    result = compress(tmp_path / "cnn.onnx", photos, CompressOptions(image_spec=spec, output=tmp_path / "out"))
    m = load_manifest(result.output)
    assert m.inputs[0].dtype == "uint8" and m.inputs[0].layout == "NHWC"
    assert list(m.inputs[0].shape) == (["N", *raw_size, 3] if raw_size else ["N", "height", "width", 3])
    pre = m.raw["preprocessing"]
    assert pre["model_input"]["dtype"] == "float32" and pre["spec"]["center_crop"] == [32, 32] and pre["any_size"] is (raw_size is None)
    assert pre["parity"]["max_levels"] <= 1.0 and pre["parity"]["images"] >= len(PHOTOS)
    for art in ("cnn.fp32.onnx", "cnn.fp32.ort"):
        parity = m.metrics[art]["origin_parity"]
        assert parity["ok"] and parity["agreement"] >= 99.0, parity
    assert [f["name"] for f in m.raw["drift_profile"]["features"]] == ["x[0]", "x[1]", "x[2]"]  # raw pixel values, per channel
    served = load_model(result.output)
    assert served.selftest.passed, served.selftest.detail
    assert served.run({"x": fit_raw(_photos()["coffee"], tuple(raw_size) if raw_size else (400, 600))[None]})["logits"].shape == (1, 5)


def test_spec_errors_name_the_key():
    with pytest.raises(DataError, match="resize_short keeps the aspect ratio, so the network's fixed H x W needs a center_crop too"):
        ImageSpec.from_dict({"resize_short": 256})
    with pytest.raises(DataError, match="interpolation is 'lanczos'; allowed: bilinear, bicubic, nearest"):
        ImageSpec.from_dict({"interpolation": "lanczos"})
    with pytest.raises(DataError, match=r"raw_size is \[0, 5\]; give two positive whole numbers \[H, W\]"):
        ImageSpec.from_dict({"raw_size": [0, 5]})


@pytest.mark.parametrize("raw_size", [None, [300, 400]])
def test_int8_keeps_the_baked_preprocessing_float(tmp_path, raw_size):
    """Static int8 of a model with its preprocessing baked in: the edgekit_pre/ ops stay float (a Resize of any size
    breaks static int8; int8 pixels would only add rounding), the network behind them is quantized."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, img in _photos().items():
        Image.fromarray(img).save(photos / f"{name}.png")
    onnx.save(_cnn(), str(tmp_path / "cnn.onnx"))
    spec = ImageSpec.from_dict({"resize_short": 36, "center_crop": [32, 32], **NORM, "raw_size": raw_size})
    opts = CompressOptions(image_spec=spec, steps=[StepSpec("int8", {"max_drop": 100.0, "mixed": False})], formats=("onnx",),
                           objective=Objective.SIZE, output=tmp_path / "out")
    result = compress(tmp_path / "cnn.onnx", photos, opts)
    m = load_manifest(result.output)
    art = next(a for a in m.artifacts if a.format == "onnx")
    assert art.precision in ("int8", "mixed"), art.precision
    model = onnx.load(str(result.output / art.file))
    pre_ops = {n.op_type for n in model.graph.node if n.name.startswith("edgekit_pre/")}
    assert pre_ops and not pre_ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "DynamicQuantizeLinear"}, pre_ops
    assert any(n.op_type in ("QLinearConv", "ConvInteger", "DequantizeLinear", "QLinearMatMul", "MatMulInteger") for n in model.graph.node)
    assert m.inputs[0].dtype == "uint8"
    parity = m.metrics[art.file]["origin_parity"]
    assert parity["ok"], parity


@pytest.mark.parametrize(("interpolation", "channels"), [("bilinear", "rgb"), ("bicubic", "bgr")])
def test_a_tflite_of_baked_preprocessing_takes_raw_nhwc_images_in_a_plain_interpreter(tmp_path, interpolation, channels):
    """onnx2tf would transpose a 4-D input as if it were NCHW: the raw uint8 image must stay [N, H, W, 3]. The .tflite
    gives the .onnx's outputs (the column pass gathers from the bytes laid out [N, W, C, H], then transposes back)."""
    pytest.importorskip("onnx2tf")
    from ai_edge_litert.interpreter import Interpreter

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, img in _photos().items():
        Image.fromarray(img).save(photos / f"{name}.png")
    onnx.save(_cnn(), str(tmp_path / "cnn.onnx"))
    spec = ImageSpec.from_dict({"resize_short": 36, "center_crop": [32, 32], **NORM, "raw_size": [300, 400], "interpolation": interpolation,
                                "channels": channels})
    result = compress(tmp_path / "cnn.onnx", photos, CompressOptions(image_spec=spec, formats=("onnx", "tflite"), output=tmp_path / "out"))
    m = load_manifest(result.output)
    art = next(a for a in m.artifacts if a.format == "tflite")
    assert list(art.inputs[0].shape) == ["N", 300, 400, 3] and art.inputs[0].dtype == "uint8"
    assert m.metrics[art.file]["origin_parity"]["ok"]
    interp = Interpreter(model_path=str(result.output / art.file))  # as a user opens it
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    assert list(detail["shape"]) == [1, 300, 400, 3] and detail["dtype"] == np.uint8
    interp.set_tensor(detail["index"], fit_raw(_photos()["coffee"], (300, 400))[None])
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    want = ort.InferenceSession(str(result.output / "cnn.fp32.onnx")).run(None, {"x": fit_raw(_photos()["coffee"], (300, 400))[None]})[0]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_a_tflite_of_any_size_images_asks_for_raw_size(tmp_path):
    pytest.importorskip("onnx2tf")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_photos()["coffee"]).save(photos / "coffee.png")
    onnx.save(_cnn(), str(tmp_path / "cnn.onnx"))
    spec = ImageSpec.from_dict({"resize_short": 36, "center_crop": [32, 32], **NORM})
    with pytest.raises(Exception, match=r"a \.tflite needs one size\. Add raw_size: \[height, width\]"):
        compress(tmp_path / "cnn.onnx", photos, CompressOptions(image_spec=spec, formats=("tflite",), output=tmp_path / "out"))
