"""Collectors sharing one PostgreSQL fleet store, given the same windows in other orders (a repeat delivered to each):
they never deadlock on the raw windows' keys, and a batch whose transaction fails for a transient reason (a deadlock,
a serialization failure) runs again, counted once, rather than being lost."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest

from device_agent.contract.protocol import encode
from edgekit.monitor.store import open_store
from edgekit.monitor.store.sql import _raw_row
from tests.monitor.test_store import add, window


@pytest.fixture
def store(postgres):
    s = open_store(postgres, holder="test-a")
    yield s
    s.close()


def _waiting_for_a_lock(conn: psycopg.Connection) -> bool:
    """Whether a session on this database waits for a lock (the batch, for the other collector's window)."""
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'").fetchone()
    return row is not None and row[0] > 0


def test_a_collector_takes_the_raw_windows_keys_in_order(postgres, store, rng, caplog):
    now = time.time()
    add(store, [window("warm", 1, now - 30, rng=rng)])  # the writer slot and this hour's partition exist
    low, high = window("cam-1", 1, now - 20, rng=rng), window("cam-1", 2, now - 10, rng=rng)
    other = psycopg.connect(postgres, autocommit=False)  # another collector, mid-transaction, in key order
    watch = psycopg.connect(postgres, autocommit=True)
    insert = "INSERT INTO telemetry (device, seq, window_end, collector, stored, payload) VALUES (%s,%s,%s,%s,%s,%s)"
    out: list[list[bool]] = []
    try:
        other.execute(insert, _raw_row(low, encode(low), "other"))
        # this collector got them the other way round; before, it took `high`'s key, then waited for `low`'s
        t = threading.Thread(target=lambda: out.append(add(store, [high, low])))
        t.start()
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(watch) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert t.is_alive(), "the batch should wait for the other collector's uncommitted window"
        other.execute(insert, _raw_row(high, encode(high), "other"))  # a deadlock here, if the batch held `high`
        other.commit()
        t.join(30)
    finally:
        other.close()
        watch.close()
    assert out == [[False, False]]  # both windows were the other collector's: nothing counted here
    assert "again" not in caplog.text  # no batch ran twice: there was no deadlock to recover from


def test_a_batch_whose_transaction_deadlocks_runs_again_and_counts_once(store, rng, monkeypatch, caplog):
    now = time.time()
    msgs = [window(f"d{i % 3}", i, now - 600 + 10 * i, rng=rng) for i in range(30)]
    flush, failed = store.writer.flush, []

    def flaky(db):  # the windows are inserted and folded in memory when the transaction dies
        if not failed:
            failed.append(1)
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        flush(db)

    monkeypatch.setattr(store.writer, "flush", flaky)
    with caplog.at_level(logging.WARNING, logger="edgekit.monitor.store"):
        assert add(store, msgs) == [True] * len(msgs)
    assert "deadlock detected; running the batch again" in caplog.text
    assert add(store, msgs) == [False] * len(msgs)  # a repeat stays a repeat
    spans = store.spans(since=0)
    assert sum(s.totals.windows for s in spans) == len(msgs) and sum(s.totals.samples for s in spans) == 100 * len(msgs)
    assert len(store.telemetry()) == len(msgs)


def test_a_batch_that_keeps_failing_raises_and_leaves_nothing_behind(store, rng, monkeypatch):
    now = time.time()
    msgs = [window("d1", i, now - 300 + 10 * i, rng=rng) for i in range(5)]

    def broken(db):
        raise psycopg.errors.SerializationFailure("could not serialize access due to concurrent update")

    monkeypatch.setattr(store.writer, "flush", broken)
    with pytest.raises(psycopg.errors.SerializationFailure):
        add(store, msgs)
    monkeypatch.undo()
    assert store.telemetry() == [] and store.spans(since=0) == []
    assert add(store, msgs) == [True] * len(msgs)  # the same batch, later: every window counted, once
    assert sum(s.totals.windows for s in store.spans(since=0)) == len(msgs)
