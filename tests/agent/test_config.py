import textwrap

import pytest
import tomllib

from device_agent.config import load_config, parse_config, render_toml
from device_agent.contract.errors import ConfigError


def write(tmp_path, text):
    (tmp_path / "model").mkdir(exist_ok=True)
    p = tmp_path / "agent.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_minimal_config_gets_documented_defaults(tmp_path):
    cfg = load_config(write(tmp_path, """
        [device]
        id = "pi-07"
        [model]
        path = "model"
    """))
    assert cfg.device.id == "pi-07" and cfg.device.group == "default"
    assert cfg.model.path == tmp_path / "model"  # relative to the config file
    assert cfg.api.host == "127.0.0.1" and cfg.api.port == 8470
    assert cfg.broker.enabled is False
    assert cfg.outbox_path == tmp_path / "state" / "outbox.sqlite"
    assert cfg.model.prefer == ["ort", "onnx", "tflite"]


def test_broker_url_parts(tmp_path):
    cfg = load_config(write(tmp_path, """
        [device]
        id = "pi-07"
        [broker]
        url = "mqtts://broker.lan"
        [model]
        path = "model"
    """))
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.tls) == ("broker.lan", 8883, True)


@pytest.mark.parametrize(
    "body, field, message",
    [
        ('[device]\nid = "a/b"', "device.id", "[device] id 'a/b' must be 1-64 of A-Z a-z 0-9 _ . -"),
        ("[device]\nid = 7", "device.id", "[device] id must be a string, got 7"),
        ('[device]\nid = "d"\n[broker]\nurl = "htp://b:1883"', "broker.url", "[broker] url 'htp://b:1883' has scheme 'htp'; allowed: mqtt, mqtts"),
        ('[device]\nid = "d"\n[broker]\nurl = "mqtt://u:p@b:1883"', "broker.url", "must not contain credentials"),
        ('[device]\nid = "d"\n[api]\nport = 70000', "api.port", "[api] port 70000 must be between 0 and 65535"),
        ('[device]\nid = "d"\n[api]\nprot = 1', "api.prot", "[api] has unknown key 'prot' (did you mean 'port'?)"),
        ('[device]\nid = "d"\n[telemetry]\ninterval_s = "60"', "telemetry.interval_s", "[telemetry] interval_s must be a number, got '60'"),
        ('[device]\nid = "d"\n[model]\nprefer = ["ort", "pt"]', "model.prefer", "[model] prefer ['ort', 'pt'] has 'pt'; allowed: ort, onnx, tflite"),
        ('[device]\nid = "d"\n[outbox]\nmax_messages = 0', "outbox.max_messages", "[outbox] max_messages 0 must be ≥ 1"),
        ('[device]\nid = "d"\n[api]\nenabled = "yes"', "api.enabled", "[api] enabled must be true or false"),
        ('[devices]\nid = "d"', "devices", "unknown section or key devices"),
        ("[device]", "device.id", "[device] id is required"),
        ('[device]\nid = "d"\n[broker]\nurl = "mqtt://b"\nca_file = "ca.pem"', "broker.url", "ca_file/cert_file are set but url"),
        ('[device]\nid = "d"\n[broker]\nurl = "mqtts://b"\ncert_file = "c.pem"', "broker.key_file", "cert_file and key_file go together"),
        ('[device]\nid = "d"\n[broker]\nurl = "mqtts://b"\nca_file = "missing.pem"', "broker.ca_file", "does not exist"),
        ('[device]\nid = "d"\n[broker]\nreconnect_min_s = 10.0\nreconnect_max_s = 5.0', "broker.reconnect_max_s", "below reconnect_min_s"),
        ('[device]\nid = "d"\n[log]\nlevel = "loud"', "log.level", "allowed: debug, info, warning, error"),
        ('[device]\nid = "d"\n[api]\nhost = "0.0.0.0"', "api.token_file",
         "[api] host '0.0.0.0' listens beyond loopback without authentication: set [api] token_file"),
        ('[device]\nid = "d"\n[api]\nhost = "pi-07.lan"', "api.token_file", "listens beyond loopback"),
        ('[device]\nid = "d"\n[api]\nhost = "0.0.0.0"\ntoken_file = "missing-tokens"', "api.token_file", "[api] token_file"),
        ('[device]\nid = "d"\n[api]\ntls_cert = "api.crt"', "api.tls_key", "[api] tls_cert and tls_key go together; tls_key is missing"),
        ('[device]\nid = "d"\n[api]\nmax_body_bytes = 20000000', "api.max_inflight_bytes", "max_inflight_bytes 16777216 is below max_body_bytes"),
        ('[device]\nid = "d"\n[api]\nworkers = 0', "api.workers", "[api] workers 0 must be between 1 and 256"),
        ('[device]\nid = "d"\n[telemetry]\nfeedback_max_bytes = 10', "telemetry.feedback_max_bytes", "must be ≥ 1024"),
        ('[device]\nid = "d"\n[serve]\nout_of_range = "ignore"', "serve.out_of_range", "[serve] out_of_range 'ignore' allowed: reject, warn"),
    ],
)
def test_every_field_is_validated_and_named(tmp_path, body, field, message):
    text = body + ("\n[model]\npath = \"model\"\n" if "[model]" not in body else "")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert e.value.field == field
    assert message in str(e.value)
    assert str(tmp_path / "agent.toml") in str(e.value)


