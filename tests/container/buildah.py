"""buildah for the container tests: a storage of their own in a stable cache directory, the local base
image (scripts/container-base.sh, built once per version of the script), the agent image, containers.

The cache directory is ``$EDGEKIT_CONTAINER_CACHE``, else ``$XDG_CACHE_HOME/edgekit/containers``
(``~/.cache/edgekit/containers``); the system's own buildah/podman storage is never touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_SCRIPT = ROOT / "scripts" / "container-base.sh"
DOCKERFILE = Path("device_agent/deploy/Dockerfile")
BASE_REPO = "localhost/edgekit-base"
AGENT_REPO = "localhost/edgekit-agent"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
_UNITS = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}


def cache_dir() -> Path:
    explicit = os.environ.get("EDGEKIT_CONTAINER_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit" / "containers"


class BuildahError(RuntimeError):
    pass


class Buildah:
    """Runs buildah against the tests' own storage (``CONTAINERS_STORAGE_CONF``)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        conf = cache / "storage.conf"
        # The run root holds mount state, which a reboot ends: one per boot, as a tmpfs would give.
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        for old in cache.glob("run-*"):
            if old.name != f"run-{boot}":
                shutil.rmtree(old, ignore_errors=True)
        text = f'[storage]\ndriver = "overlay"\ngraphroot = "{cache / "storage"}"\nrunroot = "{cache / f"run-{boot}"}"\n'
        if not conf.is_file() or conf.read_text() != text:
            conf.write_text(text)
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}

    def __call__(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BuildahError(f"buildah {' '.join(args[:3])} ... exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout

    def exists(self, image: str) -> bool:
        r = subprocess.run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", image], capture_output=True,
                           text=True, timeout=60, env=self.env)
        return r.returncode == 0

    def images(self, repo: str) -> list[dict]:
        """``buildah images --json`` rows with a name in ``repo``: id, names, created (Unix time), size (text)."""
        rows = json.loads(self("images", "--json") or "[]")
        return [r for r in rows if any(n.startswith(f"{repo}:") for n in r.get("names") or [])]

    def size_mb(self, image: str) -> float:
        """The image's size as `buildah images` shows it (uncompressed layers, decimal MB)."""
        image_id = self("inspect", "--type", "image", "--format", "{{.FromImageID}}", image).strip()
        text = next((r["size"] for r in json.loads(self("images", "--json")) if image_id.startswith(r["id"])), "")
        m = re.fullmatch(r"([\d.]+)\s*([kKMGT]?B)", text.strip())
        if not m:
            raise BuildahError(f"cannot read the size of {image} from 'buildah images': {text!r}")
        return float(m.group(1)) * _UNITS[m.group(2)]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time: test sessions of several worktrees share the cache."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_image(b: Buildah, *, timeout: float = 1200) -> str:
    """The base image for this version of scripts/container-base.sh, built on first use (~3 min)."""
    key = hashlib.sha256(BASE_SCRIPT.read_bytes()).hexdigest()[:12]
    tag = f"{BASE_REPO}:bookworm-{key}"
    with _locked(b.cache / "base.lock"):
        if b.exists(tag):
            return tag
        r = subprocess.run(["bash", str(BASE_SCRIPT), "--tag", tag], capture_output=True, text=True, timeout=timeout, env=b.env,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BuildahError(f"scripts/container-base.sh exited {r.returncode}:\n{r.stderr[-3000:]}")
        for row in b.images(BASE_REPO):  # an older script's base is never used again
            if tag not in row["names"]:
                _quiet_rmi(b, row["id"])
    return tag


def build_context(dest: Path) -> Path:
    """What the Dockerfile copies, and only that (a checkout also holds .venv, models, caches)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("edgekit", "device_agent"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def build_agent_image(b: Buildah, base: str, context: Path, *, timeout: float = 1200) -> tuple[str, float]:
    """``buildah bud`` the agent's Dockerfile on ``base``; return (tag, seconds taken).

    Docker format keeps the HEALTHCHECK (OCI images have none). The host's CA bundle is mounted
    for pip, as the Dockerfile documents for networks behind a TLS-inspecting proxy.
    """
    tag = f"{AGENT_REPO}:test-{uuid.uuid4().hex[:10]}"
    args = ["bud", "--isolation", "chroot", "--format", "docker", "--pull=never", "--build-arg", f"BASE={base}",
            "-f", str(context / DOCKERFILE), "-t", tag]
    if HOST_CA.is_file():
        args += ["--volume", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    t0 = time.monotonic()
    b(*args, str(context), timeout=timeout)
    return tag, time.monotonic() - t0


def prune_stale_agent_images(b: Buildah, *, older_than_s: float = 6 * 3600) -> None:
    """Remove test images (and their containers) left by sessions that were killed before their cleanup."""
    now = time.time()
    for row in b.images(AGENT_REPO):
        if all(n.startswith(f"{AGENT_REPO}:test-") for n in row["names"]) and now - row["created"] > older_than_s:
            _quiet_rmi(b, row["id"], force=True)


def _quiet_rmi(b: Buildah, image: str, *, force: bool = False) -> None:
    try:
        b("rmi", *(["--force"] if force else []), image)
    except BuildahError:
        pass  # in use by a concurrent session: the next cleanup takes it


class Container:
    """A working container of ``image`` (``buildah from``); ``remove()`` deletes it."""

    def __init__(self, b: Buildah, image: str) -> None:
        self.b = b
        self.name = b("from", "--pull=never", "--name", f"edgekit-test-{uuid.uuid4().hex[:10]}", image).strip()

    def copy(self, src: Path, dest: str, *, chown: str | None = None) -> None:
        self.b("copy", *(["--chown", chown] if chown else []), self.name, str(src), dest)

    def _run_args(self, cmd: tuple[str, ...], volumes: tuple[str, ...]) -> list[str]:
        # chroot isolation: no network namespace, so the container shares the host's loopback
        return ["buildah", "run", "--isolation", "chroot", *[a for v in volumes for a in ("--volume", v)], self.name, "--", *cmd]

    def run(self, *cmd: str, volumes: tuple[str, ...] = (), timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``cmd`` as the image's user; the result whatever the exit code."""
        return subprocess.run(self._run_args(cmd, volumes), capture_output=True, text=True, timeout=timeout, env=self.b.env,
                              stdin=subprocess.DEVNULL)

    def start(self, *cmd: str, volumes: tuple[str, ...] = (), log: Path) -> subprocess.Popen:
        """Start ``cmd`` in the background, its output to ``log``."""
        with open(log, "wb") as out:
            return subprocess.Popen(self._run_args(cmd, volumes), stdout=out, stderr=subprocess.STDOUT, env=self.b.env,
                                    stdin=subprocess.DEVNULL)

    def remove(self) -> None:
        try:
            self.b("rm", self.name)
        except BuildahError:
            pass  # already gone
