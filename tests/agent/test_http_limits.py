"""The HTTP API under load and abuse: slow clients, the body budget, decompression bombs, deep nesting.

Deadlines are set short here (fractions of a second) so that the behaviour shows in a test; the
timings of the targets (slow-client share, bomb latency) are measured in benchmarks/serving.py.
"""

import http.client
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from device_agent.serve import jsonbody
from device_agent.serve.agent import Agent
from device_agent.serve.server import HttpLimits, serve
from tests.agent.agent_helpers import bomb_npz, wait_until


class GatedAgent(Agent):
    """An agent whose predictions wait for ``gate`` (to hold workers busy on purpose)."""

    gate: threading.Event
    entered: threading.Semaphore

    def predict(self, *args, **kwargs):
        self.entered.release()
        assert self.gate.wait(30)
        return super().predict(*args, **kwargs)


@pytest.fixture
def agent(digits_dir):
    return Agent.open(digits_dir, max_batch=64)


@pytest.fixture
def gated(digits_dir):
    a = GatedAgent.open(digits_dir)
    a.gate, a.entered = threading.Event(), threading.Semaphore(0)
    yield a
    a.gate.set()


@pytest.fixture
def x(digits):
    return np.load(digits["eval"])["x"][:1]


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def post(port, body, ctype="application/json", path="/v1/predict", timeout=10, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": ctype, **(headers or {})})
        r = c.getresponse()
        data = r.read()
        return r.status, json.loads(data) if r.getheader("Content-Type", "").startswith("application/json") else data, r
    finally:
        c.close()


def read_reply(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


# --- slow clients ---------------------------------------------------------------------------------

def test_a_head_sent_one_line_at_a_time_is_cut_off_at_its_deadline(agent):
    server = serve(agent, limits=HttpLimits(header_timeout_s=0.5, request_timeout_s=5))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            replied = b""
            for i in range(40):  # a header line every 0.1 s: each read is fast, the head never completes
                try:
                    s.sendall(f"X-Slow-{i}: 1\r\n".encode())
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    replied += s.recv(65536)
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
                if replied:
                    break
            replied += read_reply(s)
        assert replied.startswith(b"HTTP/1.1 408"), replied[:200]
        assert b"did not arrive whole within 0.5 s" in replied and b"Connection: close" in replied
    finally:
        server.close()


def test_a_body_that_trickles_is_cut_off_at_the_request_deadline(agent, x):
    server = serve(agent, limits=HttpLimits(header_timeout_s=5, request_timeout_s=0.6))
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
            try:
                for i in range(0, 30):
                    s.sendall(body[i:i + 1])
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
            replied = read_reply(s)
        assert replied.startswith(b"HTTP/1.1 408") and b'"kind":"timeout"' in replied
    finally:
        server.close()


def test_two_hundred_slow_clients_neither_starve_requests_nor_health_probes(agent, x):
    """200 sockets that send a byte of a head every 0.2 s (and reconnect when cut off), while 4 clients
    predict and a probe asks /healthz with a 1 s timeout: every prediction and every probe is answered."""
    server = serve(agent, limits=HttpLimits(header_timeout_s=1.0, request_timeout_s=2.0))
    stop = threading.Event()
    body = npy(x)

    def slow_client(i: int) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                    s.sendall(b"POST /v1/predict HTTP/1.1\r\n")
                    while not stop.wait(0.2):
                        s.sendall(b"X")
            except OSError:
                time.sleep(0.05)

    def normal_client(_: int) -> list[int]:
        codes = []
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/x-npy"})
                r = conn.getresponse()
                r.read()
                codes.append(r.status)
            except OSError:
                codes.append(0)
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        return codes

    def probe() -> list[int]:
        codes = []
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1.0)
                c.request("GET", "/healthz")
                codes.append(c.getresponse().status)
                c.close()
            except OSError:
                codes.append(0)
            time.sleep(0.1)
        return codes

    slow = [threading.Thread(target=slow_client, args=(i,), daemon=True) for i in range(200)]
    for t in slow:
        t.start()
    try:
        wait_until(lambda: len(server.listener.conns) >= 150, 20, what="the slow clients to connect")
        with ThreadPoolExecutor(5) as pool:
            probes = pool.submit(probe)
            normal = list(pool.map(normal_client, range(4)))
            stop.set()
            health = probes.result()
    finally:
        stop.set()
        server.close()
    codes = [c for cs in normal for c in cs]
    assert codes and sum(c == 200 for c in codes) / len(codes) >= 0.99, {c: codes.count(c) for c in set(codes)}
    assert health and all(c == 200 for c in health), health


def test_when_every_connection_is_busy_a_new_one_gets_503(gated, x):
    server = serve(gated, limits=HttpLimits(max_connections=2, workers=2))
    body = npy(x)
    try:
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(post, server.port, body, "application/x-npy") for _ in range(2)]
            for _ in range(2):
                assert gated.entered.acquire(timeout=10)
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                reply = read_reply(s)
            gated.gate.set()
            assert all(f.result()[0] == 200 for f in busy)
        assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply and b"too many connections" in reply
    finally:
        server.close()


