"""An attacker on the LAN (issue 14) against two real agents on a real Mosquitto: captured signed commands replayed
to another device, another group, later, after a flood of junk, with their job id reused or their safety settings
changed, and a rolled-back release deployed again. Every one is refused, with its reason in the answer on the job's
topic; no committed record is overwritten; junk leaves no retained message on the broker."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.contract.protocol import Command, CommandKind, encode
from device_agent.daemon import ANSWERS_PER_MINUTE, Daemon
from device_agent.ota.verify import sign_command
from edgekit.fleet.client import FleetClient
from edgekit.fleet.jobs import Release, signed_command
from edgekit.signing import load_private_key
from tests.ota.harness import wait_until
from tests.ota.test_agent_ota import Load, config

pytestmark = pytest.mark.slow

FAST = {"probation_requests": 20, "probation_seconds": 20, "probation_min_requests": 5}


@pytest.fixture
def lan(tmp_path, mosquitto, releases, keys, mqtt_collector):
    """pi-07 (group lab) and pi-08 (group cams) serving v1 under load; a fleet session; a collector of every job message."""
    daemons = {}
    for device, group in (("pi-07", "lab"), ("pi-08", "cams")):
        cfg = config(tmp_path / device, mosquitto, releases["v1"], keys["good"].public, **FAST)
        cfg = dataclasses.replace(cfg, device=dataclasses.replace(cfg.device, id=device, group=group))
        daemons[device] = Daemon.from_config(cfg)
        daemons[device].start()
    loads = [Load(d.agent) for d in daemons.values()]
    jobs = mqtt_collector(mosquitto, ["edgekit/v1/+/jobs/+"])
    fc = FleetClient(mosquitto.url).__enter__()
    try:
        assert wait_until(lambda: all(d.link.connected for d in daemons.values()), 10)
        assert wait_until(lambda: {"pi-07", "pi-08"} <= set(fc.snapshot()), 10)
        yield daemons, fc, jobs, mosquitto
    finally:
        fc.close()
        for load in loads:
            load.stop()
        for d in daemons.values():
            d.stop()


def publish(fc: FleetClient, topic: str, payload: bytes) -> None:
    fc.flush([fc.publish(topic, payload)])


def deploy(fc: FleetClient, device: str, cmd: Command, release: Release) -> Command:
    """Publish a deploy's chunks (retained) and the command; wait for the device's final job state."""
    fc.flush(fc.publish_chunks(device, cmd.job, release.chunks(cmd.job, 2048)) + [fc.send(device, cmd)])
    assert final(fc, device, cmd.job), f"job {cmd.job} on {device} did not finish"
    return cmd


def final(fc: FleetClient, device: str, job: str, timeout: float = 60.0) -> str | None:
    def done(views) -> bool:
        u = views.get(device) and views[device].jobs.get(job)
        return bool(u) and str(u.state) not in ("QUEUED", "IN_PROGRESS")

    if not fc.wait_for(done, timeout):
        return None
    return str(fc.snapshot()[device].jobs[job].state)


def answer(jobs, device: str, job: str) -> dict:
    """The device's answer to a refused command of ``job``: one message, not retained."""
    topic = f"edgekit/v1/{device}/jobs/{job}"
    wait_until(lambda: any(t == topic for t, _, _ in jobs.messages), 10)
    (msg,) = [(json.loads(p), r) for t, p, r in jobs.messages if t == topic]
    doc, retained = msg
    assert not retained and doc["seq"] == 0 and doc["state"] == "REJECTED", doc
    return doc


def retained(broker, topic_filter: str, settle: float = 1.5) -> dict[str, dict]:
    """What the broker holds retained under ``topic_filter`` (a fresh subscriber's view)."""
    got: dict[str, dict] = {}
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    c.on_message = lambda client, userdata, msg: got.__setitem__(msg.topic, json.loads(msg.payload)) if msg.retain and msg.payload else None
    c.on_connect = lambda client, *a: client.subscribe(topic_filter, qos=1)
    c.connect(broker.host, broker.port)
    c.loop_start()
    time.sleep(settle)
    c.loop_stop()
    c.disconnect()
    return got


def unchanged(daemon: Daemon, version: str, accepted: int) -> None:
    """Still serving ``version``, idle, and no command was added to the replay record."""
    assert daemon.agent.model.version == version
    assert str(daemon.updater.state) == "IDLE" and daemon.updater.record.queue == ()
    assert len(daemon.updater.replay) == accepted


