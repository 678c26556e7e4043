"""The operator's reads at scale (issue 15) on a kept store, without the 1.5 h of benchmarks/fleet_scale.py.

    python benchmarks/fleet_reads.py build /tmp/reads --devices 10000 --history 25m      # once (minutes)
    python benchmarks/fleet_reads.py time /tmp/reads --repeat 5                            # seconds
    python benchmarks/fleet_reads.py build /tmp/reads --postgresql && python benchmarks/fleet_reads.py time /tmp/reads --postgresql

``build`` writes the test model and a store the way fleet_scale.py's "big" part does before its run
(:func:`scale_env.load_history`: every device's state, then ``--history`` of windows at 60 s filed through
the store's batch ingest), then starts Mosquitto and ``edgekit fleet watch`` on it and publishes one more
window per device through the broker, so the collector judges every device (the ``fleet status`` drift
column, the verdicts) as it does during the benchmark's run. ``--postgresql`` keeps a PostgreSQL cluster in
``DIR/pg`` instead of ``DIR/fleet.sqlite``.

``time`` starts Mosquitto and a collector on the kept store and times the four commands fleet_scale.py
times: ``fleet status --json`` and ``fleet drift --group g3 --json``, each through the broker (the
collector answers) and with ``--db``. Two ways: ``process`` (a fresh ``python -m edgekit.cli``, wall
clock, start-up included) and ``in-process`` (:func:`scale_checks.cli_timing`, as fleet_scale.py measures:
the command's modules are imported by its first run only). The median and the maximum of ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale_checks as checks  # noqa: E402
from scale_env import ENV, Broker, load_history, start_collector, wait_online  # noqa: E402
from scale_sim import GROUPS  # noqa: E402

COLLECTOR = "bench-reads"


def _units(text: str) -> float:
    n, unit = (text[:-1], text[-1]) if text[-1] in "smh" else (text, "s")
    return float(n) * {"s": 1, "m": 60, "h": 3600}[unit]


class Kept:
    """A kept work directory: the model, and the store (a SQLite file, or a PostgreSQL cluster in ``pg/``)."""

    def __init__(self, workdir: Path, *, postgresql: bool) -> None:
        self.dir = workdir
        self.model = workdir / "model"
        self.pg: Any = None
        if postgresql:
            from tests.services import Postgres, postgres_bindir

            bindir = postgres_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL is not installed: make test-debs (Debian package postgresql)")
            self.pg = Postgres(workdir / "pg", bindir, port=_pg_port(workdir))

    def __enter__(self) -> Kept:
        if self.pg is not None:
            self.pg.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pg is not None:
            self.pg.stop()

    @property
    def db(self) -> str:
        return self.pg.dsn("fleet") if self.pg is not None else str(self.dir / "fleet.sqlite")


def _pg_port(workdir: Path) -> int:
    """The kept cluster's port (chosen once, written beside it)."""
    from tests.conftest import free_port

    f = workdir / "pg.port"
    if not f.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        f.write_text(str(free_port()))
    return int(f.read_text())


def build(kept: Kept, *, devices: int, history_s: float) -> dict[str, Any]:
    """The store (see the module docs); returns what it holds."""
    from edgekit.monitor.store import open_store
    from tests.monitor.conftest import write_model

    write_model(kept.model)
    if kept.pg is not None:
        kept.pg.createdb("fleet")
    t = time.monotonic()
    store = open_store(kept.db, holder="history")
    seqs = load_history(store, kept.model, devices=devices, interval=60.0, samples=600, span_s=history_s)
    store.close()
    filed = time.monotonic() - t
    broker = Broker(kept.dir / "broker").start()
    collector = start_collector(broker, kept.db, kept.model, collector_id=COLLECTOR, log=kept.dir / "collector-build.log")
    try:
        wait_online(broker, [COLLECTOR])
        now = time.time()
        per_device = next(iter(seqs.values()))
        acked = asyncio.run(checks._publish(broker.port, kept.model, [(i, per_device + 1, now) for i in range(devices)]))
        _until_stored(kept.db, devices * (per_device + 1))
    finally:
        collector.terminate()
        collector.wait(60)
        broker.stop()
    rows = {t: checks._rows(kept.db, f"SELECT COUNT(*) FROM {t}")[0][0] for t in ("devices", "telemetry", "series", "totals", "drift_state")}
    doc = {"devices": devices, "history_s": history_s, "interval_s": 60.0, "filed_s": round(filed, 1), "published": acked, "rows": rows,
           "built": time.time()}
    (kept.dir / "store.json").write_text(json.dumps(doc, indent=1))
    return doc


