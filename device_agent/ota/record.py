"""``ota.json``: the update state machine's record, frozen and versioned, written before every move.

One JSON object (compact, UTF-8), replaced atomically (tmp + fsync + rename + directory fsync)::

    {"record_version": 1, "state": "PROBATION", "job": {id, kind, ts, device, params} | null,
     "queue": [job, ...], "crashes": 0, "clean_shutdown": false,
     "history": [{job, kind, state, reason, detail, ts}], "since": 1718000000.123, "reason": "", "detail": "...",
     "from_slot": "1.0.0", "to_slot": "1.1.0", "target": null,
     "started": ..., "shadow_started": ..., "probation_started": ...,
     "rolled_back": [{name, version, reason, ts}]}

Files written before the record was versioned have no ``record_version``; they are version 1 (same
keys, some absent: absent keys take their defaults). Keys no longer used are dropped on the next
save: ``baseline``, and ``seen``, whose job ids the updater first moves into the replay record
(:func:`legacy_seen`, :mod:`device_agent.ota.replay`) so they stay single-use. The file is ``0600``.

``rolled_back`` lists the releases this device reverted (on probation, or by a manual rollback): a
deploy of one of them is refused unless the operator signed ``allow_rolled_back`` into it. A file from a newer agent, or one that does
not parse, is reported and the machine starts from IDLE (the model store alone decides what is served).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from device_agent.contract.enums import CommandKind
from device_agent.contract.types import JsonDict
from device_agent.ota.machine import OtaState
from device_agent.ota.store import atomic_write

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["RECORD_VERSION", "HistoryEntry", "OtaRecord", "QueuedJob", "RecordChanges", "Reverted", "legacy_seen", "load_record",
           "save_record"]

log = logging.getLogger("edgekit.agent.ota")

RECORD_VERSION = 1
#: finished jobs kept in the record (``GET /healthz`` shows the last few)
HISTORY_MAX = 32
#: reverted releases remembered (only trusted deploys can add one)
REVERTED_MAX = 64


@dataclass(frozen=True)
class QueuedJob:
    """A command accepted into the queue (deploy or rollback), as received."""

    id: str
    kind: CommandKind
    ts: float
    device: str
    params: JsonDict

    def to_dict(self) -> JsonDict:
        return {"id": self.id, "kind": str(self.kind), "ts": self.ts, "device": self.device, "params": self.params}

    @classmethod
    def from_dict(cls, d: object) -> QueuedJob:
        if not isinstance(d, dict) or not isinstance(d.get("id"), str):
            raise ValueError(f"a queued job must be an object with an id, got {d!r:.80}")
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"job {d['id']}: params must be an object")
        return cls(d["id"], CommandKind(d.get("kind", "deploy")), float(d.get("ts") or 0.0), str(d.get("device") or ""), params)


@dataclass(frozen=True)
class HistoryEntry:
    """How one job ended."""

    job: str | None
    kind: str | None
    state: str
    reason: str
    detail: str
    ts: float

    def to_dict(self) -> JsonDict:
        return {"job": self.job, "kind": self.kind, "state": self.state, "reason": self.reason, "detail": self.detail, "ts": self.ts}

    @classmethod
    def from_dict(cls, d: object) -> HistoryEntry:
        if not isinstance(d, dict):
            raise ValueError(f"a history entry must be an object, got {d!r:.80}")
        return cls(_opt_str(d.get("job")), _opt_str(d.get("kind")), str(d.get("state", "")), str(d.get("reason", "")),
                   str(d.get("detail", "")), float(d.get("ts") or 0.0))


@dataclass(frozen=True)
class Reverted:
    """A release this device rolled back: not deployed again without a signed override."""

    name: str
    version: str  # the store slot (device_agent.ota.store.slot_name of the manifest's version)
    reason: str
    ts: float

    def to_dict(self) -> JsonDict:
        return {"name": self.name, "version": self.version, "reason": self.reason, "ts": self.ts}

    @classmethod
    def from_dict(cls, d: object) -> Reverted:
        if not isinstance(d, dict):
            raise ValueError(f"a rolled-back release must be an object, got {d!r:.80}")
        return cls(str(d.get("name") or ""), str(d.get("version") or ""), str(d.get("reason") or ""), float(d.get("ts") or 0.0))


@dataclass(frozen=True)
class OtaRecord:
    """Everything the updater keeps across restarts. Frozen: a change is a new record, saved before it counts."""

    state: OtaState = OtaState.IDLE
    job: QueuedJob | None = None  # the running job (taken from the queue)
    queue: tuple[QueuedJob, ...] = ()
    crashes: int = 0  # restarts without a clean shutdown while on probation
    clean_shutdown: bool = True
    history: tuple[HistoryEntry, ...] = ()
    since: float | None = None  # when the state was entered
    reason: str = ""  # machine-readable cause of a final state
    detail: str = ""
    from_slot: str | None = None  # the version served when the job started
    to_slot: str | None = None  # the version the job installs
    target: str | None = None  # the version a rollback returns to
    started: float | None = None  # when the download started (the job's deadline counts from here)
    shadow_started: float | None = None
    probation_started: float | None = None
    rolled_back: tuple[Reverted, ...] = ()

    def to_json(self) -> bytes:
        doc: JsonDict = {"record_version": RECORD_VERSION, "state": str(self.state),
                         "job": self.job.to_dict() if self.job else None, "queue": [q.to_dict() for q in self.queue],
                         "crashes": self.crashes, "clean_shutdown": self.clean_shutdown,
                         "history": [h.to_dict() for h in self.history], "rolled_back": [x.to_dict() for x in self.rolled_back]}
        for name in ("since", "reason", "detail", "from_slot", "to_slot", "target", "started", "shadow_started", "probation_started"):
            doc[name] = getattr(self, name)
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> OtaRecord:
        """Parse ``ota.json`` (any version up to RECORD_VERSION); ValueError when it does not parse."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"the record must be a JSON object, got {type(d).__name__}")
        version = d.get("record_version", 1)
        if not isinstance(version, int) or version > RECORD_VERSION:
            raise ValueError(f"record_version {version!r} was written by a newer agent (this one reads {RECORD_VERSION}); upgrade the agent")
        job = d.get("job")
        return cls(
            state=OtaState(d["state"]), job=QueuedJob.from_dict(job) if job else None,
            queue=tuple(QueuedJob.from_dict(q) for q in d.get("queue") or ()),
            crashes=int(d.get("crashes") or 0), clean_shutdown=bool(d.get("clean_shutdown", True)),
            history=tuple(HistoryEntry.from_dict(h) for h in d.get("history") or ()),
            since=_opt_float(d.get("since")), reason=str(d.get("reason") or ""), detail=str(d.get("detail") or ""),
            from_slot=_opt_str(d.get("from_slot")), to_slot=_opt_str(d.get("to_slot")), target=_opt_str(d.get("target")),
            started=_opt_float(d.get("started")), shadow_started=_opt_float(d.get("shadow_started")),
            probation_started=_opt_float(d.get("probation_started")),
            rolled_back=tuple(Reverted.from_dict(x) for x in d.get("rolled_back") or ()),
        )

    def changed(self, **changes: Unpack[RecordChanges]) -> OtaRecord:
        """A copy with ``changes`` applied (the record itself never changes)."""
        return replace(self, **changes)

    def finished(self, ts: float) -> OtaRecord:
        """This record with the running job's outcome appended to the history (bounded)."""
        job = self.job
        entry = HistoryEntry(job.id if job else None, str(job.kind) if job else None, str(self.state), self.reason, self.detail, ts)
        return replace(self, history=(*self.history[-(HISTORY_MAX - 1):], entry))

    def reverted(self, name: str, slot: str) -> Reverted | None:
        """How release ``name`` at version slot ``slot`` was rolled back on this device, if it was."""
        return next((x for x in reversed(self.rolled_back) if x.version == slot and x.name in (name, "")), None)

    def revert(self, name: str, slot: str, reason: str, ts: float) -> OtaRecord:
        """This record with a rolled-back release remembered (the oldest are forgotten past REVERTED_MAX)."""
        keep = tuple(x for x in self.rolled_back if (x.name, x.version) != (name, slot))
        return replace(self, rolled_back=(*keep[-(REVERTED_MAX - 1):], Reverted(name, slot, reason, ts)))

    def unrevert(self, slot: str) -> OtaRecord:
        """This record without ``slot`` among the rolled-back releases (it was committed, on purpose)."""
        return replace(self, rolled_back=tuple(x for x in self.rolled_back if x.version != slot))