# --- the body budget -----------------------------------------------------------------------------------

def test_bodies_over_the_budget_wait_then_get_503_with_retry_after(gated, x):
    big = npy(np.zeros((40, 1, 8, 8), np.float32))  # 10 KB
    limits = HttpLimits(max_body_bytes=12_000, max_inflight_bytes=12_000, budget_wait_s=0.3, workers=2)
    server = serve(gated, limits=limits)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, server.port, big, "application/x-npy")
            assert gated.entered.acquire(timeout=10)  # its 10 KB are held while it runs
            status, err, r = post(server.port, big, "application/x-npy")
            assert status == 503 and err["error"]["kind"] == "busy" and r.getheader("Retry-After") == "1"
            assert "max_inflight_bytes" in err["error"]["message"]
            gated.gate.set()
            assert first.result()[0] == 200
        assert server.listener.budget.used == 0 and server.listener.budget.waiting == 0
        assert post(server.port, big, "application/x-npy")[0] == 200  # room again
    finally:
        server.close()


def test_requests_wait_for_the_budget_instead_of_failing_when_it_frees_in_time(gated):
    big = npy(np.zeros((40, 1, 8, 8), np.float32))
    server = serve(gated, limits=HttpLimits(max_body_bytes=12_000, max_inflight_bytes=12_000, budget_wait_s=20, workers=2))
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post, server.port, big, "application/x-npy") for _ in range(3)]
            assert gated.entered.acquire(timeout=10)
            wait_until(lambda: server.listener.budget.waiting == 2, 5, what="two requests to queue")
            assert server.listener.budget.used <= 12_000
            gated.gate.set()
            assert [f.result()[0] for f in futures] == [200, 200, 200]
        assert server.listener.budget.peak <= 12_000
    finally:
        server.close()


# --- hostile bodies ---------------------------------------------------------------------------------

def _peak_rss_reset() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _status("VmRSS")


def _status(key: str) -> int:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("shape", [(1 << 28,), (1 << 22, 1, 8, 8)], ids=["flat", "model-shaped"])
def test_a_decompression_bomb_is_refused_from_its_headers_without_inflating_it(agent, shape):
    bomb = bomb_npz("x", shape)  # 1 GiB of float32 zeros in ~1 MB
    assert len(bomb) < 1_200_000
    server = serve(agent, max_body_bytes=2 << 20)
    try:
        before = _peak_rss_reset()
        status, err, _ = post(server.port, bomb, "application/x-npz")
        grown = _status("VmHWM") - before
    finally:
        server.close()
    assert status == 413 and err["error"]["kind"] == "too_large", err
    assert "268,435,456 elements (1,073,741,824 bytes) once decompressed" in err["error"]["message"]
    assert grown < 20 << 20, f"peak RSS grew by {grown / 2**20:.0f} MB"


