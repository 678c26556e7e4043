"""``edgekit-agent``: the device daemon's command line (argparse: no extra dependency on the device).

::

    edgekit-agent run --config /etc/edgekit/agent.toml     # serve until SIGTERM/SIGINT
    edgekit-agent check --config /etc/edgekit/agent.toml   # validate config, load model, self-test
    edgekit-agent example-config                           # print a commented agent.toml

Exit codes: 0 ok, 1 an AgentError (one line on stderr, ``--debug`` for the traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from device_agent import __version__

__all__ = ["HeapSettler", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgekit-agent", description="edgekit device agent: serve a compressed model, report, update.")
    p.add_argument("--version", action="version", version=f"edgekit-agent {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the model (HTTP API, MQTT telemetry) until stopped")
    run.add_argument("--config", "-c", required=True, help="path to agent.toml")
    check = sub.add_parser("check", help="validate the config, load the model and run its self-test, then exit")
    check.add_argument("--config", "-c", required=True, help="path to agent.toml")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("example-config", help="print a commented agent.toml with every field and its default")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgekit-agent`` script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "example-config":
            from device_agent.config.render import example_toml

            sys.stdout.write(example_toml())
            return 0
        if args.command == "check":
            return _check(args.config, args.json)
        return _run(args.config)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from device_agent.contract.errors import AgentError
        from device_agent.contract.manifest import ManifestError

        if args.debug or not isinstance(e, (AgentError, ManifestError)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


def _check(path: str, as_json: bool) -> int:
    from device_agent.config.read import load_config
    from device_agent.daemon import Daemon

    cfg = load_config(path)
    daemon = Daemon.from_config(cfg)
    agent = daemon.agent
    try:
        info: dict[str, Any] = {"config": str(path), "device": cfg.device.id, "model": agent.model.summary(), "selftest": agent.model.selftest.to_dict(),
                "runtime_check": agent.model.runtime_check.to_dict(), "ready": agent.ready, "reason": agent.not_ready_reason,
                "broker": cfg.broker.url or None}
    finally:
        daemon.stop()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        m = info["model"]
        print(f"config ok: device {cfg.device.id}, broker {cfg.broker.url or '(none)'}")
        print(f"model: {m['name']} {m['version']} — {m['artifact']} via {m['runtime']}")
        rc = agent.model.runtime_check
        print(f"runtime: {rc.status} ({rc.detail})")
        if rc.refused:
            print(f"not ready: {agent.not_ready_reason}")
        else:
            print(f"self-test: {'passed' if info['ready'] else 'FAILED'} ({agent.model.selftest.detail})")
    return 0 if info["ready"] else 1


def _run(path: str) -> int:
    from device_agent.config.read import load_config
    from device_agent.contract.runtimes import RuntimeStatus
    from device_agent.daemon import Daemon

    t0 = time.perf_counter()
    cfg = load_config(path)
    _tune_malloc()
    logging.basicConfig(level=getattr(logging, cfg.log.level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("edgekit.agent")
    daemon = Daemon.from_config(cfg)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    agent = daemon.agent
    m = agent.model
    where = daemon.server.url if daemon.server else "no HTTP API"
    if m.runtime_check.refused:  # one line: the model is loaded but never served; the fleet sees why in the state message
        log.error("NOT READY: %s %s is not served: %s", m.name, m.version, agent.not_ready_reason)
    else:
        if m.runtime_check.status == RuntimeStatus.MISMATCH:
            log.warning("runtime mismatch: %s", m.runtime_check.detail)
        log.info("serving %s %s (%s via %s) on %s; %s in %.2f s", m.name, m.version, m.file.name, m.backend.runtime, where,
                 "ready" if agent.ready else f"NOT READY: {agent.not_ready_reason}", time.perf_counter() - t0)
    heap = HeapSettler()
    heap.check(agent.model)
    try:
        while not stop.wait(1.0):
            heap.check(agent.model)
    finally:
        daemon.stop()
        log.info("stopped")
    return 0


class HeapSettler:
    """Keeps the garbage collector's full collections off the request path: what the served model left is frozen.

    A running agent holds ~76,000 objects that live as long as it does (modules, the model's session and
    signature, the server); each full collection walked all of them: ~16 ms on a 2-core machine, a pause
    every few thousand requests that a client at one connection saw as its slowest answers. Collected once
    and frozen (:func:`gc.freeze`) when a model starts serving, they are left out of later collections.
    When another model is served (an update, a rollback), and every ``every_s`` anyway, the frozen objects
    are thawed and collected first, so that cycles frozen while alive (an old model kept for a rollback, then
    dropped) are freed, then the survivors frozen again.
    """

    def __init__(self, every_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._served: tuple[int, str, str] | None = None
        self._at = 0.0

    def check(self, model: Any) -> bool:
        """Settle the heap if ``model`` is not the one served at the last settling, or that was ``every_s`` ago; whether it did."""
        key = (id(model), model.name, model.version)  # not the model itself: a reference would keep an old one alive
        now = self.clock()
        if key == self._served and now - self._at < self.every_s:
            return False
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._served, self._at = key, now
        return True


def _tune_malloc() -> None:
    """Give memory back to the system as requests come and go (glibc only; elsewhere nothing happens).

    glibc keeps freed blocks in per-thread arenas and, after a large block is freed, raises the size
    from which it maps blocks of their own: under load each worker thread ends up holding its own
    megabytes of request bodies and tensors. A fixed threshold maps every block from 4 MB on (and
    unmaps it when freed) and two arenas are shared by all threads: measured with 16 clients sending
    3 MB JSON bodies, the agent's peak RSS drops by ~20 MB. Below 4 MB (a 224x224 image: 600 KB as
    .npy or V2 binary, 3 MB as JSON), blocks come from the arenas, which keep up to 8 MB free at their
    top: with a 128 KB threshold every such body was mapped fresh and faulted in page by page (a .npy
    image ~150 page faults a request, 0.2-0.4 ms of MobileNetV2's ~6; now ~2; a JSON image 2,200 ->
    1,350, FastAPI's 1,850), for 4 MB more peak RSS in that 16-client test (134 -> 138 MB)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing useful
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    mallopt(m_mmap_threshold, 4 << 20)
    mallopt(m_trim_threshold, 8 << 20)
    mallopt(m_arena_max, 2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
