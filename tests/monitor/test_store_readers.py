"""Readers of a busy SQLite fleet store: `fleet status` and friends open it while a collector writes, without waiting for
the write lock (in WAL mode a reader needs none; a store that is already at the latest schema migrates nothing)."""

from __future__ import annotations

import sqlite3
import threading
import time

from edgekit.monitor.store import open_store
from edgekit.monitor.store.schema import LATEST


def test_a_reader_opens_a_store_whose_writer_never_lets_go_of_the_lock(tmp_path):
    db = tmp_path / "fleet.sqlite"
    open_store(db).close()  # created, at the latest schema
    stop = threading.Event()
    held = threading.Event()

    def collector() -> None:  # a collector at 1,000 msg/s: one write transaction after another, no gap worth the name
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(0.05)
            conn.execute("COMMIT")
        conn.close()

    t = threading.Thread(target=collector, daemon=True)
    t.start()
    try:
        assert held.wait(5)
        started = time.monotonic()
        store = open_store(db)  # before: BEGIN IMMEDIATE for each migration step, starved until "database is locked"
        try:
            assert store.devices() == []
        finally:
            store.close()
        # a reader waits for nobody: well under the 10 s busy timeout a starved writer transaction would hit
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        t.join(5)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == LATEST
