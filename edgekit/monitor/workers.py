"""The collector's four threads, each on its own queue, so none waits for another's work.

- **ingest**: takes every message waiting (up to :data:`BATCH_MAX`; it never waits to fill a
  batch), files them in one transaction per kind (:meth:`Monitor.ingest_batch`), acknowledges them
  to the broker only then, and hands the windows that were new to the judge. A store that fails is
  retried with backoff, the batch still unacknowledged: the broker holds the rest meanwhile.
- **judge**: judges new windows in batches (:meth:`Monitor.judge`), and groups every
  ``group_interval_s``; with a backlog beyond :data:`COALESCE_AT` windows (or messages waiting for
  ingestion beyond a batch, or windows filed over :data:`BEHIND_S` after they ended) it judges the
  newest window of each device only, and not at all a device judged in the last
  :data:`~edgekit.monitor.monitor.REJUDGE_S` seconds (NaN bursts always), so verdicts catch up
  instead of falling further behind, and ingestion keeps the CPU it needs.
- **answer**: drift and status queries, from the store; judging waits while one is answered
  (the threads share one interpreter lock, and an operator is waiting for the answer).
- **upkeep**: retention every :data:`UPKEEP_S`, and the writer lease renewed while telemetry is quiet.

:class:`Workers` counts what they did in ``stats`` (ingest lag: from the end of the window to its
commit, p50/p99 over the last 10,000 windows).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from device_agent.contract.protocol import TelemetryMessage
from edgekit.fleet.mqtt import Received
from edgekit.monitor.monitor import Monitor

__all__ = ["BATCH_MAX", "BEHIND_S", "COALESCE_AT", "QUEUE_SIZE", "UPKEEP_S", "Workers"]

log = logging.getLogger("edgekit.monitor.collector")

#: messages waiting for the ingest thread; past this paho's thread blocks (and the broker holds the rest)
QUEUE_SIZE = 20_000
#: messages filed in one transaction at most
BATCH_MAX = 1000
#: windows waiting to be judged beyond which only the newest of each device is judged
COALESCE_AT = 500
#: windows older than this (end to now) when judged: ingestion is behind, judging coalesces
BEHIND_S = 1.0
#: seconds between retention passes
UPKEEP_S = 600.0
#: seconds between lease renewals when no telemetry renews it
RENEW_S = 20.0


class Workers:
    """The threads of one collector.

    Args:
        monitor: files and judges.
        ack: acknowledges one message to the broker (after it was stored).
        publish: publishes alerts.
        answer: answers one query message.
        route: "query", "rollout" or "message" for a topic.
    """

    def __init__(self, monitor: Monitor, *, ack: Callable[[Received], None], publish: Callable[[list[dict[str, Any]]], None],
                 answer: Callable[[Received], None], route: Callable[[str], str], name: str = "collector") -> None:
        self.monitor = monitor
        self.ack, self.publish, self.answer, self.route = ack, publish, answer, route
        self.name = name
        self.inbox: queue.Queue[Received] = queue.Queue(QUEUE_SIZE)
        self.queries: queue.Queue[Received] = queue.Queue()
        self.judging: queue.Queue[list[TelemetryMessage]] = queue.Queue()
        self.stop = threading.Event()
        self.errors = 0
        self.stats: dict[str, float] = {"batches": 0, "largest_batch": 0, "judged_batches": 0, "lag_p50_s": 0.0, "lag_p99_s": 0.0,
                                        "filing_s": 0.0, "judging_s": 0.0, "groups_s": 0.0}  # wall seconds spent in each
        self._lags: deque[float] = deque(maxlen=10_000)
        self._threads: list[threading.Thread] = []
        #: set while a query is answered: judging waits (the threads share one interpreter lock)
        self.answering = threading.Event()
        monitor.evaluator.pause = self._yield

    def start(self) -> None:
        for role, loop in (("ingest", self._ingest), ("judge", self._judge), ("answer", self._answer), ("upkeep", self._upkeep)):
            t = threading.Thread(target=self._guard, args=(loop,), name=f"edgekit-{self.name}-{role}", daemon=True)
            t.start()
            self._threads.append(t)

    def offer(self, msg: Received) -> None:
        """From paho's thread: queue a message (queries apart); blocks while the inbox is full."""
        if self.route(msg.topic) == "query":
            self.queries.put(msg)
            return
        while not self.stop.is_set():
            try:
                self.inbox.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    def drain(self, timeout: float) -> None:
        """Wait until what was queued is filed and judged (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (self.inbox.unfinished_tasks or self.judging.unfinished_tasks) and time.monotonic() < deadline:
            time.sleep(0.01)

    def join(self, timeout: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def _guard(self, loop: Callable[[], None]) -> None:
        while not self.stop.is_set():
            try:
                loop()
            except Exception:  # a bug in one message or a store hiccup must not stop the collector
                self.errors += 1
                log.exception("%s: failed; going on", threading.current_thread().name)
                self.stop.wait(0.5)

    # --- ingest ---------------------------------------------------------------------------------------

    def _ingest(self) -> None:
        while not self.stop.is_set():
            try:
                batch = [self.inbox.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            t = time.monotonic()
            new = self._file(batch)
            self.stats["filing_s"] += time.monotonic() - t
            for msg in batch:
                if new is not None:  # None: stopped before the batch was stored; unacknowledged, the broker sends it again
                    self.ack(msg)
                self.inbox.task_done()
            if new:
                self.judging.put(new)

    def _file(self, batch: list[Received]) -> list[TelemetryMessage] | None:
        """File a batch, retrying (with backoff, unacknowledged) while the store fails; the new windows (None: stopped first)."""
        delay = 0.2
        while True:
            try:
                for msg in batch:
                    if self.route(msg.topic) == "rollout":
                        self.monitor.ingest.file_rollout(msg.topic, msg.payload)
                filed = self.monitor.ingest_batch([(m.topic, m.payload) for m in batch if self.route(m.topic) == "message"])
                break
            except Exception:
                self.errors += 1
                log.exception("%s: could not file %d message(s); retrying in %.1f s", self.name, len(batch), delay)
                if self.stop.wait(delay):
                    return None
                delay = min(10.0, delay * 2)
        now = time.time()
        self._lags.extend(now - float(m.window.get("end", m.ts)) for m in filed.telemetry)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        return filed.telemetry

    def lag(self) -> tuple[float, float]:
        """(p50, p99) seconds from the end of a window to its commit, over the last 10,000 windows."""
        lags = sorted(self._lags)
        if not lags:
            return 0.0, 0.0
        return lags[len(lags) // 2], lags[min(len(lags) - 1, int(len(lags) * 0.99))]

    # --- judging, answering, upkeep -------------------------------------------------------------------------

    def _judge(self) -> None:
        while not self.stop.is_set():
            windows: list[TelemetryMessage] = []
            try:
                windows += self.judging.get(timeout=0.2)
                self.judging.task_done()
                while len(windows) < 10 * COALESCE_AT:
                    windows += self.judging.get_nowait()
                    self.judging.task_done()
            except queue.Empty:
                pass
            if windows:
                self._yield()
                # behind (or ingestion is): judge the newest window of each device, ingestion first
                mid = windows[len(windows) // 2]
                behind = (len(windows) > COALESCE_AT or self.inbox.qsize() > BATCH_MAX
                          or time.time() - float(mid.window.get("end", mid.ts)) > BEHIND_S)
                t = time.monotonic()
                self.publish(self.monitor.judge(windows, coalesce=behind))
                self.stats["judging_s"] += time.monotonic() - t
                self.stats["judged_batches"] += 1
            t = time.monotonic()
            self.publish(self.monitor.evaluate_groups())
            self.stats["groups_s"] += time.monotonic() - t

    def _answer(self) -> None:
        while not self.stop.is_set():
            try:
                msg = self.queries.get(timeout=0.2)
            except queue.Empty:
                continue
            self.answering.set()
            try:
                self.answer(msg)
            finally:
                self.answering.clear()
            self.ack(msg)

    def _yield(self) -> None:
        """Judging pauses while a query is answered (at most a few seconds: verdicts must not stall)."""
        deadline = time.monotonic() + 5.0
        while self.answering.is_set() and time.monotonic() < deadline and not self.stop.is_set():
            time.sleep(0.005)

    def _upkeep(self) -> None:
        last_prune = last_renew = time.monotonic()
        while not self.stop.wait(1.0):
            now = time.monotonic()
            if now - last_renew >= RENEW_S:
                last_renew = now
                self.monitor.store.renew()
            if now - last_prune >= UPKEEP_S:
                last_prune = now
                removed = self.monitor.prune()
                log.info("%s: retention removed %d raw window(s) in %.2f s", self.name, removed, time.monotonic() - now)
            self.stats["lag_p50_s"], self.stats["lag_p99_s"] = self.lag()
