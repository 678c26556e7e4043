"""The update job document: what a deploy command carries, parsed and bounded before anything runs.

``Command.params`` of a deploy (schema ``edgekit.job``, ``job_version`` 1)::

    {"schema": "edgekit.job", "job_version": 1,
     "model": {"name": "digits", "version": "1.2.0"},
     "manifest": "<base64 of the exact edgekit.json bytes>",
     "signature": "<edgekit.json.sig text>" | null,
     "artifacts": [{"file": "digits.int8.ort", "size": 81234, "sha256": "...", "url": "https://..."?}],
     "delivery": {"method": "mqtt", "chunk_size": 65536} | {"method": "http"},
     "probation": {"requests": 200, "seconds": 300, ...},      # optional; the device's defaults fill the rest
     "allow_incompatible": false,                               # optional
     "allow_rolled_back": false,                                # optional; redeploy a release this device rolled back
     "timeout_s": 900}                                          # optional; download + verify deadline

Every key is covered by the command's signature (command version 2, :mod:`device_agent.ota.gate`):
what the job asks of the device — probation, shadow, compatibility, URLs, timeout, overrides — is
what the operator signed.

The signed manifest is authoritative: every artifact the job lists must appear in it with the same
size and sha256, and every artifact in it must be delivered (checked in :func:`parse_job`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from device_agent.contract.errors import OtaError
from device_agent.contract.manifest import MANIFEST_NAME, Manifest, ManifestError
from device_agent.contract.types import JsonDict
from device_agent.ota.verify import safe_name

__all__ = ["JOB_SCHEMA", "JOB_VERSION", "ArtifactRef", "DeployJob", "Limits", "ProbationPolicy", "chunk_plan", "parse_job"]

JOB_SCHEMA = "edgekit.job"
JOB_VERSION = 1
MAX_CHUNK = 1 << 20
METHODS = ("mqtt", "http")
#: what a probation field's type asks of a job's value, in words
_KINDS = {"bool": "true or false", "int": "an integer", "float": "a finite number"}


@dataclass(frozen=True)
class ProbationPolicy:
    """When a served update is kept (committed) or reverted (rolled back).

    Probation lasts ``requests`` predictions (and until the latency question is answered) or
    ``seconds``, whichever comes first. It fails at once on a NaN/Inf output; once ``min_requests``
    were served it fails when the runtime error rate exceeds ``max_error_rate``; it fails on latency
    when, over ``latency_samples`` paired runs of the new and the previous model on the same live
    inputs, alternately in the same window, the 95 % lower confidence bound of the ratio of their fast
    runs (10th percentiles, new / old: what each costs when the host leaves it alone) exceeds
    ``max_latency_ratio`` and the new model adds more than ``latency_floor_ms`` (sub-ms jitter is not a
    regression: :mod:`device_agent.ota.latency`); and when the agent restarted ``max_crashes`` times during probation. With ``shadow``, the candidate first
    runs beside the incumbent on ``shadow_sample`` of live inputs and is promoted only when top-1
    agreement over ``shadow_requests`` comparisons is ≥ ``shadow_min_agreement``.
    """

    requests: int = 200
    seconds: float = 300.0
    min_requests: int = 20
    max_error_rate: float = 0.02
    max_latency_ratio: float = 3.0
    latency_floor_ms: float = 0.25
    latency_samples: int = 40
    max_crashes: int = 2
    shadow: bool = False
    shadow_sample: float = 0.25
    shadow_requests: int = 50
    shadow_min_agreement: float = 0.95
    shadow_seconds: float = 300.0

    _BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {
        "requests": (1, 10_000_000), "seconds": (0.0, 30 * 86400.0), "min_requests": (1, 1_000_000), "max_error_rate": (0.0, 1.0),
        "max_latency_ratio": (1.0, 1000.0), "latency_floor_ms": (0.0, 60_000.0),
        "latency_samples": (10, 100_000), "max_crashes": (1, 100), "shadow_sample": (0.0, 1.0), "shadow_requests": (1, 1_000_000),
        "shadow_min_agreement": (0.0, 1.0), "shadow_seconds": (0.0, 30 * 86400.0),
    }

    def merged(self, overrides: object, where: str = "probation") -> ProbationPolicy:
        """These defaults with ``overrides`` (a dict from the job) applied and bounds-checked."""
        if overrides is None:
            return self
        if not isinstance(overrides, dict):
            raise OtaError(f"job {where} must be an object, got {type(overrides).__name__}", reason="bad_job")
        fields = {f.name: f for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}  # checked against each field's type below
        for k, v in overrides.items():
            if k not in fields:
                raise OtaError(f"job {where} has unknown key {k!r}; known: {', '.join(fields)}", reason="bad_job")
            want = fields[k].type
            if want in (bool, "bool"):
                ok = isinstance(v, bool)
            elif want in (int, "int"):
                ok = isinstance(v, int) and not isinstance(v, bool)
            else:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok:
                name = want if isinstance(want, str) else want.__name__
                raise OtaError(f"job {where}.{k} must be {_KINDS.get(name, name)}, got {v!r}", reason="bad_job")
            bounds = self._BOUNDS.get(k)
            if bounds is not None and not bounds[0] <= v <= bounds[1]:
                raise OtaError(f"job {where}.{k} = {v} is out of range; allowed: {bounds[0]} to {bounds[1]}", reason="bad_job")
            values[k] = v
        return dataclasses.replace(self, **values)

    def to_dict(self) -> JsonDict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Limits:
    """Device-side bounds on what a job may ask for."""

    max_update_bytes: int = 512 << 20
    max_files: int = 16
    max_timeout_s: float = 86400.0
    default_timeout_s: float = 900.0


@dataclass(frozen=True)
class ArtifactRef:
    file: str
    size: int
    sha256: str
    url: str | None = None


@dataclass(frozen=True)
class DeployJob:
    """A parsed, bounded deploy job. ``manifest_bytes`` is exactly what was signed."""

    id: str
    name: str
    version: str
    manifest: Manifest
    manifest_bytes: bytes
    signature: str | None
    artifacts: tuple[ArtifactRef, ...]
    method: str
    chunk_size: int
    probation: ProbationPolicy
    allow_incompatible: bool
    timeout_s: float
    allow_rolled_back: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(a.size for a in self.artifacts)


def parse_job(job_id: str, params: object, *, defaults: ProbationPolicy, limits: Limits) -> DeployJob:
    """Validate a deploy command's params. Raises OtaError (``bad_job``, ``unsupported_job_version``,
    ``unsafe_path``, ``oversized``, ``manifest_mismatch``) naming the field and what is allowed."""
    if not isinstance(params, dict):
        raise OtaError(f"job {job_id}: the job document must be an object", reason="bad_job")
    if params.get("schema") != JOB_SCHEMA:
        raise OtaError(f"job {job_id}: schema is {params.get('schema')!r}; expected {JOB_SCHEMA!r}", reason="bad_job")
    if params.get("job_version") != JOB_VERSION:
        raise OtaError(f"job {job_id}: job_version {params.get('job_version')!r} is not supported (this agent reads {JOB_VERSION}); "
                       "upgrade the agent or deploy with a matching edgekit", reason="unsupported_job_version")
    for key in ("manifest", "artifacts", "delivery"):
        if key not in params:
            raise OtaError(f"job {job_id}: missing {key!r}", reason="bad_job")
    mbytes, manifest = _manifest(job_id, params["manifest"])
    sig = params.get("signature")
    if sig is not None and not isinstance(sig, str):
        raise OtaError(f"job {job_id}: signature must be the edgekit.json.sig text or null", reason="bad_job")
    refs = _artifacts(job_id, params["artifacts"], limits)
    _match_manifest(job_id, refs, manifest, params.get("model") or {})
    method, chunk = _delivery(job_id, params["delivery"], refs)
    timeout = params.get("timeout_s", limits.default_timeout_s)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= limits.max_timeout_s:
        raise OtaError(f"job {job_id}: timeout_s {timeout!r} must be a number in (0, {limits.max_timeout_s:g}]", reason="bad_job")
    allow, again = (params.get(k, False) for k in ("allow_incompatible", "allow_rolled_back"))
    if not isinstance(allow, bool) or not isinstance(again, bool):
        raise OtaError(f"job {job_id}: allow_incompatible and allow_rolled_back must be true or false", reason="bad_job")
    return DeployJob(
        id=job_id, name=manifest.name, version=manifest.version, manifest=manifest, manifest_bytes=mbytes, signature=sig,
        artifacts=refs, method=method, chunk_size=chunk, probation=defaults.merged(params.get("probation"), f"{job_id} probation"),
        allow_incompatible=allow, timeout_s=float(timeout), allow_rolled_back=again,
    )


def _manifest(job_id: str, encoded: object) -> tuple[bytes, Manifest]:
    """The exact signed manifest bytes (base64 in the job) and the manifest they hold."""
    try:
        mbytes = base64.b64decode(encoded, validate=True)  # type: ignore[arg-type]  # a non-string raises TypeError, reported below
        doc = json.loads(mbytes)
        manifest = Manifest.from_dict(doc, f"job {job_id} manifest")
    except (binascii.Error, TypeError, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, ManifestError):
            raise OtaError(f"job {job_id}: the manifest does not validate: {e}", reason="bad_job") from None
        raise OtaError(f"job {job_id}: manifest must be base64 of the edgekit.json bytes ({e})", reason="bad_job") from None
    return mbytes, manifest


def _artifacts(job_id: str, arts: object, limits: Limits) -> tuple[ArtifactRef, ...]:
    if not isinstance(arts, list) or not arts:
        raise OtaError(f"job {job_id}: artifacts must be a non-empty list", reason="bad_job")
    if len(arts) > limits.max_files:
        raise OtaError(f"job {job_id}: {len(arts)} artifacts; at most {limits.max_files} allowed", reason="oversized")
    refs = []
    for i, a in enumerate(arts):
        if not isinstance(a, dict):
            raise OtaError(f"job {job_id}: artifacts[{i}] must be an object", reason="bad_job")
        name = safe_name(a.get("file"), what=f"job {job_id}: artifacts[{i}].file")
        if name in (MANIFEST_NAME, MANIFEST_NAME + ".sig"):
            raise OtaError(f"job {job_id}: artifacts[{i}].file may not be {name}", reason="unsafe_path")
        size, sha = a.get("size"), a.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise OtaError(f"job {job_id}: artifacts[{i}].size must be a non-negative integer, got {size!r}", reason="bad_job")
        url = a.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise OtaError(f"job {job_id}: artifacts[{i}].url must be an http(s) URL, got {url!r}", reason="bad_job")
        refs.append(ArtifactRef(name, size, str(sha), url))
    if len({r.file for r in refs}) != len(refs):
        raise OtaError(f"job {job_id}: an artifact is listed twice", reason="bad_job")
    total = sum(r.size for r in refs)
    if total > limits.max_update_bytes:
        raise OtaError(f"job {job_id}: the update is {total:,} bytes; this device accepts at most {limits.max_update_bytes:,} "
                       "(raise [ota] max_update_bytes or ship a smaller model)", reason="oversized")
    return tuple(refs)


def _match_manifest(job_id: str, refs: tuple[ArtifactRef, ...], manifest: Manifest, model: object) -> None:
    """The signed manifest is authoritative: the job delivers exactly its artifacts, at their sizes and hashes."""
    listed = {a.file: a for a in manifest.artifacts}
    for r in refs:
        m = listed.get(r.file)
        if m is None:
            raise OtaError(f"job {job_id}: artifact {r.file} is not in the manifest ({', '.join(listed)})", reason="manifest_mismatch")
        if m.size_bytes != r.size or m.sha256 != r.sha256:
            raise OtaError(f"job {job_id}: artifact {r.file} size/sha256 differ from the manifest's", reason="manifest_mismatch")
    missing = sorted(set(listed) - {r.file for r in refs})
    if missing:
        raise OtaError(f"job {job_id}: the manifest lists {', '.join(missing)} but the job does not deliver it", reason="manifest_mismatch")
    if isinstance(model, dict) and model.get("version") not in (None, manifest.version):
        raise OtaError(f"job {job_id}: model.version {model.get('version')!r} differs from the manifest's {manifest.version!r}",
                       reason="manifest_mismatch")


def _delivery(job_id: str, delivery: object, refs: tuple[ArtifactRef, ...]) -> tuple[str, int]:
    """(method, chunk size) of a job's ``delivery`` object."""
    if not isinstance(delivery, dict) or delivery.get("method") not in METHODS:
        raise OtaError(f"job {job_id}: delivery.method must be one of {', '.join(METHODS)}", reason="bad_job")
    chunk = delivery.get("chunk_size", 65536)
    if delivery["method"] == "mqtt" and (not isinstance(chunk, int) or not 1024 <= chunk <= MAX_CHUNK):
        raise OtaError(f"job {job_id}: delivery.chunk_size {chunk!r} must be an integer from 1024 to {MAX_CHUNK}", reason="oversized")
    if delivery["method"] == "http" and any(r.url is None for r in refs):
        raise OtaError(f"job {job_id}: http delivery needs a url for every artifact", reason="bad_job")
    return str(delivery["method"]), int(chunk)


def chunk_plan(artifacts: tuple[ArtifactRef, ...] | list[ArtifactRef], chunk_size: int) -> list[tuple[str, int, int]]:
    """Chunk ``n`` of a job is ``plan[n] = (file, offset, size)``: files in job order, each cut in
    ``chunk_size`` pieces (an empty file is one empty chunk). The fleet and the device compute it
    the same way, so a chunk that does not fit its slot is detected."""
    plan: list[tuple[str, int, int]] = []
    for a in artifacts:
        if a.size == 0:
            plan.append((a.file, 0, 0))
            continue
        for off in range(0, a.size, chunk_size):
            plan.append((a.file, off, min(chunk_size, a.size - off)))
    return plan
