"""Serving (issue 17): the agent against FastAPI + uvicorn (uvloop, httptools) + orjson, around the same
int8 .ort with the same threads, one process each, under wrk — and the agent's bounds under abuse.

    python benchmarks/serving.py                 # ~25 minutes; models built (and cached) as benchmarks/agent.py does
    python benchmarks/serving.py --long          # memory flatness over 1,000,000 requests instead of 200,000
    python benchmarks/serving.py --only cells --models digits --duration 5 --rounds 2 --json out.json
    python benchmarks/serving.py --only cells --control   # and a second agent process in every cell: the resolution

Cells: digits CNN and MobileNetV2 × JSON and .npy bodies × 1, 4 and 16 keep-alive connections. The agent
runs as deployed (``edgekit-agent run``: validation, telemetry to a local Mosquitto when one is installed,
feedback log, metrics); the baseline serves the same endpoint written two ways (inline ``async def``, and
on FastAPI's thread pool) and counts as the faster of the two in each round. Rounds interleave the
servers in alternating order; the medians over rounds are compared. Throughput counts 2xx answers only.

Reading wrk's p99: wrk corrects its latency histogram for coordinated omission (``stats_correct`` in its
stats.c): every latency L of at least twice the mean interval between a connection's requests adds the
samples a client sending at that steady rate would have seen meanwhile (L - interval, L - 2*interval, ...).
At one connection on the digits model (an interval of ~0.13 ms) a single 2.5 ms stall counts as ~20
requests: one stall per 1,000 requests made a p99 of ~2 ms, while 99 % of the answers took under 0.3 ms.
So wrk's p99 here says how long the server ever stops answering, and how often, not only how slow a typical
slow request is (its mean latency exceeds the interval at one connection for the same reason).
With ``--control`` a second agent process, started the same way, runs in the same rounds: on this 2-core machine
two such processes' p99 differed by 7-39 % in a cell (most at one connection), which is the resolution of the
p99 comparison.
Every cell prints each server's latency percentiles (p50 to p99.9, medians over rounds), so that a p99 verdict
can be read against the distribution around it.

Targets, each printed PASS or FAIL:
  throughput ≥ 1.0x the baseline in every cell, p99 ≤ the baseline's;
  RSS ≤ 150 MB under 16 concurrent JSON clients on MobileNetV2 for 60 s;
  memory flat: ≤ 10 MB growth after a 100,000-request warm-up (to 200,000; --long: 1,000,000);
  V2 over tritonclient.http, binary tensors, MobileNetV2: round trip ≤ 0.5 ms over raw onnxruntime;
  200 slow clients (a header line every 10 s) + 16 connections of traffic for 30 s: ≥ 99 % 2xx, every /healthz ≤ 1 s;
  a 1 MB .npz holding 2**28 float32 zeros: a 4xx within 50 ms, RSS growth < 20 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from agent import digits_model, mobilenet_model  # noqa: E402 - benchmarks/agent.py builds the models
from agent_process import start_broker  # noqa: E402
from serving_abuse import bomb, memory_over_requests, peak_rss_under_load, slow_clients  # noqa: E402
from serving_load import Load, Server, ensure_wrk, start_agent, start_baseline, wrk  # noqa: E402

CONNECTIONS = (1, 4, 16)


def bodies(x: np.ndarray) -> dict[str, tuple[bytes, str]]:
    buf = io.BytesIO()
    np.save(buf, x)
    return {"json": (json.dumps({"inputs": {"x": x.tolist()}}).encode(), "application/json"), "npy": (buf.getvalue(), "application/x-npy")}


def cell(agent: Server, base: Server, body: bytes, ctype: str, *, connections: int, seconds: float, rounds: int,
         control: Server | None = None) -> dict[str, Any]:
    """One cell: the agent and the baseline's two endpoints (and ``control``, a second agent process) in interleaved
    rounds; medians over rounds."""
    urls = {"agent": f"http://127.0.0.1:{agent.port}/v1/predict", "async": f"http://127.0.0.1:{base.port}/v1/predict",
            "threaded": f"http://127.0.0.1:{base.port}/threaded/v1/predict"}
    if control is not None:
        urls["control"] = f"http://127.0.0.1:{control.port}/v1/predict"
    got: dict[str, list] = {k: [] for k in urls}
    for r in range(rounds):
        for name in (list(urls) if r % 2 == 0 else list(urls)[::-1]):
            got[name].append(wrk(urls[name], body, ctype, connections=connections, seconds=seconds, timeout_s=60))
    best = [max(a, t, key=lambda x: x.ok_per_s) for a, t in zip(got["async"], got["threaded"], strict=True)]
    agent_tput = statistics.median(x.ok_per_s for x in got["agent"])
    base_tput = statistics.median(x.ok_per_s for x in best)
    out = {"agent_per_s": agent_tput, "baseline_per_s": base_tput, "ratio": agent_tput / base_tput,
           "agent_p99_ms": statistics.median(x.p99_ms for x in got["agent"]), "baseline_p99_ms": statistics.median(x.p99_ms for x in best),
           "agent_p50_ms": statistics.median(x.p50_ms for x in got["agent"]), "baseline_p50_ms": statistics.median(x.p50_ms for x in best),
           "agent_failed": float(sum(x.failed for x in got["agent"])),
           "baseline_async_per_s": statistics.median(x.ok_per_s for x in got["async"]),
           "baseline_threaded_per_s": statistics.median(x.ok_per_s for x in got["threaded"])}
    spectra = {"agent": got["agent"], "baseline": best}
    if control is not None:  # the same agent, another process: how far two identical servers land apart in this cell
        out["control_per_s"] = statistics.median(x.ok_per_s for x in got["control"])
        out["control_p99_ms"] = statistics.median(x.p99_ms for x in got["control"])
        spectra["control"] = got["control"]
    return {**out, "spectrum_ms": {k: spectrum(v) for k, v in spectra.items()}}


def spectrum(loads: list[Load]) -> dict[str, float]:
    """Percentiles of latency (ms), each the median over the rounds: p50, p90, p95, p98, p99, p99.5, p99.9."""
    rows = [{"p50": x.p50_ms, "p99": x.p99_ms, **x.spectrum_ms} for x in loads]
    return {p: statistics.median(r[p] for r in rows) for p in sorted(rows[0], key=lambda p: float(p[1:]))}


def v2_round_trip(agent: Server, model_dir: Path, x: np.ndarray, *, threads: int, runs: int = 300) -> dict[str, float]:
    """tritonclient.http with binary tensors against the agent vs ``InferenceSession.run`` on the same .ort, interleaved.

    Three figures, so that the client's share and the server's are not confused: the round trip through the
    official client (client-included: its request building, geventhttpclient, its response parsing); the same
    request bytes over a plain ``http.client`` keep-alive connection (server-only: the agent's reading,
    parsing, inference, encoding and writing, plus a socket round trip); and the client's own work alone
    (building the request and reading a canned answer, no network)."""
    import http.client

    import onnxruntime as ort
    import tritonclient.http as th
    from tritonclient.http._infer_result import InferResult
    from tritonclient.http._utils import _get_inference_request

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(next(model_dir.glob("*.ort"))), opts, providers=["CPUExecutionProvider"])
    client = th.InferenceServerClient(f"127.0.0.1:{agent.port}")
    name = client.get_model_metadata(json.loads((model_dir / "edgekit.json").read_text())["name"])["name"]
    inp = th.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = [th.InferRequestedOutput("logits", binary_data=True)]

    def request_bytes() -> tuple[bytes, int]:  # what client.infer sends, by the client's own builder
        return _get_inference_request(inputs=[inp], request_id="", outputs=out, sequence_id=0, sequence_start=False,
                                      sequence_end=False, priority=0, timeout=None, custom_parameters=None)

    body, json_size = request_bytes()
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
    path, headers = f"/v2/models/{name}/infer", {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}

    def plain() -> bytes:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        answer = r.read()
        if r.status != 200:
            raise RuntimeError(f"V2 infer: HTTP {r.status}: {answer[:200]!r}")
        canned[:] = [answer, int(r.getheader("Inference-Header-Content-Length") or 0)]  # its JSON's length varies with the request id
        return answer

    canned: list = [b"", 0]  # the last answer's bytes and JSON length, for the client's parsing alone
    plain()

    def client_work() -> None:
        request_bytes()
        InferResult.from_response_body(canned[0], False, canned[1], None).as_numpy("logits")

    with floor_server(canned[0], canned[1], model_dir.parent) as floor_port:
        floor, close_floor = _floor_calls(floor_port, lambda c: c.infer(name, [inp], outputs=out), path, body, headers)
        fns = {"raw": lambda: sess.run(None, {"x": x}), "v2": lambda: client.infer(name, [inp], outputs=out), "plain": plain,
               "client": client_work, **floor}
        ms = _interleaved_p50_ms(fns, runs)
        close_floor()
    client.close()
    conn.close()
    return {"raw_p50_ms": ms["raw"], "v2_p50_ms": ms["v2"], "overhead_ms": ms["v2"] - ms["raw"],
            "plain_p50_ms": ms["plain"], "server_overhead_ms": ms["plain"] - ms["raw"], "client_work_ms": ms["client"],
            "floor_v2_ms": ms["floor_v2"], "floor_plain_ms": ms["floor_plain"]}


def _floor_calls(port: int, infer: Callable[[Any], object], path: str, body: bytes, headers: dict[str, str]) -> tuple[dict, Callable[[], None]]:
    """The same two calls (tritonclient, http.client) against the server doing no work, and how to close them."""
    import http.client

    import tritonclient.http as th

    client = th.InferenceServerClient(f"127.0.0.1:{port}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def plain() -> None:
        conn.request("POST", path, body=body, headers=headers)
        conn.getresponse().read()

    def close() -> None:
        client.close()
        conn.close()

    return {"floor_v2": lambda: infer(client), "floor_plain": plain}, close


@contextlib.contextmanager
def floor_server(answer: bytes, json_length: int, work: Path) -> Iterator[int]:
    """benchmarks/serving_floor.py in its own process, answering every request with the agent's ``answer`` (its port)."""
    canned = work / "v2-floor-answer.bin"
    canned.write_bytes(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n"
                       b"Inference-Header-Content-Length: %d\r\n\r\n" % (len(answer), json_length) + answer)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serving_floor.py")), str(canned)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(10)


