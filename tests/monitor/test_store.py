"""The FleetStore contract, on both backends: SQLite (a file) and PostgreSQL (a real server, tests/services.py).

Windows are built with the protocol's own classes (TelemetryMessage, FeatureWindow) with seeded counts,
and the running totals are checked against WindowSet merges of the same windows (what the monitor did
before totals existed).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from device_agent.contract.protocol import (
    DeviceStatus,
    FeatureWindow,
    FeedbackWindow,
    JobState,
    JobUpdate,
    LatencySummary,
    StateMessage,
    TelemetryMessage,
    encode,
)
from edgekit.monitor.store import DeviceQuery, DriftState, open_store
from edgekit.monitor.windows import WindowSet

BINS = 10


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "fleet.sqlite")
    return request.getfixturevalue("postgres")


@pytest.fixture
def store(url):
    s = open_store(url, holder="test-a")
    yield s
    s.close()


def window(device: str, seq: int, end: float, *, rng: np.random.Generator, version: str = "1.0.0", samples: int = 100,
           shift: float = 0.0, feedback: dict | None = None) -> TelemetryMessage:
    feats = []
    for j in range(3):
        p = np.full(BINS, 1.0)
        p[min(BINS - 1, int(shift * 3))] += shift * 10
        counts = rng.multinomial(samples - 2, p / p.sum()).tolist()
        feats.append(FeatureWindow(f"x[{j}]", samples, counts, 1, 1, 0, -1.0, 9.0, float(j + shift + rng.normal(0, 0.1)),
                                   1.0 + 0.1 * j))
    return TelemetryMessage(device, seq, 1, end, {"name": "mlp", "version": version}, {"start": end - 60, "end": end}, samples, {},
                            LatencySummary(samples, 1.0, 2.0 + seq % 3, 3.0, 4.0, 1.5), feats, samples=samples,
                            feedback=FeedbackWindow(feedback, {}) if feedback else None, outbox=seq % 5)


def state(device: str, group: str, *, status: DeviceStatus = DeviceStatus.ONLINE, boot: int = 1, seq: int = 0,
          version: str = "1.0.0") -> StateMessage:
    return StateMessage(device, status, time.time(), boot, "0.1.0", group, {"name": "mlp", "version": version}, seq=seq)


def add(store, msgs: list[TelemetryMessage]) -> list[bool]:
    return store.add_batch([(m, encode(m)) for m in msgs], collector="c")


def merged(msgs: list[TelemetryMessage]) -> WindowSet:
    ws = WindowSet("mlp", "1.0.0")
    for m in msgs:
        ws.add(m)
    return ws


def same(ws, span_ws) -> None:
    assert (ws.windows, ws.samples, ws.requests) == (span_ws.windows, span_ws.samples, span_ws.requests)
    for name, f in ws.features.items():
        g = span_ws.features[name]
        assert list(f.counts) == list(g.counts) and (f.under, f.over, f.nan, f.n, f.finite) == (g.under, g.over, g.nan, g.n, g.finite)
        assert g.mean == pytest.approx(f.mean, rel=1e-9) and g.std == pytest.approx(f.std, rel=1e-6)


def test_windows_are_stored_once_and_spans_equal_the_merged_windows(store, rng):
    now = time.time()
    store.record_states([state("cam-1", "cameras"), state("cam-2", "cameras"), state("door-1", "doors")])
    msgs = [window(d, s, now - 3000 + 60 * s, rng=rng) for s in range(50) for d in ("cam-1", "cam-2", "door-1")]
    assert all(add(store, msgs))
    assert add(store, msgs[:5] + msgs[:1]) == [False] * 6  # repeats, also inside one batch
    assert len(store.telemetry()) == len(msgs)
    since = now - 1200
    recent = [m for m in msgs if m.window["end"] >= since // 60 * 60]  # minute resolution
    spans = store.spans(group="cameras", since=since)
    assert sorted(s.device for s in spans) == ["cam-1", "cam-2"]
    for s in spans:
        same(merged([m for m in recent if m.device == s.device]), s.totals.window_set("mlp", "1.0.0"))
    (door,) = store.spans(device="door-1", since=0)
    same(merged([m for m in msgs if m.device == "door-1"]), door.totals.window_set("mlp", "1.0.0"))
    assert door.start == msgs[2].window["start"] and door.end == msgs[-1].window["end"]
    until = store.spans(device="door-1", since=0, until=now - 2000)[0]
    assert until.totals.windows == len([m for m in msgs if m.device == "door-1" and m.window["end"] < (now - 2000) // 60 * 60 + 60])
    assert door.totals.latency_mean_ms == pytest.approx(1.5) and 2.0 <= door.totals.latency_p95_ms() <= 5.0


def test_a_late_window_counts_in_every_later_span(store, rng):
    now = time.time()
    early, late = window("pi-1", 1, now - 1800, rng=rng), window("pi-1", 3, now - 600, rng=rng)
    add(store, [early, late])
    lost = window("pi-1", 2, now - 1200, rng=rng)  # it arrives last: its minute is older than the series' newest row
    assert add(store, [lost]) == [True]
    assert store.spans(device="pi-1", since=now - 1300)[0].totals.windows == 2
    assert store.spans(device="pi-1", since=now - 1000)[0].totals.windows == 1
    same(merged([early, lost, late]), store.spans(device="pi-1", since=0)[0].totals.window_set("mlp", "1.0.0"))


def test_two_writers_on_one_database_count_each_window_once(url, store, rng):
    other = open_store(url, holder="test-b")
    try:
        now = time.time()
        msgs = [window(f"d{i % 7}", i, now - 900 + i, rng=rng) for i in range(400)]
        out: dict[str, list[bool]] = {}
        # both get every window (a repeat delivered to the other collector), in different orders, at once
        threads = [threading.Thread(target=lambda s=s, k=k, ms=ms: out.setdefault(k, [x for i in range(0, len(ms), 40)
                                                                                for x in add(s, ms[i:i + 40])]))
                   for s, k, ms in ((store, "a", msgs), (other, "b", msgs[::-1]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(out["a"]) + sum(out["b"]) == len(msgs)  # each window won by exactly one insert
        assert store.writer.slot != other.writer.slot
        spans = store.spans(since=0)
        assert sum(s.totals.windows for s in spans) == len(msgs) and sum(s.totals.samples for s in spans) == 100 * len(msgs)
        for s in spans:
            same(merged([m for m in msgs if m.device == s.device]), s.totals.window_set("mlp", "1.0.0"))
    finally:
        other.close()


def test_recent_span_covers_the_samples_from_the_newest_minute_back(store, rng):
    now = time.time()
    add(store, [window("pi-1", s, now - 600 + 60 * s, rng=rng) for s in range(10)])
    span = store.recent_span("pi-1", "mlp", "1.0.0", samples=250, since=now - 3600)
    assert span.totals.windows == 3 and span.totals.samples == 300 and span.end == pytest.approx(now - 60)
    assert store.recent_span("pi-1", "mlp", "1.0.0", samples=10_000, since=now - 300).totals.windows == 5
    assert store.recent_span("pi-9", "mlp", "1.0.0", samples=10, since=0) is None


def test_late_labels_are_kept_per_predicting_version(store, rng):
    now = time.time()
    add(store, [window("pi-1", 1, now - 120, rng=rng, feedback={"1.0.0": {"labelled": 30, "correct": 20}}),
                window("pi-1", 2, now - 60, rng=rng, version="2.0.0",
                       feedback={"1.0.0": {"labelled": 5, "correct": 5}, "2.0.0": {"labelled": 10, "correct": 9}})])
    got = {(s.version, s.totals.windows, s.totals.labelled, s.totals.correct) for s in store.spans(device="pi-1", since=0)}
    assert got == {("1.0.0", 1, 35, 25), ("2.0.0", 1, 10, 9)}
    assert [(m, v) for m, v, _ in store.version_history("pi-1")] == [("mlp", "1.0.0"), ("mlp", "2.0.0")]


def test_hourly_rollups_sum_devices_and_groups(store, rng):
    now = time.time()
    store.record_states([state("cam-1", "cameras"), state("cam-2", "cameras")])
    msgs = [window(d, s, now - 600 + 60 * s, rng=rng) for s in range(5) for d in ("cam-1", "cam-2")]
    add(store, msgs)
    hours = store.hours(scope="group", name="cameras", since=now - 7200)
    assert sum(h.windows for h in hours) == 10 and sum(h.requests for h in hours) == 1000
    total = hours[0].totals
    for h in hours[1:]:
        total.add(h.totals)
    same(merged(msgs), total.window_set("mlp", "1.0.0"))
    devices = store.hours(scope="device", since=now - 7200)
    assert {h.name for h in devices} == {"cam-1", "cam-2"} and all(h.totals is None and h.latency_max_ms == 4.0 for h in devices)


def test_retention_drops_raw_windows_thins_totals_and_never_recounts_a_pruned_window(url, store, rng):
    now = time.time()
    old = [window("pi-1", s, now - 3 * 86400 + 60 * s, rng=rng) for s in range(30)]
    new = [window("pi-1", 100 + s, now - 3600 + 60 * s, rng=rng) for s in range(30)]
    add(store, old + new)
    store.prune(now - 30 * 86400, raw_before=now - 86400, minutes_before=now - 7200)
    assert [m.seq for m in store.telemetry()] == [m.seq for m in new]
    assert add(store, [old[3]]) == [False]  # a late repeat of a pruned window is not counted again
    span = store.spans(device="pi-1", since=now - 3600)[0]
    same(merged(new), span.totals.window_set("mlp", "1.0.0"))
    assert store.spans(device="pi-1", since=now - 5 * 86400)[0].totals.windows == 30  # the older span starts at the floor


def test_device_page_filters_and_pages(store, rng):
    store.record_states([state(f"d{i:02d}", "a" if i % 2 else "b", status=DeviceStatus.ONLINE if i < 6 else DeviceStatus.OFFLINE)
                         for i in range(10)])
    store.record_states([state("d00", "z", boot=0)])  # an older state changes nothing
    store.record_jobs([JobUpdate("d01", 1, 1, 100.0, "job-1", JobState.IN_PROGRESS),
                       JobUpdate("d01", 2, 1, 101.0, "job-1", JobState.SUCCEEDED),
                       JobUpdate("d01", 1, 1, 99.0, "job-1", JobState.QUEUED),  # late, older: ignored
                       JobUpdate("d03", 3, 1, 102.0, "job-2", JobState.FAILED, reason="nan_outputs")])
    add(store, [window("d01", 5, time.time(), rng=rng)])
    store.set_device_drift("d03", {"level": "alert", "text": "alert: x[1] since 08:00:00Z"})
    page = store.device_page(DeviceQuery())
    assert page.total == 10 and [r.device for r in page.rows] == [f"d{i:02d}" for i in range(10)] and page.rows[0].group == "b"
    d01 = page.rows[1]
    assert (d01.job, d01.job_state, d01.requests, d01.outbox) == ("job-1", "SUCCEEDED", 100, 0) and d01.p95_ms == 4.0
    assert [r.device for r in store.device_page(DeviceQuery(group="a", online=True)).rows] == ["d01", "d03", "d05"]
    assert [r.device for r in store.device_page(DeviceQuery(job_state="FAILED")).rows] == ["d03"]
    assert store.device_page(DeviceQuery(drift="alert")).rows[0].drift["text"].startswith("alert: x[1]")
    assert store.device_page(DeviceQuery(drift="none")).total == 9
    paged = store.device_page(DeviceQuery(offset=4, limit=3))
    assert [r.device for r in paged.rows] == ["d04", "d05", "d06"] and paged.total == 10
    assert [(j.job, j.state, j.reason) for j in store.jobs(device="d03")] == [("job-2", "FAILED", "nan_outputs")]


def test_verdicts_rollouts_alerts_and_the_store_id(url, store):
    store.set_drift_states([(("device", "pi-1", "mlp", "1.0.0"), [DriftState("x[0]", "warn", 1.0, 2.0, 0.12)]),
                            (("group", "g", "mlp", "1.0.0"), [DriftState("x[1]", "ok", 1.0, 3.0, 0.01)])])
    states = store.drift_states([("device", "pi-1", "mlp", "1.0.0"), ("group", "g", "mlp", "1.0.0"), ("group", "h", "mlp", "1.0.0")])
    assert states[("device", "pi-1", "mlp", "1.0.0")]["x[0]"].psi == 0.12 and ("group", "h", "mlp", "1.0.0") not in states
    store.record_rollout({"v": 1, "type": "rollout", "job": "deploy-1", "status": "running", "ts": 1.0})
    store.record_rollout({"v": 1, "type": "rollout", "job": "deploy-1", "status": "aborted", "aborted": "too many", "ts": 2.0})
    assert [(r["job"], r["status"]) for r in store.rollouts()] == [("deploy-1", "aborted")]
    a = store.add_alert({"kind": "drift", "scope": "device", "name": "pi-1", "level": "warn", "model": {"name": "mlp", "version": "1"}})
    assert store.alerts(name="pi-1")[0].id == a.id
    again = open_store(url)
    try:
        assert again.store_id == store.store_id
    finally:
        again.close()


def test_a_stalled_writer_loses_its_slot_and_takes_another(url, store, rng):
    now = time.time()
    add(store, [window("pi-1", 1, now - 120, rng=rng)])
    with store._write() as db:  # another process took the slot after the lease expired
        db.run("UPDATE writers SET holder = 'someone-else' WHERE slot = ?", (store.writer.slot,))
    assert add(store, [window("pi-1", 2, now - 60, rng=rng)]) == [True]
    assert store.spans(device="pi-1", since=0)[0].totals.windows == 2


def test_a_database_from_before_schema_versions_is_migrated_and_its_windows_totalled(tmp_path, rng):
    import json
    import sqlite3

    from edgekit.monitor.store.schema import LATEST, SQLITE

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    for statement in SQLITE[1][1]:  # the layout files had before versions were recorded
        db.execute(statement)
    now = time.time()
    msgs = [window("pi-1", s, now - 600 + 60 * s, rng=rng) for s in range(8)]
    db.execute("INSERT INTO devices (device, grp, status, last_seen) VALUES ('pi-1', 'cameras', 'online', ?)", (now,))
    db.executemany("INSERT INTO telemetry VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   [(m.device, m.seq, m.boot, m.ts, m.window["start"], m.window["end"], "mlp", "1.0.0", m.samples, m.requests, "old",
                     json.dumps(m.to_dict())) for m in msgs])  # payloads as JSON text
    db.commit()
    db.close()
    store = open_store(path)
    try:
        with store._read() as r:
            assert [v for (v,) in r.rows("SELECT version FROM schema_version ORDER BY version")] == list(range(1, LATEST + 1))
        (span,) = store.spans(group="cameras", since=0)
        same(merged(msgs), span.totals.window_set("mlp", "1.0.0"))
        assert [m.seq for m in store.telemetry()] == list(range(8))
        assert add(store, msgs[:2]) == [False, False]
    finally:
        store.close()
    again = open_store(path)  # opening again applies nothing and folds nothing twice
    try:
        assert again.spans(device="pi-1", since=0)[0].totals.windows == 8
    finally:
        again.close()


def test_a_newer_schema_is_refused_with_the_fix(url, store):
    from edgekit.errors import InputError
    from edgekit.monitor.store.schema import LATEST

    with store._write() as db:
        db.run("INSERT INTO schema_version (version, applied, description) VALUES (99, 0, 'from the future')")
    with pytest.raises(InputError, match=f"has schema version 99; this edgekit knows versions up to {LATEST}: upgrade edgekit"):
        open_store(url)


def test_drift_over_time_reads_hourly_rollups_for_groups_and_running_totals_for_devices(store, rng):
    from device_agent.contract.manifest import FeatureProfile
    from edgekit.monitor.reports import drift_over_time
    from edgekit.monitor.store import Reference

    edges = tuple(float(e) for e in range(BINS + 1))
    store.add_reference(Reference("mlp", "1.0.0", tuple(FeatureProfile("x", 1, j, f"x[{j}]", edges, (400,) * BINS, -1, 9, float(j), 1.0, 0.0)
                                                        for j in range(3))))
    now = time.time() // 3600 * 3600 + 1800
    store.record_states([state("cam-1", "cameras")])
    msgs = [window("cam-1", k, now - 3 * 3600 + 300 * k, rng=rng, samples=500, shift=0.6 if k >= 24 else 0.0) for k in range(36)]
    add(store, msgs)
    hourly = drift_over_time(store, group="cameras", since=now - 4 * 3600, until=now)
    assert [r.windows for r in hourly] == [6, 12, 12, 6] and [r.level.value for r in hourly][:2] == ["ok", "ok"]
    assert hourly[-1].level.value == "alert" and {f.name for f in hourly[-1].features if f.level.value == "alert"}
    steps = drift_over_time(store, device="cam-1", since=now - 3 * 3600, until=now, step_s=1800)
    assert sum(r.windows for r in steps) == 36 and steps[0].scope == "device" and steps[-1].level.value == "alert"


def test_collectors_starting_together_migrate_a_new_database_once(postgres):
    stores, errors = [], []

    def start() -> None:
        try:
            stores.append(open_store(postgres))
        except Exception as e:  # noqa: BLE001 - the failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and len({s.store_id for s in stores}) == 1
    finally:
        for s in stores:
            s.close()
