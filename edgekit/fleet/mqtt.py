"""The fleet side's one MQTT adapter: broker URL, TLS, credentials, connect, subscribe, publish.

Every fleet-side program talks to the broker through :class:`BrokerSession` — the fleet client
(:mod:`edgekit.fleet.client`), the collector, drift queries and the ``fleet status`` drift column
(:mod:`edgekit.monitor`). One parser reads the broker URL (:func:`parse_broker_url`), one place
sets up paho-mqtt 2.x (VERSION2 callbacks, MQTT 3.1.1, QoS 1, TLS with the system or a given CA,
username/password), and one error says a broker cannot be reached.

A session subscribes to its topic filters with one SUBSCRIBE on every (re)connect and counts as
*ready* once the broker acknowledged all of them; callers wait for that with a bounded timeout,
which ends early when the broker refuses the connection or a subscription (:attr:`BrokerSession.refusal`).
The device's own adapter is :class:`device_agent.link.mqtt.MqttLink` (outbox, backoff, Last Will per
device); the two share the protocol (:mod:`device_agent.contract.protocol`), not code.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from device_agent.contract.protocol import DEFAULT_PREFIX, QOS
from edgekit.errors import FleetError, InputError

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["BrokerAddress", "BrokerSession", "Received", "check_reachable", "parse_broker_url", "rollout_topic", "to_address"]

log = logging.getLogger("edgekit.fleet.mqtt")

KEEPALIVE_S = 30
SCHEMES = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to log in: what ``--broker`` and the credential options say."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: the URL as given, without a password (messages quote it)
    url: str = ""

    def __post_init__(self) -> None:
        if not self.url:
            object.__setattr__(self, "url", f"{'mqtts' if self.tls else 'mqtt'}://{self.where}")

    @property
    def where(self) -> str:
        """``host:port``, as every message about this broker names it."""
        return f"{self.host}:{self.port}"


def parse_broker_url(url: str, *, username: str | None = None, password: str | None = None, ca_file: str | Path | None = None,
                     cert_file: str | Path | None = None, key_file: str | Path | None = None) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (``user:password@`` allowed) plus credentials.

    Raises:
        InputError: naming the URL and what is wrong with its scheme, host or port, or a client key
            given without its certificate.
    """
    u = urlsplit(url)
    if u.scheme not in SCHEMES:
        raise InputError(f"broker URL {url!r} has scheme {u.scheme!r}; allowed: mqtt, mqtts (e.g. mqtt://127.0.0.1:1883)")
    if not u.hostname:
        raise InputError(f"broker URL {url!r} has no host (e.g. mqtt://127.0.0.1:1883)")
    try:
        port = u.port
    except ValueError:
        port = 0  # not a number, or above 65535
    if port is None:
        port = SCHEMES[u.scheme]
    elif not 0 < port < 65536:
        raise InputError(f"broker URL {url!r} has an invalid port; use 1-65535 (mqtt://host:1883, mqtts://host:8883)")
    if key_file and not cert_file:
        raise InputError("a client key goes with its certificate: give --cert-file too (or neither)")
    shown = url
    if u.password is not None:  # keep it out of messages and logs
        userinfo, hostport = u.netloc.rsplit("@", 1)
        shown = u._replace(netloc=f"{userinfo.split(':', 1)[0]}@{hostport}").geturl()
    return BrokerAddress(u.hostname, port, u.scheme == "mqtts", username or u.username, password or u.password,
                         str(ca_file) if ca_file else None, str(cert_file) if cert_file else None, str(key_file) if key_file else None,
                         url=shown)


def to_address(broker: str | BrokerAddress) -> BrokerAddress:
    """A URL (no credentials) or an address built with :func:`parse_broker_url`."""
    return broker if isinstance(broker, BrokerAddress) else parse_broker_url(broker)


def rollout_topic(job: str = "+", prefix: str = DEFAULT_PREFIX) -> str:
    """Where ``fleet deploy`` keeps a rollout's record (retained) for the collectors' store: ``<prefix>/fleet/rollouts/<job>``.

    A topic between fleet-side programs only (devices never see it), so it lives here rather than in
    :mod:`device_agent.contract.protocol`; ``job="+"`` is the filter for all of them.
    """
    return f"{prefix}/fleet/rollouts/{job}"


def unreachable(address: BrokerAddress, error: object) -> FleetError:
    """The one error for a broker that does not accept a connection."""
    return FleetError(f"cannot reach the broker at {address.where}: {error}; check --broker and that the broker runs")


