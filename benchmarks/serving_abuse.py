"""The agent's bounds, measured on a real process: memory under JSON load and over a million requests,
slow clients next to normal traffic, a decompression bomb (benchmarks/serving.py runs these)."""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

from serving_load import Server, wrk

MB = 2**20


def peak_rss_under_load(agent: Server, body: bytes, ctype: str, *, connections: int, seconds: float) -> dict[str, float]:
    """The agent's peak RSS (MB) while ``connections`` clients post ``body`` for ``seconds``."""
    agent.reset_peak()
    before = agent.rss_mb()
    load = wrk(f"http://127.0.0.1:{agent.port}/v1/predict", body, ctype, connections=connections, seconds=seconds, timeout_s=60)
    return {"rss_before_mb": before, "peak_rss_mb": agent.status("VmHWM") / MB, "rss_after_mb": agent.rss_mb(),
            "ok_per_s": load.ok_per_s, "failed": float(load.failed)}


def memory_over_requests(agent: Server, body: bytes, ctype: str, *, warmup: int, total: int, segment_s: float = 15) -> dict[str, float]:
    """RSS after ``warmup`` requests and after ``total`` (16 connections): growth in between is what leaks.

    The warm-up fills what is bounded by design (the feedback log, telemetry blocks, allocator pools)."""
    done, at_warmup, samples = 0, None, []
    t0 = time.monotonic()
    while done < total:
        load = wrk(f"http://127.0.0.1:{agent.port}/v1/predict", body, ctype, connections=16, seconds=segment_s)
        done += load.requests
        samples.append((done, agent.rss_mb()))
        if at_warmup is None and done >= warmup:
            at_warmup = samples[-1]
        print(f"    {done:>9,} requests, RSS {samples[-1][1]:.1f} MB", flush=True)
    assert at_warmup is not None
    return {"warmup_requests": at_warmup[0], "rss_at_warmup_mb": at_warmup[1], "requests": done, "rss_end_mb": samples[-1][1],
            "growth_mb": samples[-1][1] - at_warmup[1], "max_after_warmup_mb": max(r for n, r in samples if n >= at_warmup[0]),
            "minutes": (time.monotonic() - t0) / 60}


@dataclass
class _Probe:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0


def _slow_client(port: int, stop: threading.Event, line_every_s: float, connects: list[int]) -> None:
    """A client that sends a request head one header line every ``line_every_s`` seconds, and reconnects when cut off."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                connects.append(1)
                s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: agent\r\n")
                i = 0
                while not stop.wait(line_every_s):
                    s.sendall(b"X-Slow-%d: 1\r\n" % i)
                    i += 1
        except OSError:
            stop.wait(0.2)


def _probe(port: int, stop: threading.Event, probe: _Probe) -> None:
    while not stop.wait(0.25):
        t0 = time.perf_counter()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            c.request("GET", "/healthz")
            ok = c.getresponse().status == 200
            c.close()
        except OSError:
            ok = False
        dt = time.perf_counter() - t0
        probe.latencies.append(dt)
        probe.failures += int(not ok or dt > 1.0)


def slow_clients(agent: Server, body: bytes, ctype: str, *, clients: int = 200, seconds: float = 30,
                 line_every_s: float = 10) -> dict[str, float]:
    """``clients`` slow clients (issue 14: a header line every 10 s), 16 connections of normal traffic and a
    /healthz probe (1 s timeout, 4 a second), for ``seconds``."""
    stop = threading.Event()
    connects: list[int] = []
    probe = _Probe()
    threads = [threading.Thread(target=_slow_client, args=(agent.port, stop, line_every_s, connects), daemon=True) for _ in range(clients)]
    threads.append(threading.Thread(target=_probe, args=(agent.port, stop, probe), daemon=True))
    for t in threads:
        t.start()
    time.sleep(2)  # let the slow clients connect first
    try:
        load = wrk(f"http://127.0.0.1:{agent.port}/v1/predict", body, ctype, connections=16, seconds=seconds, timeout_s=5)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    share = (load.requests - load.failed) / max(1, load.requests)
    return {"slow_clients": clients, "slow_connects": len(connects), "requests": load.requests, "ok_share_pct": share * 100,
            "ok_per_s": load.ok_per_s, "probes": len(probe.latencies), "probe_failures": probe.failures,
            "probe_max_ms": max(probe.latencies) * 1000 if probe.latencies else float("nan"),
            "probe_p50_ms": statistics.median(probe.latencies) * 1000 if probe.latencies else float("nan")}


def bomb(agent: Server, archive: bytes, *, tries: int = 5) -> dict[str, float]:
    """POST ``archive`` (a decompression bomb) ``tries`` times: the answer, its time, the agent's peak RSS growth."""
    times, growth, statuses = [], [], set()
    for _ in range(tries):
        agent.reset_peak()
        before = agent.status("VmRSS")
        c = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
        t0 = time.perf_counter()
        c.request("POST", "/v1/predict", body=archive, headers={"Content-Type": "application/x-npz"})
        r = c.getresponse()
        r.read()
        times.append(time.perf_counter() - t0)
        c.close()
        statuses.add(r.status)
        growth.append((agent.status("VmHWM") - before) / MB)
    return {"archive_kb": len(archive) / 1024, "status": float(max(statuses)), "all_4xx": float(all(400 <= s < 500 for s in statuses)),
            "ms_median": statistics.median(times) * 1000, "ms_max": max(times) * 1000, "rss_growth_mb": max(growth)}
