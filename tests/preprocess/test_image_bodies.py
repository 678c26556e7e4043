"""JPEG and PNG bodies over HTTP: a real agent serving a model with the preprocessing baked in, on real photos."""

from __future__ import annotations

import io
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from device_agent.contract.errors import InvalidInput
from device_agent.contract.manifest import TensorSpec
from device_agent.serve.agent import Agent
from device_agent.serve.server import serve
from edgekit.compress import compress
from edgekit.options import CompressOptions
from edgekit.preprocess.pillow import reference_input
from edgekit.preprocess.spec import ImageSpec
from tests.agent.agent_helpers import write_model_dir
from tests.agent.test_server import check_response, request
from tests.preprocess.test_baked_preprocessing import NORM, _cnn

skdata = pytest.importorskip("skimage.data")
#: every photo scikit-image ships (colour, grey, one with alpha), each whole and as four corner crops: 95 images
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text")


def _images() -> list[Image.Image]:
    out = []
    for name in PHOTOS:
        a = getattr(skdata, name)()
        img = Image.fromarray(a)
        h, w = a.shape[:2]
        ch, cw = 3 * h // 4, 3 * w // 4
        out += [img] + [img.crop((x, y, x + cw, y + ch)) for x, y in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch))]
    return out


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (img.convert("RGB") if fmt == "JPEG" and img.mode not in ("L", "RGB") else img).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """The CNN compressed twice with resize_short + center_crop baked in: for any image size, and for 300x400 only."""
    root = tmp_path_factory.mktemp("baked")
    photos = root / "photos"
    photos.mkdir()
    for i, img in enumerate(_images()[::5][:6]):
        img.convert("RGB").save(photos / f"{i}.png")
    onnx.save(_cnn(), str(root / "cnn.onnx"))
    out = {}
    for key, raw_size in (("any", None), ("fixed", [300, 400])):
        spec = ImageSpec.from_dict({"resize_short": 36, "center_crop": [32, 32], **NORM, "raw_size": raw_size})
        out[key] = compress(root / "cnn.onnx", photos, CompressOptions(image_spec=spec, output=root / key)).output
    out["source"] = root / "cnn.onnx"
    return out


@pytest.fixture
def api(baked):
    agent = Agent.open(baked["any"], artifact="cnn.fp32.onnx")
    server = serve(agent, "127.0.0.1", 0)
    yield agent, server
    server.close()


def post(server, body: bytes, ctype: str):
    return request(server, "POST", "/v1/predict", body, {"Content-Type": ctype})


