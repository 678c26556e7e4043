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

from device_agent.contract.protocol import DEFAULT_PREFIX, QOS
from edgekit.errors import OtaError

__all__ = ["drift_cell", "drift_from_db", "read_drift"]


def read_drift(broker: str, *, prefix: str = DEFAULT_PREFIX, settle_s: float = 0.3, timeout: float = 5.0, username: str | None = None,
               password: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
               key_file: str | None = None) -> dict[str, dict[str, Any]]:
    """Every device's retained drift summary, keyed by device id ({} when no collector ever ran)."""
    from edgekit.monitor.collector import connect_client, parse_broker_url

    address = parse_broker_url(broker, username=username, password=password, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    out: dict[str, dict[str, Any]] = {}
    subscribed = threading.Event()
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        try:
            d = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if isinstance(d, dict) and isinstance(d.get("text"), str):
            with lock:
                out[msg.topic.rsplit("/", 1)[-1]] = d

    client = connect_client(address, f"edgekit-status-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *a: c.subscribe(f"{prefix}/fleet/drift/+", qos=QOS)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as e:
        raise OtaError(f"cannot reach the broker at {address.host}:{address.port}: {e}; is it running? (--broker)") from None
    client.loop_start()
    try:
        if subscribed.wait(timeout):
            time.sleep(settle_s)  # retained messages follow the SUBACK at once
    finally:
        client.loop_stop()
        client.disconnect()
    with lock:
        return dict(out)


def drift_from_db(db: str | Path, devices: list[str]) -> dict[str, dict[str, Any]]:
    """The same summaries computed from a collector's database."""
    from edgekit.monitor.monitor import drift_summary
    from edgekit.monitor.store import SqliteStore

    with SqliteStore(db) as store:
        return {d: s for d in devices if (s := drift_summary(store, d)) is not None}


def drift_cell(summaries: dict[str, dict[str, Any]], device: str) -> str:
    """The table cell for ``device`` ("—" when no collector judged it)."""
    s = summaries.get(device)
    return s["text"] if s else "—"
