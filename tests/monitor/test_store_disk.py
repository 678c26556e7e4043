"""What the fleet store keeps on disk (issue 15): the raw-window format, raw retention by partition, schema 4 from version 3 data.

Both backends; PostgreSQL is a real server (tests/services.py).
"""

from __future__ import annotations

import random
import time
import zlib

import numpy as np
import pytest

from device_agent.contract.protocol import FeatureWindow, LatencySummary, TelemetryMessage, encode
from edgekit.monitor.store import codec, open_store
from edgekit.monitor.store.schema import LATEST, POSTGRES, SQLITE
from tests.monitor.test_store import add, state, window


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "fleet.sqlite")
    return request.getfixturevalue("postgres")


def _format_1(payload: bytes) -> bytes:
    """A raw window as schema 3 stored it (codec format 1)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=codec._DICTS[1])
    return b"\x01" + c.compress(payload) + c.flush()


# --- the raw-window format ---------------------------------------------------------------------------


def _agent_like(seq: int, rng: np.random.Generator) -> bytes:
    """A window as the agent sends it for 8 features: 600 samples in 10 bins, statistics to 6 significant digits."""
    def g(x: float) -> float:
        return float(f"{x:.6g}")

    feats = [FeatureWindow(f"x[{j}]", 600, rng.multinomial(598, [0.1] * 10).tolist(), 1, 1, 0, g(rng.normal(-3, 1)), g(rng.normal(9, 3)),
                           g(rng.normal(j, 1)), g(rng.uniform(0.5, 3))) for j in range(8)]
    lat = LatencySummary(12, *sorted(g(x) for x in rng.uniform(0.5, 1.5, 4)), g(rng.uniform(0.8, 1.1)))
    end = 1765000000.0 + 60 * seq
    return encode(TelemetryMessage(f"dev-{seq:05d}", seq, 1, end, {"name": "mlp", "version": "1.0.0"}, {"start": end - 60, "end": end},
                                   12, {}, lat, feats, samples=600, outbox=0))


def test_a_window_is_kept_byte_exact_in_under_300_bytes():
    rng = np.random.default_rng(0)
    sizes = []
    for seq in range(50):
        payload = _agent_like(seq, rng)
        stored = codec.pack(payload)
        assert stored[0] == 2 and codec.unpack(stored) == payload
        sizes.append((len(stored), len(_format_1(payload))))
    mean, before = np.mean(sizes, axis=0)
    assert mean < 300 and mean < 0.7 * before, (mean, before)  # format 1: ~450 bytes


def test_any_payload_comes_back_as_it_was():
    pick = random.Random(7)
    alphabet = b'0123456789{}[],:"ab-.eE \x00\xff'
    for n in [0, 1, 2, 3, *range(4, 400, 7)]:
        payload = bytes(pick.choice(alphabet) for _ in range(n))
        assert codec.unpack(codec.pack(payload)) == payload


def test_rows_of_earlier_formats_are_read_and_an_unknown_one_is_refused_with_the_fix():
    payload = encode(window("pi-1", 3, 1765000000.0, rng=np.random.default_rng(1)))
    assert codec.unpack(_format_1(payload)) == payload
    assert codec.unpack(payload.decode()) == payload and codec.unpack(payload) == payload  # plain JSON rows (text, bytes)
    with pytest.raises(ValueError, match="stored telemetry has format 09; this edgekit reads formats 1, 2: upgrade edgekit"):
        codec.unpack(b"\x09abc")


# --- raw retention ------------------------------------------------------------------------------------


def test_raw_windows_are_kept_for_the_whole_retention_and_go_once_past_it(url, rng):
    now = time.time()
    cut = now - 86400
    gone = [window("pi-1", s, cut - 7200 + 60 * s, rng=rng) for s in range(20)]  # ended before the cut's hour began
    kept = [window("pi-1", 100 + s, cut + 1 + 60 * s, rng=rng) for s in range(5)] + [window("pi-1", 200, now - 60, rng=rng)]
    store = open_store(url)
    try:
        add(store, gone + kept)
        store.prune(now - 30 * 86400, raw_before=cut, minutes_before=now - 7200)
        assert [m.seq for m in store.telemetry()] == [m.seq for m in kept]  # never one still within the retention
        if url.startswith("postgresql://"):  # whole hours go; the one holding the cut stays until it lies before it
            parts = store.partitions()
            assert all(hi > cut for _, _, hi in parts) and min(lo for _, lo, _ in parts) > cut - 3600
        assert add(store, [gone[-1]]) == [False]
    finally:
        store.close()


def test_sqlite_retention_reaches_raw_windows_by_their_end_never_by_scanning_them(tmp_path, rng):
    """Retention runs under the write lock: a statement that walks every raw window stops ingestion for as long
    (25 s at 4 million windows, benchmarks/fleet_scale.py --only fast). Every statement it runs is explained."""
    import sqlite3

    now = time.time()
    path = tmp_path / "fleet.sqlite"
    store = open_store(str(path))
    ran: list[str] = []
    try:
        add(store, [window(f"pi-{d}", s, now - 90000 + 60 * s + d, rng=rng) for d in range(3) for s in range(60)])
        store._conn.set_trace_callback(ran.append)
        store.prune(now - 30 * 86400, raw_before=now - 86400, minutes_before=now - 7200)
    finally:
        store._conn.set_trace_callback(None)
        store.close()
    conn = sqlite3.connect(path)
    plans = {sql: [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
             for sql in ran if sql.split()[0].upper() in ("SELECT", "UPDATE", "DELETE", "INSERT")}
    conn.close()
    touching = {sql: plan for sql, plan in plans.items() if any("telemetry" in step for step in plan)}
    assert len(touching) >= 2, plans  # the pruned sequence numbers, and the deletion in chunks
    for sql, plan in touching.items():
        scans = [step for step in plan if step.startswith("SCAN telemetry")]
        assert not scans and any("telemetry_by_end" in step for step in plan), (sql, plan)


# --- schema 4 from version 3 data ---------------------------------------------------------------------


def _version_3(url: str, msgs: list, now: float) -> None:
    """A fleet database as schema 3 left it: raw windows in format 1 (SQLite: with the message's columns), text-keyed roll-ups."""
    rows = [("device", "pi-1", 7, 9000, 60), ("group", "cameras", 7, 9000, 60), ("device", "pi-2", 2, 1000, 5)]
    hour = int(now // 3600) * 3600
    rollups = [(scope, name, "mlp", "1.0.0", hour, 0, w, s, r, 0, r, 1.5 * r, 4.0, 3.0, 0, 0, None, None) for scope, name, w, s, r in rows]
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL, description TEXT NOT NULL)")
            for version in (2, 3):
                for statement in POSTGRES[version][1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (%s, 0, %s)", (version, POSTGRES[version][0]))
            day = int(now // 86400)  # schema 3 partitioned by day
            conn.execute(f"CREATE TABLE telemetry_p{day} PARTITION OF telemetry FOR VALUES FROM ({day * 86400}) TO ({(day + 1) * 86400})")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO telemetry (device, seq, window_end, collector, stored, payload) VALUES (%s,%s,%s,%s,%s,%s)",
                                [(m.device, m.seq, m.window["end"], "old", now, _format_1(encode(m))) for m in msgs])
                cur.executemany(f"INSERT INTO rollups VALUES ({','.join(['%s'] * 18)})", rollups)
                conn.execute("INSERT INTO devices (device, grp, status, last_seen) VALUES ('pi-1', 'cameras', 'online', %s)", (now,))
        return
    import sqlite3

    db = sqlite3.connect(url)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL, description TEXT NOT NULL)")
    for version in (1, 2, 3):
        for statement in SQLITE[version][1]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?, 0, ?)", (version, SQLITE[version][0]))
    db.executemany("INSERT INTO telemetry VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   [(m.device, m.seq, m.boot, m.ts, m.window["start"], m.window["end"], "mlp", "1.0.0", m.samples, m.requests, "old",
                     _format_1(encode(m)), now) for m in msgs])
    db.executemany(f"INSERT INTO rollups VALUES ({','.join('?' * 18)})", rollups)
    db.execute("INSERT INTO devices (device, grp, status, last_seen) VALUES ('pi-1', 'cameras', 'online', ?)", (now,))
    db.commit()
    db.close()


