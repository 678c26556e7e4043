"""The device daemon: an :class:`~device_agent.serve.agent.Agent` that serves, and everything wired around it.

::

    cfg = load_config("/etc/edgekit/agent.toml")
    with Daemon.from_config(cfg) as daemon:   # loads the model (from the OTA store), opens the outbox
        daemon.start()                         # MQTT link, telemetry loop, OTA updater, HTTP API
        daemon.wait()

What it wires, from ``agent.toml``: the outbox and the MQTT link on the device's topics (built
once), the reporter that turns telemetry windows, job states and the device state into messages,
the command router (deploy, rollback, cancel → the OTA updater), the telemetry loop that closes a
window every ``interval_s``, and the HTTP API. The agent itself only serves; the daemon plugs into
its seams (``observer``, ``retire``, ``health_sections``, ``link_connected``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from device_agent.config.schema import AgentConfig, ApiConfig
from device_agent.contract.enums import CommandKind, DeviceStatus, JobState
from device_agent.contract.files import private_dir
from device_agent.contract.manifest import MANIFEST_NAME
from device_agent.contract.protocol import StateMessage
from device_agent.contract.topics import Topics
from device_agent.link.commands import CommandHandler, CommandRouter
from device_agent.link.mqtt import MqttLink
from device_agent.link.outbox import Outbox
from device_agent.link.reporter import Reporter, state_message
from device_agent.ota.gate import UNAUTHENTICATED, Identity
from device_agent.ota.job import Limits, ProbationPolicy
from device_agent.ota.seams import JobReport, ModelRef, OtaSettings
from device_agent.ota.store import ModelStore
from device_agent.ota.updater import Updater
from device_agent.ota.verify import load_trusted_keys
from device_agent.runtime.model import LoadedModel, load_model
from device_agent.serve.agent import Agent
from device_agent.serve.auth import load_tokens, tls_context
from device_agent.serve.server import ApiServer, HttpLimits, serve
from device_agent.telemetry.window import Window

__all__ = ["Daemon", "serve_api", "updater_from_config"]

log = logging.getLogger("edgekit.agent")

#: how long stop() lets the link deliver what is queued (the rest stays on disk for the next start)
STOP_GRACE_S = 2.0
#: what /healthz shows of the OTA status without a token (the job history and job ids need one)
PUBLIC_OTA_KEYS = frozenset({"state", "current", "previous", "progress"})
#: answers to commands the device did not accept, per minute (best effort; the rest are only logged)
ANSWERS_PER_MINUTE = 30


class Daemon:
    """The agent of one device, with its link to the fleet, its updater and its HTTP API.

    Args:
        config: the validated agent.toml.
        agent: the serving agent (its model already loaded).
        outbox: the store-and-forward queue (when a broker is configured).
        updater: takes over-the-air updates (when ``[ota]`` is on and a broker is configured).
    """

    def __init__(self, config: AgentConfig, agent: Agent, *, outbox: Outbox | None = None, updater: Updater | None = None) -> None:
        self.config = config
        self.agent = agent
        self.outbox = outbox
        self.updater = updater
        self.boot = outbox.next_boot() if outbox is not None else 0
        # the device's topics, built once for the link, the reporter and the updater's chunk filter
        self.topics = Topics(config.device.id, config.device.group, config.broker.topic_prefix) if outbox is not None else None
        self.reporter = Reporter(agent, outbox, self.topics, boot=self.boot, connects=self._connects) \
            if outbox is not None and self.topics is not None else None
        self.commands = CommandRouter(reject=lambda job, detail, reason: self.answer_job(job, JobState.REJECTED, detail, reason=reason))
        # when the last answers to refused commands went out, by whether no trusted key signed the command
        self._answered: dict[bool, collections.deque[float]] = {False: collections.deque(), True: collections.deque()}
        self.link: MqttLink | None = None
        self.server: ApiServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retired: collections.deque[tuple[Window, LoadedModel]] = collections.deque()  # windows of models an update swapped out
        self._plug_into_agent()
        if updater is not None:
            self.commands.on_chunk = updater.on_chunk
            for kind in (CommandKind.DEPLOY, CommandKind.ROLLBACK, CommandKind.CANCEL):
                self.register_command(kind, updater.handle)

    def _plug_into_agent(self) -> None:
        agent, outbox = self.agent, self.outbox
        agent.observer = self.updater
        agent.link_connected = lambda: bool(self.link is not None and self.link.connected)
        if outbox is not None:
            agent.metrics.gauge("edgekit_agent_outbox_depth", "Messages waiting in the outbox.", lambda: outbox.depth)
            agent.metrics.gauge("edgekit_agent_outbox_bytes", "Payload bytes waiting in the outbox.", lambda: outbox.size_bytes)
            agent.metrics.gauge("edgekit_agent_outbox_dropped_total", "Messages the bounded outbox discarded (oldest first).",
                                lambda: outbox.dropped_total)
            agent.health_sections["outbox"] = lambda: {"depth": outbox.depth, "bytes": outbox.size_bytes,
                                                       "dropped_total": outbox.dropped_total}
        agent.health_sections["mqtt"] = lambda: {"connected": self.link.connected, "last_error": self.link.last_error} \
            if self.link is not None else None
        updater = self.updater
        if updater is not None:
            # job ids, reasons and history are for token holders: probes see the state and the versions only
            agent.health_sections["ota"] = lambda: {k: v for k, v in updater.status().items() if k in PUBLIC_OTA_KEYS}
            agent.private_sections["ota"] = updater.status

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Daemon:
        """Load the model and open the outbox as configured; call :meth:`start` to serve.

        With OTA on (``[ota] enabled`` and a broker), the model comes from the model store: the
        updater recovers from any crash first and names the version to serve."""
        updater, path = None, cfg.model.path
        if cfg.ota.enabled and cfg.broker.enabled:
            updater = updater_from_config(cfg)
            path = (updater.boot() if updater is not None else None) or cfg.model.path
        model = load_model(path, prefer=cfg.model.prefer, threads=cfg.model.threads, artifact=cfg.model.artifact or None,
                           verify=cfg.model.verify_files, selftest=cfg.model.selftest, runtime_policy=cfg.model.runtime_policy)
        outbox = None
        if cfg.broker.enabled:
            o = cfg.outbox
            outbox = Outbox(cfg.outbox_path, max_messages=o.max_messages, max_bytes=o.max_bytes, max_age_s=o.max_age_s, durable=o.durable)
        a, t = cfg.api, cfg.telemetry
        agent = Agent(model, telemetry=t.enabled and cfg.broker.enabled, max_batch=a.max_batch, max_elements=a.max_elements,
                      top_k_default=a.top_k, max_payload_bytes=t.max_payload_bytes, max_values_per_feature=t.max_values_per_feature,
                      feedback_max_rows=t.feedback_max_rows, feedback_max_bytes=t.feedback_max_bytes,
                      feedback_retention_s=t.feedback_retention_s, out_of_range=cfg.serve.out_of_range)
        return cls(cfg, agent, outbox=outbox, updater=updater)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the telemetry thread, the MQTT link, the updater and the HTTP API (as configured)."""
        cfg = self.config
        if cfg.broker.enabled and self.outbox is not None and self.reporter is not None and self.topics is not None:
            password = cfg.broker.password_file.read_text().strip() if cfg.broker.password_file else None
            self.link = MqttLink(cfg.broker, self.topics, self.outbox, birth=self.reporter.birth, will=self.reporter.will,
                                 on_message=self.commands.on_message, password=password)
            if cfg.telemetry.enabled:
                self.agent.retire = self._retire
                self._spawn(self._telemetry_loop, "edgekit-telemetry")
            if self.updater is not None:
                agent = self.agent
                self.updater.attach(get_model=lambda: agent.model, swap=agent.swap_model, report=self._report_ota, transport=self.link,
                                    chunk_filter=self.topics.ota_chunks)
            self.link.start()
            if self.updater is not None:
                self.updater.start()
        if cfg.api.enabled:
            self.server = serve_api(self.agent, cfg.api)

    def stop(self) -> None:
        """Stop serving; publish the window in progress, the "offline" state; close the outbox."""
        self._stop.set()
        if self.updater is not None:
            self.updater.stop()  # marks a clean shutdown: a restart on probation is not counted as a crash
        if self.server is not None:
            self.server.close()
            self.server = None
        for t in self._threads:
            t.join(5)
        self._threads = []
        if self.link is not None and self.config.telemetry.enabled:
            self._publish_retired()
            self.publish_telemetry()  # the partial window is queued, not lost
        if self.link is not None:
            deadline = time.monotonic() + STOP_GRACE_S  # a short grace to deliver what is queued; the rest stays on disk
            while self.link.connected and self.outbox is not None and self.outbox.depth and time.monotonic() < deadline:
                time.sleep(0.02)
            self.link.stop()
        if self.outbox is not None:
            self.outbox.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` (or ``timeout``); True when stopped."""
        return self._stop.wait(timeout)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _connects(self) -> int:
        return self.link.connects if self.link is not None else 0

    # --- telemetry -------------------------------------------------------------------------------

    def _retire(self, window: Window, model: LoadedModel) -> None:
        """An update swapped ``model`` out: its window is published by the telemetry thread, not by the swap."""
        self._retired.append((window, model))

    def _publish_retired(self) -> None:
        while self._retired:  # windows of models swapped out by an update
            window, model = self._retired.popleft()
            self.publish_telemetry(window=window, model=model)

    def _telemetry_loop(self) -> None:
        interval = self.config.telemetry.interval_s
        next_end = time.monotonic() + interval
        while not self._stop.is_set():
            self._stop.wait(min(0.5, max(0.0, next_end - time.monotonic())))
            if self._stop.is_set():
                break
            try:
                self._publish_retired()
                self.agent.window.drain()
                self.agent.flush_feedback()
                if time.monotonic() >= next_end:
                    next_end += interval
                    if next_end < time.monotonic():  # we fell behind (suspend, clock jump): don't burst
                        next_end = time.monotonic() + interval
                    self.publish_telemetry()
            except Exception:
                log.exception("telemetry: closing the window failed; will retry next window")

    def publish_telemetry(self, *, window: Window | None = None, model: LoadedModel | None = None) -> int | None:
        """Close the agent's current window (or a retired ``window`` of ``model``) and queue its telemetry
        message; returns its ``seq`` (None without a broker: the window is closed all the same)."""
        if self.reporter is None:
            (window or self.agent.window).close()
            return None
        return self.reporter.telemetry(window=window, model=model)

    # --- jobs, commands, state -------------------------------------------------------------------

    def report_job(self, job: str, state: JobState, detail: str = "", *, reason: str = "", ota_state: str = "",
                   model: ModelRef | None = None) -> int | None:
        """Queue a job state change (command handlers, e.g. OTA); returns its ``seq`` (None without a broker)."""
        if self.reporter is None:
            return None
        return self.reporter.job(job, state, detail, reason=reason, ota_state=ota_state, model=model)

    def answer_job(self, job: str, state: JobState, detail: str = "", *, reason: str = "", ota_state: str = "",
                   model: ModelRef | None = None) -> bool:
        """Answer a command the device did not accept (unsigned, foreign, expired, replayed, unreadable): once, not
        stored, not retained. At most ANSWERS_PER_MINUTE for commands no trusted key signed, and as many again for
        signed ones refused (so a flood of junk, which gets a few answers and leaves nothing behind, cannot silence
        the answer to a replayed or expired command). True when the answer was queued for the link."""
        now = time.monotonic()
        sent = self._answered[reason in UNAUTHENTICATED or reason in ("bad_command", "")]
        while sent and now - sent[0] > 60.0:
            sent.popleft()
        if self.reporter is None or self.link is None or len(sent) >= ANSWERS_PER_MINUTE:
            log.debug("not answering job %s (%s): %d answers in the last minute", job, reason, len(sent))
            return False
        sent.append(now)
        self.link.send_once(*self.reporter.answer(job, state, detail, reason=reason, ota_state=ota_state, model=model))
        return True

    def _report_ota(self, r: JobReport) -> None:
        if not r.record:
            self.answer_job(r.job, r.state, r.detail, reason=r.reason, ota_state=r.ota_state, model=r.model)
            return
        self.report_job(r.job, r.state, r.detail, reason=r.reason, ota_state=r.ota_state, model=r.model)
        if self.link is not None:
            self.link.publish_state()  # the served version may have changed: refresh the retained state

    def register_command(self, kind: CommandKind, handler: CommandHandler) -> None:
        """Handle ``kind`` commands (one handler per kind). Handlers run on the MQTT thread: hand
        long work (downloads, loading a model) to a thread of their own."""
        self.commands.register(kind, handler)

    def state_message(self, status: DeviceStatus, reason: str | None = None, *, seq: int = 0) -> StateMessage:
        """The device's retained state (what the link publishes on connect, as Last Will and on shutdown)."""
        cfg = self.config
        return state_message(self.agent, status, reason, device=cfg.device.id, group=cfg.device.group, boot=self.boot, seq=seq)


def serve_api(agent: Agent, a: ApiConfig) -> ApiServer:
    """The HTTP API as ``[api]`` configures it: limits, deadlines, tokens, TLS."""
    limits = HttpLimits(max_body_bytes=a.max_body_bytes, max_connections=a.max_connections, max_inflight_bytes=a.max_inflight_bytes,
                        workers=a.workers, header_timeout_s=a.header_timeout_s, request_timeout_s=a.request_timeout_s,
                        idle_timeout_s=a.idle_timeout_s, budget_wait_s=a.queue_timeout_s)
    tokens = load_tokens(a.token_file) if a.token_file is not None else None
    tls = tls_context(a.tls_cert, a.tls_key) if a.tls_cert is not None and a.tls_key is not None else None
    return serve(agent, a.host, a.port, tokens=tokens, ssl_context=tls, limits=limits)


def updater_from_config(cfg: AgentConfig) -> Updater | None:
    """The store and updater an agent.toml asks for; None when OTA is off or the model is a bare file.

    On first start the configured model directory is copied into the store as its first version.
    """
    o = cfg.ota
    if not o.enabled:
        return None
    private_dir(cfg.state_dir)
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

    def loader(path: Path) -> LoadedModel:
        return load_model(path, prefer=m.prefer, threads=m.threads, artifact=m.artifact or None, verify=True, selftest=True,
                          runtime_policy=m.runtime_policy)

    return Updater(store, cfg.state_dir / "ota.json", trusted=trusted, loader=loader, settings=settings,
                   identity=Identity(cfg.device.id, cfg.device.group))
