"""An embedded MQTT broker (amqtt) for demos and single-machine trials, on 127.0.0.1.

Production fleets use Mosquitto or a clustered broker; this exists so ``make demo`` tells the whole
story with no broker installed. It runs in a background thread with its own asyncio loop.

    with EmbeddedBroker() as broker:
        print(broker.url)   # mqtt://127.0.0.1:<port>
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from edgekit.errors import EdgekitError, MissingExtraError

__all__ = ["EmbeddedBroker"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """amqtt on 127.0.0.1 (MQTT 3.1.1; no shared subscriptions: run one collector against it)."""

    supports_shared_subscriptions = False

    def __init__(self, port: int | None = None, *, start_timeout_s: float = 10.0) -> None:
        self.port = port or _free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._timeout = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None  # amqtt.broker.Broker once started
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> EmbeddedBroker:
        try:
            import amqtt.broker  # noqa: F401 - amqtt ships no type information (mypy: ignore_missing_imports)
        except ImportError:
            raise MissingExtraError("The embedded MQTT broker", "demo") from None
        for name in ("amqtt", "transitions", "passlib"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._thread = threading.Thread(target=self._run, name="edgekit-broker", daemon=True)
        self._thread.start()
        # Broker.start() returns once its listener is bound, so ready means accepting connections
        if not self._ready.wait(self._timeout) or self._error:
            raise EdgekitError(f"the embedded MQTT broker did not start on 127.0.0.1:{self.port}: {self._error or 'timed out'}")
        return self

    def _run(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                        "amqtt.plugins.sys.broker.BrokerSysPlugin": {"sys_interval": 0}},
        }
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._broker = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(timeout=self._timeout)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=self._timeout)
        self._loop = self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