class RecordChanges(TypedDict, total=False):
    """The fields a move or an update may change (keyword arguments of :meth:`OtaRecord.changed`)."""

    state: OtaState
    job: QueuedJob | None
    queue: tuple[QueuedJob, ...]
    crashes: int
    clean_shutdown: bool
    history: tuple[HistoryEntry, ...]
    since: float | None
    reason: str
    detail: str
    from_slot: str | None
    to_slot: str | None
    target: str | None
    started: float | None
    shadow_started: float | None
    probation_started: float | None
    rolled_back: tuple[Reverted, ...]


def load_record(path: Path) -> OtaRecord:
    """The record at ``path``; a fresh IDLE record when there is none or it cannot be read."""
    try:
        return OtaRecord.from_json(path.read_bytes())
    except FileNotFoundError:
        return OtaRecord()
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error("OTA: %s is unreadable (%s); starting from IDLE", path, e)
        return OtaRecord()


def legacy_seen(path: Path) -> dict[str, str]:
    """The ``seen`` job ids (id -> command digest) of an ``ota.json`` written before the replay record
    existed, so an upgraded agent keeps them single-use; empty when there are none."""
    try:
        seen = json.loads(path.read_bytes()).get("seen")
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in seen.items()} if isinstance(seen, dict) else {}


def save_record(path: Path, record: OtaRecord) -> None:
    """Replace ``path`` with ``record`` durably (tmp + fsync + rename + directory fsync)."""
    atomic_write(path, record.to_json())


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
