"""Which agent and runtime each device runs (issue 19): the version fields of ``fleet status``.

Agents report their version, the installed runtimes and the runtime check
(:class:`~device_agent.contract.runtimes.RuntimeCheck`: the runtime serving the model against the
version the model card validated it with) in every state message and telemetry window.
"""

from __future__ import annotations

from device_agent.contract.protocol import StateMessage, TelemetryMessage
from device_agent.runtime.compat import RUNTIME_PACKAGES

__all__ = ["VERSION_COLUMNS", "VERSION_FIELDS", "runtime_columns", "runtime_matches"]

#: the version fields of a ``fleet status`` row, in :func:`runtime_columns` order
VERSION_FIELDS = ("agent_version", "runtime", "runtime_validated", "runtime_status", "runtime_detail")
#: their table columns (the detail goes to --json only: a sentence)
VERSION_COLUMNS = [("agent_version", "agent"), ("runtime", "runtime"), ("runtime_validated", "validated"),
                   ("runtime_status", "runtime status")]


def runtime_columns(m: StateMessage | TelemetryMessage) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """(agent_version, runtime, runtime_validated, runtime_status, runtime_detail) as a device reported them; None: not said.

    ``runtime`` is "name version" ("onnxruntime 1.27.0"). The runtime check names the runtime serving the
    model and its installed version; without one (an agent from before the check, or no model loaded),
    the installed version of the model's runtime, when the message names it.
    """
    agent = m.agent_version or None
    rc = m.runtime_check
    if rc is not None and rc.runtime:
        runtime = f"{rc.runtime} {rc.installed}" if rc.installed else rc.runtime
        return agent, runtime, rc.validated, str(rc.status), rc.detail or None
    name = str((m.model or {}).get("runtime") or "")
    installed = m.runtime.get(RUNTIME_PACKAGES.get(name, name)) if name else None
    return agent, f"{name} {installed}" if installed else None, None, None, None


def runtime_matches(runtime: str | None, wanted: str) -> bool:
    """Whether a device's ``runtime`` is what ``--runtime`` asks for: a name ("onnxruntime": any version), a release
    ("onnxruntime 1.27": its patches too) or one version ("onnxruntime 1.27.0"; "onnxruntime==1.27.0" alike)."""
    if runtime is None:
        return False
    name, _, version = wanted.replace("==", " ").partition(" ")
    exact = f"{name} {version.strip()}".strip()
    return runtime == exact or runtime.startswith(exact + ("." if version.strip() else " "))