def test_an_npz_member_that_lies_about_its_size_is_malformed(agent, x):
    good = io.BytesIO()
    np.savez(good, x=x)
    data = good.getvalue().replace(b"(1, 1, 8, 8)", b"(1, 1, 8, 4)")  # the header now declares half the data there is
    server = serve(agent)
    try:
        status, err, _ = post(server.port, data, "application/x-npz")
        assert status == 400 and "not a readable .npz archive" in err["error"]["message"]
        many = io.BytesIO()
        np.savez(many, **{f"a{i}": x for i in range(65)})
        status, err, _ = post(server.port, many.getvalue(), "application/x-npz")
        assert status == 400 and "holds 65 members; at most 64" in err["error"]["message"]
        ok = io.BytesIO()
        np.savez_compressed(ok, x=x)
        status, body, _ = post(server.port, ok.getvalue(), "application/x-npz")
        assert status == 200, body
    finally:
        server.close()


@pytest.mark.parametrize("accelerated", [True, False], ids=["orjson", "stdlib"])
def test_deeply_nested_json_is_a_400_without_a_traceback(agent, x, monkeypatch, caplog, accelerated):
    if not accelerated:
        monkeypatch.setattr(jsonbody, "_orjson", None)
    server = serve(agent)
    deep = b"[" * 100_000 + b"]" * 100_000
    try:
        for path, body in (("/v1/predict", b'{"inputs": {"x": ' + deep + b"}}"), ("/v1/feedback", deep),
                           (f"/v2/models/{agent.model.name}/infer", b'{"inputs": [' + deep + b"]}")):
            status, err, _ = post(server.port, body, path=path)
            message = err["error"] if isinstance(err["error"], str) else err["error"]["message"]
            assert status == 400 and "more than 1024 levels deep" in message, (path, err)
        just_too_deep = "[" * 70 + "0.5" + "]" * 70  # valid JSON, but deeper than a tensor can be
        status, err, _ = post(server.port, b'{"inputs": {"x": ' + just_too_deep.encode() + b"}}")
        assert status == 400 and "nested more than 64 lists deep" in err["error"]["message"]
        status, _, _ = post(server.port, json.dumps({"inputs": {"x": x.tolist()}}).encode())
        assert status == 200
    finally:
        server.close()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_a_large_body_of_empty_lists_is_refused_before_parsing(agent):
    server = serve(agent)
    try:
        body = b'{"inputs": {"x": [' + b"[]," * 200_000 + b"[]]}}"
        status, err, _ = post(server.port, body)
        assert status == 400 and "lists or objects in" in err["error"]["message"] and "Send the tensor as .npy" in err["error"]["message"]
    finally:
        server.close()


@pytest.mark.parametrize("opener", [b"[]", b"{}", b"[{}]"])
def test_the_density_check_counts_every_list_and_object_across_its_slices(opener):
    """Counted slice by slice (small temporaries), the same as counting the whole body: "[" and "{" only."""
    from device_agent.contract.errors import InvalidInput
    from device_agent.serve.jsonbody import BYTES_PER_CONTAINER, DENSITY_SLICE, _check_density

    filler = b"0.123456789, " * 6  # 78 bytes of numbers (and no byte that folds to "{")
    ok = (filler + opener + b",") * (3 * DENSITY_SLICE // (len(filler) + len(opener) + 1))
    _check_density(bytearray(ok))  # one container per >= 32 bytes: allowed
    dense = (opener + b",") * (3 * DENSITY_SLICE // (len(opener) + 1))
    with pytest.raises(InvalidInput) as e:
        _check_density(memoryview(dense))
    count = dense.count(b"[") + dense.count(b"{")
    assert count * BYTES_PER_CONTAINER > len(dense) and f"holds {count:,} lists or objects" in str(e.value)


@pytest.mark.parametrize("accelerated", [True, False], ids=["orjson", "stdlib"])
def test_json_bodies_give_the_same_answers_with_and_without_orjson(agent, x, monkeypatch, accelerated):
    if not accelerated:
        monkeypatch.setattr(jsonbody, "_orjson", None)
    server = serve(agent)
    try:
        status, doc, _ = post(server.port, json.dumps({"inputs": {"x": x.tolist()}, "request_id": "same"}).encode())
        assert status == 200 and doc["request_id"] == "same"
        np.testing.assert_allclose(doc["outputs"]["logits"], agent.predict({"x": x}).outputs["logits"], rtol=1e-6)
        status, err, _ = post(server.port, json.dumps({"inputs": {"x": [[[[float("nan")] * 8] * 8]]}}).encode())
        assert status == 400 and err["error"]["kind"] == "nonfinite"  # NaN is not JSON, but Python writes it: read, then refused
        status, err, _ = post(server.port, b'{"inputs": ')
        assert status == 400 and "not valid JSON" in err["error"]["message"]
    finally:
        server.close()


# --- HTTP details ---------------------------------------------------------------------------------

def test_expect_100_continue_and_pipelined_requests(agent, x):
    server = serve(agent)
    body = npy(x)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nContent-Type: application/x-npy\r\nExpect: 100-continue\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(body)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /readyz HTTP/1.1\r\n\r\nGET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n")
            replies = read_reply(s)
        assert replies.startswith(b"HTTP/1.1 200") and replies.count(b"HTTP/1.1 200") == 2
        assert replies.index(b'"ready":true') < replies.rindex(b"HTTP/1.1 200")  # answered in order
    finally:
        server.close()


@pytest.mark.parametrize("head, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"POST /v1/predict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"POST /v1/predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\n folded\r\n\r\n", 400),
], ids=["request-line", "version", "two-lengths", "chunked", "many-headers", "long-head", "folded"])
def test_malformed_heads_are_refused_and_the_connection_closed(agent, head, status):
    server = serve(agent)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(head)
            reply = read_reply(s)
        assert reply.startswith(b"HTTP/1.1 %d" % status), reply[:200]
        assert b"Connection: close" in reply
        assert post(server.port, b"{}")[0] == 400  # still serving
    finally:
        server.close()