def _interleaved_p50_ms(fns: dict, runs: int, block: int = 20) -> dict[str, float]:
    """Each function's median milliseconds, run in blocks whose order alternates (after a warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(block):
            f()
    for b in range(runs // block):
        for k, f in (fns.items() if b % 2 == 0 else list(fns.items())[::-1]):
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def run(args: argparse.Namespace) -> dict[str, dict]:
    from device_agent.runtime import default_threads

    threads = args.threads or default_threads()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    ensure_wrk()
    broker_proc, broker = start_broker(work)
    results: dict[str, dict] = {"setup": {"threads": threads, "telemetry": "to Mosquitto" if broker else "off (no broker)",
                                          "duration_s": args.duration, "rounds": args.rounds, "cpus": os.cpu_count()}}
    try:
        models = {"digits": digits_model, "mobilenetv2": mobilenet_model}
        for name in args.models.split(","):
            model_dir, x = models[name](work)
            results.update(_model(name, model_dir, x, args, threads=threads, broker=broker, work=work))
        if "abuse" in args.only:
            results.update(_abuse(args, work, threads=threads, broker=broker))
    finally:
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(10)
    return results


def _model(name: str, model_dir: Path, x: np.ndarray, args: argparse.Namespace, *, threads: int, broker: str, work: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    agent = start_agent(model_dir, work, threads=threads, broker=broker)
    try:
        if "cells" in args.only:
            base = start_baseline(next(model_dir.glob("*.ort")), threads=threads)
            control = start_agent(model_dir, work, threads=threads, broker=broker) if args.control else None
            try:
                for kind, (body, ctype) in bodies(x).items():
                    for c in CONNECTIONS:
                        r = cell(agent, base, body, ctype, connections=c, seconds=args.duration, rounds=args.rounds, control=control)
                        out[f"{name} {kind} c={c}"] = r
                        print(f"  {name:12} {kind:4} c={c:<2}  agent {r['agent_per_s']:8.1f}/s p99 {r['agent_p99_ms']:8.2f} ms   "
                              f"baseline {r['baseline_per_s']:8.1f}/s p99 {r['baseline_p99_ms']:8.2f} ms   x{r['ratio']:.2f}"
                              + (f"   control agent {r['control_per_s']:8.1f}/s p99 {r['control_p99_ms']:8.2f} ms" if control else ""), flush=True)
                        print("      latency percentiles (ms)  " + "   ".join(
                            f"{who} " + " ".join(f"{p} {v:.2f}" for p, v in sp.items()) for who, sp in r["spectrum_ms"].items()), flush=True)
            finally:
                base.stop()
                if control is not None:
                    control.stop()
        if name == "mobilenetv2" and "v2" in args.only:
            out["v2 tritonclient binary (mobilenetv2)"] = v2_round_trip(agent, model_dir, x, threads=threads)
    finally:
        agent.stop()
    if name == "mobilenetv2" and "memory" in args.only:
        fresh = start_agent(model_dir, work, threads=threads, broker=broker)
        try:
            body, ctype = bodies(x)["json"]
            out["rss 16 JSON clients 60 s (mobilenetv2)"] = peak_rss_under_load(fresh, body, ctype, connections=16, seconds=args.rss_seconds)
        finally:
            fresh.stop()
    return out


def _abuse(args: argparse.Namespace, work: Path, *, threads: int, broker: str) -> dict[str, dict]:
    from tests.agent.agent_helpers import bomb_npz

    model_dir, x = digits_model(work)
    body, ctype = bodies(x)["npy"]
    out: dict[str, dict] = {}
    agent = start_agent(model_dir, work, threads=threads, broker=broker)
    try:
        out["slow clients"] = slow_clients(agent, body, ctype)
        out["decompression bomb"] = bomb(agent, bomb_npz("x", (1 << 28,)))
    finally:
        agent.stop()
    agent = start_agent(model_dir, work, threads=threads, broker=broker)
    try:
        total = 1_000_000 if args.long else 200_000
        print(f"  memory over {total:,} requests (digits, .npy, 16 connections):", flush=True)
        out["memory flat (digits)"] = memory_over_requests(agent, body, ctype, warmup=100_000, total=total)
    finally:
        agent.stop()
    return out


def verdicts(results: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """(what, measured, PASS?) for every target measured."""
    out = []
    for key, r in results.items():
        if "c=" in key:
            out.append((f"{key}: throughput ≥ 1.0x baseline", f"x{r['ratio']:.2f} ({r['agent_per_s']:.1f} vs {r['baseline_per_s']:.1f}/s)",
                        r["ratio"] >= 1.0 and r["agent_failed"] == 0))
            control = f" (a second agent process: {r['control_p99_ms']:.2f} ms)" if "control_p99_ms" in r else ""
            out.append((f"{key}: p99 ≤ baseline's", f"{r['agent_p99_ms']:.2f} vs {r['baseline_p99_ms']:.2f} ms{control}",
                        r["agent_p99_ms"] <= r["baseline_p99_ms"]))
        elif key.startswith("rss"):
            out.append((f"{key}: peak RSS ≤ 150 MB", f"{r['peak_rss_mb']:.0f} MB ({r['ok_per_s']:.1f}/s, {r['failed']:.0f} failed)",
                        r["peak_rss_mb"] <= 150 and r["failed"] == 0))
        elif key.startswith("memory"):
            out.append((f"{key}: growth ≤ 10 MB after {r['warmup_requests']:,.0f} requests",
                        f"{r['growth_mb']:+.1f} MB over {r['requests']:,.0f} requests", r["growth_mb"] <= 10))
        elif key.startswith("v2"):
            out.append((f"{key}: overhead ≤ 0.5 ms (client included)", f"{r['overhead_ms']:.3f} ms ({r['v2_p50_ms']:.2f} vs "
                        f"{r['raw_p50_ms']:.2f} ms; the client's own work {r['client_work_ms']:.3f} ms; against a server doing "
                        f"no work {r['floor_v2_ms']:.3f} ms)", r["overhead_ms"] <= 0.5))
            out.append(("v2 same bytes over http.client (mobilenetv2): server-only overhead ≤ 0.5 ms",
                        f"{r['server_overhead_ms']:.3f} ms ({r['plain_p50_ms']:.2f} vs {r['raw_p50_ms']:.2f} ms; against a server "
                        f"doing no work {r['floor_plain_ms']:.3f} ms)", r["server_overhead_ms"] <= 0.5))
        elif key == "slow clients":
            out.append(("200 slow clients: ≥ 99 % of normal requests 2xx", f"{r['ok_share_pct']:.2f} % of {r['requests']:,.0f}",
                        r["ok_share_pct"] >= 99))
            out.append(("200 slow clients: every /healthz within 1 s", f"{r['probe_failures']:.0f} of {r['probes']:.0f} late or failed "
                        f"(max {r['probe_max_ms']:.0f} ms)", r["probe_failures"] == 0 and r["probes"] > 0))
        elif key == "decompression bomb":
            out.append(("bomb: a 4xx within 50 ms", f"{r['status']:.0f} in {r['ms_max']:.1f} ms (median {r['ms_median']:.1f})",
                        bool(r["all_4xx"]) and r["ms_max"] <= 50))
            out.append(("bomb: RSS growth < 20 MB", f"{r['rss_growth_mb']:.1f} MB", r["rss_growth_mb"] < 20))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "edgekit-bench-serve", help="model cache")
    ap.add_argument("--models", default="digits,mobilenetv2")
    ap.add_argument("--only", default="cells,memory,v2,abuse", help="comma-separated: cells, memory, v2, abuse")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run in a cell")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rss-seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=0, help="inference threads (0: min(4, cpus))")
    ap.add_argument("--long", action="store_true", help="memory flatness over 1,000,000 requests")
    ap.add_argument("--control", action="store_true", help="cells: also measure a second agent process, the same as the first, "
                    "in the same rounds (how far two identical servers land apart)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)
    results = run(args)
    checks = verdicts(results)
    s = results["setup"]
    print(f"\nedgekit serving benchmark — {s['threads']} inference thread(s), {s['cpus']} CPU(s), telemetry {s['telemetry']}, "
          f"{s['rounds']} rounds of {s['duration_s']:g} s per cell")
    for what, measured, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {what:70} {measured}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "verdicts": [list(c) for c in checks]}, indent=2))
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
