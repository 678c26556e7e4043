"""The lock: the device agent's dependencies as exact versions with sha256 hashes, for one platform and Python.

A lock is a pip requirements file that ``pip install --require-hashes --no-deps -r`` installs as is
(install.sh and the Dockerfile do), with a header that says what it was resolved for and from::

    # edgekit agent lock: ...
    # platform: manylinux_2_36_aarch64
    # python: 3.11
    # requires: numpy>=1.24            (one line each: the agent extra of pyproject.toml)
    # constraint: onnxruntime==1.27.0  (one line each, when resolved under --constraint)
    numpy==2.4.6 --hash=sha256:...  # numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl

It is made by resolving the requirements with ``pip download`` for the target (every wheel is hashed
as downloaded), written sorted and without a date, so the same resolution gives the same bytes.
Reusing a recorded lock (``--lock FILE``, or the lock shipped in ``deploy/locks/`` for the target)
re-resolves nothing: bundles and images built from it install byte-identical dependency sets, on
any day. Runs on the workstation: stdlib, packaging and pip (as a subprocess).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from device_agent.contract.errors import AgentError

__all__ = ["LOCKS", "BundleError", "Lock", "LockEntry", "agent_requirements", "download_locked", "lock_name", "read_constraints",
           "resolve_lock", "shipped_lock", "target_platforms"]

#: the locks shipped with the agent, one per target (``lock_name``): what bundles and the Dockerfile use by default
LOCKS = Path(__file__).resolve().parents[1] / "deploy" / "locks"
#: what the device installs besides the edgekit wheel (kept in sync with pyproject's "agent" extra by a test)
FALLBACK_REQUIREMENTS = ("numpy>=1.24", "onnxruntime>=1.17", "paho-mqtt>=2.0,<3", "cryptography>=41", "orjson>=3.9", "pysimdjson>=6.0")
_HEADER = ("# edgekit agent lock: the device agent's dependencies, exact versions and sha256 hashes, for the platform and Python below.\n"
           "# Install: pip install --require-hashes --no-deps -r THIS_FILE (install.sh and the Dockerfile do).\n"
           "# Made by `edgekit agent lock` (pip download for the target); bundles made with it install the same wheels, byte for byte.\n")
#: glibc minor version of each legacy manylinux tag
_LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


class BundleError(AgentError):
    """The bundle or its lock cannot be built (bad input, no wheel, pip failed, a lock that does not fit)."""


@dataclass(frozen=True)
class LockEntry:
    """One locked distribution: its normalized name, exact version, the wheel's file name and sha256."""

    name: str
    version: str
    file: str
    sha256: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}  # {self.file}"


