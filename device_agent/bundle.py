"""``edgekit agent bundle``: one archive with everything a device needs to install the agent.

Archive layout (files at the top level, so ``tar xzf x.tar.gz && sudo ./install.sh`` works)::

    install.sh  edgekit-agent.service  agent.toml  requirements.txt  BUNDLE.json
    wheels/edgekit-<version>-py3-none-any.whl  [+ dependency wheels for the target, --with-deps]
    model/edgekit.json + artifacts             (verified against the manifest's sha256)
    certs/ca.pem client.pem client.key         (when given)
    secrets/broker-password                    (when given)

``agent.toml`` is rendered from the same field table as the agent's config reader and validated
before packing; install locations are placeholders (``@STATE_DIR@``, ``@CONFIG_DIR@``) that
install.sh fills in. Runs on the workstation: stdlib + pip (as a subprocess) only.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent import __version__
from device_agent.config.read import loads_toml, parse_config
from device_agent.config.render import render_toml
from device_agent.contract.errors import AgentError, ConfigError
from device_agent.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, ManifestError, load_manifest

__all__ = ["BundleError", "BundleSpec", "agent_requirements", "build_bundle", "find_wheel"]

DEPLOY = Path(__file__).resolve().parent / "deploy"
#: what the device installs besides the edgekit wheel (kept in sync with pyproject's "agent" extra by a test)
FALLBACK_REQUIREMENTS = ("numpy>=1.24", "onnxruntime>=1.17", "paho-mqtt>=2.0,<3", "cryptography>=41", "orjson>=3.9")


class BundleError(AgentError):
    """The bundle cannot be built (bad input, no wheel, pip failed)."""


@dataclass
class BundleSpec:
    """What goes into one device's bundle. Paths are on the workstation."""

    device_id: str
    model_dir: Path
    broker_url: str = ""
    group: str = "default"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str = ""
    password_file: Path | None = None
    trusted_keys: list[Path] = field(default_factory=list)  # ed25519 public keys that sign model updates
    wheels: list[Path] = field(default_factory=list)
    with_deps: bool = False
    platform: str = "manylinux2014_aarch64"
    python_version: str = "3.11"
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra {section: {key: value}}


def agent_requirements() -> list[str]:
    """The ``agent`` extra of the installed edgekit distribution (falls back to the pinned list)."""
    from importlib import metadata

    try:
        reqs = metadata.requires("edgekit") or []
    except metadata.PackageNotFoundError:
        return list(FALLBACK_REQUIREMENTS)
    out = [r.split(";")[0].strip() for r in reqs if 'extra == "agent"' in r]
    return out or list(FALLBACK_REQUIREMENTS)


def find_wheel(workdir: Path) -> Path:
    """Build the edgekit wheel from the source checkout this package runs from."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise BundleError("edgekit is not running from a source checkout, so no wheel can be built here; pass --wheel edgekit-*.whl")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(workdir), str(root)],
                       capture_output=True, text=True, timeout=600)
    wheels = sorted(workdir.glob("edgekit-*.whl"))
    if r.returncode != 0 or not wheels:
        raise BundleError(f"building the edgekit wheel failed: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ['no output']}")
    return wheels[-1]


def _config_values(spec: BundleSpec) -> dict[str, dict[str, Any]]:
    broker: dict[str, Any] = {"url": spec.broker_url}
    if spec.ca_file:
        broker["ca_file"] = "@CONFIG_DIR@/certs/ca.pem"
    if spec.cert_file:
        broker["cert_file"] = "@CONFIG_DIR@/certs/client.pem"
    if spec.key_file:
        broker["key_file"] = "@CONFIG_DIR@/certs/client.key"
    if spec.username:
        broker["username"] = spec.username
    if spec.password_file:
        broker["password_file"] = "@CONFIG_DIR@/secrets/broker-password"
    values: dict[str, dict[str, Any]] = {
        "device": {"id": spec.device_id, "group": spec.group},
        "broker": broker,
        "model": {"path": "@STATE_DIR@/model"},
    }
    if spec.trusted_keys:
        values["security"] = {"trusted_keys": [f"@CONFIG_DIR@/keys/{_key_name(i, k)}" for i, k in enumerate(spec.trusted_keys)]}
    for section, table in spec.settings.items():
        values.setdefault(section, {}).update(table)
    return values


def render_config(spec: BundleSpec) -> str:
    """The bundle's agent.toml, validated as the device will read it (placeholders filled in)."""
    text = render_toml(_config_values(spec), state_dir="@STATE_DIR@")
    probe = text.replace("@STATE_DIR@", "/var/lib/edgekit").replace("@CONFIG_DIR@", "/etc/edgekit")
    parse_config(loads_toml(probe), base_dir="/etc/edgekit", source="the bundle's agent.toml", check_files=False)
    return text


#: archive member name -> (its bytes, or the file to read them from; its mode)
_Files = dict[str, tuple[bytes | Path, int]]


