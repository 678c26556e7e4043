"""Shared fixtures: models the tests build themselves (nothing binary is committed).

- ``digits``: a small CNN trained on scikit-learn's digits, exported to ONNX, with train/calib/eval
  .npz files. Trained once and cached under the pytest cache (keyed by the trainer's source).
- ``make_mlp`` / ``mlp_model``: tiny Gemm/Relu classifiers from onnx.helper with a seeded RNG.
- tests/services.py (a plugin): ``postgres`` and the ``need`` rule for missing tools.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.services"]


@pytest.fixture(scope="session")
def digits(request, tmp_path_factory) -> dict[str, Path]:
    """Paths: model (digits.onnx), weights (digits.pt), train/calib/eval (.npz)."""
    src = (ROOT / "edgekit" / "examples" / "digits.py").read_bytes()
    key = hashlib.sha256(src).hexdigest()[:12]
    cache = Path(request.config.cache.mkdir(f"edgekit-digits-{key}"))
    names = {"model": "digits.onnx", "weights": "digits.pt", "train": "train.npz", "calib": "calib.npz", "eval": "eval.npz"}
    if not all((cache / n).is_file() for n in names.values()):
        from edgekit.examples.digits import train_digits

        tmp = tmp_path_factory.mktemp("digits-train")
        train_digits(tmp)
        for n in names.values():
            shutil.copy(tmp / n, cache / n)
    # hand each session its own copy so tests can write next to the model
    work = tmp_path_factory.mktemp("digits")
    for n in names.values():
        shutil.copy(cache / n, work / n)
    return {k: work / n for k, n in names.items()}


def build_mlp(in_features: int = 16, hidden: int = 64, classes: int = 4, *, seed: int = 0, batch: int | str = "N",
              opset: int = 17, constant_weights: bool = False) -> onnx.ModelProto:
    """x[N, F] -> Gemm -> Relu -> Gemm -> logits[N, C]; weights as initializers or Constant nodes."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((in_features, hidden)) / np.sqrt(in_features)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(classes, np.float32)
    tensors = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], name="fc2"),
    ]
    inits = tensors
    if constant_weights:
        nodes = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}") for t in tensors] + nodes
        inits = []
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def make_mlp():
    return build_mlp


@pytest.fixture
def mlp_model(tmp_path) -> Path:
    p = tmp_path / "mlp.onnx"
    onnx.save(build_mlp(), p)
    return p


