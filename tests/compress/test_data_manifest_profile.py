"""Data loading, the manifest reader and the drift profile, unit by unit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from device_agent.contract.manifest import ManifestError, TensorSpec, decode_tensor, encode_tensor, load_manifest, version_key
from edgekit.data import ImageSpec, generate, load_data
from edgekit.errors import DataError
from edgekit.profile import drift_profile

IMG = (TensorSpec("image", "float32", ("N", 3, 16, 16), "NCHW"),)
VEC = (TensorSpec("x", "float32", ("N", 4)),)


def test_single_input_npz_may_use_any_name_and_one_hot_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, whatever=np.ones((5, 4), np.float64), labels=np.eye(5, 3))
    ds = load_data(p, VEC)
    assert ds.inputs["x"].dtype == np.float32 and ds.n == 5
    assert ds.labels.tolist() == [0, 1, 2, 0, 0]
    assert ds.describe()["labelled"] is True and len(ds.describe()["sha256"]) == 64


def test_npy_for_single_input_and_integer_range_checks(tmp_path):
    p = tmp_path / "d.npy"
    np.save(p, np.arange(8, dtype=np.int64).reshape(2, 4))
    ds = load_data(p, (TensorSpec("ids", "int8", ("N", 4)),))
    assert ds.inputs["ids"].dtype == np.int8
    np.save(p, np.full((2, 4), 1000, np.int64))
    with pytest.raises(DataError, match=r"Input 'ids' is int8; d.npy has values outside its range \[-128, 127\]"):
        load_data(p, (TensorSpec("ids", "int8", ("N", 4)),))


def test_mismatched_sample_counts_and_label_counts(tmp_path):
    specs = (TensorSpec("a", "float32", ("N", 2)), TensorSpec("b", "float32", ("N", 2)))
    p = tmp_path / "d.npz"
    np.savez(p, a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"inputs have different sample counts \[3, 4\]"):
        load_data(p, specs)
    np.savez(p, a=np.zeros((3, 2)), b=np.zeros((3, 2)), labels=np.arange(2))
    with pytest.raises(DataError, match="'labels' has 2 entries for 3 samples"):
        load_data(p, specs)


def test_unsupported_and_missing_data_files(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        load_data(tmp_path / "none.npz", VEC)
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"d.txt: unsupported data file; use .npz"):
        load_data(tmp_path / "d.txt", VEC)
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")  # a table feeds one input per column
    with pytest.raises(DataError, match=r"d.csv: a table feeds a model with one input per column \(\[N, 1\]\); this model's inputs are x"):
        load_data(tmp_path / "d.csv", VEC)


def _images(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_with_class_subfolders_and_a_preprocessing_spec(tmp_path):
    _images(tmp_path / "imgs")
    spec = tmp_path / "pre.yaml"
    spec.write_text("scale: 0.00392156862745098\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\nchannels: bgr\n")
    ds = load_data(tmp_path / "imgs", IMG, image_spec=ImageSpec.from_file(spec))
    assert ds.inputs["image"].shape == (6, 3, 16, 16) and ds.inputs["image"].dtype == np.float32
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.class_names == ["cat", "dog"]
    x = ds.inputs["image"]
    assert -2.1 <= x.min() and x.max() <= 2.1  # (p/255 - 0.5) / 0.25
    assert "6 images from imgs/ (NCHW, 16x16" in ds.description


def test_image_folder_nhwc_model_and_bad_spec(tmp_path):
    _images(tmp_path / "imgs", classes=("a",), per_class=2)
    nhwc = (TensorSpec("image", "float32", ("N", 16, 16, 3)),)
    ds = load_data(tmp_path / "imgs", nhwc)
    assert ds.inputs["image"].shape == (2, 16, 16, 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: 1\ncolour: rgb\n")
    with pytest.raises(DataError, match=r"unknown preprocessing key\(s\) colour; allowed: bake, center_crop, channels, interpolation, layout, mean, raw_size, resize_short, scale, size, std"):
        ImageSpec.from_file(bad)
    with pytest.raises(DataError, match="an image folder feeds a model with one 4-D image input"):
        load_data(tmp_path / "imgs", VEC)


def test_generated_data_matches_the_signature():
    specs = (TensorSpec("x", "float32", ("N", 3, 8, 8)), TensorSpec("ids", "int64", ("N", "T")), TensorSpec("rate", "float32", ()))
    ds = generate(specs, 10)
    assert ds.generated and ds.inputs["x"].shape == (10, 3, 8, 8) and ds.inputs["ids"].dtype == np.int64
    assert ds.inputs["rate"].shape == (10,)


def test_drift_profile_bins_channels_and_columns():
    rng = np.random.default_rng(0)
    img = generate(IMG, 50)
    prof = drift_profile(img, IMG)
    assert [f["name"] for f in prof["features"]] == ["image[0]", "image[1]", "image[2]"]
    assert all(sum(f["counts"]) == 50 * 16 * 16 for f in prof["features"])
    from edgekit.data import Dataset

    x = rng.standard_normal((400, 4)).astype(np.float32)
    x[:8, 2] = np.nan
    prof = drift_profile(Dataset({"x": x}), VEC)
    f2 = prof["features"][2]
    assert f2["nan_share"] == pytest.approx(8 / 400) and sum(f2["counts"]) == 392
    assert len(f2["edges"]) == 11 and all(np.diff(f2["edges"]) > 0)
    const = drift_profile(Dataset({"x": np.ones((10, 4), np.float32)}), VEC)["features"][0]
    assert const["edges"] == [0.5, 1.5] and const["counts"] == [40 // 4]


def test_tensor_encoding_round_trips():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    assert np.array_equal(decode_tensor(json.loads(json.dumps(encode_tensor(a)))), a)
    with pytest.raises(ManifestError, match="self-test tensor is malformed"):
        decode_tensor({"dtype": "float32", "shape": [5], "b64": "AAAA"})


def test_version_key_orders_numerically():
    assert version_key("1.10.0") > version_key("1.9.3")
    assert version_key("2026.11.24.81530") > version_key("2026.11.24.80000")


@pytest.fixture(scope="module")
def good_dir(digits, tmp_path_factory):
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    out = tmp_path_factory.mktemp("m") / "out"
    res = CliRunner().invoke(cli, ["compress", "--int8", "--data", str(digits["calib"]), "-o", str(out), str(digits["model"])])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="other"), "not an edgekit manifest"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d.pop("artifacts"), "is missing artifacts"),
        (lambda d: d["artifacts"][0].update(file="../etc/passwd"), "must be a plain file name"),
        (lambda d: d["artifacts"][0].update(format="exe"), "format is 'exe'; allowed: onnx, ort, tflite"),
        (lambda d: d["artifacts"][0].update(sha256="xyz"), "is not a hex sha256"),
        (lambda d: d["signature"]["inputs"][0].update(dtype="complex"), "dtype is 'complex'"),
        (lambda d: d["drift_profile"]["features"][0].update(counts=[1]), "edges for 1 counts"),
    ],
)
def test_manifest_reader_rejects_what_breaks_the_schema(good_dir, tmp_path, mutate, message):
    d = json.loads((good_dir / "edgekit.json").read_text())
    mutate(d)
    (tmp_path / "edgekit.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path)


def test_manifest_reader_verifies_artifact_bytes(good_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(good_dir, d)
    load_manifest(d, verify_files=True)
    art = d / "digits.int8.onnx"
    original = art.read_bytes()
    data = bytearray(original)
    data[-10] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="digits.int8.onnx does not match its sha256"):
        load_manifest(d, verify_files=True)
    art.write_bytes(original)
    (d / "digits.int8.ort").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(d, verify_files=True)
    with pytest.raises(ManifestError, match="no manifest at"):
        load_manifest(tmp_path)


def test_inspect_verifies_a_directory_and_reads_a_model(good_dir, digits):
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    res = CliRunner().invoke(cli, ["inspect", "--json", str(good_dir)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["verified"] and [a["format"] for a in info["artifacts"]] == ["onnx", "ort"] and info["selftest_vectors"] == 3
    res = CliRunner().invoke(cli, ["inspect", "--json", str(digits["model"])])
    info = json.loads(res.output)
    assert info["already_quantized"] is False and info["weights"]["params"] > 40000 and info["inputs"][0]["shape"] == ["N", 1, 8, 8]
