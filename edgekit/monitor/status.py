"""The drift column of ``fleet status``, from the broker or from a collector's database.

The collectors keep one retained summary per device on ``<prefix>/fleet/drift/<device>``
(:func:`edgekit.monitor.monitor.drift_summary`): ``{device, level, model, version, features,
since, accuracy, text}``. ``fleet status`` reads them with :func:`read_drift` (one short extra
connection) or, next to a collector, from its database with :func:`drift_from_db`, and shows
``text``: ``ok``, ``not enough data``, ``alert: x[3], x[7] since 08:31:02Z``, ``…; accuracy alert``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from device_agent.contract.protocol import DEFAULT_PREFIX, Topics
from edgekit.fleet.mqtt import BrokerAddress, BrokerSession, Received, to_address
from edgekit.monitor.reports import drift_summary
from edgekit.monitor.store import SqliteStore

__all__ = ["drift_cell", "drift_from_db", "read_drift"]


def read_drift(broker: str | BrokerAddress, *, prefix: str = DEFAULT_PREFIX, settle_s: float = 0.3,
               timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """Every device's retained drift summary, keyed by device id ({} when no collector ever ran).

    Args:
        broker: ``mqtt://`` URL or an address with credentials (:func:`edgekit.fleet.mqtt.parse_broker_url`).
        settle_s: how long retained summaries may take to arrive after the subscription.
        timeout: for the broker to accept the subscription; without it the answer is {}.

    Raises FleetError when the broker is unreachable.
    """
    out: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def on_message(msg: Received) -> None:
        try:
            d = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if isinstance(d, dict) and isinstance(d.get("text"), str):
            with lock:
                out[msg.topic.rsplit("/", 1)[-1]] = d

    session = BrokerSession(to_address(broker), f"edgekit-status-{uuid.uuid4().hex[:8]}", topics=(Topics.fleet_drift("+", prefix),),
                            on_message=on_message).open()
    try:
        if session.wait_ready(timeout):
            time.sleep(settle_s)  # retained messages follow the SUBACK at once
    finally:
        session.close()
    with lock:
        return dict(out)


def drift_from_db(db: str | Path, devices: list[str]) -> dict[str, dict[str, Any]]:
    """The same summaries computed from a collector's database."""
    with SqliteStore(db) as store:
        return {d: s for d in devices if (s := drift_summary(store, d)) is not None}


def drift_cell(summaries: dict[str, dict[str, Any]], device: str) -> str:
    """The table cell for ``device`` ("—" when no collector judged it)."""
    s = summaries.get(device)
    return s["text"] if s else "—"
