"""The fleet side at scale (issue 15): 10,000 devices, 1,000 windows a second, two collectors, a month of storage.

    python benchmarks/fleet_scale.py --quick            # minutes: 2,000 / 500 devices, 2-minute runs, a 12k backlog
    python benchmarks/fleet_scale.py                    # the targets below (about 1.5 h: two hours of history to file first)
    python benchmarks/fleet_scale.py --only pair --json scale.json

Each run is real: Mosquitto started here with a config written here, one MQTT connection per
simulated device (benchmarks/scale_sim.py: the agent's own Window/TelemetryMessage classes, QoS 1,
sequence numbers), ``edgekit fleet watch`` as a subprocess on SQLite (the default) or PostgreSQL,
and an hour of history filed before the run starts. Printed as PASS/FAIL:

1. **10,000 devices at 60 s** and **5,000 devices at 5 s** (1,000 windows/s), each ≥ 10 minutes:
   0 telemetry lost (every sequence number the broker acknowledged is stored), ingest lag p99 ≤ 2 s
   (window timestamp to commit), ``fleet status`` complete (every device) in ≤ 1 s, ``fleet drift``
   for a group ≤ 1 s (10,000 devices).
2. **Two collectors on PostgreSQL** sharing one subscription drain a backlog ≥ 1.8× as fast as one,
   with 0 lost and 0 counted twice (5 % of the windows published twice).
3. **Storage** ≤ 5 GB for 5,000 devices × 30 days at 60 s with the default retention (raw windows
   1 day, on PostgreSQL up to 1 day and 1 hour: a partition goes once its last hour is past the
   cut; running totals: minutes for 2 h, hours for a day; hourly roll-ups 30 days), computed from
   the bytes per row measured in these runs (rows written by the store itself).

The machine is shared: the load (``uptime``) is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale_checks as checks  # noqa: E402
from scale_env import Broker, Database, load_history, start_collector, start_simulators, wait_online  # noqa: E402
from scale_sim import GROUPS, device_name, drifted  # noqa: E402

FULL = {"big": {"devices": 10_000, "interval": 60.0, "samples": 600, "history_s": 3600.0, "duration_s": 600.0},
        "fast": {"devices": 5_000, "interval": 5.0, "samples": 50, "history_s": 3600.0, "duration_s": 600.0},
        "pair": {"devices": 2_000, "per_device": 30, "duplicates": 0.05}}
QUICK = {"big": {"devices": 2_000, "interval": 60.0, "samples": 600, "history_s": 1200.0, "duration_s": 120.0},
         "fast": {"devices": 500, "interval": 5.0, "samples": 50, "history_s": 600.0, "duration_s": 120.0},
         "pair": {"devices": 400, "per_device": 30, "duplicates": 0.05}}
TARGETS = {"lag_p99_s": 2.0, "status_s": 1.0, "drift_s": 1.0, "pair_ratio": 1.8, "storage_gb": 5.0}
DAY = 86400


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_model(workdir: Path) -> Path:
    from tests.monitor.conftest import write_model

    return write_model(workdir / "model")


def _open_db(backend: str, workdir: Path, pg: Database | None, name: str) -> str:
    if backend == "sqlite":
        return str(workdir / f"{name}.sqlite")
    assert pg is not None
    return pg.create(name)


def run_ingest(name: str, p: dict[str, Any], *, backend: str, workdir: Path, pg: Database | None, model: Path) -> dict[str, Any]:
    """One ingest scenario (see the module docs): history, collector, simulated fleet, commands while it runs."""
    from edgekit.monitor.store import open_store

    out: dict[str, Any] = {"scenario": name, "backend": backend, **p}
    db = _open_db(backend, workdir, pg, name)
    broker = Broker(workdir / f"broker-{name}").start()
    collector = None
    try:
        t = time.monotonic()
        store = open_store(db, holder="history")
        seqs = load_history(store, model, devices=p["devices"], interval=p["interval"], samples=p["samples"], span_s=p["history_s"])
        store.close()
        out["history_windows"], out["history_load_s"] = sum(seqs.values()), round(time.monotonic() - t, 1)
        print(f"  {name}: {out['history_windows']:,} windows of history filed in {out['history_load_s']} s", flush=True)
        (workdir / f"{name}-seqs.json").write_text(json.dumps(seqs))
        collector = start_collector(broker, db, model, collector_id=f"bench-{name}", log=workdir / f"collector-{name}.log")
        wait_online(broker, [f"bench-{name}"])
        fleet, start_at = start_simulators(broker, model, devices=p["devices"], interval=p["interval"], samples=p["samples"],
                                           duration=p["duration_s"], seqs=workdir / f"{name}-seqs.json", workdir=workdir,
                                           ramp=min(60.0, p["devices"] / 200))
        out["commands"] = _commands_while_running(broker, db, p, start_at)
        sim = fleet.wait(p["duration_s"] + 300)
        _settle(db, f"bench-{name}", sim)
        out["delivery"] = checks.delivery(db, sim, collector=f"bench-{name}")
        out["delivery"]["rate_per_s"] = round(out["delivery"]["stored"] / p["duration_s"], 1)
        out["alerts"] = checks.drift_alerts(db, {device_name(i) for i in range(p["devices"]) if drifted(i)})
        out["storage"] = checks.storage_bytes(db)
    finally:
        if collector is not None:
            collector.terminate()
            collector.wait(60)
        broker.stop()
    out["load"] = load()
    return out


def _commands_while_running(broker: Broker, db: str, p: dict[str, Any], start_at: float) -> dict[str, Any]:
    """``fleet status`` and ``fleet drift`` at 40 %, 70 % and 95 % of the run (broker: the collector answers; --db: read directly)."""
    got: dict[str, list[dict[str, Any]]] = {"status": [], "status_db": [], "drift": [], "drift_db": []}
    for share in (0.4, 0.7, 0.95):
        time.sleep(max(0.0, start_at + share * p["duration_s"] - time.time()))
        runs = {"status": ["fleet", "status", "--broker", broker.url, "--json"], "status_db": ["fleet", "status", "--db", db, "--json"],
                "drift": ["fleet", "drift", "--broker", broker.url, "--group", "g3", "--json"],
                "drift_db": ["fleet", "drift", "--db", db, "--group", "g3", "--json"]}
        for key, args in runs.items():
            r = checks.cli_timing(args, repeat=1)
            doc = r.pop("doc")
            r["rows"] = len(doc) if key.startswith("status") else len(doc["reports"])
            got[key].append(r)
    summary = {k: {"median_s": round(sorted(x["median_s"] for x in v)[len(v) // 2], 3), "max_s": round(max(x["max_s"] for x in v), 3),
                   "rows": min(x["rows"] for x in v)} for k, v in got.items()}
    summary["expected_status_rows"] = p["devices"]
    summary["expected_drift_reports"] = 1 + p["devices"] // GROUPS
    return summary


def _settle(db: str, collector: str, sim: dict[str, Any], timeout: float = 120.0) -> None:
    """Until the collector stored every acknowledged window (or ``timeout``)."""
    want = sum(d["last"] - d["first"] + 1 - len(d["unacked"]) for d in sim["devices"].values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checks.delivery(db, sim, collector=collector)["stored"] >= want:
            return
        time.sleep(2.0)


def run_pair(p: dict[str, Any], *, workdir: Path, pg: Database, model: Path) -> dict[str, Any]:
    """A backlog drained by one collector, then (a fresh database) by two sharing the subscription."""
    from edgekit.monitor.store import open_store

    out: dict[str, Any] = {"scenario": "pair", **p}
    for n in (1, 2):
        broker = Broker(workdir / f"broker-pair{n}").start()
        db = pg.create(f"pair{n}")
        ids = [f"bench-pair{n}-{k}" for k in range(n)]
        procs = []
        try:
            for cid in ids:  # persistent sessions and their shared subscription, then offline: the backlog queues for them
                procs.append(start_collector(broker, db, model, collector_id=cid, log=workdir / f"{cid}.log"))
            wait_online(broker, ids)
            for proc in procs:
                proc.terminate()
                proc.wait(60)
            sent = checks.backlog(broker.port, model, devices=p["devices"], per_device=p["per_device"], duplicates=p["duplicates"])
            procs = [start_collector(broker, db, model, collector_id=cid, log=workdir / f"{cid}-drain.log") for cid in ids]
            stored, totals = _drain(db, sent["distinct"])
            # from the first window stored to the last (the database's clock): process start-up is not ingestion
            first, last = checks._rows(db, "SELECT MIN(stored), MAX(stored) FROM telemetry")[0]
            took = max(1e-3, float(last) - float(first))
            out[f"collectors_{n}"] = {**sent, "stored": stored, "counted": totals, "seconds": round(took, 1),
                                      "rate_per_s": round(stored / took, 1), "lost": sent["distinct"] - stored,
                                      "counted_twice": totals - stored}
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(60)
            broker.stop()
    out["ratio"] = round(out["collectors_2"]["rate_per_s"] / out["collectors_1"]["rate_per_s"], 2)
    empty = pg.create("empty")
    open_store(empty).close()  # the schema, no rows: the fixed cost of each table and index
    out["storage"] = checks.storage_bytes(db, empty=empty)
    out["load"] = load()
    return out


def _drain(db: str, want: int, timeout: float = 1800.0) -> tuple[int, int]:
    """Until ``want`` windows are stored; (raw windows stored, windows in the running totals)."""
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        stored = int(checks._rows(db, "SELECT COUNT(*) FROM telemetry")[0][0])
        if stored >= want:
            break
        time.sleep(0.25)
    from edgekit.monitor.store import open_store

    store = open_store(db)
    try:
        return stored, sum(s.totals.windows for s in store.spans(since=0))
    finally:
        store.close()


def storage_month(measured: dict[str, float], backend: str) -> dict[str, Any]:
    """5,000 devices × 30 days at 60 s with the default retention, from measured bytes per row."""
    from edgekit.monitor.config import MonitorConfig
    from edgekit.monitor.store.postgres import PART_S

    c = MonitorConfig()
    devices, per_day = 5000, 5000 * 1440
    # SQLite deletes by the window; PostgreSQL drops an hour partition once it lies entirely before the cut (at worst, just
    # before a drop, the retention and one more hour are on disk)
    raw_days = (c.raw_retention_s + (PART_S if backend == "postgresql" else 0)) / DAY
    totals_rows = devices * (c.minutes_s / 60 + c.raw_retention_s / 3600 + 1)  # minute rows, hourly rows, the floor
    hours = c.retention_s / 3600
    parts = {"raw_gb": per_day * raw_days * measured["raw_per_window"] / 1e9,
             "totals_gb": totals_rows * measured["totals_per_row"] / 1e9,
             "rollups_gb": ((devices + GROUPS) * hours * measured["rollup_per_row"] + GROUPS * hours * measured["group_rollup_extra"]
                            # a key per device or group, model version and writer slot (the writers of the run)
                            + (devices + GROUPS) * measured["keys_per_subject"] * measured["per_rollup_key"]) / 1e9}
    return {"backend": backend, "raw_days_on_disk": raw_days, **{k: round(v, 2) for k, v in parts.items()},
            "total_gb": round(sum(parts.values()), 2), "bytes_per_row": {k: round(v, 1) for k, v in measured.items()}}


def verdicts(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, passed, figures) for what was run."""
    rows = []
    for name in ("big", "fast"):
        r = results.get(name)
        if r is None:
            continue
        d, c = r["delivery"], r["commands"]
        label = f"{r['devices']:,} devices @ {r['interval']:g} s ({r['backend']}, {r['duration_s'] / 60:g} min)"
        rows.append((f"{label}: 0 lost", d["lost"] == 0, f"{d['lost']} lost of {d['acknowledged']:,} acknowledged, {d['rate_per_s']}/s"))
        rows.append((f"{label}: ingest lag p99 <= 2 s", d["lag_p99_s"] <= TARGETS["lag_p99_s"],
                     f"p50 {d['lag_p50_s']:.2f} s, p99 {d['lag_p99_s']:.2f} s, max {d['lag_max_s']:.1f} s"
                     + "".join(f"; late from {x['from']} for {x['seconds']:g} s ({x['windows']:,} windows, max {x['max_lag_s']:g} s)"
                               for x in d.get("late_windows", [])[:2])))
        s = c["status"]
        rows.append((f"{label}: fleet status complete, <= 1 s", s["rows"] == c["expected_status_rows"] and s["max_s"] <= TARGETS["status_s"],
                     f"{s['rows']:,}/{c['expected_status_rows']:,} rows, median {s['median_s']} s, max {s['max_s']} s"))
        g = c["drift"]
        rows.append((f"{label}: fleet drift --group <= 1 s", g["max_s"] <= TARGETS["drift_s"],
                     f"{g['rows']} reports, median {g['median_s']} s, max {g['max_s']} s"))
    pair = results.get("pair")
    if pair:
        one, two = pair["collectors_1"], pair["collectors_2"]
        ok = pair["ratio"] >= TARGETS["pair_ratio"] and one["lost"] == two["lost"] == 0 and one["counted_twice"] == two["counted_twice"] == 0
        rows.append(("two collectors on PostgreSQL >= 1.8x one, 0 lost, 0 counted twice", ok,
                     f"{two['rate_per_s']}/s vs {one['rate_per_s']}/s = {pair['ratio']}x; lost {one['lost']}+{two['lost']}, "
                     f"twice {one['counted_twice']}+{two['counted_twice']}"))
    for key, month in results.get("storage", {}).items():
        rows.append((f"storage, 5,000 devices x 30 days @ 60 s ({key}) <= 5 GB", month["total_gb"] <= TARGETS["storage_gb"],
                     f"{month['total_gb']} GB = raw {month['raw_gb']} ({month['raw_days_on_disk']:g} days) + totals {month['totals_gb']} "
                     f"+ roll-ups {month['rollups_gb']}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller fleets and 2-minute runs (minutes in all)")
    ap.add_argument("--only", choices=["big", "fast", "pair"], action="append", help="run only these parts (repeatable)")
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite", help="the store of the ingest runs")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (databases, logs)")
    args = ap.parse_args(argv)
    params = QUICK if args.quick else FULL
    parts = args.only or ["big", "fast", "pair"]
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-scale-"))
    pg = Database().start() if "pair" in parts or args.backend == "postgresql" else None
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "load_before": load(), "cpus": os.cpu_count()}
    print(f"fleet scale benchmark ({results['mode']}); {results['load_before']}", flush=True)
    try:
        model = make_model(workdir)
        for name in ("big", "fast"):
            if name in parts:
                results[name] = run_ingest(name, params[name], backend=args.backend, workdir=workdir, pg=pg, model=model)
        if "pair" in parts:
            assert pg is not None
            results["pair"] = run_pair(params["pair"], workdir=workdir, pg=pg, model=model)
        results["storage"] = {}
        for key in ("big", "pair"):
            if key in results:
                backend = "postgresql" if key == "pair" else args.backend
                results["storage"][backend] = storage_month(results[key]["storage"], backend)
    finally:
        if pg is not None:
            pg.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["verdicts"] = [{"target": t, "pass": ok, "figures": f} for t, ok, f in verdicts(results)]
    for v in results["verdicts"]:
        print(f"{'PASS' if v['pass'] else 'FAIL'}  {v['target']}: {v['figures']}")
    print(f"load after: {load()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(v["pass"] for v in results["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
