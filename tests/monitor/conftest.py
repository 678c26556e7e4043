"""Fleet-monitor fixtures: a tabular classifier with a real drift profile, and simulated devices.

``model_dir`` builds an MLP (8 features, 4 classes) with ``onnx.helper``, draws a seeded reference
set (each feature its own mean and std), and writes a manifest whose drift profile comes from
``edgekit.profile.drift_profile`` — the code ``edgekit compress`` uses. ``SimDevice`` is a real
:class:`device_agent.daemon.Daemon` (validation, telemetry windows, outbox, feedback) whose outbox is
drained by the test instead of an MQTT link, so telemetry goes through the agent's own code path.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from device_agent.config import parse_config
from device_agent.contract.manifest import SCHEMA, SCHEMA_VERSION, TensorSpec, file_sha256
from device_agent.contract.protocol import DeviceStatus, encode
from device_agent.daemon import Daemon
from edgekit.data import Dataset
from edgekit.profile import drift_profile
from tests.conftest import build_mlp

FEATURES = 8
CLASSES = 4
MEANS = np.linspace(-2.0, 5.0, FEATURES)
STDS = np.linspace(0.5, 3.0, FEATURES)
REFERENCE_SAMPLES = 4000
BASELINE_ACCURACY = 95.0  # percent, as edgekit compress records it


def reference_inputs(n: int, rng: np.random.Generator) -> np.ndarray:
    return (MEANS + STDS * rng.standard_normal((n, FEATURES))).astype(np.float32)


def write_model(out: Path, *, version: str = "1.0.0", seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model = build_mlp(FEATURES, 16, CLASSES, seed=seed)
    path = out / "model.onnx"
    onnx.save(model, path)
    x = reference_inputs(REFERENCE_SAMPLES, np.random.default_rng(seed + 100))
    spec_in = TensorSpec("x", "float32", ("N", FEATURES))
    spec_out = TensorSpec("logits", "float32", ("N", CLASSES))
    profile = drift_profile(Dataset({"x": x}), (spec_in,))
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "name": "mlp", "version": version,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), "task": "classification",
        "labels": ["cat", "dog", "fox", "owl"],
        "signature": {"inputs": [spec_in.to_dict()], "outputs": [spec_out.to_dict()]},
        "artifacts": [{"file": "model.onnx", "format": "onnx", "precision": "fp32", "size_bytes": path.stat().st_size,
                       "sha256": file_sha256(path), "runtime": "onnxruntime", "inputs": [spec_in.to_dict()], "outputs": [spec_out.to_dict()]}],
        "metrics": {"source": {"accuracy": BASELINE_ACCURACY + 0.5}, "model.onnx": {"accuracy": BASELINE_ACCURACY}},
        "drift_profile": profile,
    }
    (out / "edgekit.json").write_text(json.dumps(doc, indent=2))
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("mlp-v1") / "model")


@pytest.fixture(scope="session")
def model_dir_v2(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("mlp-v2") / "model", version="2.0.0")


class SimDevice:
    """A real agent whose telemetry is taken from its outbox (no MQTT link)."""

    def __init__(self, model: Path, state_dir: Path, *, device: str = "pi-07", group: str = "cameras", broker: str = "mqtt://127.0.0.1:9",
                 **telemetry) -> None:
        self.cfg = parse_config({"device": {"id": device, "group": group}, "broker": {"url": broker}, "model": {"path": str(model)},
                                 "api": {"enabled": False}, "telemetry": telemetry, "ota": {"enabled": False},
                                 "state_dir": str(state_dir)},
                                base_dir=state_dir, check_files=False)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon.from_config(self.cfg)
        self.agent = self.daemon.agent
        self.rng = np.random.default_rng(abs(hash(device)) % 2**32)

    @property
    def id(self) -> str:
        return self.cfg.device.id

    def state(self) -> tuple[str, bytes]:
        from device_agent.contract.protocol import Topics

        return Topics(self.id, self.cfg.device.group).state, encode(self.daemon.state_message(DeviceStatus.ONLINE))

    def predict(self, x: np.ndarray, batch: int = 50) -> list[str]:
        """Request ids, one per row batch; rows with NaN are rejected by the agent (and still summarised)."""
        from device_agent.contract.errors import InvalidInput

        ids = []
        for i in range(0, len(x), batch):
            try:
                ids.append(self.agent.predict({"x": x[i:i + batch]}).request_id)
            except InvalidInput:
                pass
        return ids

    def window(self, x: np.ndarray | None = None, *, batch: int = 50) -> list[tuple[str, bytes]]:
        """Predict ``x``, close the telemetry window and return the queued (topic, payload) messages."""
        if x is not None:
            self.predict(x, batch)
        self.daemon.publish_telemetry()
        return self.drain()

    def drain(self) -> list[tuple[str, bytes]]:
        msgs = self.daemon.outbox.peek(10_000)
        self.daemon.outbox.ack([m.id for m in msgs])
        return [(m.topic, m.payload) for m in msgs]

    def close(self) -> None:
        self.daemon.outbox.close()


@pytest.fixture
def make_device(tmp_path):
    made: list[SimDevice] = []

    def make(model: Path, device: str = "pi-07", group: str = "cameras", **kw) -> SimDevice:
        d = SimDevice(model, tmp_path / f"state-{device}", device=device, group=group, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