@dataclass(frozen=True)
class Lock:
    """A parsed lock (see the module docstring for the file format)."""

    platform: str
    python_version: str
    requires: tuple[str, ...]
    entries: tuple[LockEntry, ...]
    constraints: tuple[str, ...] = field(default=())

    @property
    def pins(self) -> dict[str, str]:
        return {e.name: e.version for e in self.entries}

    def text(self) -> str:
        head = [f"# platform: {self.platform}", f"# python: {self.python_version}"]
        head += [f"# requires: {r}" for r in self.requires] + [f"# constraint: {c}" for c in self.constraints]
        body = [e.line() for e in sorted(self.entries, key=lambda e: e.name)]
        return _HEADER + "\n".join(head + body) + "\n"

    @classmethod
    def parse(cls, text: str, *, source: str) -> Lock:
        """Read a lock written by :meth:`text`; raises BundleError naming the file and the line."""
        meta: dict[str, list[str]] = {"platform": [], "python": [], "requires": [], "constraint": []}
        entries = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            m = re.fullmatch(r"#\s*(platform|python|requires|constraint):\s*(.+)", line)
            if m:
                meta[m.group(1)].append(m.group(2).strip())
                continue
            if not line or line.startswith("#"):
                continue
            e = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s+--hash=sha256:([0-9a-f]{64})\s*#\s*(\S+\.whl)", line)
            if e is None:
                raise BundleError(f"{source}:{n}: {line[:80]!r} is not 'NAME==VERSION --hash=sha256:HEX  # FILE.whl'; "
                                  "make the lock with `edgekit agent lock`")
            entries.append(LockEntry(normalize(e.group(1)), e.group(2), e.group(4), e.group(3)))
        if len(meta["platform"]) != 1 or len(meta["python"]) != 1 or not entries:
            raise BundleError(f"{source} is not an edgekit agent lock (it needs '# platform:', '# python:' and pinned wheels); "
                              "make one with `edgekit agent lock`")
        return cls(meta["platform"][0], meta["python"][0], tuple(meta["requires"]), tuple(entries), tuple(meta["constraint"]))

    def check(self, requirements: list[str], constraints: list[str], *, platform: str, python_version: str, source: str) -> None:
        """The lock fits: made for this target, and every requirement and constraint is met by its pins."""
        from packaging.requirements import Requirement

        if (self.platform, self.python_version) != (platform, python_version):
            raise BundleError(f"{source} was made for {self.platform} / Python {self.python_version}, not {platform} / "
                              f"Python {python_version}: pass the lock for this target, or a new --lock path to resolve one")
        pins = self.pins
        for asks, items in (("the agent requires", requirements), ("--constraint asks for", constraints)):
            for item in items:
                req = Requirement(item)
                have = pins.get(normalize(req.name))
                if have is None and asks.startswith("--constraint"):
                    continue  # a constraint on a package the agent does not need
                if have is None or not req.specifier.contains(have, prereleases=True):
                    got = f"pins {req.name} {have}" if have else f"has no {req.name}"
                    raise BundleError(f"{source} {got}, but {asks} {item}: delete the lock to resolve it again "
                                      "(or run `edgekit agent lock`)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Paho_MQTT`` -> ``paho-mqtt``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def agent_requirements() -> list[str]:
    """The ``agent`` extra of the installed edgekit distribution (falls back to the pinned list)."""
    from importlib import metadata

    try:
        reqs = metadata.requires("edgekit") or []
    except metadata.PackageNotFoundError:
        return list(FALLBACK_REQUIREMENTS)
    out = [r.split(";")[0].strip() for r in reqs if 'extra == "agent"' in r]
    return out or list(FALLBACK_REQUIREMENTS)


def read_constraints(path: Path | None) -> list[str]:
    """The requirement lines of a pip constraints file (comments and blank lines dropped)."""
    if path is None:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BundleError(f"--constraint {path}: cannot read it ({e.strerror})") from None
    return [s for s in (re.sub(r"(^|\s+)#.*$", "", ln).strip() for ln in lines) if s]


def lock_name(platform: str, python_version: str) -> str:
    """The shipped lock's file name for a target: ``cp311-manylinux_2_36_aarch64.txt``."""
    return f"cp{python_version.replace('.', '')}-{platform}.txt"


def shipped_lock(platform: str, python_version: str) -> Path | None:
    p = LOCKS / lock_name(platform, python_version)
    return p if p.is_file() else None


def target_platforms(platform: str) -> list[str]:
    """Every wheel platform tag a device of ``platform`` runs, for ``pip download --platform``.

    ``manylinux_2_36_aarch64`` (glibc 2.36, Raspberry Pi OS 12) takes manylinux wheels down to
    glibc 2.17 (2.5 on x86), as pip does on the device itself; pip's ``--platform`` matches tags
    literally, so a single manylinux2014 tag would miss every wheel built for a newer glibc.
    """
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    legacy = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", platform)
    if m is not None:
        glibc, arch = int(m.group(1)), m.group(2)
    elif legacy is not None:
        glibc, arch = _LEGACY[legacy.group(1)], legacy.group(2)
    else:
        return [platform]
    lowest = 5 if arch in ("x86_64", "i686") else 17
    names = {v: k for k, v in _LEGACY.items()}
    out = []
    for minor in range(glibc, lowest - 1, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        if minor in names:
            out.append(f"{names[minor]}_{arch}")
    return out


def _pip_download(args: list[str], what: str, hint: str = "") -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        errors = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip().startswith("ERROR")]
        tail = errors[-1] if errors else ((r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"])[0]
        raise BundleError(f"{what} failed: {tail}{hint}")


def _target_args(platform: str, python_version: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version]
    for p in target_platforms(platform):
        args += ["--platform", p]
    return args


def resolve_lock(requirements: list[str], dest: Path, *, platform: str, python_version: str, constraint: Path | None = None) -> Lock:
    """Resolve ``requirements`` for the target with pip download into ``dest`` (empty) and lock what came."""
    dest.mkdir(parents=True, exist_ok=True)
    args = _target_args(platform, python_version) + ["-d", str(dest)] + (["-c", str(constraint)] if constraint else [])
    hint = "" if platform.startswith("manylinux_") else f" (a Raspberry Pi OS 12 device takes --platform manylinux_2_36_{platform.split('_')[-1]})"
    _pip_download(args + requirements, f"resolving the agent's dependencies for {platform} / Python {python_version}", hint)
    entries = []
    for w in sorted(dest.glob("*.whl")):
        name, version = w.name.split("-")[:2]
        entries.append(LockEntry(normalize(name), version, w.name, _sha256(w)))
    return Lock(platform, python_version, tuple(requirements), tuple(entries), tuple(read_constraints(constraint)))


def download_locked(lock: Lock, lock_file: Path, dest: Path) -> list[Path]:
    """The lock's wheels, downloaded into ``dest`` by pip with ``--require-hashes``; each checked by name and sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    args = _target_args(lock.platform, lock.python_version) + ["--no-deps", "--require-hashes", "-d", str(dest), "-r", str(lock_file)]
    _pip_download(args, f"downloading the locked wheels for {lock.platform} / Python {lock.python_version}")
    out = []
    for e in lock.entries:
        w = dest / e.file
        if not w.is_file() or _sha256(w) != e.sha256:
            raise BundleError(f"pip did not download {e.file} with the sha256 the lock records; the package index serves another file")
        out.append(w)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
