"""A protocol-level fleet simulator for benchmarks/fleet_scale.py: thousands of devices per process, real MQTT.

Each simulated device is one MQTT 3.1.1 connection (its own client id, a retained birth state and
a Last Will, QoS 1 telemetry with its own sequence numbers, PUBACKs awaited and counted) multiplexed
on one asyncio loop by a minimal client (:class:`Link`: CONNECT, PUBLISH, PUBACK, PINGREQ — no
subscriptions). Telemetry windows are the project's own: a :class:`device_agent.telemetry.Window`
with its FeatureTracker bins inputs drawn from the reference profile (shifted on two features for
drifted devices), its close() fields make a :class:`device_agent.contract.protocol.TelemetryMessage`, and
:func:`device_agent.contract.protocol.encode` makes the payload; per window only the envelope changes
(device, seq, timestamps), spliced into the encoded template with orjson.

Run as ``python benchmarks/scale_sim.py --port P --model DIR --first 0 --count 2500 ...``; it
writes what the broker acknowledged per device as JSON (``--out``), which the benchmark checks
against the store (every acknowledged sequence number must be stored).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import resource
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_agent.contract.manifest import load_manifest  # noqa: E402
from device_agent.contract.protocol import DeviceStatus, StateMessage, TelemetryMessage, Topics, encode, state_seq  # noqa: E402
from device_agent.telemetry import FeatureTracker, Window  # noqa: E402

GROUPS = 10
DRIFTED_EVERY = 20  # 5 % of the devices
PREFIX = "edgekit/v1"


def device_name(i: int) -> str:
    return f"dev-{i:05d}"


def group_of(i: int) -> str:
    return f"g{i % GROUPS}"


def drifted(i: int) -> bool:
    """Every 20th device of each group (5 %): a group's verdict moves little, the device's a lot."""
    return (i // GROUPS) % DRIFTED_EVERY == 7


# --- telemetry windows -----------------------------------------------------------------------------


class Templates:
    """Encoded telemetry windows (reference and drifted inputs) built with the agent's own Window; a window per send is one splice."""

    def __init__(self, model_dir: Path, *, samples: int, count: int | None = None, seed: int = 0) -> None:
        manifest = load_manifest(model_dir)
        self.model = {"name": manifest.name, "version": manifest.version}
        feats = list(manifest.features)
        rng = np.random.default_rng(seed)
        # enough distinct windows that merging a device's newest ones draws on ~20,000 distinct rows: a small pool
        # repeats the same few rows and its own sampling noise looks like drift
        count = count or max(8, -(-20_000 // samples))
        means = np.array([f.mean for f in feats])
        stds = np.array([max(f.std, 1e-6) for f in feats])
        self.pool: dict[bool, list[dict[str, Any]]] = {}
        self.messages: dict[bool, list[TelemetryMessage]] = {}
        for drift in (False, True):
            shift = np.zeros(len(feats))
            if drift:
                shift[[2, 5]] = 1.5 * stds[[2, 5]]
            self.messages[drift] = [self._one(feats, means + shift, stds, samples, rng) for _ in range(count)]
            self.pool[drift] = [json.loads(encode(m)) for m in self.messages[drift]]  # the agent's encoding; per window only the envelope changes

    def _one(self, feats: list[Any], means: np.ndarray, stds: np.ndarray, samples: int, rng: np.random.Generator) -> TelemetryMessage:
        w = Window(FeatureTracker(feats), clock=lambda: 0.0)
        for start in range(0, samples, 50):
            x = (means + stds * rng.standard_normal((min(50, samples - start), len(feats)))).astype(np.float32)
            w.record(0.0005 + 0.001 * rng.random(), inputs={"x": x})
        return TelemetryMessage(device="", seq=0, boot=1, ts=0.0, model=self.model, outbox=0, **w.close())

    def payload(self, i: int, seq: int, start: float, end: float, *, pick: int | None = None) -> bytes:
        """The encoded window ``seq`` of device ``i`` (template ``pick``, default: a random one)."""
        pool = self.pool[drifted(i)]
        d = dict(pool[random.randrange(len(pool)) if pick is None else pick])
        d.update(device=device_name(i), seq=seq, ts=round(end, 3), window={"start": round(start, 3), "end": round(end, 3)})
        return orjson.dumps(d)

    def window(self, i: int, seq: int, start: float, end: float) -> tuple[TelemetryMessage, bytes]:
        """A window as a message and its payload (for filing history directly in a store)."""
        pick = random.randrange(len(self.pool[drifted(i)]))
        msg = dataclasses.replace(self.messages[drifted(i)][pick], device=device_name(i), seq=seq, ts=round(end, 3),
                                  window={"start": round(start, 3), "end": round(end, 3)})
        return msg, self.payload(i, seq, start, end, pick=pick)

    def state(self, i: int, status: DeviceStatus) -> bytes:
        seq = state_seq(1, 0) if status == DeviceStatus.ONLINE else state_seq(1, 1 << 20)
        return encode(StateMessage(device_name(i), status, round(time.time(), 3), 1, "sim", group_of(i), {**self.model, "artifact": "model.onnx"},
                                   reason=None if status == DeviceStatus.ONLINE else "lwt", seq=seq))


# --- a minimal MQTT 3.1.1 client ---------------------------------------------------------------------


def _len(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, will: tuple[str, bytes], keepalive: int) -> bytes:
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retained
    body = _str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _str(client_id.encode()) + _str(will[0].encode()) + _str(will[1])
    return b"\x10" + _len(len(body)) + body


def publish_packet(topic: str, payload: bytes, pid: int, *, retain: bool = False, dup: bool = False) -> bytes:
    body = _str(topic.encode()) + struct.pack("!H", pid) + payload
    return bytes([0x32 | (0x01 if retain else 0) | (0x08 if dup else 0)]) + _len(len(body)) + body


class Link(asyncio.Protocol):
    """One device's connection: QoS 1 publishes with their PUBACKs (``acked`` is called with the sequence number)."""

    def __init__(self, on_ack: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.pending: dict[int, int] = {}  # packet id -> seq
        self.on_ack = on_ack
        self._buf = b""
        self._pid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"closed before CONNACK: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= 2:
            kind, n = self._buf[0] >> 4, self._buf[1]  # CONNACK, PUBACK, PINGRESP: two-byte remaining lengths
            if len(self._buf) < 2 + n:
                return
            body, self._buf = self._buf[2:2 + n], self._buf[2 + n:]
            if kind == 2 and not self.connected.done():
                if body[1] == 0:
                    self.connected.set_result(0)
                else:
                    self.connected.set_exception(ConnectionError(f"the broker refused the connection: CONNACK code {body[1]}"))
            elif kind == 4:
                seq = self.pending.pop(struct.unpack("!H", body[:2])[0], None)
                if seq is not None:
                    self.on_ack(seq)

    def publish(self, topic: str, payload: bytes, seq: int, *, retain: bool = False, dup: bool = False) -> None:
        self._pid = self._pid % 65535 + 1
        self.pending[self._pid] = seq
        assert self.transport is not None
        self.transport.write(publish_packet(topic, payload, self._pid, retain=retain, dup=dup))

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\xc0\x00")


# --- devices -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Device:
    index: int
    first: int  # the first sequence number this run sends
    seq: int = 0  # the last one sent
    acked: int = 0
    unacked: set[int] = dataclasses.field(default_factory=set)
    reconnects: int = 0

    def ack(self, seq: int) -> None:
        if seq > 0 and seq in self.unacked:
            self.unacked.discard(seq)
            self.acked += 1


async def run_device(dev: Device, args: argparse.Namespace, t: Templates, start: float, stop: float, stats: dict[str, float]) -> None:
    """Connect (retrying), announce, publish a window every interval until ``stop``; resend what was not acknowledged after a reconnect."""
    topics = Topics(device_name(dev.index), group_of(dev.index), prefix=PREFIX)
    phase = start + random.random() * args.interval
    dev.seq = dev.first - 1
    await asyncio.sleep(random.random() * args.ramp)  # connections spread over the ramp, as a fleet comes up
    link = await _connect(dev, args, t, topics, first=True)
    link.publish(topics.state, t.state(dev.index, DeviceStatus.ONLINE), 0, retain=True)
    k, last_ping = 0, time.time()
    while True:
        due = phase + k * args.interval
        if due >= stop:
            break
        await asyncio.sleep(max(0.0, due - time.time()))
        if link.lost.done():
            link = await _reconnect(dev, args, t, topics)
        dev.seq += 1
        dev.unacked.add(dev.seq)
        late = time.time() - due
        stats["late_max_s"] = max(stats["late_max_s"], late)
        link.publish(topics.telemetry, t.payload(dev.index, dev.seq, due - args.interval, time.time()), dev.seq)
        stats["published"] += 1
        k += 1
        if time.time() - last_ping > 100:
            link.ping()
            last_ping = time.time()
    await asyncio.sleep(min(30.0, args.drain))
    if link.transport is not None:
        link.transport.write(b"\xe0\x00")  # DISCONNECT: no Last Will
        link.transport.close()


async def _reconnect(dev: Device, args: argparse.Namespace, t: Templates, topics: Topics) -> Link:
    link = await _connect(dev, args, t, topics, first=False)
    for seq in sorted(dev.unacked):  # what the broker may not have: again, with the same sequence number (QoS 1)
        link.publish(topics.telemetry, t.payload(dev.index, seq, time.time() - args.interval, time.time()), seq, dup=True)
    return link


async def _connect(dev: Device, args: argparse.Namespace, t: Templates, topics: Topics, *, first: bool) -> Link:
    """Connect until the broker accepts (a refused or failed attempt is retried after ~1 s)."""
    loop = asyncio.get_running_loop()
    while True:
        if not first:
            dev.reconnects += 1
        first = False
        try:
            _, link = await loop.create_connection(lambda: Link(dev.ack), "127.0.0.1", args.port)
            assert link.transport is not None
            link.transport.write(connect_packet(device_name(dev.index), (topics.state, t.state(dev.index, DeviceStatus.OFFLINE)), 300))
            await asyncio.wait_for(link.connected, 60)
            return link
        except (OSError, ConnectionError, asyncio.TimeoutError):
            await asyncio.sleep(0.5 + random.random())


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    t = Templates(Path(args.model), samples=args.samples, seed=args.first)
    first_seq = json.loads(Path(args.seqs).read_text()) if args.seqs else {}
    devices = [Device(i, int(first_seq.get(device_name(i), 0)) + 1) for i in range(args.first, args.first + args.count)]
    start = args.start_at or time.time()
    stop = start + args.duration
    stats: dict[str, float] = {"published": 0, "late_max_s": 0.0}
    await asyncio.gather(*(run_device(d, args, t, start, stop, stats) for d in devices))
    return {"stats": stats, "devices": {device_name(d.index): {"first": d.first, "last": d.seq, "unacked": sorted(d.unacked),
                                                               "reconnects": d.reconnects} for d in devices}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True, help="model directory whose manifest's drift profile the windows are binned on")
    p.add_argument("--first", type=int, default=0, help="index of the first device of this process")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between a device's windows")
    p.add_argument("--samples", type=int, default=600, help="input rows per window")
    p.add_argument("--duration", type=float, required=True, help="seconds of sending")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the last acknowledgements")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the devices connect")
    p.add_argument("--start-at", type=float, default=0.0, help="wall time to start at (processes start together)")
    p.add_argument("--seqs", help="JSON {device: last sequence number already used} (the loaded history)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = asyncio.run(main_async(args))
    Path(args.out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
