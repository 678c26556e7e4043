"""One HTTP connection on the server's event loop: read a whole request, hand it to a worker, write the answer.

States::

    IDLE ──first byte──▶ HEAD ──head parsed──▶ (WAIT: budget) ──▶ BODY ──body read──▶ BUSY ──answer sent──▶ IDLE
                          │ header_timeout_s         │ budget_wait_s → 503      │ request_timeout_s → 408

A request must arrive whole within its deadline (headers within ``header_timeout_s`` of its first
byte, headers and body within ``request_timeout_s``), however the client paces its bytes: a client
that sends one header line every few seconds is cut off, not served forever. Reading never needs a
thread; only complete requests reach the workers. The body is read straight into one buffer of
exactly ``Content-Length`` bytes (``BufferedProtocol``: no chunks, no joins), reserved against the
server's :class:`~device_agent.serve.budget.ByteBudget` before the first byte is read.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
from collections.abc import Callable
from enum import Enum
from typing import Any

from device_agent.serve.deadline import Deadline
from device_agent.serve.exchange import REQUEST_ID, Request, Response, RouteMatch, new_request_id
from device_agent.serve.listener import Listener
from device_agent.serve.wire import HeadError, RequestHead, continue_line, parse_head, response_head

__all__ = ["Connection", "State"]

log = logging.getLogger("edgekit.agent.http")

#: head buffer: starts small (most heads are < 1 KB), grows up to the limit
HEAD_CHUNK = 4096
#: a request body up to this size (a 224x224 RGB image as JSON is ~3 MB) may be answered on the event loop itself
#: when no other request runs...
INLINE_BYTES = 4 * 1024 * 1024
#: ...if requests have been taking less than this to answer (a running average)
INLINE_COST_S = 0.05
MAX_HEAD_BYTES = 16 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})



def aligned_body(length: int, json_length: str) -> bytearray | memoryview:
    """A buffer for a V2 binary body whose first tensor, right after ``json_length`` bytes of JSON, starts 64-byte aligned.

    The tensors are used where they lie (``np.frombuffer``); one at an odd address makes numpy's reductions (the
    finiteness check) take a slow unaligned path, ~70 µs more on a 600 kB image tensor. A bad header gets a plain
    buffer: the protocol's parser answers it.
    """
    n = int(json_length) if json_length.isdigit() and len(json_length) < 12 else -1
    if not 0 <= n < length:
        return bytearray(length)
    raw = bytearray(length + 64)
    window = (ctypes.c_char * len(raw)).from_buffer(raw)
    address = ctypes.addressof(window)
    del window  # the export ends here; the buffer is never resized
    pad = -(address + n) % 64
    return memoryview(raw)[pad:pad + length]

class State(Enum):
    IDLE = "idle"
    HEAD = "head"
    WAIT = "wait"  # for budget
    BODY = "body"
    BUSY = "busy"  # a worker has the request, or the answer is being written
    CLOSED = "closed"


class Connection(asyncio.BufferedProtocol):
    """The protocol object asyncio creates per accepted socket."""

    def __init__(self, listener: Listener) -> None:
        self.lis = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.state = State.IDLE
        self.since = self.loop.time()  # when the current state began: eviction takes the oldest idle or slow one
        self._buf = bytearray(HEAD_CHUNK)
        self._n = 0  # bytes in _buf (a head, or the start of a pipelined request)
        self._scanned = 0
        self._body: bytearray | memoryview | None = None
        self._got = 0
        self._head: RequestHead | None = None
        self._match: RouteMatch | None = None
        self._authorized = False
        self._reserved = 0
        self._waiter: Any = None
        self._timer = Deadline(self.loop)
        self._paused_writing = False
        self._eof = False

    # --- asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (TCP, or TLS over TCP)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # an answer is one write: never held back by Nagle
        if not self.lis.admit(self):
            self._reject_busy()
            return
        self._arm(self.lis.limits.idle_timeout_s, self._idle_expired)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state is State.BODY and self._body is not None:
            return memoryview(self._body)[self._got:]
        if self._n == len(self._buf):
            self._buf.extend(bytes(min(len(self._buf), MAX_HEAD_BYTES + 4 - len(self._buf)) or 1))
        return memoryview(self._buf)[self._n:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.state is State.BODY:
            self._got += nbytes
            if self._body is not None and self._got == len(self._body):
                self._dispatch()
            return
        if self.state is State.IDLE:
            self._start_request()
        self._n += nbytes
        self._scan()

    def eof_received(self) -> bool:
        if self.state is State.BUSY:
            self._eof = True
            return True  # half-close after a request: still send the answer, then close
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self.state = State.CLOSED
        self._timer.close()
        self.lis.forget(self)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self.state is State.BUSY and self._reserved and self._head is None:
            self._after_answer()

    # --- reading a request -----------------------------------------------------------------------

    def _start_request(self) -> None:
        self.state = State.HEAD
        self.since = self.loop.time()
        self._arm(self.lis.limits.header_timeout_s, self._request_expired)

    def _scan(self) -> None:
        start = max(0, self._scanned - 3)
        end = self._buf.find(b"\r\n\r\n", start, self._n)
        sep = 4
        if end < 0:
            end, sep = self._buf.find(b"\n\n", start, self._n), 2
        if end < 0:
            self._scanned = self._n
            if self._n > MAX_HEAD_BYTES:
                self._fail(RouteMatch("other"), 431, "header_too_large", f"the request head is over {MAX_HEAD_BYTES:,} bytes")
            return
        try:
            head = parse_head(bytes(self._buf[:end]))
        except HeadError as e:
            return self._fail(RouteMatch("other"), e.status, e.kind, str(e))
        rest = self._buf[end + sep:self._n]
        self._buf = bytearray(HEAD_CHUNK)
        self._buf[:len(rest)] = rest
        self._n, self._scanned = len(rest), 0
        self._on_head(head)

    def _on_head(self, head: RequestHead) -> None:
        lis = self.lis
        self._head = head
        self._match = match = lis.app.match(head)
        self._authorized = lis.app.authorized(head)
        length = head.content_length
        if length is None and head.method in _BODY_METHODS:
            return self._fail(match, 411, "length_required", f"{head.method} {head.path} needs a Content-Length header")
        length = length or 0
        if not self._authorized and not match.open:  # before any body byte is read or reserved
            return self._fail(match, 401, "unauthorized", "this API needs a token: send 'Authorization: Bearer <token>' "
                              "(a line of the agent's [api] token_file)", close=length > 0)
        if length > lis.limits.max_body_bytes:
            return self._fail(match, 413, "too_large",
                              f"the request body is {length:,} bytes; this agent accepts at most {lis.limits.max_body_bytes:,} "
                              "([api] max_body_bytes). Split the batch, or send raw .npy/.npz instead of JSON.")
        self._arm_deadline()
        if length == 0 or lis.budget.take(length):
            self._reserved = length
            return self._read_body(length)
        self.state = State.WAIT
        self.transport.pause_reading()  # type: ignore[union-attr]  # the body waits in the socket, not in memory
        self._waiter = lis.budget.wait(length, lambda: self._granted(length))
        self._arm(lis.limits.budget_wait_s, self._budget_expired)

    def _granted(self, length: int) -> None:
        self._waiter = None
        self._reserved = length
        if self.state is not State.WAIT:  # closed meanwhile
            self._release()
            return
        self._arm_deadline()
        self.transport.resume_reading()  # type: ignore[union-attr]
        self._read_body(length)

    def _read_body(self, length: int) -> None:
        head = self._head
        assert head is not None
        if head.expect_continue and length > self._n:
            self.transport.write(continue_line())  # type: ignore[union-attr]
        match = self._match
        v2_json = head.headers.get("inference-header-content-length") if match is not None and match.v2 and match.heavy else None
        body = aligned_body(length, v2_json) if v2_json else bytearray(length)
        have = min(length, self._n)
        body[:have] = self._buf[:have]
        rest = self._buf[have:self._n]
        self._buf = bytearray(max(HEAD_CHUNK, len(rest)))
        self._buf[:len(rest)] = rest
        self._n = len(rest)
        self._body, self._got = body, have
        if have == length:
            self._dispatch()
        else:
            self.state = State.BODY

    def _dispatch(self) -> None:
        head, match, body = self._head, self._match, self._body
        assert head is not None and match is not None and body is not None
        self.state = State.BUSY
        self._body = None
        self._cancel_timer()
        given = head.headers.get("x-request-id", "")
        request = Request(head, body, match, given if REQUEST_ID.fullmatch(given) else None, self._authorized)
        lis = self.lis
        if match.heavy and len(body) <= INLINE_BYTES and lis.running == 0 and lis.cost_s < INLINE_COST_S:
            # A request of a model that answers within INLINE_COST_S, while no worker runs one: answered right
            # here, without two thread hops. Each hop is a wake-up that waits for a core, and onnxruntime's
            # intra-op threads (all the cores) keep spinning for a while after a run: on 2 cores the hops cost
            # MobileNetV2 over 10 % of its throughput and doubled its p99, for one client as for sixteen
            # (benchmarks/serving.py). Overlapping one request's parsing with another's inference gains
            # nothing when inference already uses every core. The loop blocks for one request at a time, so
            # other connections wait at most a few requests' time (/healthz included); a larger body, a slower
            # model, or a request arriving while a worker runs one goes to the workers.
            lis.running += 1
            try:
                response = lis.timed(request)
            finally:
                lis.running -= 1
            self._send(response)
            return
        self.transport.pause_reading()  # type: ignore[union-attr]  # one request at a time; a pipelined one waits its turn
        lis.running += 1
        future = self.loop.run_in_executor(lis.pool if match.heavy else lis.light_pool, lis.timed if match.heavy else lis.app.handle, request)
        future.add_done_callback(self._handled)

    def _handled(self, future: asyncio.Future[Response]) -> None:
        self.lis.running -= 1
        if self.state is State.CLOSED:
            return
        try:
            response = future.result()
        except Exception:  # the routes never raise; this is a last line of defence
            log.exception("HTTP handler failed")
            assert self._match is not None
            response = self.lis.app.error(self._match, 500, "internal", "internal error in the agent; see its log")
            response.close = True
        self._send(response)

    # --- answers ---------------------------------------------------------------------------------

    def _send(self, r: Response) -> None:
        head = self._head
        close = r.close or head is None or not head.keep_alive or self.lis.closing or self._eof
        if r.status == 503:
            r.headers.setdefault("Retry-After", "1")
        rid = r.request_id or (self._request_id_of(head)) or new_request_id()
        data = response_head(r.status, r.content_type, len(r.body), request_id=rid, close=close, extra=r.headers) + r.body
        transport = self.transport
        assert transport is not None
        self.lis.app.count(head.method if head else "-", self._match.route if self._match else "other", r.status)
        self._release()  # the request's bytes are answered: back to the budget before the client can see the answer
        transport.write(data)
        self._head = None
        if close:
            self._release()
            transport.close()
            self.state = State.CLOSED
            return
        if transport.get_write_buffer_size() and not self._reserved:
            self.lis.budget.force(len(data))  # an unread answer holds memory until the client reads it
            self._reserved = len(data)
        if self._paused_writing:
            transport.pause_reading()  # the next request waits until this answer is read
            self._arm(self.lis.limits.request_timeout_s, self._write_expired)
            return
        self._after_answer()

    def _after_answer(self) -> None:
        self._release()
        self.state = State.IDLE
        self.since = self.loop.time()
        self._arm(self.lis.limits.idle_timeout_s, self._idle_expired)
        self.transport.resume_reading()  # type: ignore[union-attr]
        if self._n:  # a pipelined request already arrived
            self._start_request()
            self._scan()

    @staticmethod
    def _request_id_of(head: RequestHead | None) -> str | None:
        given = head.headers.get("x-request-id", "") if head is not None else ""
        return given if REQUEST_ID.fullmatch(given) else None

    def _fail(self, match: RouteMatch, status: int, kind: str, message: str, *, close: bool = True) -> None:
        """Answer an error found before the request reached a route; the body (if any) was not read: close."""
        self._cancel_timer()
        self.state = State.BUSY
        r = self.lis.app.error(match, status, kind, message, request_id=self._request_id_of(self._head))
        r.close = close
        self._send(r)

    def _reject_busy(self) -> None:
        r = self.lis.app.error(RouteMatch("other"), 503, "busy", "too many connections; retry shortly")
        r.close = True
        self.state = State.BUSY
        self._send(r)

    # --- deadlines -------------------------------------------------------------------------------

    def _arm(self, seconds: float, then: Callable[[], None]) -> None:
        self._timer.arm(seconds, then)

    def _arm_deadline(self) -> None:
        remaining = self.since + self.lis.limits.request_timeout_s - self.loop.time()
        self._arm(max(0.0, remaining), self._request_expired)

    def _cancel_timer(self) -> None:
        self._timer.disarm()

    def _idle_expired(self) -> None:
        self.close()

    def _request_expired(self) -> None:
        if self.state in (State.HEAD, State.BODY, State.WAIT):
            limit = self.lis.limits.header_timeout_s if self.state is State.HEAD else self.lis.limits.request_timeout_s
            self._leave_queue()
            self._fail(self._match or RouteMatch("other"), 408, "timeout",
                       f"the request did not arrive whole within {limit:g} s; send it at once")

    def _budget_expired(self) -> None:
        if self.state is State.WAIT:
            self._leave_queue()
            assert self._match is not None
            self._fail(self._match, 503, "busy", "the agent holds as many request bytes as it may ([api] max_inflight_bytes); retry shortly")

    def _write_expired(self) -> None:
        log.debug("HTTP: a client did not read its answer within %g s; closing", self.lis.limits.request_timeout_s)
        self.abort()

    def _leave_queue(self) -> None:
        if self._waiter is not None:
            self.lis.budget.cancel(self._waiter)
            self._waiter = None

    # --- closing ---------------------------------------------------------------------------------

    def _release(self) -> None:
        self._body = None  # a body cut off by a deadline or a closed socket goes now, not with the connection object
        if self._reserved:
            self.lis.budget.give(self._reserved)
            self._reserved = 0
        self._leave_queue()

    def close(self) -> None:
        self._release()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self._release()
        if self.transport is not None:
            self.transport.abort()

    @property
    def evictable(self) -> bool:
        """Idle between requests, or still sending one: closing it loses no work."""
        return self.state in (State.IDLE, State.HEAD, State.BODY)