@pytest.fixture
def mlp_data(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    p = tmp_path / "mlp_data.npz"
    np.savez(p, x=rng.standard_normal((200, 16)).astype(np.float32))
    return p


# --- MQTT broker (Mosquitto) ---
# A real Mosquitto per test on a free 127.0.0.1 port, with a generated config. ``stop()`` /
# ``start()`` / ``restart()`` keep the port, and (persistence on) the sessions and queued
# messages of persistent subscribers such as ``MqttCollector``. Every wait is bounded.

import os as _os  # noqa: E402
import socket as _socket  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import threading as _threading  # noqa: E402
import time as _time  # noqa: E402
import uuid as _uuid  # noqa: E402

MOSQUITTO_BIN = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = _time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if _time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        _time.sleep(interval)


class Mosquitto:
    """One broker process. ``tls``: {"ca": path, "cert": path, "key": path, "require_certificate": bool}."""

    def __init__(self, workdir: Path, *, port: int | None = None, tls: dict | None = None, password_file: Path | None = None,
                 extra_conf: str = "") -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.password_file = password_file
        self.extra_conf = extra_conf
        self.proc: _subprocess.Popen | None = None
        self.log_path = self.dir / "mosquitto.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _conf(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if hasattr(_os, "geteuid") and _os.geteuid() == 0:
            lines.append("user root")  # as root it would switch to 'mosquitto', which cannot write the test's dir
        if self.password_file:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.tls['ca']}", f"certfile {self.tls['cert']}", f"keyfile {self.tls['key']}"]
            if self.tls.get("require_certificate"):
                lines.append("require_certificate true")
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self, timeout: float = 10.0) -> Mosquitto:
        assert self.proc is None, "broker already running"
        conf = self._conf()
        log = open(self.log_path, "ab")
        self.proc = _subprocess.Popen([MOSQUITTO_BIN, "-c", str(conf)], stdout=log, stderr=_subprocess.STDOUT, stdin=_subprocess.DEVNULL)
        log.close()
        deadline = _time.monotonic() + timeout
        while _time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            try:
                with _socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                _time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s:\n{self.log()[-2000:]}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except _subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class MqttCollector:
    """A persistent-session QoS 1 subscriber that records (topic, payload) in arrival order.

    With ``clean_session=False`` and the broker's persistence, messages published while it is
    reconnecting (e.g. right after a broker restart) are queued for it, not lost.
    """

    def __init__(self, broker: Mosquitto, topics: list[str] | tuple[str, ...], *, tls: dict | None = None, client_id: str | None = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = _threading.Lock()
        self._topics = list(topics)
        self.subscribed = _threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"collector-{_uuid.uuid4().hex[:8]}", clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.5)
        if tls:
            self.client.tls_set(ca_certs=str(tls["ca"]), certfile=str(tls["client_cert"]) if tls.get("client_cert") else None,
                                keyfile=str(tls["client_key"]) if tls.get("client_key") else None)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise AssertionError("the test collector could not subscribe within 10 s")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        for t in self._topics:
            client.subscribe(t, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self, topic_suffix: str = "") -> list[dict]:
        import json

        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(topic_suffix) and p]

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "messages"):
        return wait_until(lambda: predicate(self), timeout, what=what)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def make_tls_files(directory: Path, *, host: str = "127.0.0.1") -> dict[str, Path]:
    """A throwaway CA, a server certificate for ``host`` and a client certificate (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, name):
        p = directory / name
        p.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        p.chmod(0o600)  # a private key: edgekit and the agent refuse one others can read
        return p

    def cert(subject, k, issuer, issuer_key, *, ca=False, san=None, client=False):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                              key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                                critical=True)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if not ca:
            usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write_cert(c, name):
        p = directory / name
        p.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return p

    ca_key = key()
    ca = cert("edgekit test CA", ca_key, "edgekit test CA", ca_key, ca=True)
    srv_key = key()
    srv = cert(host, srv_key, "edgekit test CA", ca_key, san=[x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")])
    cli_key = key()
    cli = cert("pi-07", cli_key, "edgekit test CA", ca_key, client=True)
    return {
        "ca": write_cert(ca, "ca.pem"), "cert": write_cert(srv, "server.pem"), "key": write_key(srv_key, "server.key"),
        "client_cert": write_cert(cli, "client.pem"), "client_key": write_key(cli_key, "client.key"),
    }


@pytest.fixture
def mosquitto_factory(tmp_path):
    """Make brokers (``factory(tls=..., password_file=...)``); all are stopped after the test."""
    if MOSQUITTO_BIN is None:
        pytest.skip("mosquitto is not installed (make mosquitto)")
    brokers: list[Mosquitto] = []

    def make(**kwargs) -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}", **kwargs)
        brokers.append(b)
        return b.start()

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture
def mosquitto(mosquitto_factory) -> Mosquitto:
    """A running plain-TCP, anonymous broker on 127.0.0.1 for this test."""
    return mosquitto_factory()


@pytest.fixture
def mqtt_collector():
    """``collect(broker, topics, **kw)`` → a started :class:`MqttCollector`; closed after the test."""
    made: list[MqttCollector] = []

    def collect(broker: Mosquitto, topics, **kwargs) -> MqttCollector:
        c = MqttCollector(broker, topics, **kwargs)
        made.append(c)
        return c

    yield collect
    for c in made:
        c.close()


@pytest.fixture
def tls_files(tmp_path) -> dict[str, Path]:
    """PEM files for a TLS broker on 127.0.0.1: ca, cert/key (server), client_cert/client_key."""
    return make_tls_files(tmp_path / "tls")
