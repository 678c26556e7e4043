"""Signatures, keys, file names, versions and model-signature compatibility."""

from __future__ import annotations

import dataclasses
import json

import pytest

from device_agent.contract.errors import OtaError
from device_agent.contract.manifest import TensorSpec
from device_agent.contract.protocol import Command, CommandKind
from device_agent.ota.verify import (
    check_compatible,
    check_file,
    check_version,
    load_trusted_keys,
    safe_name,
    sign_command,
    verify_command,
    verify_manifest,
)
from edgekit.signing import load_private_key, sign_dir, verify_dir


def reason(fn, *a, **kw) -> str:
    with pytest.raises(OtaError) as e:
        fn(*a, **kw)
    return e.value.reason


def test_signed_manifest_verifies_and_names_its_key(releases, keys):
    d = releases["v2"]
    kid = verify_manifest((d / "edgekit.json").read_bytes(), (d / "edgekit.json.sig").read_bytes(), load_trusted_keys([keys["good"].public]))
    assert kid == keys["good"].key_id
    assert verify_dir(d, [keys["good"].public]) == kid


def test_signature_attacks(releases, keys):
    d = releases["v2"]
    trusted = load_trusted_keys([keys["good"].public])
    data, sig = (d / "edgekit.json").read_bytes(), (d / "edgekit.json.sig").read_bytes()
    assert reason(verify_manifest, data + b" ", sig, trusted) == "bad_signature"
    assert reason(verify_manifest, data, None, trusted) == "unsigned"
    assert reason(verify_manifest, data, b"garbage", trusted) == "bad_signature"
    doc = json.loads(sig)
    doc["signature"] = doc["signature"][:-8] + "AAAAAAA="
    assert reason(verify_manifest, data, json.dumps(doc), trusted) == "bad_signature"
    other = releases["stranger"]
    assert reason(verify_manifest, (other / "edgekit.json").read_bytes(), (other / "edgekit.json.sig").read_bytes(), trusted) == "untrusted_key"
    assert verify_manifest(data, None, load_trusted_keys([keys["good"].public], allow_unsigned=True)) == "unsigned"


def test_sign_refuses_a_directory_whose_artifacts_changed(tmp_path, releases, keys):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(releases["v1"], d)
    (d / "mlp.onnx").write_bytes(b"x" * 10)
    from edgekit.errors import InputError

    with pytest.raises(InputError, match="refusing to sign"):
        sign_dir(d, keys["good"].private)


def test_command_signatures_cover_every_field(keys):
    key = load_private_key(keys["good"].private)
    trusted = load_trusted_keys([keys["good"].public])
    cmd = Command(CommandKind.ROLLBACK, "rb1", 5.0, {"to": "1.0.0"}, device="pi-07", expires=65.0)
    signed = dataclasses.replace(cmd, auth=sign_command(key, cmd))
    assert verify_command(signed, trusted) == keys["good"].key_id
    for change in ({"device": "pi-08"}, {"group": "lab"}, {"job": "rb2"}, {"ts": 6.0}, {"expires": 99.0}, {"params": {"to": "0.1"}},
                   {"kind": CommandKind.CANCEL}, {"command_version": 1}):
        assert reason(verify_command, dataclasses.replace(signed, **change), trusted) == "bad_signature", change
    assert reason(verify_command, dataclasses.replace(signed, auth=None), trusted) == "unsigned"
    assert reason(verify_command, dataclasses.replace(signed, auth={"key_id": "x", "signature": "%%"}), trusted) == "bad_signature"
    other = load_private_key(keys["other"].private)
    assert reason(verify_command, dataclasses.replace(cmd, auth=sign_command(other, cmd)), trusted) == "untrusted_key"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "a\\b", ".hidden", "..", "", "x" * 200, "a..b", None, 5])
def test_unsafe_names(name):
    assert reason(safe_name, name) == "unsafe_path"


@pytest.mark.parametrize("name", ["model.int8.onnx", "m-1_2+3.ort", "x"])
def test_safe_names(name):
    assert safe_name(name) == name


def test_check_file(tmp_path):
    import hashlib

    p = tmp_path / "a.bin"
    p.write_bytes(b"hello")
    sha = hashlib.sha256(b"hello").hexdigest()
    check_file(p, size=5, sha256=sha)
    assert reason(check_file, p, size=6, sha256=sha) == "size_mismatch"
    assert reason(check_file, p, size=5, sha256="0" * 64) == "sha256_mismatch"
    assert reason(check_file, tmp_path / "missing", size=5, sha256=sha) == "missing_artifact"


def test_versions():
    check_version("1.10.0", "1.9.0")
    check_version("1.0.0", None)
    check_version("1.0.0", "2.0.0", allow_downgrade=True)
    assert reason(check_version, "1.9.0", "1.10.0") == "downgrade"


def test_compatibility():
    x = (TensorSpec("x", "float32", ("N", 16)),)
    y = (TensorSpec("y", "float32", ("N", 4)),)
    check_compatible(x, y, (TensorSpec("x", "float32", ("batch", 16)),), y)
    assert reason(check_compatible, x, y, (TensorSpec("x", "float32", ("N", 8)),), y) == "incompatible"
    assert reason(check_compatible, x, y, (TensorSpec("x", "float16", ("N", 16)),), y) == "incompatible"
    assert reason(check_compatible, x, y, x, (TensorSpec("z", "float32", ("N", 4)),)) == "incompatible"
    assert reason(check_compatible, x, y, (*x, TensorSpec("extra", "float32", ("N", 1))), y) == "incompatible"
