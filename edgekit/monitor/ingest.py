"""The ingest path: broker messages decoded and filed in the store, before anything is judged.

Telemetry windows are stored once per ``(device, seq)`` (QoS 1 repeats are dropped), device
states keep the device table current, and the manifests that deploy commands carry become drift
references — with trusted keys, only those whose signature verifies (anyone who can publish could
otherwise plant one). :meth:`Ingest.file` says what is new, so evaluation
(:mod:`edgekit.monitor.evaluation`) runs only on windows it has not seen.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging

from device_agent.contract.errors import OtaError as DeviceOtaError
from device_agent.contract.errors import ProtocolError
from device_agent.contract.manifest import Manifest, ManifestError
from device_agent.contract.protocol import Command, CommandKind, Message, StateMessage, TelemetryMessage, decode
from device_agent.ota.verify import TrustedKeys, verify_manifest
from edgekit.monitor.store import Reference, TelemetrySink

__all__ = ["Ingest"]

log = logging.getLogger("edgekit.monitor")


class Ingest:
    """Decodes and stores what the broker delivers; counts it in ``stats``.

    Args:
        store: where windows, states and references go.
        collector: the id stored with each window (whose share of the traffic it was).
        trusted: when given, a deploy command's manifest becomes a reference only if its signature verifies.
        stats: the counters to update (``telemetry``, ``duplicates``, ``states``, ``malformed``,
            ``references``, ``rejected_references``).
    """

    def __init__(self, store: TelemetrySink, *, collector: str = "", trusted: TrustedKeys | None = None,
                 stats: dict[str, int] | None = None) -> None:
        self.store = store
        self.collector = collector
        self.trusted = trusted
        self.stats = stats if stats is not None else {}
        for key in ("telemetry", "duplicates", "states", "malformed", "references", "rejected_references"):
            self.stats.setdefault(key, 0)

    def decode(self, topic: str, payload: bytes) -> Message | None:
        """The message, or None for a cleared retained message or a malformed one (counted and logged, never raised)."""
        if not payload:
            return None
        try:
            return decode(payload)
        except (ProtocolError, ValueError, TypeError, KeyError, AttributeError) as e:  # decode validates most, not every field
            self.stats["malformed"] += 1
            log.warning("monitor: ignoring a malformed message on %s: %s", topic, e)
            return None

    def file(self, msg: Message, payload: bytes) -> TelemetryMessage | Reference | None:
        """Store ``msg``; returns a telemetry window stored for the first time, a new reference, or None."""
        if isinstance(msg, TelemetryMessage):
            if not self.store.add_telemetry(msg, payload, collector=self.collector):
                self.stats["duplicates"] += 1
                return None
            self.stats["telemetry"] += 1
            return msg
        if isinstance(msg, StateMessage):
            self.store.record_state(msg)
            self.stats["states"] += 1
        elif isinstance(msg, Command):
            return self._from_command(msg)
        return None

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
