"""Probation latency verdicts on a busy machine (issue 14): statistics, not anecdotes.

    python benchmarks/ota_probation.py                        # 100 identical deploys, 20 of a 3x slower model (≈ 10 min on 2 cores)
    python benchmarks/ota_probation.py --identical 30 --slow 10 --json probation.json

A device (the real updater: store, signed commands, chunks, probation; no MQTT) serves requests in a loop while
``--hogs`` processes load the CPU in bursts (busy 5-200 ms, idle 0-100 ms), and it is updated over and over with a
20-request probation and a 2x latency bound:

1. ``--identical`` deploys of a byte-identical model (same artifact bytes, a new version each time): target 0
   latency rollbacks. Before issue 14, 2 of 13 such deploys were rolled back for "p95 8x": a p95 of 20 live requests
   on a busy host against a baseline measured earlier, under other load.
2. ``--slow`` deploys of a model that takes 3x as long (the same network plus dead-weight MatMuls whose result is
   multiplied by zero, as many as make it at least 3x slower by the judge's measure, on this machine before the load starts):
   target every one rolled back for latency.

The probation's latency judge runs the new and the previous model in pairs, alternately, on the same inputs, and
rolls back only when the bootstrap lower bound of the ratio of their fast runs exceeds the bound
(:mod:`device_agent.ota.latency`). The printed ratios are the judge's own, per deploy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import re
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the dead-weight branch (tests.ota.models.slow_mlp, one shared weight matrix so cost grows linearly): [16·TILE]² MatMuls; the
#: base model has BASE_DEPTH of them (≈ 1.3 ms a request here), the slow one as many more as make it 3x slower (steps of ~1/3)
TILE = 16
BASE_DEPTH = 3
BOUND = 2.0


def hog(stop: Event, seed: int) -> None:
    """Load one core in bursts: busy 5-200 ms, idle 0-100 ms (another tenant of a shared machine)."""
    rng = random.Random(seed)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.005, 0.2)
        x = 0
        while time.perf_counter() < end:
            x += 1
        time.sleep(rng.uniform(0.0, 0.1))


def ratio(base_dir: Path, slow_dir: Path, pairs: int = 200) -> float:
    """How many times longer ``slow_dir``'s model takes than ``base_dir``'s, by the probation judge's own measure: paired
    runs in random order on the same input, the ratio of their fast runs (:mod:`device_agent.ota.latency`), which is what
    each costs when this shared machine leaves it alone."""
    from device_agent.ota.latency import compare_pairs
    from device_agent.runtime.model import load_model
    from tests.ota.models import inputs

    a, b = load_model(base_dir, threads=1), load_model(slow_dir, threads=1)
    x = inputs(1, seed=0)
    for _ in range(20):
        a.run(x)
        b.run(x)
    took: dict[str, list[float]] = {"a": [], "b": []}
    rng = random.Random(0)
    for _ in range(pairs):
        for name, m in rng.sample([("a", a), ("b", b)], 2):  # in random order, as the probation's judge runs them
            t0 = time.perf_counter()
            m.run(x)
            took[name].append(time.perf_counter() - t0)
    return compare_pairs(took["a"], took["b"]).ratio


def make_releases(work: Path, key, identical: int, slow: int) -> tuple[list[Path], list[Path], float]:
    """Signed releases: v1.0.0 and ``identical`` byte-identical copies (1.0.1 ...), ``slow`` copies of the slow model (1.1.1 ...)."""
    from edgekit.signing import sign_dir
    from tests.ota.models import make_model_dir, slow_mlp

    base_model = slow_mlp(1, tile=TILE, depth=BASE_DEPTH, shared=True)
    probe = make_model_dir(work / "probe-base", base_model, version="0.0.1")
    depth, slower_by = 3 * BASE_DEPTH - 1, 1.0
    while slower_by < 3.0 and depth < 6 * BASE_DEPTH:  # the fewest dead-weight MatMuls that make it at least 3x slower
        depth += 1
        slower_by = ratio(probe, make_model_dir(work / f"probe-slow{depth}", slow_mlp(1, tile=TILE, depth=depth, shared=True),
                                                version="0.0.2"))
    same = [make_model_dir(work / f"same-{i}", base_model, version=f"1.0.{i}") for i in range(identical + 1)]
    slow_model = slow_mlp(1, tile=TILE, depth=depth, shared=True)
    slower = [make_model_dir(work / f"slow-{i}", slow_model, version=f"1.1.{i}") for i in range(1, slow + 1)]
    for d in same + slower:
        sign_dir(d, key)
    return same, slower, slower_by


def run_deploys(device, releases: list[Path], prefix: str) -> list[tuple[str, str, float | None]]:
    """(final state, reason, the judge's ratio) of each deploy, one after the other."""
    out = []
    for i, rel in enumerate(releases):
        job = f"{prefix}-{i}"
        device.deploy(rel, job, chunk_size=65536)
        r = device.wait_final(job, timeout=120)
        verdict = device.updater.last_verdict
        m = re.search(r"(\d+\.\d+)x the previous model's", verdict.detail) if verdict is not None else None
        out.append((str(r.state), r.reason, float(m.group(1)) if m else None))
        print(f"  {job}: {r.state} {r.reason} ({m.group(1) + 'x' if m else 'latency not judged'})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identical", type=int, default=100, help="deploys of a byte-identical model")
    ap.add_argument("--slow", type=int, default=20, help="deploys of a model 3x slower")
    ap.add_argument("--hogs", type=int, default=2, help="processes loading the CPU in bursts")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()

    from device_agent.ota import OtaSettings
    from device_agent.ota.job import ProbationPolicy
    from device_agent.ota.verify import load_trusted_keys
    from edgekit.signing import generate_keys, load_private_key
    from tests.ota.harness import Device

    work = Path(tempfile.mkdtemp(prefix="edgekit-probation-bench-"))
    kp = generate_keys(work / "keys")
    same, slower, slower_by = make_releases(work / "rel", kp.private, args.identical, args.slow)
    policy = ProbationPolicy(requests=20, seconds=120, min_requests=5, max_latency_ratio=BOUND)
    print(f"{args.identical} identical deploys, then {args.slow} of a model {slower_by:.2f}x slower; {args.hogs} bursty CPU "
          f"hogs; 20-request probation, latency bound {BOUND:g}x", flush=True)
    stop = mp.Event()
    hogs = [mp.Process(target=hog, args=(stop, i), daemon=True) for i in range(args.hogs)]
    for h in hogs:
        h.start()
    device = Device(work / "device", same[0], trusted=load_trusted_keys([kp.public]), settings=OtaSettings(probation=policy),
                    key=load_private_key(kp.private))
    t0 = time.perf_counter()
    try:
        identical = run_deploys(device, same[1:], "same")
        slow = run_deploys(device, slower, "slow")
    finally:
        device.stop()
        stop.set()
        for h in hogs:
            h.join(5)
    report(identical, slow, slower_by, time.perf_counter() - t0, args.json)


def report(identical: list, slow: list, slower_by: float, seconds: float, out: Path | None) -> None:
    false_rollbacks = sum(1 for s, reason, _ in identical if reason == "latency")
    other = sum(1 for s, _, _ in identical if s != "SUCCEEDED")
    caught = sum(1 for s, reason, _ in slow if s == "FAILED" and reason == "latency")
    same_r = [r for _, _, r in identical if r is not None]
    slow_r = [r for _, _, r in slow if r is not None]
    ok_same, ok_slow = false_rollbacks == 0 and other == 0, caught == len(slow)
    print()
    print(f"identical model: {false_rollbacks} latency rollbacks of {len(identical)} deploys ({other} not committed); the judge's ratio "
          f"{min(same_r, default=float('nan')):.2f}x-{max(same_r, default=float('nan')):.2f}x  target 0  {'PASS' if ok_same else 'FAIL'}")
    print(f"{slower_by:.1f}x slower model: {caught} rolled back for latency of {len(slow)} deploys; the judge's ratio "
          f"{min(slow_r, default=float('nan')):.2f}x-{max(slow_r, default=float('nan')):.2f}x  target all  {'PASS' if ok_slow else 'FAIL'}")
    print(f"wall time {seconds:.0f} s")
    if out is not None:
        out.write_text(json.dumps({"identical": identical, "slow": slow, "slower_by": slower_by, "false_rollbacks": false_rollbacks,
                                   "caught": caught, "seconds": round(seconds, 1)}, indent=1))
    if not (ok_same and ok_slow):
        raise SystemExit(1)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
