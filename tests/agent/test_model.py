import json

import numpy as np
import onnx
import pytest

from device_agent.contract.errors import ModelError
from device_agent.contract.manifest import load_manifest
from device_agent.runtime.model import load_model, top_k
from device_agent.serve.agent import Agent
from tests.agent.agent_helpers import nhwc_variant, two_input_model, write_model_dir


def test_compress_output_loads_the_ort_artifact_and_passes_selftest(digits_dir):
    m = load_model(digits_dir)
    manifest = load_manifest(digits_dir)
    assert m.file.suffix == ".ort" and m.artifact.format == "ort"
    assert m.name == manifest.name and m.version == manifest.version
    assert m.selftest.passed and m.selftest.vectors >= 1
    assert m.inputs == manifest.inputs


def test_format_preference_and_explicit_artifact(digits_dir):
    onnx_art = next(a.file for a in load_manifest(digits_dir).artifacts if a.format == "onnx")
    assert load_model(digits_dir, prefer=["onnx", "ort"]).file.name == onnx_art
    assert load_model(digits_dir, artifact=onnx_art).file.name == onnx_art


def test_no_usable_artifact_lists_what_the_manifest_has(digits_copy):
    with pytest.raises(ModelError, match=r"no artifact of format tflite is usable .* the manifest lists: .*\(ort\)"):
        load_model(digits_copy, prefer=["tflite"])
    for f in digits_copy.glob("*.ort"):
        f.unlink()
    assert load_model(digits_copy).file.suffix == ".onnx"  # a missing file is skipped, not fatal


def test_tampered_artifact_is_refused(digits_copy):
    art = next(digits_copy.glob("*.ort"))
    data = bytearray(art.read_bytes())
    data[-10] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its sha256"):
        load_model(digits_copy)


def test_wrong_expected_outputs_fail_the_selftest_and_the_agent_is_not_ready(digits_copy):
    manifest = json.loads((digits_copy / "edgekit.json").read_text())
    for tol in manifest["selftest"]["tolerance"].values():
        tol["atol"], tol["rtol"] = 1e-9, 1e-9
    v = manifest["selftest"]["vectors"][0]
    from device_agent.contract.manifest import decode_tensor, encode_tensor

    for outs in v["expected"].values():
        for name, t in outs.items():
            outs[name] = encode_tensor(decode_tensor(t) + 1.0)
    (digits_copy / "edgekit.json").write_text(json.dumps(manifest))
    m = load_model(digits_copy)
    assert not m.selftest.passed and "vector 0: output 'logits' differs from the expected values" in m.selftest.detail
    agent = Agent(m)
    assert not agent.ready
    from device_agent.contract.errors import NotReady

    with pytest.raises(NotReady, match="self-test failed"):
        agent.predict({"x": np.zeros((1, 1, 8, 8), np.float32)})


def test_nhwc_artifact_answers_source_layout_requests_like_the_nchw_one(digits, tmp_path):
    nchw = onnx.load(digits["model"])
    x = np.load(digits["eval"])["x"][:5]
    a = write_model_dir(nchw, tmp_path / "nchw", selftest_inputs=[{"x": x[:1]}], layouts=("NCHW", "NCHW"))
    b = write_model_dir(nhwc_variant(nchw), tmp_path / "nhwc", selftest_inputs=[{"x": x[:1]}], perm=(0, 2, 3, 1), layouts=("NCHW", "NHWC"),
                        source_inputs=[{"name": "x", "dtype": "float32", "shape": ["N", 1, 8, 8], "layout": "NCHW"}])
    ma, mb = load_model(a), load_model(b)
    assert mb.selftest.passed, mb.selftest.detail
    assert mb.backend.inputs[0].shape == ("N", 1, 8, 8) and mb.backend.inputs[0].layout == "NCHW"  # reported in the source layout
    ya = Agent(ma).predict({"x": x}).outputs["logits"]
    yb = Agent(mb).predict({"x": x}).outputs["logits"]
    np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-5)


def test_session_flags_in_a_manifest_are_not_honoured(tmp_path):
    """The device opens an artifact as the plain InferenceSession it was judged in (older manifests carry
    session.disable_quant_qdq): a flag in the manifest must not change how it runs."""
    d = write_model_dir(two_input_model(), tmp_path / "m", extra={"session_config": {"session.disable_quant_qdq": "1"}})
    options = load_model(d).backend.session.get_session_options()
    with pytest.raises(RuntimeError):  # onnxruntime: no such entry in these options
        options.get_session_config_entry("session.disable_quant_qdq")


def test_bare_onnx_file_serves_with_its_own_signature(digits):
    m = load_model(digits["model"])
    assert m.manifest is None and m.version == "unversioned" and m.is_classifier
    assert m.inputs[0].shape == ("N", 1, 8, 8)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(digits["model"].parent / "nope.onnx")


def test_top_k_uses_softmax_for_logits_and_labels():
    scores = np.array([[1.0, 3.0, 2.0]])
    top = top_k(scores, 2, ("cat", "dog", "eel"))
    assert [t["label"] for t in top[0]] == ["dog", "eel"]
    p = np.exp([1.0, 3.0, 2.0]) / np.exp([1.0, 3.0, 2.0]).sum()
    assert top[0][0]["score"] == pytest.approx(p[1], abs=1e-6)
    probs = np.array([[0.2, 0.5, 0.3]])
    assert top_k(probs, 1, None)[0][0] == {"index": 1, "label": "1", "score": 0.5}


def test_top_k_with_many_classes_matches_a_full_sort():
    scores = np.random.default_rng(0).standard_normal((3, 1000))
    got = top_k(scores, 5, None)
    for row, t in zip(scores, got, strict=True):
        assert [d["index"] for d in t] == np.argsort(-row)[:5].tolist()


def test_the_backend_answers_like_the_public_session_run_and_fails_as_a_backend_error(digits_dir):
    # the backend calls the session's binding directly (no second feed check): same outputs, same errors
    from device_agent.runtime.base import BackendError

    m = load_model(digits_dir)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    want = m.backend.session.run(None, {"x": x})[0]
    assert np.array_equal(m.run({"x": x})["logits"], want)
    with pytest.raises(BackendError, match=r"onnxruntime failed on digits\.int8\.ort"):
        m.run({"y": x})


@pytest.mark.parametrize("row", [
    [1.0, 3.0, 2.0, 3.0],  # logits with a tie: the lower index first
    [0.25, 0.25, 0.5, 0.0],  # probabilities (no softmax)
    [0.0, 0.0, 0.0, 0.0],  # all tied
    [-1e4, 5.0, 5.0, -3.0],
    [3e38, 3e38, 1.0, 0.0],  # finite values whose sum overflows: numpy's path either way
    [np.nan, 1.0, 0.0, 2.0],
    [np.inf, 1.0, 0.0, 2.0],
])
def test_top_k_of_one_small_row_in_python_is_what_numpy_gives_for_many(row):
    # one small row goes through plain Python (a request's fixed cost); two rows through numpy: same answers
    one = np.array([row], np.float32)
    labels = ("a", "b", "c")  # shorter than the row: the 4th class is named by its index
    for k in (1, 3, 4):
        python = top_k(one, k, labels)
        numpy_ = top_k(np.repeat(one, 2, axis=0), k, labels)
        assert [[d["index"] for d in r] for r in python] == [[d["index"] for d in numpy_[0]]]
        assert [d["label"] for d in python[0]] == [d["label"] for d in numpy_[0]]
        assert np.allclose([d["score"] for d in python[0]], [d["score"] for d in numpy_[0]], atol=2e-6, equal_nan=True)