def _until_stored(db: str, want: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while checks._rows(db, "SELECT COUNT(*) FROM telemetry")[0][0] < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the collector did not store {want} windows within {timeout:g} s")
        time.sleep(1.0)
    time.sleep(3.0)  # the last batch judged


def _commands(broker: Broker, db: str) -> dict[str, list[str]]:
    return {"status": ["fleet", "status", "--broker", broker.url, "--json"], "status_db": ["fleet", "status", "--db", db, "--json"],
            "drift": ["fleet", "drift", "--broker", broker.url, "--group", "g3", "--json"],
            "drift_db": ["fleet", "drift", "--db", db, "--group", "g3", "--json"]}


def _size(key: str, doc: Any) -> int:
    return len(doc) if key.startswith("status") else len(doc["reports"])


def _process(args: list[str], repeat: int) -> tuple[list[float], Any]:
    times, doc = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "edgekit.cli", *args], env=ENV, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise RuntimeError(f"edgekit {' '.join(args)} exited {r.returncode}: {r.stderr.decode()[-500:]}")
        doc = json.loads(r.stdout)
    return times, doc


def time_reads(kept: Kept, *, repeat: int, ways: list[str]) -> dict[str, Any]:
    """The four commands against the kept store, a collector answering (see the module docs)."""
    broker = Broker(kept.dir / "broker").start()
    collector = start_collector(broker, kept.db, kept.model, collector_id=COLLECTOR, log=kept.dir / "collector-time.log")
    out: dict[str, Any] = {}
    try:
        wait_online(broker, [COLLECTOR])
        time.sleep(2.0)  # the collector's start-up judging settles
        for way in ways:
            for key, args in _commands(broker, kept.db).items():
                if way == "process":
                    times, doc = _process(args, repeat)
                else:
                    r = checks.cli_timing(args, repeat=1)
                    times, doc = [r["median_s"]], r["doc"]
                    for _ in range(repeat - 1):
                        times.append(checks.cli_timing(args, repeat=1)["median_s"])
                out[f"{way}:{key}"] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
                                       "first_s": round(times[0], 3), "rows": _size(key, doc)}
                print(f"  {way:<10} {key:<9} median {out[f'{way}:{key}']['median_s']:.3f} s  max {max(times):.3f} s  "
                      f"({out[f'{way}:{key}']['rows']} rows)", flush=True)
    finally:
        collector.terminate()
        collector.wait(60)
        broker.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["build", "time"])
    ap.add_argument("dir", type=Path, help="the kept work directory")
    ap.add_argument("--postgresql", action="store_true", help="a PostgreSQL cluster in DIR/pg instead of DIR/fleet.sqlite")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--history", default="25m", help="history filed before the collector starts: 1500, 25m, 1h")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--way", choices=["process", "in-process"], action="append", help="how to run the commands (default: both)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with Kept(args.dir, postgresql=args.postgresql) as kept:
        if args.action == "build":
            doc = build(kept, devices=args.devices, history_s=_units(args.history))
        else:
            doc = {"store": json.loads((args.dir / "store.json").read_text()), "load": load,
                   **time_reads(kept, repeat=args.repeat, ways=args.way or ["process", "in-process"])}
            doc["expected"] = {"status": doc["store"]["devices"], "drift": 1 + doc["store"]["devices"] // GROUPS}
    print(json.dumps(doc, indent=1))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
