"""Is the runtime here the one the model was validated with? :func:`check_runtime` decides, by version.

The manifest's ``tools`` record the versions edgekit validated the artifacts with (``onnxruntime`` for
``.onnx``/``.ort``, ``ai-edge-litert`` for ``.tflite``); the installed ones come from the package
metadata (:func:`~device_agent.runtime.base.runtime_versions`). Patch releases never count; another
minor release within ``max_minor_drift`` is drift; further away, or another major release, is a
mismatch, which the policy serves with a warning (``warn``) or refuses (``refuse``). What each status
means is in :mod:`device_agent.contract.runtimes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from device_agent.contract.manifest import Artifact, Manifest
from device_agent.contract.runtimes import RuntimeCheck, RuntimeMismatchPolicy, RuntimeStatus
from device_agent.runtime.base import runtime_versions

__all__ = ["RUNTIME_PACKAGES", "RuntimePolicy", "check_runtime", "release"]

#: an artifact's runtime -> the distribution whose version the manifest's ``tools`` and the device compare
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}


@dataclass(frozen=True)
class RuntimePolicy:
    """``[model] runtime_mismatch`` and ``runtime_max_minor_drift``."""

    on_mismatch: RuntimeMismatchPolicy = RuntimeMismatchPolicy.WARN
    max_minor_drift: int = 0


def release(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a version string ("1.27.0" -> (1, 27); "2.19.0rc1" -> (2, 19)); None when it has none."""
    m = re.match(r"\s*v?(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_runtime(manifest: Manifest | None, artifact: Artifact | None, *, runtime: str, policy: RuntimePolicy | None = None,
                  installed: Mapping[str, str] | None = None) -> RuntimeCheck:
    """Compare the runtime that will run ``artifact`` with the version the manifest validated it with.

    Args:
        manifest: the model's manifest (None for a bare model file: nothing to compare with).
        artifact: the artifact chosen for this device.
        runtime: the backend's runtime name ("onnxruntime", "litert").
        policy: what a mismatch means (default: warn, no minor drift allowed).
        installed: the installed distributions' versions (default: read from the package metadata).
    """
    policy = policy or RuntimePolicy()
    package = RUNTIME_PACKAGES.get(runtime, runtime)
    have = (installed if installed is not None else runtime_versions()).get(package)
    tools = (manifest.raw.get("tools") or {}) if manifest is not None else {}
    want = str(tools[package]) if isinstance(tools, dict) and tools.get(package) else None
    status, detail = _judge(package, have, want, policy, bare=manifest is None or artifact is None)
    return RuntimeCheck(runtime=runtime, package=package, installed=have, validated=want, status=status, policy=policy.on_mismatch,
                        max_minor_drift=policy.max_minor_drift, detail=detail)


def _judge(package: str, have: str | None, want: str | None, policy: RuntimePolicy, *, bare: bool) -> tuple[RuntimeStatus, str]:
    here = f"{package} {have or '(version unknown)'} runs here"
    if bare:
        return RuntimeStatus.UNKNOWN, f"{here}; a bare model file records no runtime it was validated with"
    a, b = release(have), release(want)
    if want is None or a is None or b is None:
        recorded = f"records {package} {want}" if want else f"records no {package} version"
        return RuntimeStatus.UNKNOWN, f"{here}; the manifest {recorded}, so the versions cannot be compared"
    if a == b:
        return RuntimeStatus.MATCH, f"{here}; the model was validated with {want}"
    apart = f"{abs(a[1] - b[1])} minor release(s) apart" if a[0] == b[0] else f"major release {a[0]} here, {b[0]} there"
    said = f"{here}; the model was validated with {want} ({apart})"
    if a[0] == b[0] and abs(a[1] - b[1]) <= policy.max_minor_drift:
        return RuntimeStatus.DRIFT, f"{said}, within [model] runtime_max_minor_drift = {policy.max_minor_drift}; the self-test decides"
    beyond = f"beyond [model] runtime_max_minor_drift = {policy.max_minor_drift}"
    if policy.on_mismatch == RuntimeMismatchPolicy.REFUSE:
        return RuntimeStatus.REFUSED, (f"{said}, {beyond}, and [model] runtime_mismatch = \"refuse\": deploy a model validated "
                                       f"with {package} {a[0]}.{a[1]}, install {package}=={want}, or set runtime_mismatch = \"warn\"")
    return RuntimeStatus.MISMATCH, f"{said}, {beyond}; served because [model] runtime_mismatch = \"warn\" and the self-test decides"