class ThreadNoting(Agent):
    """An agent that notes which thread answers each prediction (and can be made slow)."""

    delay_s = 0.0

    def predict(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().predict(*args, **kwargs)


def _predict_from(port: int, body: bytes, n: int, statuses: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/x-npy"})
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    conn.close()


@pytest.mark.parametrize("clients", [1, 4])
@pytest.mark.parametrize("delay_s, limit_s, on_loop", [(0.0, 0.02, True), (0.005, 0.002, False)], ids=["quick", "slow"])
def test_requests_of_a_quick_model_are_answered_on_the_event_loop(digits_dir, x, monkeypatch, delay_s, limit_s, on_loop, clients):
    """Requests of a model that answers within INLINE_COST_S are answered by the event loop itself (no thread
    hops), from one client or several; a model that takes longer always goes to the workers, so the loop never
    blocks for long. (The quick case allows 20 ms: a busy test machine must not make digits look slow.)"""
    from device_agent.serve import connection

    monkeypatch.setattr(connection, "INLINE_COST_S", limit_s)
    agent = ThreadNoting.open(digits_dir)
    agent.threads, agent.delay_s = [], delay_s
    server = serve(agent)
    statuses: list[int] = []
    try:
        threads = [threading.Thread(target=_predict_from, args=(server.port, npy(x), 40, statuses)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.close()
    assert statuses == [200] * 40 * clients
    assert agent.threads[0].startswith("edgekit-http_")  # the first request goes to the workers: its cost is not known yet
    on = agent.threads.count("edgekit-http")
    assert (on >= len(agent.threads) // 2) if on_loop else on == 0, agent.threads


def test_a_body_over_the_inline_size_goes_to_the_workers(digits_dir, x, monkeypatch):
    """However quick the model, a body larger than INLINE_BYTES (a JSON image of several MB) is parsed on a worker."""
    from device_agent.serve import connection

    monkeypatch.setattr(connection, "INLINE_COST_S", 1.0)
    monkeypatch.setattr(connection, "INLINE_BYTES", len(npy(x)) - 1)
    agent = ThreadNoting.open(digits_dir)
    agent.threads = []
    server = serve(agent)
    statuses: list[int] = []
    try:
        _predict_from(server.port, npy(x), 20, statuses)
    finally:
        server.close()
    assert statuses == [200] * 20 and all(t.startswith("edgekit-http_") for t in agent.threads), agent.threads
