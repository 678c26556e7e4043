"""Building update jobs from an output directory: the job document, its chunks, signed commands.

The device parses what this writes with :func:`device_agent.ota.job.parse_job`; both sides compute
the chunk plan with :func:`device_agent.ota.job.chunk_plan`. Commands are command version 2: bound
to one device or group, valid from now for ``ttl_s``, every field signed (the device's checks are
:mod:`device_agent.ota.gate`).
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, ManifestError, load_manifest
from device_agent.contract.protocol import Command, CommandKind
from device_agent.ota.delivery import encode_chunk
from device_agent.ota.job import JOB_SCHEMA, JOB_VERSION, ArtifactRef, chunk_plan
from device_agent.ota.verify import sign_command
from edgekit.errors import InputError

__all__ = ["COMMAND_TTL_S", "Release", "new_job_id", "signed_command"]

#: how long a command stays valid after it was signed: long enough to cross a busy broker, short
#: enough that a captured command is void soon after (devices accept at most a day)
COMMAND_TTL_S = 600.0


def new_job_id(prefix: str = "job") -> str:
    """``<prefix>-<utc time>-<random>``: unique, sortable, valid in a topic."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Release:
    """A signed (or not) output directory, ready to deploy."""

    dir: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature: str | None

    @classmethod
    def open(cls, directory: str | Path) -> Release:
        d = Path(directory)
        try:
            m = load_manifest(d, verify_files=True)
        except ManifestError as e:
            raise InputError(f"cannot deploy {d}: {e}") from None
        sig = d / SIGNATURE_NAME
        return cls(d, m, (d / MANIFEST_NAME).read_bytes(), sig.read_text() if sig.is_file() else None)

    @property
    def artifacts(self) -> tuple[ArtifactRef, ...]:
        return tuple(ArtifactRef(a.file, a.size_bytes, a.sha256) for a in self.manifest.artifacts)

    @property
    def size(self) -> int:
        return sum(a.size for a in self.artifacts)

    def job_params(self, *, method: str = "mqtt", chunk_size: int = 64 * 1024, base_url: str | None = None,
                   probation: dict[str, Any] | None = None, allow_incompatible: bool = False, timeout_s: float = 900.0,
                   allow_rolled_back: bool = False) -> dict[str, Any]:
        """The deploy command's params (see :mod:`device_agent.ota.job`); the command's signature covers them all."""
        arts = []
        for a in self.artifacts:
            entry: dict[str, Any] = {"file": a.file, "size": a.size, "sha256": a.sha256}
            if method == "http":
                if not base_url:
                    raise InputError("http delivery needs --url, the base URL the artifacts are served from")
                entry["url"] = base_url.rstrip("/") + "/" + a.file
            arts.append(entry)
        delivery: dict[str, Any] = {"method": method}
        if method == "mqtt":
            delivery["chunk_size"] = chunk_size
        params: dict[str, Any] = {
            "schema": JOB_SCHEMA, "job_version": JOB_VERSION,
            "model": {"name": self.manifest.name, "version": self.manifest.version},
            "manifest": base64.b64encode(self.manifest_bytes).decode(), "signature": self.signature,
            "artifacts": arts, "delivery": delivery, "timeout_s": timeout_s,
        }
        if probation:
            params["probation"] = probation
        if allow_incompatible:
            params["allow_incompatible"] = True
        if allow_rolled_back:
            params["allow_rolled_back"] = True
        return params

    def chunks(self, job: str, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        """(n, payload) for every chunk of the job, read from disk one chunk at a time."""
        plan = chunk_plan(self.artifacts, chunk_size)
        for n, (file, offset, size) in enumerate(plan):
            with open(self.dir / file, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            yield n, encode_chunk(job=job, n=n, count=len(plan), file=file, offset=offset, data=data)


def signed_command(kind: CommandKind, job: str, *, device: str = "", group: str = "", params: dict[str, Any] | None = None,
                   key: Any = None, ttl_s: float = COMMAND_TTL_S) -> Command:
    """A command for one ``device`` or ``group`` (exactly one), valid for ``ttl_s`` from now; with ``key`` (an ed25519
    private key) its ``auth`` signs every field. Without a key only devices with ``allow_unsigned`` take it."""
    if bool(device) == bool(group):
        raise InputError(f"a {kind} command names exactly one target, a device or a group; got {'both' if device else 'neither'}")
    ts = round(time.time(), 3)
    cmd = Command(kind=kind, job=job, ts=ts, params=dict(params or {}), device=device, group=group, expires=round(ts + ttl_s, 3))
    return dataclasses.replace(cmd, auth=sign_command(key, cmd)) if key is not None else cmd
