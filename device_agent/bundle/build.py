"""``edgekit agent bundle``: one archive with everything a device needs to install the agent.

Archive layout (files at the top level, so ``tar xzf x.tar.gz && sudo ./install.sh`` works)::

    install.sh  edgekit-agent.service  agent.toml  BUNDLE.json  SHA256SUMS
    requirements.txt  requirements.lock  [constraints.txt]
    wheels/edgekit-<version>-py3-none-any.whl  [+ the locked dependency wheels, --with-deps]
    model/edgekit.json + artifacts             (verified against the manifest's sha256)
    certs/ca.pem client.pem client.key         (when given)
    secrets/broker-password                    (when given)

``requirements.txt`` is the agent extra (ranges, for the record); ``requirements.lock`` is what the
device installs, exact versions with sha256 (:mod:`device_agent.bundle.lock`): the ``--lock`` file,
else the lock shipped for the target, else a resolution made now; ``constraints.txt`` is the
``--constraint`` it was resolved under. ``agent.toml`` is rendered from the same field table as the
agent's config reader and validated before packing; install locations are placeholders
(``@STATE_DIR@``, ``@CONFIG_DIR@``) that install.sh fills in. The archive is written 0600
(:mod:`device_agent.bundle.archive`). Runs on the workstation: stdlib, packaging, pip (as a subprocess).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent import __version__
from device_agent.bundle.archive import CHECKSUMS, Files, write_private_tar
from device_agent.bundle.lock import (
    BundleError,
    Lock,
    agent_requirements,
    download_locked,
    read_constraints,
    resolve_lock,
    shipped_lock,
)
from device_agent.config.read import loads_toml, parse_config
from device_agent.config.render import render_toml
from device_agent.contract.errors import ConfigError
from device_agent.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, ManifestError, load_manifest

__all__ = ["DEFAULT_PLATFORM", "BundleSpec", "build_bundle", "find_wheel", "make_lock"]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
#: Raspberry Pi OS 12 (Debian bookworm, glibc 2.36), 64-bit
DEFAULT_PLATFORM = "manylinux_2_36_aarch64"


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
    platform: str = DEFAULT_PLATFORM
    python_version: str = "3.11"
    lock_file: Path | None = None  # a recorded lock to install from; resolved and written there when it does not exist yet
    constraint_file: Path | None = None  # pip constraints the lock is resolved under (recorded in the bundle)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra {section: {key: value}}


def find_wheel(workdir: Path) -> Path:
    """Build the edgekit wheel from the source checkout this package runs from."""
    root = Path(__file__).resolve().parents[2]
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


def build_bundle(spec: BundleSpec, output: str | Path) -> dict[str, Any]:
    """Write the ``.tar.gz`` for one device (0600); returns a summary (files, sizes, model, wheels, lock)."""
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
        lock, source = _bundle_lock(spec, requirements, work, wheel_dir)
        lock_text = lock.text()
        files: Files = {
            "install.sh": (DEPLOY / "install.sh", 0o755),
            "edgekit-agent.service": (DEPLOY / "edgekit-agent.service", 0o644),
            "agent.toml": (config_text.encode(), 0o640),
            "requirements.txt": (("\n".join(requirements) + "\n").encode(), 0o644),
            "requirements.lock": (lock_text.encode(), 0o644),
        }
        if spec.constraint_file is not None:
            files["constraints.txt"] = (Path(spec.constraint_file).read_bytes(), 0o644)
        for w in sorted(wheel_dir.iterdir()):
            files[f"wheels/{w.name}"] = (w, 0o644)
        files.update(_model_and_secret_files(spec, manifest))
        summary: dict[str, Any] = {
            "device": spec.device_id, "broker": spec.broker_url or None, "agent_version": __version__,
            "model": {"name": manifest.name, "version": manifest.version}, "requirements": requirements,
            "lock": {"source": source, "platform": lock.platform, "python": lock.python_version, "constraints": list(lock.constraints),
                     "sha256": hashlib.sha256(lock_text.encode()).hexdigest(), "packages": lock.pins},
            "wheels": sorted(p.name for p in wheel_dir.iterdir()), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        files["BUNDLE.json"] = (json.dumps(summary, indent=2).encode() + b"\n", 0o644)
        write_private_tar(out, files, mtime=int(time.time()))
    summary["output"] = str(out)
    summary["size_bytes"] = out.stat().st_size
    summary["files"] = sorted([*files, CHECKSUMS])
    return summary


def make_lock(requirements: list[str], output: Path, *, platform: str = DEFAULT_PLATFORM, python_version: str = "3.11",
              constraint: Path | None = None) -> Lock:
    """Resolve ``requirements`` for the target now and write the lock to ``output`` (``edgekit agent lock``)."""
    with tempfile.TemporaryDirectory(prefix="edgekit-lock-") as tmp:
        lock = resolve_lock(requirements, Path(tmp), platform=platform, python_version=python_version, constraint=constraint)
    _write_text(Path(output), lock.text())
    return lock


def _bundle_lock(spec: BundleSpec, requirements: list[str], work: Path, wheel_dir: Path) -> tuple[Lock, str]:
    """The bundle's lock and where it came from; with ``--with-deps`` its wheels land in ``wheel_dir``.

    A recorded lock (``--lock FILE`` that exists, else the one shipped for the target when no
    ``--constraint`` asks for other pins) is used as is; otherwise the requirements are resolved now,
    and written to the ``--lock`` path when one was given, so the next bundle installs the same set.
    """
    constraints = read_constraints(spec.constraint_file)
    given = Path(spec.lock_file) if spec.lock_file is not None else None
    recorded = given if given is not None and given.is_file() else None
    if recorded is None and given is None and spec.constraint_file is None:
        recorded = shipped_lock(spec.platform, spec.python_version)
    if recorded is not None:
        where = f"--lock {recorded}" if given is not None else f"the shipped lock {recorded.name}"
        lock = Lock.parse(recorded.read_text(encoding="utf-8"), source=where)
        lock.check(requirements, constraints, platform=spec.platform, python_version=spec.python_version, source=where)
        if spec.with_deps:
            for w in download_locked(lock, recorded, work / "locked"):
                shutil.copy(w, wheel_dir / w.name)
        return lock, str(recorded) if given is not None else f"shipped:{recorded.name}"
    resolved = work / "resolved"
    lock = resolve_lock(requirements, resolved, platform=spec.platform, python_version=spec.python_version, constraint=spec.constraint_file)
    if spec.with_deps:
        for w in sorted(resolved.glob("*.whl")):
            shutil.copy(w, wheel_dir / w.name)
    if given is not None:
        _write_text(given, lock.text())
        return lock, f"resolved, recorded in {given}"
    return lock, "resolved"


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (a failure leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(name, 0o644)  # a lock is no secret: shared like any other source file
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def _check_spec(spec: BundleSpec) -> None:
    if spec.broker_url.startswith("mqtt://") and (spec.ca_file or spec.cert_file):
        raise ConfigError("--ca/--cert/--key need an mqtts:// broker URL", field="broker.url")
    if (spec.cert_file is None) != (spec.key_file is None):
        raise ConfigError("--cert and --key go together", field="broker.cert_file")
    checks = [("--ca", spec.ca_file), ("--cert", spec.cert_file), ("--key", spec.key_file), ("--password-file", spec.password_file),
              ("--constraint", spec.constraint_file)]
    for what, p in checks + [("--trusted-key", k) for k in spec.trusted_keys]:
        if p is not None and not Path(p).is_file():
            raise BundleError(f"{what} {p}: no such file")


def _model_and_secret_files(spec: BundleSpec, manifest: Manifest) -> Files:
    """The model directory (manifest, artifacts, operator configs, signature), certificates, keys and the broker password."""
    files: Files = {}
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


def _key_name(i: int, path: Path) -> str:
    return f"{i:02d}-{Path(path).name}"
