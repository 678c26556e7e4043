"""Who may call the API: bearer tokens (required beyond loopback), open probes without job history, TLS."""

import datetime
import http.client
import json
import ssl

import numpy as np
import pytest

from device_agent.contract.errors import ConfigError
from device_agent.serve.agent import Agent
from device_agent.serve.auth import Tokens, is_loopback, load_tokens, tls_context
from device_agent.serve.server import serve

TOKEN = "0123456789abcdef" * 4


def self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 (cert path, key path, server SSLContext)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "api.crt", tmp_path / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path, tls_context(cert_path, key_path)


@pytest.fixture
def agent(digits_dir):
    a = Agent.open(digits_dir)
    a.health_sections["ota"] = lambda: {"state": "IDLE", "current": "1.0.0"}
    a.private_sections["ota"] = lambda: {"state": "IDLE", "current": "1.0.0", "history": [{"job": "j-1", "state": "COMMITTED"}]}
    return a


def call(port, method, path, body=None, token=None, tls=None):
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls) if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data and r.getheader("Content-Type", "").startswith("application/json") else data, r
    finally:
        c.close()


def test_with_tokens_every_route_but_the_probes_needs_one(agent, digits):
    x = np.load(digits["eval"])["x"][:1]
    server = serve(agent, tokens=Tokens([TOKEN, "another-token-" + "x" * 30]))
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    try:
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "0"):
            status, err, r = call(server.port, "POST", "/v1/predict", body, token)
            assert status == 401 and err["error"]["kind"] == "unauthorized" and r.getheader("WWW-Authenticate") == 'Bearer realm="edgekit-agent"'
        assert call(server.port, "POST", "/v1/predict", body, TOKEN)[0] == 200
        assert call(server.port, "POST", "/v1/predict", body, "another-token-" + "x" * 30)[0] == 200
        for path in ("/v1/model", "/metrics", "/openapi.json", "/v2", f"/v2/models/{agent.model.name}"):
            assert call(server.port, "GET", path)[0] == 401, path
            assert call(server.port, "GET", path, token=TOKEN)[0] == 200, path
        status, err, _ = call(server.port, "GET", f"/v2/models/{agent.model.name}")
        assert set(err) == {"error"} and "Authorization: Bearer" in err["error"]  # V2 errors keep the protocol's form
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert call(server.port, "GET", path)[0] == 200, path
        public = call(server.port, "GET", "/healthz")[1]
        private = call(server.port, "GET", "/healthz", token=TOKEN)[1]
        assert public["ota"] == {"state": "IDLE", "current": "1.0.0"} and "history" in private["ota"]
        doc = call(server.port, "GET", "/openapi.json", token=TOKEN)[1]
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert doc["paths"]["/healthz"]["get"]["security"] == [] and "401" in doc["paths"]["/v1/predict"]["post"]["responses"]
    finally:
        server.close()


def test_without_tokens_on_loopback_everything_is_open_as_before(agent):
    server = serve(agent)
    try:
        assert call(server.port, "GET", "/v1/model")[0] == 200
        assert "history" in call(server.port, "GET", "/healthz")[1]["ota"]  # no tokens configured: local callers see everything
    finally:
        server.close()


def test_listening_beyond_loopback_without_tokens_is_refused(agent):
    with pytest.raises(ConfigError, match=r"\[api\] host '0.0.0.0' listens beyond loopback without authentication: set \[api\] token_file"):
        serve(agent, "0.0.0.0", 0)
    server = serve(agent, "0.0.0.0", 0, tokens=Tokens([TOKEN]))
    try:
        assert call(server.port, "GET", "/v1/model")[0] == 401
    finally:
        server.close()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.7") and not is_loopback("pi.lan")


def test_token_files_are_checked(tmp_path):
    f = tmp_path / "tokens"
    f.write_text(f"# the operator's token\n{TOKEN}\n\n")
    f.chmod(0o600)
    assert len(load_tokens(f)) == 1 and load_tokens(f).check(f"Bearer {TOKEN}") and load_tokens(f).check(f"bearer  {TOKEN} ")
    assert not load_tokens(f).check(f"Basic {TOKEN}") and not load_tokens(f).check(None)
    f.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no token; add one per line"):
        load_tokens(f)
    f.write_text("short\n")
    with pytest.raises(ConfigError, match="token 1 has 5 characters; tokens need at least 32"):
        load_tokens(f)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_tokens(tmp_path / "missing")


def test_tls(agent, tmp_path):
    cert, key, ctx = self_signed(tmp_path)
    server = serve(agent, ssl_context=ctx)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        client = ssl.create_default_context(cafile=str(cert))
        assert call(server.port, "GET", "/readyz", tls=client)[0] == 200
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            call(server.port, "GET", "/readyz")  # plain HTTP to the TLS port gets no answer
        assert call(server.port, "GET", "/readyz", tls=client)[0] == 200  # and does not disturb the server
    finally:
        server.close()
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        tls_context(cert, tmp_path / "bad.key")


def test_the_daemon_shows_the_ota_job_history_to_token_holders_only(digits_dir, tmp_path):
    from device_agent.config import parse_config
    from device_agent.daemon import Daemon

    class Updater:  # the part of device_agent.ota.updater.Updater the daemon wires into the agent
        def on_chunk(self, *args: object) -> None: ...

        def handle(self, *args: object) -> None: ...

        def status(self) -> dict:
            return {"state": "IDLE", "job": "j-7", "reason": "", "detail": "", "queue": ["j-8"], "current": "1.1.0", "previous": "1.0.0",
                    "history": [{"job": "j-6", "state": "COMMITTED"}]}

    cfg = parse_config({"device": {"id": "pi-07"}, "model": {"path": str(digits_dir)}, "api": {"port": 0}}, base_dir=tmp_path)
    daemon = Daemon(cfg, Agent.open(digits_dir), updater=Updater())  # type: ignore[arg-type]
    assert daemon.agent.health(private=False)["ota"] == {"state": "IDLE", "current": "1.1.0", "previous": "1.0.0"}
    assert daemon.agent.health()["ota"]["history"] == [{"job": "j-6", "state": "COMMITTED"}]
