"""The ingest path: broker messages decoded and filed in the store, in batches, before anything is judged.

Telemetry windows are stored once per ``(device, seq)`` (QoS 1 repeats are dropped) and added to
the running totals as they are stored; device states and job states keep the devices page
current; rollouts published by ``fleet deploy`` are kept; and the manifests that deploy commands
carry become drift references — with trusted keys, only those whose signature verifies (anyone who
can publish could otherwise plant one). :meth:`Ingest.file_batch` says what is new, so evaluation
(:mod:`edgekit.monitor.evaluation`) runs only on windows it has not seen.

Decoding uses orjson (several times faster than the standard library on a telemetry window) and
the protocol's own message classes; a payload orjson refuses goes through
:func:`device_agent.contract.protocol.decode`, so what is accepted does not change.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from device_agent.contract.errors import OtaError as DeviceOtaError
from device_agent.contract.errors import ProtocolError
from device_agent.contract.manifest import Manifest, ManifestError
from device_agent.contract.protocol import (
    PROTOCOL_VERSION,
    Command,
    CommandKind,
    JobUpdate,
    Message,
    StateMessage,
    TelemetryMessage,
    decode,
)
from device_agent.ota.verify import TrustedKeys, verify_manifest
from edgekit.monitor.store import Reference, TelemetrySink

__all__ = ["Filed", "Ingest", "fast_decode"]

log = logging.getLogger("edgekit.monitor")

_CLASSES: dict[str, Any] = {str(c.type): c for c in (StateMessage, TelemetryMessage, Command, JobUpdate)}


def fast_decode(payload: bytes) -> Message:
    """:func:`device_agent.contract.protocol.decode`, parsed with orjson (the same checks; the same errors)."""
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return decode(payload)  # NaN literals, huge integers, broken UTF-8: the standard parser decides
    if not isinstance(d, dict) or d.get("v") != PROTOCOL_VERSION or d.get("type") not in _CLASSES:
        return decode(payload)  # its error names what is wrong
    return _CLASSES[d["type"]].from_dict(d)  # type: ignore[no-any-return]


@dataclass
class Filed:
    """What a batch changed: windows stored for the first time (in arrival order) and new references."""

    telemetry: list[TelemetryMessage] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)


class Ingest:
    """Decodes and stores what the broker delivers; counts it in ``stats``.

    Args:
        store: where windows, states, jobs and references go.
        collector: the id stored with each window (whose share of the traffic it was).
        trusted: when given, a deploy command's manifest becomes a reference only if its signature verifies.
        stats: the counters to update (``telemetry``, ``duplicates``, ``states``, ``jobs``, ``malformed``,
            ``references``, ``rejected_references``).
    """

    def __init__(self, store: TelemetrySink, *, collector: str = "", trusted: TrustedKeys | None = None,
                 stats: dict[str, int] | None = None) -> None:
        self.store = store
        self.collector = collector
        self.trusted = trusted
        self.stats = stats if stats is not None else {}
        for key in ("telemetry", "duplicates", "states", "jobs", "malformed", "references", "rejected_references"):
            self.stats.setdefault(key, 0)

    def decode(self, topic: str, payload: bytes) -> Message | None:
        """The message, or None for a cleared retained message or a malformed one (counted and logged, never raised)."""
        if not payload:
            return None
        try:
            return fast_decode(payload)
        except (ProtocolError, ValueError, TypeError, KeyError, AttributeError) as e:  # decode validates most, not every field
            self.stats["malformed"] += 1
            log.warning("monitor: ignoring a malformed message on %s: %s", topic, e)
            return None

    def file(self, msg: Message, payload: bytes) -> TelemetryMessage | Reference | None:
        """Store one message; returns a telemetry window stored for the first time, a new reference, or None."""
        filed = self.file_batch([(msg, payload)])
        return filed.telemetry[0] if filed.telemetry else filed.references[0] if filed.references else None

    def file_batch(self, batch: Sequence[tuple[Message, bytes]]) -> Filed:
        """Store decoded messages: states first (groups are current for the windows), then job states, windows, commands."""
        out = Filed()
        states = [m for m, _ in batch if isinstance(m, StateMessage)]
        if states:
            self.store.record_states(states)
            self.stats["states"] += len(states)
        jobs = [m for m, _ in batch if isinstance(m, JobUpdate)]
        if jobs:
            self.store.record_jobs(jobs)
            self.stats["jobs"] += len(jobs)
        windows = [(m, p) for m, p in batch if isinstance(m, TelemetryMessage)]
        if windows:
            fresh = self.store.add_batch(windows, collector=self.collector)
            out.telemetry = [m for (m, _), new in zip(windows, fresh, strict=True) if new]
            self.stats["telemetry"] += len(out.telemetry)
            self.stats["duplicates"] += len(windows) - len(out.telemetry)
        for m, _ in batch:
            if isinstance(m, Command):
                ref = self._from_command(m)
                if ref is not None:
                    out.references.append(ref)
        return out

    def file_rollout(self, topic: str, payload: bytes) -> None:
        """Keep a rollout ``fleet deploy`` published (see :func:`edgekit.fleet.mqtt.rollout_topic`); a bad one is logged."""
        try:
            doc = json.loads(payload) if payload else None
            if not isinstance(doc, dict) or doc.get("type") != "rollout" or not isinstance(doc.get("job"), str):
                raise ValueError("not an edgekit rollout record")
        except ValueError as e:
            self.stats["malformed"] += 1
            log.warning("monitor: ignoring a malformed rollout on %s: %s", topic, e)
            return
        self.store.record_rollout(doc)

    def register(self, manifest: Manifest, source: str = "") -> Reference:
        """Store ``manifest``'s drift profile and accuracy as the reference of its model version."""
        ref = Reference.from_manifest(manifest, source)
        self.store.add_reference(ref)
        self.stats["references"] += 1
        return ref

    def _from_command(self, cmd: Command) -> Reference | None:
        if cmd.kind != CommandKind.DEPLOY:
            return None
        encoded = cmd.params.get("manifest")
        if not isinstance(encoded, str):
            return None
        try:
            raw = base64.b64decode(encoded, validate=True)
            manifest = Manifest.from_dict(json.loads(raw), f"deploy job {cmd.job}")
        except (binascii.Error, ValueError, ManifestError) as e:
            log.warning("monitor: deploy job %s carries no readable manifest: %s", cmd.job, e)
            return None
        if self.trusted is not None:
            try:
                verify_manifest(raw, cmd.params.get("signature"), self.trusted)
            except DeviceOtaError as e:
                self.stats["rejected_references"] += 1
                log.warning("monitor: not using the manifest of deploy job %s as a reference: %s", cmd.job, e)
                return None
        return self.register(manifest, source=f"deploy job {cmd.job}")
