"""The updater: runs the OTA state machine of :mod:`device_agent.ota` for one device.

One action per state (``_downloading``, ``_verifying``, ``_staged``, ``_shadowing``, ``_on_probation``,
``_committed``, ``_rejected``, ``_rolled_back``); :meth:`Updater._move` is the only way the state changes:
it looks the move up in :data:`device_agent.ota.TRANSITIONS`, persists the target state (tmp + fsync +
rename + directory fsync) and only then does the caller act. Every action is idempotent, so after a
crash :meth:`Updater.boot` re-enters the persisted state and runs its action again.

Threads: commands and chunks arrive on the MQTT thread (:meth:`handle`, :meth:`on_chunk`: quick,
validated, queued); requests report to :meth:`observe` (cheap, never raises); everything slow
(downloads, verification, loading, probation waits) runs on the updater's own thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.delivery import ChunkReceiver, http_download
from device_agent.errors import AgentError, OtaError
from device_agent.faults import crashpoint
from device_agent.job import DeployJob, Limits, ProbationPolicy, parse_job
from device_agent.manifest import MANIFEST_NAME, SIGNATURE_NAME
from device_agent.ota import ACTIVE, FINAL, TRANSITIONS, Event, JobReport, OtaSettings, OtaState, Transport, job_state
from device_agent.probation import LatencyWindow, Probation, Shadow
from device_agent.protocol import Command, CommandKind, JobState, valid_id
from device_agent.store import ModelStore, atomic_write, slot_name
from device_agent.verify import TrustedKeys, check_compatible, check_file, check_version, verify_command, verify_manifest

__all__ = ["Updater", "updater_from_config"]

log = logging.getLogger("edgekit.agent.ota")

S, E = OtaState, Event


class _Stop(Exception):
    pass


class Updater:
    """Runs update jobs for one device.

    Args:
        store: the model slots.
        state_file: where the state machine persists itself (``<state_dir>/ota.json``).
        trusted: keys whose signatures are accepted (and whether unsigned updates are).
        get_model / swap: the serving seam (``ServingModel.get``/``.swap``, or the agent's).
        loader: loads a model directory (``device_agent.model.load_model`` with the agent's options).
        report: receives every :class:`JobReport` (the agent queues it in its outbox).
        transport: subscribes chunk topics; ``chunk_filter(job)`` names them.
    """

    def __init__(self, store: ModelStore, state_file: str | Path, *, trusted: TrustedKeys, loader: Callable[[Path], Any],
                 get_model: Callable[[], Any] = lambda: None, swap: Callable[[Any], Any] = lambda m: None,
                 report: Callable[[JobReport], None] = lambda r: None,
                 settings: OtaSettings | None = None, transport: Transport | None = None,
                 chunk_filter: Callable[[str], str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.state_file = Path(state_file)
        self.trusted = trusted
        self.get_model = get_model
        self._swap = swap
        self.loader = loader
        self.report = report
        self.settings = settings or OtaSettings()
        self.transport = transport
        self.chunk_filter = chunk_filter
        self.clock = clock
        self._rec: dict[str, Any] = self._load()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._job: DeployJob | None = None
        self._candidate: Any = None
        self._incumbent: Any = None
        self._receiver: ChunkReceiver | None = None
        self._probation: Probation | None = None
        self._shadow: Shadow | None = None
        self._cancel: str | None = None  # reason to abort the active job ("canceled" / "rollback")
        self.live = LatencyWindow(512)  # the served model's recent latencies: the probation baseline
        self.last_verdict: Any = None
        self.last_rollback_s: float | None = None  # failed probation check → previous model served
        self._actions: dict[OtaState, Callable[[], None]] = {
            S.IDLE: self._idle, S.DOWNLOADING: self._downloading, S.VERIFYING: self._verifying, S.STAGED: self._staged,
            S.SHADOW: self._shadowing, S.PROBATION: self._on_probation, S.COMMITTED: self._committed, S.REJECTED: self._rejected,
            S.ROLLED_BACK: self._rolled_back,
        }

    def attach(self, *, get_model: Callable[[], Any], swap: Callable[[Any], Any], report: Callable[[JobReport], None],
               transport: Transport | None = None, chunk_filter: Callable[[str], str] | None = None) -> None:
        """Connect the serving seam once the served model is loaded (after :meth:`boot`)."""
        self.get_model, self._swap, self.report = get_model, swap, report
        if transport is not None:
            self.transport, self.chunk_filter = transport, chunk_filter

    # --- persistence ---------------------------------------------------------------------------

    @property
    def state(self) -> OtaState:
        return OtaState(self._rec["state"])

    def _load(self) -> dict[str, Any]:
        try:
            rec = json.loads(self.state_file.read_text())
            OtaState(rec["state"])
        except FileNotFoundError:
            rec = {}
        except (OSError, ValueError, KeyError) as e:
            log.error("OTA: %s is unreadable (%s); starting from IDLE", self.state_file, e)
            rec = {}
        base = {"state": "IDLE", "job": None, "queue": [], "seen": {}, "crashes": 0, "clean_shutdown": True, "history": []}
        return {**base, **rec}

    def _persist(self, rec: dict[str, Any]) -> None:
        atomic_write(self.state_file, json.dumps(rec, separators=(",", ":")).encode())
        self._rec = rec

    def _move(self, event: Event, **changes: Any) -> OtaState:
        """The one way the state changes: look up the table, persist the target, then report."""
        with self._lock:
            src = self.state
            dst = TRANSITIONS.get((src, event))
            if dst is None:
                raise RuntimeError(f"OTA: no transition from {src} on {event}")  # a bug in this module, not bad input
            crashpoint(f"move.{src}.{event}")
            rec = {**self._rec, **changes, "state": str(dst), "since": round(self.clock(), 3)}
            if dst == S.IDLE:
                rec.update(job=None, reason="", detail="", from_slot=None, to_slot=None, target=None, crashes=0, baseline=None)
            self._persist(rec)
            crashpoint(f"moved.{dst}")
        log.info("OTA: %s --%s--> %s %s", src, event, dst, changes.get("detail", ""))
        if dst in ACTIVE:
            self._report_state()  # final states are reported by _finish, once their action (revert, swap, clean-up) is done
        return dst

    def _report_state(self, detail: str | None = None) -> None:
        rec = self._rec
        job = rec.get("job") or {}
        if not job:
            return
        st = self.state
        self.report(JobReport(job=job["id"], state=job_state(st, rec.get("reason", ""), job.get("kind", "deploy")),
                              reason=rec.get("reason", "") if st in FINAL else "", detail=detail or rec.get("detail", ""),
                              ota_state=str(st), model=_summary(self.get_model())))

    # --- lifecycle -----------------------------------------------------------------------------

    def boot(self) -> Path | None:
        """Recover the store and the state machine after a start (clean or not).

        Call before loading the model to serve; returns the directory to serve (``store.current``).
        Counts a crash when the last run died on probation, and rolls back at ``max_crashes``.
        """
        rec = self._rec
        st = self.state
        job = rec.get("job") or {}
        keep = [job["id"]] if job and st in (S.DOWNLOADING, S.VERIFYING) else []
        rec_store = self.store.recover(keep_incoming=keep)
        for r in rec_store.repaired:
            log.warning("OTA: store: %s", r)
        if st == S.PROBATION:
            crashes = rec.get("crashes", 0) + (0 if rec.get("clean_shutdown") else 1)
            policy = self._policy()
            self._persist({**rec, "crashes": crashes, "clean_shutdown": False})
            if crashes >= policy.max_crashes:
                self._move(E.FAIL, reason="crash_loop", target=rec.get("from_slot"),
                           detail=f"the agent restarted {crashes} times while the update was on probation (bound {policy.max_crashes})")
            elif self.store.current != rec.get("to_slot"):
                if (self.store.path(rec["to_slot"]) / MANIFEST_NAME).is_file():
                    self.store.activate(rec["to_slot"])  # the pointer flip of the swap was lost
                else:  # the new version vanished from disk (not something an update does): go back
                    self._move(E.FAIL, reason="store", target=rec.get("from_slot"),
                               detail=f"version {rec['to_slot']} is no longer installed; serving {self.store.current}")
        if self.state == S.ROLLED_BACK:
            self._ensure_current(self._rec.get("target"))
        self._persist({**self._rec, "clean_shutdown": False})
        return self.store.current_path()

    def start(self) -> None:
        """Start the updater thread (after the served model is loaded)."""
        self._thread = threading.Thread(target=self._run, name="edgekit-ota", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; marks a clean shutdown so a probation restart is not counted as a crash."""
        self._stop.set()
        self._wake.set()
        if self._shadow is not None:
            self._shadow.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            self._persist({**self._rec, "clean_shutdown": True})

    def _run(self) -> None:
        while not self._stop.is_set():
            st = self.state
            try:
                self._actions[st]()
            except _Stop:
                break
            except OtaError as e:
                self._fail_active(e.reason, str(e))
            except Exception as e:  # a bug or an environment failure: end the job safely, keep serving
                log.exception("OTA: %s failed", st)
                self._fail_active("internal", f"{type(e).__name__}: {e}")
                self._stop.wait(0.5)

    def _fail_active(self, reason: str, detail: str) -> None:
        st = self.state
        if st in FINAL:  # the job's outcome stands; move on rather than retry a failing clean-up forever
            log.error("OTA: clean-up after %s failed (%s: %s); continuing", st, reason, detail)
            try:
                self._finish()
            except Exception:
                log.exception("OTA: cannot leave %s", st)
                self._stop.wait(5.0)
            return
        if st == S.PROBATION:
            self._move(E.FAIL, reason=reason, detail=detail, target=self._rec.get("from_slot"))
        elif (st, E.REJECT) in TRANSITIONS:
            self._move(E.REJECT, reason=reason, detail=detail)
        else:
            log.error("OTA: %s in %s: %s", reason, st, detail)

    def _wait(self, event: threading.Event, seconds: float, tick: Callable[[], None] | None = None) -> bool:
        """Wait for ``event`` up to ``seconds``, bounded, waking every 50 ms for stop/cancel/tick."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not event.is_set():
            if self._stop.is_set():
                raise _Stop
            if self._cancel is not None:
                return False
            if tick is not None:
                tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event.wait(min(0.05, left))
        return True

    # --- the request path ---------------------------------------------------------------------

    def observe(self, model: Any, inputs: Mapping[str, np.ndarray] | None, outputs: Mapping[str, np.ndarray] | None,
                latency_s: float | None, error: str | None = None) -> None:
        """Called after every prediction (``error``: a runtime failure kind). Cheap; never raises."""
        try:
            pr = self._probation
            if pr is not None and model is self._candidate:
                pr.observe(outputs, latency_s, error)
                return
            if error is None and latency_s is not None:
                self.live.add(latency_s)
            sh = self._shadow
            if sh is not None and inputs is not None and outputs is not None:
                sh.observe(inputs, outputs)
        except Exception:  # the request path must never fail because of the updater
            log.exception("OTA: observe failed")

    # --- commands (MQTT thread) ----------------------------------------------------------------

    def handle(self, cmd: Command) -> None:
        """Take a deploy / rollback / cancel command. Long work happens on the updater thread."""
        digest = hashlib.sha256(json.dumps([cmd.kind, cmd.ts, cmd.params], sort_keys=True, default=str).encode()).hexdigest()[:16]
        with self._lock:
            seen = self._rec.get("seen", {})
            if cmd.job in seen:
                if seen[cmd.job] == digest:
                    log.info("OTA: job %s delivered again (QoS 1 redelivery); ignored", cmd.job)
                    return
                self.report(JobReport(cmd.job, JobState.REJECTED, "duplicate_job",
                                      f"job id {cmd.job} was already used by another command on this device; job ids are single-use "
                                      "(the earlier job is unaffected)", str(self.state), _summary(self.get_model())))
                return
            seen = dict(list(seen.items())[-511:])
            seen[cmd.job] = digest
            entry = {"id": cmd.job, "kind": str(cmd.kind), "ts": cmd.ts, "device": cmd.device, "params": cmd.params}
            try:
                self._admit(cmd, entry)
            except OtaError as e:
                self._persist({**self._rec, "seen": seen})
                self.report(JobReport(cmd.job, JobState.REJECTED, e.reason, str(e), str(self.state), _summary(self.get_model())))
                return
            self._persist({**self._rec, "seen": seen})
        self._wake.set()

    def _admit(self, cmd: Command, entry: dict[str, Any]) -> None:
        rec = self._rec
        if cmd.kind == CommandKind.DEPLOY:
            parse_job(cmd.job, cmd.params, defaults=self.settings.probation, limits=self.settings.limits)
            # the running job: taken from the queue already (rec["job"]), or about to be (the queue's head while IDLE)
            if rec.get("job"):
                running, waiting = rec["job"]["id"], len(rec["queue"])
            else:
                running = rec["queue"][0]["id"] if rec["queue"] else None
                waiting = max(0, len(rec["queue"]) - 1)
            if running is not None and waiting >= self.settings.queue_size:
                raise OtaError(f"job {running} is running and {waiting} job(s) are queued (the bound, [ota] queue_size = "
                               f"{self.settings.queue_size}); resend after they finish", reason="busy")
            self._persist({**rec, "queue": [*rec["queue"], entry]})
            if running is not None:
                self.report(JobReport(cmd.job, JobState.QUEUED, "", f"queued behind job {running} (position {waiting + 1})",
                                      str(self.state), _summary(self.get_model())))
            return
        verify_command(kind=str(cmd.kind), job=cmd.job, ts=cmd.ts, device=cmd.device, params=cmd.params, trusted=self.trusted)
        if cmd.kind == CommandKind.CANCEL:
            target = cmd.params.get("target")
            if not isinstance(target, str) or not valid_id(target):
                raise OtaError("cancel needs params.target, the job id to cancel", reason="bad_job")
            queued = [q for q in rec["queue"] if q["id"] == target]
            if queued:
                self._persist({**rec, "queue": [q for q in rec["queue"] if q["id"] != target]})
                self.report(JobReport(target, JobState.CANCELED, "canceled", f"canceled by job {cmd.job} before it started", str(self.state)))
            elif (rec.get("job") or {}).get("id") == target and self.state in ACTIVE:
                self._cancel = "canceled"
            else:
                raise OtaError(f"job {target} is neither queued nor running on this device; nothing to cancel", reason="unknown_job")
            self.report(JobReport(cmd.job, JobState.SUCCEEDED, "", f"cancel of {target} requested", str(self.state)))
            return
        # ROLLBACK: first in line; an update still in progress is abandoned (it was not what the operator wants served).
        # On probation the revert of that update *is* the rollback: the rollback job then targets what was served before it.
        if self.state in ACTIVE:
            self._cancel = "rollback"
            if self.state == S.PROBATION and not entry["params"].get("to"):
                entry = {**entry, "params": {**entry["params"], "to": rec.get("from_slot")}}
        self._persist({**rec, "queue": [entry, *rec["queue"]]})

    def on_chunk(self, topic: str, payload: bytes) -> None:
        """An artifact chunk from ``<prefix>/<device>/ota/<job>/chunk/<n>`` (MQTT thread)."""
        parts = topic.rsplit("/", 4)
        if len(parts) != 5 or parts[1] != "ota" or parts[3] != "chunk" or not parts[4].isdigit():
            return
        job, n = parts[2], int(parts[4])
        r = self._receiver
        if r is None or r.job != job:
            return  # a retained chunk of a finished job, or of one not started yet (it is replayed on subscribe)
        try:
            r.add(n, payload)
        except OtaError as e:
            log.warning("OTA: job %s: %s", job, e)

    # --- state actions (updater thread) ----------------------------------------------------------

    def _idle(self) -> None:
        with self._lock:
            queue = self._rec["queue"]
            entry = self._rec.get("job")  # taken from the queue before a restart, not started yet
            if entry is None and queue:
                entry = queue[0]
                self._persist({**self._rec, "queue": queue[1:], "job": entry})
        if entry is None:
            self._wake.wait(0.2)
            self._wake.clear()
            if self._stop.is_set():
                raise _Stop
            return
        self._cancel = None
        if entry["kind"] == str(CommandKind.ROLLBACK):
            self._manual_rollback(entry)
            return
        try:
            job = self._deploy_job(entry)
            self._accept(job)
        except OtaError as e:
            self._move(E.REJECT, reason=e.reason, detail=str(e))
            return
        current = self.get_model()
        if current is not None and current.version == job.version and (self.store.path(slot_name(job.version)) / MANIFEST_NAME).is_file() \
                and (self.store.path(slot_name(job.version)) / MANIFEST_NAME).read_bytes() == job.manifest_bytes:
            self._move(E.PASS, reason="already_current", detail=f"version {job.version} is already served; nothing to do")
            return
        self._move(E.START, started=round(self.clock(), 3), from_slot=self.store.current, to_slot=slot_name(job.version),
                   reason="", detail=f"downloading {job.total_bytes:,} bytes over {job.method}")

    def _deploy_job(self, entry: dict[str, Any]) -> DeployJob:
        if self._job is None or self._job.id != entry["id"]:
            self._job = parse_job(entry["id"], entry["params"], defaults=self.settings.probation, limits=self.settings.limits)
        return self._job

    def _policy(self) -> ProbationPolicy:
        entry = self._rec.get("job") or {}
        try:
            return self.settings.probation.merged((entry.get("params") or {}).get("probation"))
        except OtaError:
            return self.settings.probation

    def _accept(self, job: DeployJob) -> None:
        """Checks that need no download: the signature and the version."""
        verify_manifest(job.manifest_bytes, job.signature, self.trusted)
        current = self.get_model()
        check_version(job.version, getattr(current, "version", None) if current is not None and getattr(current, "manifest", None) else None)

    def _downloading(self) -> None:
        job = self._deploy_job(self._rec["job"])
        d = self.store.incoming(job.id)
        (d / MANIFEST_NAME).write_bytes(job.manifest_bytes)
        if job.signature:
            (d / SIGNATURE_NAME).write_text(job.signature)
        left = self._rec["started"] + job.timeout_s - self.clock()
        if job.method == "mqtt":
            r = ChunkReceiver(job.id, d, job.artifacts, job.chunk_size)
            self._receiver = r
            topic = self.chunk_filter(job.id) if self.chunk_filter else None
            if self.transport is not None and topic:
                self.transport.subscribe(topic)
            try:
                done = self._wait(r.done, left)
            finally:
                self._receiver = None
                if self.transport is not None and topic:
                    self.transport.unsubscribe(topic)
            if self._cancel:
                raise OtaError(f"the download was abandoned ({self._cancel})", reason="canceled")
            if r.error is not None:
                raise r.error
            if not done:
                have, count = r.progress
                raise OtaError(f"{have} of {count} chunks arrived within the job's {job.timeout_s:g} s; the rest never came "
                               "(broker limits, or the fleet stopped sending)", reason="timeout")
            r.finish()
        else:
            for art in job.artifacts:
                self._http(job, art, d)
        crashpoint("download.done")
        self._move(E.DOWNLOADED, detail="verifying sha256, size and signature")

    def _http(self, job: DeployJob, art: Any, d: Path) -> None:
        """One artifact over HTTP(S); network failures are retried with backoff until the job's deadline."""
        delay = 0.5
        while not (d / art.file).is_file():
            left = self._rec["started"] + job.timeout_s - self.clock()
            try:
                http_download(art, d, deadline_s=max(0.0, left), should_stop=lambda: self._stop.is_set() or self._cancel is not None,
                              ca_file=self.settings.ca_file)
            except OtaError as e:
                if e.reason != "download_failed":
                    raise
                left = self._rec["started"] + job.timeout_s - self.clock()
                if left <= delay:
                    raise OtaError(f"{e} — still failing when the job's {job.timeout_s:g} s ran out", reason="timeout") from None
                log.warning("OTA: %s; retrying in %.1f s", e, delay)
                if self._wait(threading.Event(), delay) is False and self._cancel:
                    raise OtaError(f"the download was abandoned ({self._cancel})", reason="canceled") from None
                delay = min(delay * 2, 30.0)

    def _verifying(self) -> None:
        job = self._deploy_job(self._rec["job"])
        slot = slot_name(job.version)
        installed = self.store.path(slot)
        if installed.is_dir():
            if (installed / MANIFEST_NAME).read_bytes() != job.manifest_bytes:
                raise OtaError(f"version {job.version} is already installed with a different manifest; versions are single-use — "
                               "give the new model a new version", reason="version_reused")
            src = installed  # installed before a restart, or kept from an earlier job: check it again all the same
        else:
            src = self.store.incoming_dir / job.id
        verify_manifest(job.manifest_bytes, job.signature, self.trusted)
        for art in job.artifacts:
            check_file(src / art.file, size=art.size, sha256=art.sha256)
        crashpoint("verify.done")
        self.store.install(job.id, slot)
        self._move(E.VERIFIED, to_slot=slot, detail="verified; loading and self-testing beside the served model")

    def _load_candidate(self) -> Any:
        if self._candidate is not None and self._candidate_slot == self._rec["to_slot"]:
            return self._candidate
        try:
            cand = self.loader(self.store.path(self._rec["to_slot"]))
        except AgentError as e:
            raise OtaError(f"the new model does not load on this device: {e}", reason="load_failed") from None
        st = getattr(cand, "selftest", None)
        if st is not None and not st.passed:
            raise OtaError(f"the new model failed its self-test on this device: {st.detail}", reason="selftest_failed")
        self._candidate, self._candidate_slot = cand, self._rec["to_slot"]
        return cand

    _candidate_slot: str | None = None

    def _staged(self) -> None:
        job = self._deploy_job(self._rec["job"])
        cand = self._load_candidate()
        cur = self.get_model()
        if cur is not None and self.settings.check_compatible and not job.allow_incompatible:
            check_compatible(cur.inputs, cur.outputs, cand.inputs, cand.outputs)
        for bad in _nonfinite_selftest(cand):
            raise OtaError(f"the new model gives NaN/Inf on its own self-test vectors ({bad})", reason="nan_outputs")
        baseline = self.live.p95() if len(self.live) >= job.probation.min_requests else _bench(cur, cand)
        if job.probation.shadow:
            self._move(E.SHADOW, baseline=baseline, shadow_started=round(self.clock(), 3),
                       detail=f"shadow: comparing with the served model on {job.probation.shadow_sample:.0%} of live inputs")
        else:
            self._swap_in(baseline)

    def _shadowing(self) -> None:
        job = self._deploy_job(self._rec["job"])
        cand = self._load_candidate()
        sh = Shadow(cand, job.probation, started=self._rec.get("shadow_started") or self.clock(), clock=self.clock)
        self._shadow = sh
        try:
            self._wait(sh.decided, job.probation.shadow_seconds + 5.0, sh.tick)
        finally:
            self._shadow = None
            sh.stop()
        if self._cancel:
            raise OtaError(f"abandoned during shadow ({self._cancel})", reason="canceled")
        v = sh.verdict
        if v is None:
            raise OtaError("shadow mode did not finish in time", reason="timeout")
        if not v.passed:
            raise OtaError(f"not promoted: {v.detail}", reason=v.reason)
        self._swap_in(self._rec.get("baseline"), note=v.detail)

    def _swap_in(self, baseline: float | None, note: str = "") -> None:
        job = self._deploy_job(self._rec["job"])
        p = job.probation
        detail = f"serving {job.version} on probation: {p.requests} requests or {p.seconds:g} s" + (f" ({note})" if note else "")
        self._move(E.SWAP, baseline=baseline, probation_started=round(self.clock(), 3), crashes=0, detail=detail)
        self.store.activate(self._rec["to_slot"])
        crashpoint("swap.activated")
        self._incumbent = self._swap(self._candidate)
        self.live.clear()

    def _on_probation(self) -> None:
        rec = self._rec
        job = self._deploy_job(rec["job"])
        if self.store.current != rec["to_slot"]:
            self.store.activate(rec["to_slot"])
        served = self.get_model()
        if self._candidate is None or served is not self._candidate:
            if served is not None and getattr(served, "path", None) == self.store.path(rec["to_slot"]):
                self._candidate, self._candidate_slot = served, rec["to_slot"]  # restarted on probation: the agent loaded it
            else:
                self._load_candidate()
                self._incumbent = self._swap(self._candidate)
        if self._incumbent is None and rec.get("from_slot"):
            try:  # after a restart: load the old model now, so a rollback is a swap, not a load
                self._incumbent = self.loader(self.store.path(rec["from_slot"]))
            except AgentError as e:
                log.warning("OTA: the previous version cannot be preloaded (%s); a rollback will retry", e)
        pr = Probation(job.probation, baseline_p95=rec.get("baseline"), started=rec.get("probation_started") or self.clock(), clock=self.clock)
        self._probation = pr
        try:
            self._wait(pr.decided, job.probation.seconds + 5.0, pr.tick)
        finally:
            self._probation = None
        if self._cancel:
            reason = "canceled" if self._cancel == "canceled" else "manual_rollback"
            self._move(E.FAIL, reason=reason, target=rec.get("from_slot"), detail=f"rolled back during probation: {self._cancel} requested")
            return
        v = pr.verdict
        self.last_verdict = v
        if v is None or v.passed:
            self._move(E.PASS, reason="passed", detail=f"committed {job.version}: " + (v.detail if v else "probation time up"))
        else:
            self._move(E.FAIL, reason=v.reason, target=rec.get("from_slot"), detail=f"rolled back {job.version}: {v.detail}")

    def _manual_rollback(self, entry: dict[str, Any]) -> None:
        target = (entry.get("params") or {}).get("to") or self.store.previous
        if target is not None:
            target = slot_name(str(target))
        if target is not None and target == self.store.current:
            self._move(E.ROLLBACK, reason="manual_rollback", from_slot=target, target=target,
                       detail=f"already serving {target} (an update on probation was reverted for this rollback)")
            return
        if not target or not (self.store.path(target) / MANIFEST_NAME).is_file():
            self._move(E.REJECT, reason="no_previous", detail=f"no installed version {target or '(previous)'} to roll back to; "
                       f"installed: {', '.join(self.store.slots())}")
            return
        try:
            model = self.loader(self.store.path(target))
        except AgentError as e:
            self._move(E.REJECT, reason="load_failed", detail=f"version {target} does not load any more: {e}")
            return
        self._incumbent = model
        self._move(E.ROLLBACK, reason="manual_rollback", from_slot=self.store.current, target=target,
                   detail=f"rolled back from {self.store.current} to {target} on request")

    def _ensure_current(self, target: str | None) -> None:
        if target and self.store.current != target and (self.store.path(target) / MANIFEST_NAME).is_file():
            self.store.revert(to=target)

    def _rolled_back(self) -> None:
        target = self._rec.get("target")
        if target and not (self.store.path(target) / MANIFEST_NAME).is_file():
            log.error("OTA: cannot roll back: version %s is no longer installed; still serving %s", target, self.store.current)
            target = None
        self._ensure_current(target)
        crashpoint("rollback.reverted")
        served = self.get_model()
        if target and (served is None or getattr(served, "path", None) != self.store.path(target)):
            model = self._incumbent if self._incumbent is not None and getattr(self._incumbent, "path", None) == self.store.path(target) \
                else self.loader(self.store.path(target))
            self._swap(model)
            v = self.last_verdict
            if v is not None and not v.passed:
                self.last_rollback_s = time.monotonic() - v.at
                log.warning("OTA: rolled back to %s %.1f ms after the failed probation check (%s)", target, self.last_rollback_s * 1e3,
                            v.reason)
        self._clear_models()
        self._finish()

    def _committed(self) -> None:
        self._clear_models()
        self._finish()

    def _rejected(self) -> None:
        job = self._rec.get("job") or {}
        if job:
            self.store.discard_incoming(job["id"])
        if self._rec.get("from_slot") and self.store.current != self._rec["from_slot"]:
            self._ensure_current(self._rec["from_slot"])  # never served: the pointers must still name the old version
        self._clear_models()
        self._finish()

    def _finish(self) -> None:
        try:
            self.store.gc()  # versions beyond the newest `keep`, and rejected/reverted ones, leave the disk
        except OSError as e:
            log.warning("OTA: removing old versions failed: %s", e)
        with self._lock:
            rec = self._rec
            job = rec.get("job") or {}
            hist = [*rec.get("history", [])[-31:], {"job": job.get("id"), "kind": job.get("kind"), "state": rec["state"],
                                                     "reason": rec.get("reason", ""), "detail": rec.get("detail", ""),
                                                     "ts": round(self.clock(), 3)}]
            self._persist({**rec, "history": hist})
            self._report_state()  # after a crash before DONE this runs again: the fleet may see the final state twice
            self._move(E.DONE)

    def _clear_models(self) -> None:
        self._candidate = None
        self._candidate_slot = None
        self._incumbent = None
        self._job = None
        self._cancel = None

    # --- information ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        rec = self._rec
        out = {"state": rec["state"], "job": (rec.get("job") or {}).get("id"), "reason": rec.get("reason", ""), "detail": rec.get("detail", ""),
               "queue": [q["id"] for q in rec.get("queue", [])], "current": self.store.current, "previous": self.store.previous,
               "history": rec.get("history", [])[-5:]}
        if self._probation is not None:
            out["progress"] = self._probation.progress()
        r = self._receiver
        if r is not None:
            out["progress"] = "chunks: {}/{}".format(*r.progress)
        return out


def _summary(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    return {"name": getattr(model, "name", None), "version": getattr(model, "version", None)}


def _nonfinite_selftest(model: Any) -> list[str]:
    m, art = getattr(model, "manifest", None), getattr(model, "artifact", None)
    if m is None or art is None:
        return []
    from device_agent.probation import nonfinite

    out = []
    for inputs, _ in m.selftest_vectors(art.file)[:4]:
        bad = nonfinite(model.run(inputs))
        if bad:
            out.append(f"output {bad!r}")
            break
    return out


def _bench(old: Any, new: Any, runs: int = 15) -> float | None:
    """p95 latency (s) of the served model on the candidate's self-test inputs: the probation
    baseline when live traffic has not yet given enough samples."""
    m, art = getattr(new, "manifest", None), getattr(new, "artifact", None)
    if old is None or m is None or art is None:
        return None
    vectors = m.selftest_vectors(art.file)
    if not vectors:
        return None
    inputs = vectors[0][0]
    times = deque(maxlen=runs)
    try:
        old.run(inputs)
        for _ in range(runs):
            t0 = time.perf_counter()
            old.run(inputs)
            times.append(time.perf_counter() - t0)
    except Exception:
        return None
    return float(np.percentile(list(times), 95))


def updater_from_config(cfg: Any) -> Updater | None:
    """The store and updater an agent.toml asks for; None when OTA is off or the model is a bare file.

    On first start the configured model directory is copied into the store as its first version.
    """
    from device_agent.model import load_model
    from device_agent.verify import load_trusted_keys

    o = cfg.ota
    if not o.enabled:
        return None
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    store = ModelStore(cfg.store_dir, keep=o.keep_versions)
    if store.current is None:
        if not (Path(cfg.model.path) / MANIFEST_NAME).is_file():
            log.warning("OTA: off — [model] path %s is not a model directory with a manifest (edgekit compress output)", cfg.model.path)
            return None
        store.adopt(cfg.model.path)
    trusted = load_trusted_keys(cfg.security.trusted_keys, allow_unsigned=cfg.security.allow_unsigned)
    policy = ProbationPolicy(requests=o.probation_requests, seconds=o.probation_seconds, min_requests=o.probation_min_requests,
                             max_error_rate=o.max_error_rate, max_latency_ratio=o.max_latency_ratio, latency_floor_ms=o.latency_floor_ms,
                             max_crashes=o.max_crashes)
    settings = OtaSettings(probation=policy, limits=Limits(max_update_bytes=o.max_update_bytes), keep_versions=o.keep_versions,
                           queue_size=o.queue_size, ca_file=str(o.download_ca_file) if o.download_ca_file else None)
    m = cfg.model

    def loader(path: Path) -> Any:
        return load_model(path, prefer=m.prefer, threads=m.threads, artifact=m.artifact or None, verify=True, selftest=True)

    return Updater(store, cfg.state_dir / "ota.json", trusted=trusted, loader=loader, settings=settings)
