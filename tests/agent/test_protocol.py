import json

import pytest

from device_agent.contract.errors import ProtocolError
from device_agent.contract.protocol import (
    PROTOCOL_VERSION,
    Command,
    CommandKind,
    DeviceStatus,
    FeatureWindow,
    JobState,
    JobUpdate,
    LatencySummary,
    StateMessage,
    TelemetryMessage,
    Topics,
    decode,
    encode,
    shared,
)


def test_topics_follow_the_architecture():
    t = Topics("pi-07", "kitchen")
    assert t.state == "edgekit/v1/pi-07/state"
    assert t.telemetry == "edgekit/v1/pi-07/telemetry"
    assert t.cmd == "edgekit/v1/pi-07/cmd"
    assert t.group_cmd == "edgekit/v1/group/kitchen/cmd"
    assert t.job("j1") == "edgekit/v1/pi-07/jobs/j1"
    assert t.ota_chunk("j1", 3) == "edgekit/v1/pi-07/ota/j1/chunk/3"
    assert t.subscriptions() == (t.cmd, t.group_cmd)
    assert Topics.all_telemetry() == "edgekit/v1/+/telemetry"
    assert shared("ingest", Topics.all_telemetry()) == "$share/ingest/edgekit/v1/+/telemetry"
    assert Topics("d", prefix="acme/edge").state == "acme/edge/d/state"


@pytest.mark.parametrize("device", ["a/b", "a+", "#", "", "x" * 65])
def test_topics_refuse_ids_that_break_topics(device):
    with pytest.raises(ProtocolError, match="not usable in a topic"):
        Topics(device)


def test_prefix_with_wildcards_is_refused():
    with pytest.raises(ProtocolError, match="prefix"):
        Topics("d", prefix="edge/+/x")


def test_telemetry_round_trips_and_nan_becomes_null():
    msg = TelemetryMessage(
        device="pi-07", seq=5, boot=2, ts=1.5, model={"name": "m", "version": "1"}, window={"start": 0.0, "end": 1.0}, requests=3,
        errors={"shape": 1}, latency_ms=LatencySummary(2, 1.0, 2.0, 2.0, 2.0, 1.5),
        features=[FeatureWindow("x[0]", 4, [1, 2], 0, 0, 1, 0.0, 1.0, float("nan"), 0.5)], dropped=7,
    )
    raw = encode(msg)
    doc = json.loads(raw)
    assert doc["v"] == PROTOCOL_VERSION and doc["type"] == "telemetry" and doc["seq"] == 5 and doc["dropped"] == 7
    assert doc["features"][0]["mean"] is None
    back = decode(raw)
    assert isinstance(back, TelemetryMessage)
    assert back.seq == 5 and back.errors == {"shape": 1} and back.latency_ms.p95 == 2.0 and back.features[0].counts == [1, 2]


def test_state_command_and_job_round_trip():
    s = StateMessage("pi-07", DeviceStatus.ONLINE, 1.0, 3, "0.1.0", model={"name": "m"}, hardware={"machine": "aarch64"})
    assert decode(encode(s)).status == DeviceStatus.ONLINE
    c = Command(CommandKind.DEPLOY, "job-1", 2.0, {"url": "https://x/m.tar"})
    assert decode(encode(c)).params == {"url": "https://x/m.tar"}
    j = JobUpdate("pi-07", 9, 3, 4.0, "job-1", JobState.REJECTED, "nope")
    back = decode(encode(j))
    assert back.state == JobState.REJECTED and back.seq == 9


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not json", "not JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"v": 99, "type": "state"}', "protocol version 99 is not supported"),
        (b'{"v": 1, "type": "nope"}', "unknown message type 'nope'; known: state, telemetry, command, job"),
        (b'{"v": 1, "type": "command", "kind": "explode", "job": "j", "ts": 1}', "kind is 'explode'; allowed: deploy, rollback, cancel"),
        (b'{"v": 1, "type": "command", "kind": "deploy", "job": "a/b", "ts": 1}', "job id 'a/b'"),
        (b'{"v": 1, "type": "telemetry", "device": "d"}', "telemetry message is missing seq"),
    ],
)
def test_decode_rejects_with_a_precise_message(payload, message):
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(payload)


def test_state_order_puts_a_late_last_will_before_the_next_birth():
    from device_agent.contract.protocol import STATE_SEQ_OFFLINE, state_seq

    birth1, birth1b = state_seq(1, 1), state_seq(1, 2)  # a re-published birth on the same connection
    will1 = state_seq(1, STATE_SEQ_OFFLINE)
    birth2 = state_seq(2, 1)
    assert birth1 < birth1b < will1 < birth2
    s = StateMessage("pi-07", DeviceStatus.OFFLINE, 1.0, 3, "0.1.0", reason="lwt", seq=will1)
    assert decode(encode(s)).seq == will1
