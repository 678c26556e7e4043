"""The runtime check: the runtime that executes a model on a device against the one it was validated with.

A model's behaviour depends on the runtime as much as on the file (an onnxruntime or LiteRT release
can change kernels, fusions and int8 rounding), so the agent compares its runtime's version with the
version the manifest's ``tools`` recorded when edgekit validated the artifact. The outcome travels in
``GET /v1/model``, the retained state (birth) message and every telemetry window::

    {"runtime": "onnxruntime", "package": "onnxruntime", "installed": "1.27.0", "validated": "1.32.0",
     "status": "mismatch", "policy": "warn", "max_minor_drift": 0,
     "detail": "onnxruntime 1.27.0 runs here; the model was validated with 1.32.0 (5 minor releases apart) ..."}

``status`` (:class:`RuntimeStatus`): ``match`` (same major.minor; patch releases never count),
``drift`` (another minor release, within ``[model] runtime_max_minor_drift``), ``mismatch`` (further
away, or another major release; served under ``runtime_mismatch = "warn"``), ``refused`` (the same,
under ``"refuse"``: not served), ``unknown`` (the manifest records no version for this runtime, or a
bare model file). Drift and mismatch run the manifest's self-test vectors whatever ``[model] selftest``
says: they, with the artifact's own tolerances, decide whether the model is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from device_agent.contract.enums import StrEnum
from device_agent.contract.errors import ProtocolError
from device_agent.contract.types import JsonDict

__all__ = ["RuntimeCheck", "RuntimeMismatchPolicy", "RuntimeStatus"]


class RuntimeStatus(StrEnum):
    MATCH = "match"
    DRIFT = "drift"
    MISMATCH = "mismatch"
    REFUSED = "refused"
    UNKNOWN = "unknown"


class RuntimeMismatchPolicy(StrEnum):
    """``[model] runtime_mismatch``: what a runtime too far from the validated one means."""

    WARN = "warn"
    REFUSE = "refuse"


@dataclass(frozen=True)
class RuntimeCheck:
    """The installed runtime against the version the served artifact was validated with."""

    runtime: str  # the artifact's runtime: "onnxruntime" | "litert"
    package: str  # the distribution whose version is compared: "onnxruntime" | "ai-edge-litert"
    installed: str | None
    validated: str | None
    status: RuntimeStatus
    policy: RuntimeMismatchPolicy = RuntimeMismatchPolicy.WARN
    max_minor_drift: int = 0
    detail: str = ""

    @property
    def refused(self) -> bool:
        return self.status == RuntimeStatus.REFUSED

    @property
    def differs(self) -> bool:
        """Another minor or major release than the validated one (the self-test must decide)."""
        return self.status in (RuntimeStatus.DRIFT, RuntimeStatus.MISMATCH, RuntimeStatus.REFUSED)

    def to_dict(self) -> JsonDict:
        return {"runtime": self.runtime, "package": self.package, "installed": self.installed, "validated": self.validated,
                "status": str(self.status), "policy": str(self.policy), "max_minor_drift": self.max_minor_drift, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuntimeCheck:
        try:
            return cls(runtime=str(d["runtime"]), package=str(d.get("package") or d["runtime"]),
                       installed=_opt_str(d.get("installed")), validated=_opt_str(d.get("validated")),
                       status=RuntimeStatus(d["status"]), policy=RuntimeMismatchPolicy(d.get("policy", "warn")),
                       max_minor_drift=int(d.get("max_minor_drift", 0)), detail=str(d.get("detail", "")))
        except (KeyError, TypeError, ValueError) as e:
            allowed = ", ".join(str(s) for s in RuntimeStatus)
            raise ProtocolError(f"runtime_check is malformed ({e!r}); it needs runtime and status ({allowed})") from None


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)