def test_commands_for_another_device_group_time_or_setting_are_refused(lan, releases, keys):
    daemons, fc, jobs, broker = lan
    key, stranger = load_private_key(keys["good"].private), load_private_key(keys["other"].private)
    rel = Release.open(releases["v2"])
    params = rel.job_params(chunk_size=2048)
    now = time.time()

    def forged(**change) -> Command:
        cmd = Command(CommandKind.ROLLBACK, f"x-{uuid.uuid4().hex[:8]}", now, {}, device="pi-08", expires=now + 600)
        cmd = dataclasses.replace(cmd, **change)
        return dataclasses.replace(cmd, auth=sign_command(key, cmd))

    captured = signed_command(CommandKind.DEPLOY, "deploy-for-07", device="pi-07", params=params, key=key)
    for_08 = signed_command(CommandKind.DEPLOY, "deploy-for-08", device="pi-08", params=params, key=key)
    lowered = dataclasses.replace(for_08, job="lowered", params={**params, "probation": {"seconds": 0}})  # auth of another body
    attacks = [  # (what, topic, command, reason)
        ("cross-device", "edgekit/v1/pi-08/cmd", captured, "wrong_target"),
        ("cross-group", "edgekit/v1/group/cams/cmd", forged(device="", group="lab", job="for-lab"), "wrong_target"),
        ("expired", "edgekit/v1/pi-08/cmd", forged(ts=now - 1800, expires=now - 1200, job="old"), "expired"),
        ("from the future", "edgekit/v1/pi-08/cmd", forged(ts=now + 3600, expires=now + 4200, job="future"), "not_yet_valid"),
        ("standing order", "edgekit/v1/pi-08/cmd", forged(expires=now + 10 * 86400, job="forever"), "bad_command"),
        ("safety settings changed", "edgekit/v1/pi-08/cmd", lowered, "bad_signature"),
        ("unsigned", "edgekit/v1/pi-08/cmd", dataclasses.replace(for_08, job="nosig", auth=None), "unsigned"),
        ("untrusted key", "edgekit/v1/pi-08/cmd", dataclasses.replace(for_08, job="stranger", auth=sign_command(stranger, for_08)),
         "untrusted_key"),
        ("command version 1", "edgekit/v1/pi-08/cmd", Command(CommandKind.ROLLBACK, "v1-cmd", now, {}, device="pi-08", command_version=1),
         "old_command"),
    ]
    for what, topic, cmd, want in attacks:
        publish(fc, topic, encode(cmd))
        doc = answer(jobs, "pi-08", cmd.job)
        assert doc["reason"] == want, (what, doc)
        assert doc["detail"], what
    unchanged(daemons["pi-08"], "1.0.0", 0)
    assert daemons["pi-07"].agent.model.version == "1.0.0"  # the command for pi-07 never reached pi-07 here
    assert retained(broker, "edgekit/v1/pi-08/jobs/+") == {}  # nothing left behind


def test_a_captured_rollback_replayed_after_a_junk_flood_is_refused(lan, releases, keys):
    daemons, fc, jobs, broker = lan
    key = load_private_key(keys["good"].private)
    pi07 = daemons["pi-07"]
    dep = deploy(fc, "pi-07", signed_command(CommandKind.DEPLOY, "d1", device="pi-07", params=Release.open(releases["v2"]).job_params(
        chunk_size=2048), key=key), Release.open(releases["v2"]))
    assert final(fc, "pi-07", "d1") == "SUCCEEDED" and pi07.agent.model.version == "1.1.0"
    rb = signed_command(CommandKind.ROLLBACK, "rb1", device="pi-07", key=key)
    fc.flush([fc.send("pi-07", rb)])
    assert final(fc, "pi-07", "rb1") == "SUCCEEDED" and pi07.agent.model.version == "1.0.0"
    accepted = len(pi07.updater.replay)

    junk = [encode(Command(CommandKind.ROLLBACK, f"junk-{i}", time.time(), {}, device="pi-07", expires=time.time() + 60)) for i in range(520)]
    fc.flush([fc.publish("edgekit/v1/pi-07/cmd", p) for p in junk])
    assert wait_until(lambda: sum(1 for t, _, _ in jobs.messages if "/jobs/junk-" in t) >= 20, 10)
    time.sleep(0.5)
    assert sum(1 for t, _, _ in jobs.messages if "/jobs/junk-" in t) <= ANSWERS_PER_MINUTE  # a few answers, then only the log
    for cmd in (rb, dep):  # the captured commands, byte for byte, after the flood
        publish(fc, "edgekit/v1/pi-07/cmd", encode(cmd))
        job = cmd.job
        assert wait_until(lambda job=job: refusals(jobs, "pi-07", job) == ["replayed"], 10), refusals(jobs, "pi-07", job)
    unchanged(pi07, "1.0.0", accepted)  # junk never entered the replay record, the replays did nothing
    held = retained(broker, "edgekit/v1/pi-07/jobs/+")
    assert sorted(held) == ["edgekit/v1/pi-07/jobs/d1", "edgekit/v1/pi-07/jobs/rb1"]  # 0 retained messages from 520 junk commands
    assert (held["edgekit/v1/pi-07/jobs/d1"]["state"], held["edgekit/v1/pi-07/jobs/rb1"]["state"]) == ("SUCCEEDED", "SUCCEEDED")