def test_a_version_3_database_is_migrated_to_4_and_keeps_its_windows_and_rollups(url, rng):
    now = time.time()
    hour = int(now // 3600) * 3600
    msgs = [window("pi-1", s, max(hour + 1.0, now - 600) + s, rng=rng) for s in range(4)]
    _version_3(url, msgs, now)
    store = open_store(url, holder="after")
    try:
        with store._read() as r:
            assert [v for (v,) in r.rows("SELECT version FROM schema_version ORDER BY version")][-2:] == [3, LATEST] == [3, 4]
            assert int(r.one("SELECT COUNT(*) FROM rollup_keys")[0]) == 3
        assert [(m.seq, m.window["end"]) for m in store.telemetry(collector="old")] == [(m.seq, m.window["end"]) for m in msgs]
        before = {(h.name, h.windows, h.requests) for h in store.hours(scope="device", since=hour)}
        assert before == {("pi-1", 7, 60), ("pi-2", 2, 5)}
        (group,) = store.hours(scope="group", name="cameras", since=hour)
        assert (group.windows, group.samples, group.latency_max_ms) == (7, 9000, 4.0)
        store.record_states([state("pi-1", "cameras")])
        fresh = [window("pi-1", 10 + s, max(hour + 1.0, now - 300) + s, rng=rng) for s in range(3)]
        assert add(store, msgs[:1] + fresh) == [False, True, True, True]  # a window of the old rows is still known
        (dev,) = store.hours(scope="device", name="pi-1", since=hour)
        assert dev.windows == 7 + 3 and dev.requests == 60 + sum(m.requests for m in fresh)  # folded into the migrated row
        assert store.hours(scope="group", name="cameras", since=hour)[0].windows == 7 + 3
    finally:
        store.close()
    again = open_store(url)  # opening again migrates nothing
    try:
        assert again.hours(scope="device", name="pi-1", since=hour)[0].windows == 10
    finally:
        again.close()


# --- running totals --------------------------------------------------------------------------------------


def test_totals_are_stored_byte_shuffled_and_rows_of_format_1_are_still_read(rng):
    import struct

    from edgekit.monitor.store.totals import Layout, Totals

    msgs = [window("pi-1", s, 1765000000.0 + 60 * s, rng=rng, samples=600) for s in range(30)]
    layout = Layout().extended(msgs[0])
    t = Totals(layout)
    for m in msgs:
        t.add(Totals.of_window(m, layout))
    old = zlib.compress(struct.pack("<BH", 1, len(layout.features)) + t.ints.astype("<i8").tobytes() + t.floats.astype("<f8").tobytes(), 1)
    for data in (t.encode(), old):
        back = Totals.decode(data, layout)
        assert back.ints.tolist() == t.ints.tolist() and back.floats.tolist() == t.floats.tolist()
    assert len(t.encode()) < len(old)  # ~20 % smaller on the benchmark's rows (8 features, a day of windows)
