"""Over-the-air updates under stress: crash safety, zero-downtime swaps, fast rollback, fleet rollouts.

    python benchmarks/ota.py                       # everything (≈ 4-6 min on 2 cores)
    python benchmarks/ota.py --kills 200 --devices 200 --json ota.json
    python benchmarks/ota.py --only load           # one part: kills | load | fleet

1. **Random kill -9** (issue 7: ≥ 200 points): device processes update through a pool of signed
   releases (every 4th gives NaN and must be rolled back) and are SIGKILLed at uniformly random
   moments — during boot recovery, downloads, verification, swaps, probation, rollbacks, GC. Every
   restart must come up serving an installed, verified model with a consistent store.
2. **Load through an update and a rollback** (≥ 200 req/s over HTTP to a real agent, updates
   delivered through a real Mosquitto by ``edgekit.fleet``): failed requests (target 0), swap pause
   (``Agent.swap_model`` duration, p99 < 5 ms, also measured over 2000 swaps under load), rollback
   time from the failed probation check to the old model serving (< 2 s), and as the client saw it.
3. **Fleet simulation** (≥ 200 simulated agents on one Mosquitto): a 4-wave rollout to all
   completes; then with 30 % of the canaries broken, the rollout aborts after wave 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ota_kills import bench_kills, make_pool  # noqa: E402 - benchmarks/ is on sys.path when this runs as a script

# --- fixtures --------------------------------------------------------------------------------------

def percentile(xs, q):
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


# --- 2. load through an update and a rollback ---------------------------------------------------------

class HttpLoad:
    """Clients on keep-alive connections at ≈ ``rate`` requests/s in total; every response recorded."""

    def __init__(self, port: int, rate: float, clients: int = 4) -> None:
        self.port, self.rate, self.clients = port, rate, clients
        self.records: list[tuple[float, float, int, str]] = []  # (start, latency s, status, version)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        self.body = json.dumps({"inputs": {"x": x.tolist()}}).encode()

    def __enter__(self) -> HttpLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        period = self.clients / self.rate
        nxt = time.perf_counter() + i * period / self.clients
        local = []
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", self.body, {"content-type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                version = json.loads(data)["model"]["version"] if resp.status == 200 else "-"
                local.append((t0, time.perf_counter() - t0, resp.status, version))
            except Exception as e:  # a failed request is the finding
                self.errors.append(f"{type(e).__name__}: {e}")
                local.append((t0, time.perf_counter() - t0, 0, "-"))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            nxt += period
            delay = nxt - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.perf_counter()
        conn.close()
        self.records.extend(local)


def bench_load(work: Path, releases: dict, keys, rate: float) -> dict:
    from device_agent.config import parse_config
    from device_agent.daemon import Daemon
    from edgekit.fleet.client import FleetClient
    from edgekit.fleet.jobs import Release
    from edgekit.fleet.rollout import RolloutPolicy, deploy
    from edgekit.signing import load_private_key
    from tests.conftest import Mosquitto

    signer = load_private_key(keys.private)
    broker = Mosquitto(work / "mosquitto").start()
    cfg = parse_config({
        "state_dir": str(work / "state"), "device": {"id": "bench-1", "group": "bench"},
        "broker": {"url": broker.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3},
        "model": {"path": str(releases["v1"]), "threads": 1}, "api": {"enabled": True, "port": 0, "max_connections": 64},
        "telemetry": {"interval_s": 5.0}, "security": {"trusted_keys": [str(keys.public)]},
        "ota": {"probation_requests": 300, "probation_seconds": 20, "probation_min_requests": 30},
    }, base_dir=work)
    daemon = Daemon.from_config(cfg)
    agent = daemon.agent
    swaps: list[tuple[float, float]] = []  # (start, duration)
    real_swap = agent.swap_model

    def timed_swap(new):
        t0 = time.perf_counter()
        old = real_swap(new)
        swaps.append((t0, time.perf_counter() - t0))
        return old

    agent.swap_model = timed_swap  # the updater is attached in start(): it takes this one
    daemon.start()
    out: dict = {"rate_target": rate}
    policy = RolloutPolicy(device_timeout_s=60, chunk_size=16384)
    try:
        with HttpLoad(daemon.server.port, rate) as load, FleetClient(broker.url) as fc:
            time.sleep(1.0)
            jobs, rollback_s = {}, {}
            for name in ("v2", "nan", "slow"):  # an update, then two that must be rolled back
                jobs[name] = deploy(fc, Release.open(releases[name]), devices=["bench-1"], policy=policy, key=signer).outcomes["bench-1"]
                rollback_s[name] = daemon.updater.last_rollback_s
                time.sleep(0.5)
            many, window = _many_swaps(daemon)
            time.sleep(0.5)
        out.update(_load_figures(sorted(load.records), load.errors, swaps, many, window))
        out["outcomes"] = [jobs["v2"]["state"], f"{jobs['nan']['state']}:{jobs['nan']['reason']}",
                           f"{jobs['slow']['state']}:{jobs['slow']['reason']}"]
        for key, name in (("rollback_nan_s", "nan"), ("rollback_latency_s", "slow")):
            out[key] = round(rollback_s[name], 4) if rollback_s[name] is not None else None
    finally:
        daemon.stop()
        broker.stop()
    return out


def _many_swaps(daemon, n: int = 2000) -> tuple[list[float], tuple[float, float]]:
    """``n`` swaps between two loaded models under the same load: what requests in flight feel. Returns their
    durations and the (start, end) of the run."""
    agent, updater = daemon.agent, daemon.updater
    a, b = agent.model, updater.loader(updater.store.path(updater.store.previous))
    many = []
    t_many = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        agent.swap_model(b)
        many.append(time.perf_counter() - t0)
        a, b = b, a
        time.sleep(0.005)
    t_many_end = time.perf_counter()
    if agent.model is not a:
        agent.swap_model(a)
    return many, (t_many, t_many_end)


def _load_figures(recs: list, errors: list[str], swaps: list[tuple[float, float]], many: list[float], window: tuple[float, float]) -> dict:
    """What the clients saw: rate, failures, latency while swaps ran and not, the client-visible rollback."""
    import bisect

    dur = recs[-1][0] - recs[0][0] if recs else 1.0
    failed = [r for r in recs if r[2] != 200]
    lat = [r[1] for r in recs]
    # requests in flight while a swap ran (the 5 OTA swaps and the 2000 under load)
    starts = [s for s, _ in swaps]
    ends = [s + d for s, d in swaps]

    def overlaps(r) -> bool:
        i = bisect.bisect_right(starts, r[0] + r[1])  # swaps that started before the request ended
        return i > 0 and ends[i - 1] >= r[0]

    during = [r[1] for r in recs if overlaps(r)]
    # requests started while the 2000 swaps ran, vs all others (by start time: overlap-based selection would favour long requests)
    t_many, t_many_end = window
    in_window = [r[1] for r in recs if t_many <= r[0] <= t_many_end]
    outside = [r[1] for r in recs if not t_many <= r[0] <= t_many_end]
    # client-visible rollback: first answer from the NaN version → first answer from 1.1.0 after it
    first_bad = next((r[0] + r[1] for r in recs if r[3] == "1.5.0"), None)
    back = next((r[0] + r[1] for r in recs if first_bad is not None and r[0] + r[1] > first_bad and r[3] == "1.1.0"), None)
    return {
        "requests": len(recs), "rate_achieved": round(len(recs) / dur, 1), "failed": len(failed), "errors": errors[:5],
        "versions_seen": sorted({r[3] for r in recs}),
        "ota_swaps_ms": [round(d * 1e3, 4) for _, d in swaps[:5]], "requests_during_swaps": len(during),
        "swap_call_p99_ms": round(percentile(many, 99) * 1e3, 4), "swap_call_max_ms": round(max(many) * 1e3, 4),
        "p99_swapping_ms": round(percentile(in_window, 99) * 1e3, 3), "p99_not_swapping_ms": round(percentile(outside, 99) * 1e3, 3),
        "requests_swapping": len(in_window), "requests_not_swapping": len(outside),
        "latency_p50_ms": round(percentile(lat, 50) * 1e3, 3), "latency_p99_ms": round(percentile(lat, 99) * 1e3, 3),
        "latency_p99_during_swaps_ms": round(percentile(during, 99) * 1e3, 3) if during else None,
        "rollback_client_s": round(back - first_bad, 4) if first_bad and back else None,
    }


# --- 3. fleet simulation ------------------------------------------------------------------------------

def bench_fleet(work: Path, releases: dict, trusted, n: int, signer) -> dict:
    import math

    from device_agent.ota import OtaSettings
    from device_agent.ota.job import ProbationPolicy
    from edgekit.fleet.client import FleetClient
    from edgekit.fleet.jobs import Release
    from edgekit.fleet.rollout import RolloutPolicy, deploy
    from tests.conftest import Mosquitto
    from tests.fleet.sim import SimDevice, Traffic

    broker = Mosquitto(work / "mosquitto-fleet", extra_conf="max_connections -1\n").start()
    settings = OtaSettings(probation=ProbationPolicy(requests=10, seconds=5, min_requests=5, max_latency_ratio=1000.0, latency_floor_ms=50.0))
    t0 = time.perf_counter()
    devs = [SimDevice(f"sim-{i:03d}", work / "fleet" / f"sim-{i:03d}", releases["v1"], broker_port=broker.port, trusted=trusted,
                      group="sim", settings=settings) for i in range(n)]
    for d in devs:
        d.connected.wait(30)
    out: dict = {"devices": n, "start_s": round(time.perf_counter() - t0, 1)}
    try:
        with Traffic(devs, rate=3000.0), FleetClient(broker.url) as fc:
            t1 = time.perf_counter()
            r = deploy(fc, Release.open(releases["v2"]), group="sim", key=signer,
                       policy=RolloutPolicy(waves=("1", "10%", "50%", "100%"), max_failures="5%", min_devices=1, device_timeout_s=120,
                                            chunk_size=16384))
            out["rollout"] = {"waves": [len(w) for w in r.waves], "succeeded": r.succeeded, "failed": r.failed, "aborted": r.aborted,
                              "seconds": round(time.perf_counter() - t1, 1)}
            # second rollout: 30 % of the canaries (wave 1) get a broken model
            wave1 = math.ceil(n * 0.10)
            names = sorted(d.topics.device for d in devs)
            broken = set(names[:wave1][:: max(1, round(1 / 0.3))][: math.ceil(0.3 * wave1)])
            for d in devs:
                d.faulty = d.topics.device in broken
            t2 = time.perf_counter()
            r2 = deploy(fc, Release.open(releases["v3"]), group="sim", key=signer,
                        policy=RolloutPolicy(waves=("10%", "50%", "100%"), max_failures="20%", min_devices=5, device_timeout_s=120,
                                             chunk_size=16384))
            untouched = sum(1 for d in devs if d.serving.get().version == "1.1.0" and d.topics.device not in r2.outcomes)
            out["broken_canaries"] = {"broken": len(broken), "wave1": wave1, "aborted": r2.aborted, "finished": len(r2.outcomes),
                                      "failed": r2.failed, "untouched_devices": untouched, "seconds": round(time.perf_counter() - t2, 1)}
    finally:
        for d in devs:
            d.stop()
        broker.stop()
    return out


# --- main ---------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--workers", type=int, default=max(2, min(4, os.cpu_count() or 2)))
    ap.add_argument("--rate", type=float, default=300.0, help="HTTP requests/s during part 2")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--only", choices=["kills", "load", "fleet"])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()

    from device_agent.ota.verify import load_trusted_keys
    from edgekit.signing import generate_keys, load_private_key, sign_dir
    from tests.ota.models import make_model_dir, mlp, nan_mlp, slow_mlp

    work = Path(tempfile.mkdtemp(prefix="edgekit-ota-bench-"))
    kp = generate_keys(work / "keys")
    releases = {
        "v1": make_model_dir(work / "rel" / "v1", mlp(0), version="1.0.0"),
        "v2": make_model_dir(work / "rel" / "v2", mlp(1), version="1.1.0"),
        "v3": make_model_dir(work / "rel" / "v3", mlp(2), version="1.2.0"),
        "nan": make_model_dir(work / "rel" / "nan", nan_mlp(3), version="1.5.0", vectors=0),
        "slow": make_model_dir(work / "rel" / "slow", slow_mlp(1, tile=32), version="1.6.0"),
    }
    for d in releases.values():
        sign_dir(d, kp.private)
    results: dict = {}
    if args.only in (None, "kills"):
        pool = work / "pool"
        make_pool(pool, 120, kp.private)
        print(f"[1/3] kill -9 at {args.kills} random moments ({args.workers} device processes at a time)...", flush=True)
        results["kills"] = bench_kills(work / "kills", pool, kp.public, kills=args.kills, workers=args.workers, seed=args.seed)
    if args.only in (None, "load"):
        print(f"[2/3] {args.rate:.0f} req/s over HTTP through an update, two rollbacks and 2000 swaps...", flush=True)
        results["load"] = bench_load(work / "load", releases, kp, args.rate)
    if args.only in (None, "fleet"):
        print(f"[3/3] fleet of {args.devices} simulated agents on one Mosquitto...", flush=True)
        results["fleet"] = bench_fleet(work / "fleet", releases, load_trusted_keys([kp.public]), args.devices, load_private_key(kp.private))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def report(r: dict) -> None:
    rows = []
    if "kills" in r:
        k = r["kills"]
        rows += [("kill -9 at random moments", "≥ 200", k["kills"], k["kills"] >= 200),
                 ("restarts serving a valid model, store consistent", "all", f"{k['boots'] - len(k['bad_boots'])}/{k['boots']}",
                  not k["bad_boots"]),
                 ("  where the kills landed (last reported state)", "", ", ".join(f"{s} {n}" for s, n in sorted(k["killed_in"].items())), None),
                 ("  jobs finished / versions served / device roots / wall time", "",
                  f"{k['jobs_finished']} / {k['versions_served']} / {k['roots']} / {k['seconds']} s", None)]
    if "load" in r:
        ld = r["load"]
        rows += [("HTTP load during update + rollbacks", "≥ 200 req/s", f"{ld['rate_achieved']} req/s "
                  f"({ld['requests']} requests)", ld["rate_achieved"] >= 200),
                 ("failed requests", "0", ld["failed"], ld["failed"] == 0),
                 ("job outcomes (v2 / NaN model / 30x slower model)", "ok / FAILED / FAILED", " / ".join(ld["outcomes"]),
                  ld["outcomes"][0] == "SUCCEEDED" and all(o.startswith("FAILED") for o in ld["outcomes"][1:])),
                 ("swap pause p99: Agent.swap_model() over 2000 swaps under load", "< 5 ms",
                  f"{ld['swap_call_p99_ms']} ms (max {ld['swap_call_max_ms']} ms)", ld["swap_call_p99_ms"] < 5),
                 ("  (requests take no lock: a swap can hold them at most this long, for the GIL)", "", "", None),
                 ("  request p99: started while the 2000 swaps ran / all other", "",
                  f"{ld['p99_swapping_ms']} ms ({ld['requests_swapping']}) / {ld['p99_not_swapping_ms']} ms ({ld['requests_not_swapping']})",
                  None),
                 ("  OTA swaps (v2 in, NaN in, NaN out, slow in, slow out)", "", ", ".join(f"{x} ms" for x in ld["ota_swaps_ms"]), None),
                 ("request p50 / p99 overall (HTTP over loopback, 4 keep-alive clients)", "",
                  f"{ld['latency_p50_ms']} / {ld['latency_p99_ms']} ms", None),
                 ("rollback after failed probation check (NaN)", "< 2 s", f"{ld['rollback_nan_s']} s",
                  ld["rollback_nan_s"] is not None and ld["rollback_nan_s"] < 2),
                 ("rollback after failed probation check (latency)", "< 2 s", f"{ld['rollback_latency_s']} s",
                  ld["rollback_latency_s"] is not None and ld["rollback_latency_s"] < 2),
                 ("  client: first NaN-model answer → old model again", "", f"{ld['rollback_client_s']} s", None)]
    if "fleet" in r:
        f = r["fleet"]
        ro, bc = f["rollout"], f["broken_canaries"]
        rows += [(f"4-wave rollout to {f['devices']} simulated agents", "completes",
                  f"waves {ro['waves']}: {ro['succeeded']} ok, {ro['failed']} failed in {ro['seconds']} s",
                  ro["succeeded"] == f["devices"] and ro["aborted"] is None),
                 ("30% broken canaries", "abort after wave 1",
                  f"{bc['broken']}/{bc['wave1']} broken → {'aborted after wave 1' if bc['aborted'] and 'wave 1' in bc['aborted'] else 'NOT aborted'}, "
                  f"{bc['untouched_devices']} devices untouched ({bc['seconds']} s)", bool(bc["aborted"]) and "wave 1:" in bc["aborted"])]
    w = max(len(x[0]) for x in rows)
    w2 = max(len(str(x[1])) for x in rows)
    print()
    print(f"{'measure'.ljust(w)}  {'target'.ljust(w2)}  measured")
    for name, target, got, ok in rows:
        mark = "" if ok is None else ("  ✓" if ok else "  ✗")
        print(f"{name.ljust(w)}  {str(target).ljust(w2)}  {got}{mark}")


if __name__ == "__main__":
    main()