def test_api_security_and_limits(tmp_path):
    (tmp_path / "tokens").write_text("a" * 40 + "\n")
    cfg = load_config(write(tmp_path, """
        [device]
        id = "pi-07"
        [model]
        path = "model"
        [api]
        host = "0.0.0.0"
        token_file = "tokens"
        request_timeout_s = 5
    """))
    assert cfg.api.token_file == tmp_path / "tokens" and cfg.api.request_timeout_s == 5.0
    assert (cfg.api.max_connections, cfg.api.max_inflight_bytes, cfg.api.workers) == (512, 16 << 20, 4)
    assert (cfg.api.header_timeout_s, cfg.api.idle_timeout_s, cfg.api.queue_timeout_s) == (10.0, 30.0, 10.0)
    assert cfg.telemetry.feedback_max_bytes == 8 << 20


def test_missing_model_path_and_bad_toml(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text('[device]\nid = "d"\n[model]\npath = "nowhere"\n')
    with pytest.raises(ConfigError, match="\\[model\\] path .*nowhere.* does not exist"):
        load_config(p)
    p.write_text("[device\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "absent.toml")


def test_trusted_keys_must_be_ed25519_public_keys(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    good = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    bad = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "good.pub").write_bytes(good)
    (tmp_path / "bad.pub").write_bytes(bad)
    cfg = load_config(write(tmp_path, '[device]\nid = "d"\n[model]\npath = "model"\n[security]\ntrusted_keys = ["good.pub"]\n'))
    assert cfg.security.trusted_keys == [tmp_path / "good.pub"]
    with pytest.raises(ConfigError, match=r"trusted_keys\[1\] .* only ed25519 keys are accepted"):
        load_config(write(tmp_path, '[device]\nid = "d"\n[model]\npath = "model"\n[security]\ntrusted_keys = ["good.pub", "bad.pub"]\n'))


def test_rendered_example_is_valid_and_documents_every_field(tmp_path):
    text = render_toml({"device": {"id": "pi-07"}, "broker": {"url": "mqtt://127.0.0.1:1883"}, "model": {"path": str(tmp_path)}})
    doc = tomllib.loads(text)
    cfg = parse_config(doc, base_dir=tmp_path)
    assert cfg.device.id == "pi-07" and cfg.broker.port == 1883
    assert "# Device id: MQTT client id and topic segment (required)." in text
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        render_toml({"device": {"colour": "red"}})


def test_shipped_example_config_parses(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "device_agent" / "deploy" / "agent.toml"
    from device_agent.config import example_toml

    assert example.read_text() == example_toml(), "deploy/agent.toml is stale: regenerate it with `edgekit-agent example-config`"
    cfg = parse_config(tomllib.loads(example.read_text()), base_dir=tmp_path, check_files=False)
    assert cfg.api.host == "127.0.0.1" and cfg.device.id == "pi-07"