def test_jpeg_and_png_photos_agree_with_pillow_preprocessing_and_the_fp32_source_model(api, baked):
    agent, server = api
    spec = ImageSpec.from_dict(agent.model.manifest.raw["preprocessing"]["spec"])
    source = ort.InferenceSession(str(baked["source"]), providers=["CPUExecutionProvider"])
    agree = total = 0
    for img in _images():
        for fmt, ctype, kw in (("JPEG", "image/jpeg", {"quality": 90}), ("PNG", "image/png", {})):
            body = _encode(img, fmt, **kw)
            status, answer, _ = post(server, body, ctype)
            assert status == 200, answer
            raw = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))  # what an application decodes from the same file
            want = source.run(None, {"x": reference_input(raw, spec)[None]})[0][0]
            agree += int(np.argmax(answer["outputs"]["logits"][0]) == int(np.argmax(want)))
            total += 1
    assert total == 190
    assert agree / total >= 0.99, f"top-1 agreement {agree}/{total}"
    content = request(server, "GET", "/openapi.json")[1]["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "application/json"} <= set(content)


def test_the_exif_orientation_is_applied(api):
    _, server = api
    photo = Image.fromarray(skdata.chelsea())
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": the camera stored the pixels on their side
    sideways = _encode(photo.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    upright = _encode(photo, "PNG")
    a, b = post(server, sideways, "image/png")[1], post(server, upright, "image/png")[1]
    assert a["outputs"]["logits"] == b["outputs"]["logits"]


def test_a_fixed_size_model_refuses_another_size_and_names_the_one_it_takes(baked):
    server = serve(Agent.open(baked["fixed"], artifact="cnn.fp32.onnx"), "127.0.0.1", 0)
    try:
        photo = Image.fromarray(skdata.rocket())  # 427x640
        status, body, _ = post(server, _encode(photo, "JPEG"), "image/jpeg")
        assert status == 400 and body["error"]["kind"] == "shape"
        assert body["error"]["message"].startswith("input 'x' takes 300x400 images (H x W; the model was baked for that size); the image is 427x640.")
        status, body, _ = post(server, _encode(photo.resize((400, 300)), "JPEG"), "image/jpeg")
        assert status == 200, body
    finally:
        server.close()


def test_a_decompression_bomb_is_refused_before_decoding(baked):
    agent = Agent.open(baked["any"], artifact="cnn.fp32.onnx", max_elements=3 * 1000 * 1000)
    server = serve(agent, "127.0.0.1", 0)
    try:
        bomb = _encode(Image.new("L", (4000, 4000)), "PNG", optimize=True)  # 16 MP of black in a few kB
        assert len(bomb) < 64 * 1024
        status, body, _ = post(server, bomb, "image/png")
        assert status == 413 and body["error"]["kind"] == "too_large"
        assert "the PNG image is 4000x4000, 48,000,000 values decoded; this agent accepts at most 3,000,000" in body["error"]["message"]
        check_response(request(server, "GET", "/openapi.json")[1], "/v1/predict", "POST", 413, body)
        sliver = _encode(Image.new("RGB", (20000, 1)), "PNG")  # 60,000 values, but 36 rows of 720,000 once resized: 77.8 M
        status, body, _ = post(server, sliver, "image/png")
        assert status == 413 and body["error"]["message"].startswith(
            "the image is 20000x1; the model resizes its short side to 36, which makes it 720000x36, 77,760,000 values, more than")
    finally:
        server.close()


def test_bad_bodies_and_models_without_raw_images_say_what_to_do(api, tmp_path, monkeypatch):
    _, server = api
    status, body, _ = post(server, b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")
    assert status == 400 and body["error"]["message"].startswith("the body is not a readable JPEG image (")
    png = _encode(Image.fromarray(skdata.coffee()), "PNG")
    status, body, _ = post(server, png, "image/jpeg")  # a PNG labelled JPEG: the label decides what is accepted
    assert status == 400 and "not a readable JPEG image" in body["error"]["message"]
    monkeypatch.setitem(sys.modules, "PIL", None)  # an agent installed without the images extra
    status, body, _ = post(server, png, "image/png")
    assert status == 415 and body["error"]["message"].startswith("image bodies need Pillow on the device: pip install 'edgekit[agent-images]'")
    monkeypatch.undo()
    tensors = serve(Agent.open(write_model_dir(_cnn(), tmp_path / "tensors")), "127.0.0.1", 0)  # float32 [N, 3, 32, 32]
    try:
        status, body, _ = post(tensors, png, "image/png")
        assert status == 415 and body["error"]["message"].startswith(
            "image/png bodies are for models that take raw images (uint8 [N, H, W, 3], compressed with --preprocess); this model takes x (")
        assert "image/png" not in request(tensors, "GET", "/openapi.json")[1]["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    finally:
        tensors.close()


@pytest.fixture(params=["simplejpeg", "pillow"])
def decoder(request, monkeypatch):
    """decode_image with simplejpeg decoding the JPEGs it can, and with Pillow alone (an agent without simplejpeg)."""
    from device_agent.serve import images

    calls: list[int] = []
    if request.param == "simplejpeg":
        turbo = pytest.importorskip("simplejpeg")
        real = turbo.decode_jpeg
        monkeypatch.setattr(turbo, "decode_jpeg", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    else:
        monkeypatch.setattr(images, "_simplejpeg", lambda: None)
    spec = TensorSpec("x", "uint8", ("N", "height", "width", 3), "NHWC")

    def decode(body: bytes) -> np.ndarray:
        return images.decode_image(body, "image/jpeg", spec, max_elements=1 << 26)

    decode.calls = calls  # type: ignore[attr-defined]
    decode.fast = request.param == "simplejpeg"  # type: ignore[attr-defined]
    return decode


def test_jpeg_pixels_are_pillows_whichever_decoder_runs(decoder):
    photos = _images()
    cmyk = io.BytesIO()  # an Adobe CMYK JPEG: libjpeg-turbo cannot make RGB of it, Pillow can
    Image.fromarray(skdata.coffee()).convert("CMYK").save(cmyk, "JPEG", quality=90)
    bodies = [_encode(img, "JPEG", quality=90) for img in photos] + [cmyk.getvalue()]
    bodies.append(_encode(photos[0], "JPEG", quality=75, progressive=True, subsampling=0))
    for body in bodies:
        want = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))  # what an application decodes from the same file
        got = decoder(body)
        assert got.dtype == np.uint8 and got.shape == (1, *want.shape)
        np.testing.assert_array_equal(got[0], want)
    # every colour and grey JPEG went the fast way when it could; the CMYK one always goes through Pillow
    assert len(decoder.calls) == (len(bodies) - 1 if decoder.fast else 0)


def test_a_jpeg_with_an_exif_orientation_is_turned_and_a_truncated_one_refused(decoder):
    photo = Image.fromarray(skdata.chelsea())  # 300x451 (H x W)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    sideways = _encode(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif)
    got = decoder(sideways)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(sideways))).convert("RGB"))
    assert got.shape == (1, 300, 451, 3)
    np.testing.assert_array_equal(got[0], want)
    whole = _encode(photo, "JPEG", quality=90)
    with pytest.raises(InvalidInput, match=r"^the body is not a readable JPEG image \(") as e:
        decoder(whole[: len(whole) // 2])  # the header is whole, the pixels stop halfway
    assert e.value.kind == "malformed"