def check_reachable(address: BrokerAddress, timeout: float = 5.0) -> None:
    """Fail fast, with the address, when nothing listens there (a background session would retry quietly forever)."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return
    except OSError as e:
        raise unreachable(address, e) from None


@dataclass(frozen=True)
class Received:
    """One message as the broker delivered it (``mid`` and ``qos`` for a manual :meth:`BrokerSession.ack`)."""

    topic: str
    payload: bytes
    mid: int
    qos: int


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Every packet goes out at once (paho leaves Nagle's algorithm on). A fleet query written while the session's
    previous small packet (an acknowledgement, a marker) awaits the broker's TCP ACK, which Linux delays up to 40 ms,
    would otherwise wait for it: 40 ms of every ``fleet status --broker``."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket: nothing to tune
        pass


class BrokerSession:
    """One paho-mqtt client: connect (now or in the background), subscribe on every connect, publish QoS 1.

    Args:
        address: the broker (:func:`parse_broker_url`).
        client_id: the MQTT client id.
        topics: filters subscribed (QoS 1, one SUBSCRIBE) after every connect.
        on_message: called on paho's thread with each :class:`Received`; keep it short.
        on_connect: called on paho's thread after each accepted connect, before subscribing.
        clean: False keeps the broker session (queued QoS 1 messages) while the client is away.
        will: (topic, payload) published retained by the broker if this client vanishes.
        manual_ack: acknowledge QoS 1 messages only through :meth:`ack` (after they are stored).
        max_inflight: unacknowledged publishes paho keeps in flight.
    """

    def __init__(self, address: BrokerAddress, client_id: str, *, topics: Sequence[str] = (),
                 on_message: Callable[[Received], None] | None = None, on_connect: Callable[[], None] | None = None,
                 clean: bool = True, will: tuple[str, bytes] | None = None, manual_ack: bool = False, max_inflight: int = 20) -> None:
        self.address = address
        self.client_id = client_id
        self.topics = tuple(topics)
        #: why the broker refused the last connection attempt or a subscription (None: it did not)
        self.refusal: str | None = None
        self._ready = False
        self._changed = threading.Condition()
        self._on_message = on_message
        self._on_connect_hook = on_connect
        self._sub_mid: int | None = None
        self.client = self._make_client(clean=clean, will=will, manual_ack=manual_ack, max_inflight=max_inflight)

    def _make_client(self, *, clean: bool, will: tuple[str, bytes] | None, manual_ack: bool, max_inflight: int) -> paho.Client:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        a = self.address
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean, protocol=paho.MQTTv311,
                             manual_ack=manual_ack)
        client.max_inflight_messages_set(max_inflight)
        # paho types the delays as int but sleeps on floats: reconnect within 0.2 s after a broker restart
        client.reconnect_delay_set(0.2, 10)  # type: ignore[arg-type]
        if a.username:
            client.username_pw_set(a.username, a.password)
        if a.tls:
            client.tls_set(ca_certs=a.ca_file, certfile=a.cert_file, keyfile=a.key_file, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will:
            client.will_set(will[0], will[1], qos=QOS, retain=True)
        client.on_socket_open = _no_delay
        client.on_connect = self._connected
        client.on_subscribe = self._subscribed
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        return client

    # --- lifecycle ----------------------------------------------------------------------------------

    def open(self) -> BrokerSession:
        """Connect now (raises :class:`FleetError` when nothing answers at the address), then run in the background."""
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=KEEPALIVE_S)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise unreachable(self.address, e) from None
        self.client.loop_start()
        return self

    def start(self) -> BrokerSession:
        """Connect in the background, retrying until :meth:`close` (see :meth:`wait_ready`)."""
        self.client.connect_async(self.address.host, self.address.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()
        return self

    @property
    def ready(self) -> bool:
        """Connected, and every subscription granted."""
        return self._ready

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and every subscription was granted; False after ``timeout`` seconds or a refusal."""
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self.refusal is not None, timeout)
            return self._ready

    def close(self) -> None:
        """Disconnect cleanly and stop paho's thread."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    # --- sending ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> paho.MQTTMessageInfo:
        """QoS 1; the returned info says when the broker acknowledged it."""
        return self.client.publish(topic, payload, qos=QOS, retain=retain)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message received with ``manual_ack`` (no-op for QoS 0)."""
        if qos:
            self.client.ack(mid, qos)

    # --- paho callbacks (paho's thread) -------------------------------------------------------------

    def _connected(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("%s: the broker at %s refused the connection: %s", self.client_id, self.address.where, reason_code)
            self._set(ready=False, refusal=f"the broker at {self.address.where} refused the connection: {reason_code}")
            return
        self._set(ready=False, refusal=None)
        if self._on_connect_hook is not None:
            self._on_connect_hook()
        if not self.topics:
            self._set(ready=True, refusal=None)
            return
        _, self._sub_mid = client.subscribe([(t, QOS) for t in self.topics])

    def _subscribed(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if mid != self._sub_mid:
            return
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            shared = any(t.startswith("$share/") for t in self.topics)
            refusal = (f"the broker at {self.address.where} refused a subscription ({', '.join(failed)})"
                       + ("; does it support shared subscriptions?" if shared else ""))
            log.error("%s: %s", self.client_id, refusal)
            self._set(ready=False, refusal=refusal)
            return
        self._set(ready=True, refusal=None)

    def _disconnected(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._changed:
            self._ready = False

    def _set(self, *, ready: bool, refusal: str | None) -> None:
        with self._changed:
            self._ready, self.refusal = ready, refusal
            self._changed.notify_all()

    def _message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos))
