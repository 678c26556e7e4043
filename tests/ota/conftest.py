"""OTA fixtures: a signing key, a second (untrusted) key, and model releases good and broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.ota import OtaSettings
from device_agent.ota.job import ProbationPolicy
from device_agent.ota.verify import load_trusted_keys
from edgekit.signing import generate_keys, load_private_key, sign_dir
from tests.ota.harness import Device
from tests.ota.models import make_model_dir, mlp, nan_mlp, slow_mlp, wide_mlp


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"good": generate_keys(d, name="fleet"), "other": generate_keys(d, name="stranger")}


@pytest.fixture(scope="session")
def releases(tmp_path_factory, keys) -> dict[str, Path]:
    """Signed releases: v1 (1.0.0), v2 (1.1.0), v3 (1.2.0) and broken ones, all with the same signature."""
    root = tmp_path_factory.mktemp("releases")
    good = keys["good"].private
    out = {
        "v1": make_model_dir(root / "v1", mlp(0), version="1.0.0"),
        "v2": make_model_dir(root / "v2", mlp(1), version="1.1.0"),
        "v3": make_model_dir(root / "v3", mlp(2), version="1.2.0"),
        "nan": make_model_dir(root / "nan", nan_mlp(3), version="1.5.0", vectors=0),
        "nan_selftest": make_model_dir(root / "nan_selftest", nan_mlp(3), version="1.5.1", expected_from=mlp(3)),
        "slow": make_model_dir(root / "slow", slow_mlp(1, tile=32), version="1.6.0"),
        "noload": make_model_dir(root / "noload", b"this is not an onnx model" * 40, version="1.7.0"),
        "incompatible": make_model_dir(root / "incompatible", wide_mlp(4), version="1.8.0", in_features=8),
        "disagree": make_model_dir(root / "disagree", mlp(9), version="1.9.0"),
    }
    for d in out.values():
        sign_dir(d, good)
    out["unsigned"] = make_model_dir(root / "unsigned", mlp(5), version="1.3.0")
    out["stranger"] = make_model_dir(root / "stranger", mlp(6), version="1.4.0")
    sign_dir(out["stranger"], keys["other"].private)
    return out


@pytest.fixture
def trusted(keys):
    return load_trusted_keys([keys["good"].public])


@pytest.fixture
def settings():
    # a 2 ms floor: on a loaded CI machine a 10 µs model's p95 can jump 100x; the slow model adds ~5 ms
    return OtaSettings(probation=ProbationPolicy(requests=40, seconds=60, min_requests=10, latency_floor_ms=2.0))


@pytest.fixture
def signer(keys):
    """The trusted private key (what `edgekit fleet --key` loads)."""
    return load_private_key(keys["good"].private)


@pytest.fixture
def device(tmp_path, releases, trusted, settings, signer):
    devices = []

    def make(initial="v1", *, settings=settings, trusted=trusted, root=None, key=signer, group="default"):
        d = Device(root or tmp_path / f"dev{len(devices)}", releases[initial] if initial else None, trusted=trusted, settings=settings,
                   key=key, group=group)
        devices.append(d)
        return d

    yield make
    for d in devices:
        d.stop()