def build_bundle(spec: BundleSpec, output: str | Path) -> dict[str, Any]:
    """Write the ``.tar.gz`` for one device; returns a summary (files, sizes, model, wheel)."""
    out = Path(output)
    _check_spec(spec)
    try:
        manifest = load_manifest(spec.model_dir, verify_files=True)
    except ManifestError as e:
        raise BundleError(f"--model {spec.model_dir}: {e}") from e
    config_text = render_config(spec)
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        work = Path(tmp)
        wheel_dir = work / "wheels"
        wheel_dir.mkdir()
        wheels = list(spec.wheels)
        if not any(Path(w).name.startswith("edgekit-") for w in wheels):
            wheels.append(find_wheel(work / "build"))
        for w in wheels:
            if not Path(w).is_file():
                raise BundleError(f"--wheel {w}: no such file")
            shutil.copy(w, wheel_dir / Path(w).name)
        requirements = agent_requirements()
        if spec.with_deps:
            _download_deps(requirements, wheel_dir, spec.platform, spec.python_version)
        files: _Files = {
            "install.sh": (DEPLOY / "install.sh", 0o755),
            "edgekit-agent.service": (DEPLOY / "edgekit-agent.service", 0o644),
            "agent.toml": (config_text.encode(), 0o640),
            "requirements.txt": (("\n".join(requirements) + "\n").encode(), 0o644),
        }
        for w in sorted(wheel_dir.iterdir()):
            files[f"wheels/{w.name}"] = (w, 0o644)
        files.update(_model_and_secret_files(spec, manifest))
        summary: dict[str, Any] = {
            "device": spec.device_id, "broker": spec.broker_url or None, "agent_version": __version__,
            "model": {"name": manifest.name, "version": manifest.version}, "requirements": requirements,
            "wheels": sorted(p.name for p in wheel_dir.iterdir()), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        files["BUNDLE.json"] = (json.dumps(summary, indent=2).encode() + b"\n", 0o644)
        _write_tar(out, files)
    summary["output"] = str(out)
    summary["size_bytes"] = out.stat().st_size
    summary["files"] = sorted(files)
    return summary


def _check_spec(spec: BundleSpec) -> None:
    if spec.broker_url.startswith("mqtt://") and (spec.ca_file or spec.cert_file):
        raise ConfigError("--ca/--cert/--key need an mqtts:// broker URL", field="broker.url")
    if (spec.cert_file is None) != (spec.key_file is None):
        raise ConfigError("--cert and --key go together", field="broker.cert_file")
    checks = [("--ca", spec.ca_file), ("--cert", spec.cert_file), ("--key", spec.key_file), ("--password-file", spec.password_file)]
    for what, p in checks + [("--trusted-key", k) for k in spec.trusted_keys]:
        if p is not None and not Path(p).is_file():
            raise BundleError(f"{what} {p}: no such file")


def _model_and_secret_files(spec: BundleSpec, manifest: Manifest) -> _Files:
    """The model directory (manifest, artifacts, operator configs, signature), certificates, keys and the broker password."""
    files: _Files = {}
    model_files = [MANIFEST_NAME] + [a.file for a in manifest.artifacts]
    model_files += [str(a.extra["required_operators"]) for a in manifest.artifacts if a.extra.get("required_operators")]
    if (spec.model_dir / SIGNATURE_NAME).is_file():
        model_files.append(SIGNATURE_NAME)
    for name in dict.fromkeys(model_files):
        if (spec.model_dir / name).is_file():
            files[f"model/{name}"] = (spec.model_dir / name, 0o644)
    if spec.ca_file:
        files["certs/ca.pem"] = (Path(spec.ca_file), 0o644)
    if spec.cert_file:
        files["certs/client.pem"] = (Path(spec.cert_file), 0o644)
    if spec.key_file:
        files["certs/client.key"] = (Path(spec.key_file), 0o600)
    for i, k in enumerate(spec.trusted_keys):
        files[f"keys/{_key_name(i, k)}"] = (Path(k), 0o644)
    if spec.password_file:
        files["secrets/broker-password"] = (Path(spec.password_file).read_bytes().strip() + b"\n", 0o600)
    return files


def _write_tar(out: Path, files: _Files) -> None:
    """The archive, written next to ``out`` and renamed into place (a failure leaves nothing half-written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp_out, "w:gz") as tar:
        for name, (src, mode) in sorted(files.items()):
            data = src.read_bytes() if isinstance(src, Path) else src
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    tmp_out.replace(out)


def _key_name(i: int, path: Path) -> str:
    return f"{i:02d}-{Path(path).name}"


def _download_deps(requirements: list[str], dest: Path, platform: str, python_version: str) -> None:
    """Wheels for the target device (offline install): pip download for its platform."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--platform", platform, "--python-version", python_version,
           "-d", str(dest), *requirements]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BundleError(f"downloading the agent's dependencies for {platform} / Python {python_version} failed: {tail[0]}")