def refusals(jobs, device: str, job: str) -> list[str]:
    """Reasons of the device's answers (seq 0, not retained) on ``job``'s topic, beside its recorded states."""
    docs = [(json.loads(p), r) for t, p, r in jobs.messages if t == f"edgekit/v1/{device}/jobs/{job}" and p]
    assert all(not r for d, r in docs if d["seq"] == 0)
    return [d["reason"] for d, _ in docs if d["seq"] == 0]


def test_a_reused_job_id_never_overwrites_the_committed_record(lan, releases, keys):
    daemons, fc, jobs, broker = lan
    key = load_private_key(keys["good"].private)
    v2, v3 = Release.open(releases["v2"]), Release.open(releases["v3"])
    deploy(fc, "pi-07", signed_command(CommandKind.DEPLOY, "j1", device="pi-07", params=v2.job_params(chunk_size=2048), key=key), v2)
    assert final(fc, "pi-07", "j1") == "SUCCEEDED"
    reuse = signed_command(CommandKind.DEPLOY, "j1", device="pi-07", params=v3.job_params(chunk_size=2048), key=key)
    publish(fc, "edgekit/v1/pi-07/cmd", encode(reuse))
    assert wait_until(lambda: refusals(jobs, "pi-07", "j1") == ["duplicate_job"], 10), refusals(jobs, "pi-07", "j1")
    time.sleep(0.5)
    assert daemons["pi-07"].agent.model.version == "1.1.0" and "1.2.0" not in daemons["pi-07"].updater.store.slots()
    held = retained(broker, "edgekit/v1/pi-07/jobs/j1")
    assert held["edgekit/v1/pi-07/jobs/j1"]["state"] == "SUCCEEDED"  # the committed record stands
    assert str(fc.snapshot()["pi-07"].jobs["j1"].state) == "SUCCEEDED"


def test_a_rolled_back_release_needs_the_signed_override(lan, releases, keys):
    daemons, fc, jobs, broker = lan
    key = load_private_key(keys["good"].private)
    pi07 = daemons["pi-07"]
    v2 = Release.open(releases["v2"])
    first = deploy(fc, "pi-07", signed_command(CommandKind.DEPLOY, "d1", device="pi-07", params=v2.job_params(chunk_size=2048), key=key), v2)
    fc.flush([fc.send("pi-07", signed_command(CommandKind.ROLLBACK, "rb1", device="pi-07", key=key))])
    assert final(fc, "pi-07", "rb1") == "SUCCEEDED" and pi07.agent.model.version == "1.0.0"

    # the captured deploy, replayed with probation lowered: the signature no longer matches
    lowered = dataclasses.replace(first, params={**first.params, "probation": {"seconds": 0}})
    publish(fc, "edgekit/v1/pi-07/cmd", encode(lowered))
    assert wait_until(lambda: refusals(jobs, "pi-07", "d1") == ["bad_signature"], 10), refusals(jobs, "pi-07", "d1")
    # a fresh, signed deploy of the same release without the override: refused, and that is the job's record
    deploy(fc, "pi-07", signed_command(CommandKind.DEPLOY, "d2", device="pi-07", params=v2.job_params(chunk_size=2048), key=key), v2)
    u = fc.snapshot()["pi-07"].jobs["d2"]
    assert (str(u.state), u.reason) == ("REJECTED", "rolled_back") and "--allow-rolled-back" in u.detail
    assert pi07.agent.model.version == "1.0.0"
    # with the override signed into the job: deployed on purpose
    again = v2.job_params(chunk_size=2048, allow_rolled_back=True)
    deploy(fc, "pi-07", signed_command(CommandKind.DEPLOY, "d3", device="pi-07", params=again, key=key), v2)
    assert final(fc, "pi-07", "d3") == "SUCCEEDED" and pi07.agent.model.version == "1.1.0"
    assert pi07.updater.record.rolled_back == ()  # committed on purpose: no longer refused
