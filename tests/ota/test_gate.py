"""The command gate alone (a fake clock): which commands a device acts on, and what it remembers of them."""

from __future__ import annotations

import dataclasses

import pytest

from device_agent.contract.errors import OtaError
from device_agent.contract.protocol import Command, CommandKind
from device_agent.ota.gate import CLOCK_SKEW_S, MAX_TTL_S, CommandGate, Identity
from device_agent.ota.replay import ReplayRecord
from device_agent.ota.verify import load_trusted_keys, sign_command
from edgekit.fleet.jobs import COMMAND_TTL_S, signed_command
from edgekit.signing import load_private_key

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def gate(tmp_path, keys):
    clock = Clock()
    g = CommandGate(load_trusted_keys([keys["good"].public]), Identity("pi-07", "lab"), ReplayRecord(tmp_path / "replay.sqlite", clock=clock),
                    clock=clock)
    g.clock_ = clock
    return g


@pytest.fixture
def key(keys):
    return load_private_key(keys["good"].private)


def signed(key, **fields) -> Command:
    cmd = Command(**{"kind": CommandKind.ROLLBACK, "job": "rb1", "ts": NOW, "params": {}, "device": "pi-07", "expires": NOW + 600, **fields})
    return dataclasses.replace(cmd, auth=sign_command(key, cmd))


def reason(gate, cmd) -> str:
    with pytest.raises(OtaError) as e:
        gate.check(cmd)
    return e.value.reason


def test_a_signed_command_for_this_device_or_its_group_passes_once(gate, key):
    for cmd in (signed(key), signed(key, job="g1", device="", group="lab")):
        digest = gate.check(cmd)
        gate.remember(cmd, digest)
        assert reason(gate, cmd) == "replayed"  # the same command again: a replay or a QoS 1 redelivery
        assert reason(gate, signed(key, job=cmd.job, params={"to": "1.0.0"})) == "duplicate_job"
    assert len(gate.replay) == 2


@pytest.mark.parametrize(("fields", "want"), [
    ({"device": "pi-08"}, "wrong_target"),
    ({"device": "", "group": "cams"}, "wrong_target"),
    ({"device": ""}, "bad_command"),  # no target
    ({"group": "lab"}, "bad_command"),  # two targets
    ({"ts": NOW - 3600, "expires": NOW - CLOCK_SKEW_S - 1}, "expired"),
    ({"ts": NOW + CLOCK_SKEW_S + 60, "expires": NOW + 3600}, "not_yet_valid"),
    ({"expires": NOW + MAX_TTL_S + 1}, "bad_command"),  # a standing order
    ({"expires": NOW - 1}, "bad_command"),  # expires before it was issued
])
def test_commands_for_another_target_or_time_are_refused_and_not_remembered(gate, key, fields, want):
    assert reason(gate, signed(key, **fields)) == want
    assert len(gate.replay) == 0


def test_the_clock_skew_is_tolerated_both_ways(gate, key):
    gate.check(signed(key, ts=NOW + CLOCK_SKEW_S - 1, expires=NOW + 3600))
    gate.check(signed(key, ts=NOW - 900, expires=NOW - CLOCK_SKEW_S + 1))


def test_the_messages_say_what_and_the_fix(gate, key):
    with pytest.raises(OtaError, match=r"the command is for device 'pi-08'; this is 'pi-07'"):
        gate.check(signed(key, device="pi-08"))
    with pytest.raises(OtaError, match=r"expired at 2027-01-15T07:40:00Z, 1,200 s ago .*send it again .*check the device's clock"):
        gate.check(signed(key, ts=NOW - 1800, expires=NOW - 1200))
    with pytest.raises(OtaError, match=r"version 1 carries no signed target or expiry.*upgrade edgekit"):
        gate.check(Command(CommandKind.ROLLBACK, "v1", NOW, {}, device="pi-07", command_version=1))


def test_unsigned_and_tampered_commands_are_refused_before_anything_else(gate, key, keys):
    cmd = signed(key)
    assert reason(gate, dataclasses.replace(cmd, auth=None)) == "unsigned"
    assert reason(gate, dataclasses.replace(cmd, expires=NOW + 1200)) == "bad_signature"  # a longer life is a change too
    assert reason(gate, dataclasses.replace(cmd, device="pi-08")) == "bad_signature"  # re-targeted: the signature says pi-07
    other = load_private_key(keys["other"].private)
    assert reason(gate, dataclasses.replace(cmd, auth=sign_command(other, cmd))) == "untrusted_key"
    assert len(gate.replay) == 0


def test_devices_that_allow_unsigned_take_old_and_unsigned_commands(tmp_path, keys):
    clock = Clock()
    g = CommandGate(load_trusted_keys([keys["good"].public], allow_unsigned=True), Identity("pi-07"), ReplayRecord(tmp_path / "r.sqlite"),
                    clock=clock)
    old = Command(CommandKind.ROLLBACK, "v1", NOW, {}, device="pi-07", command_version=1)
    g.remember(old, g.check(old))
    new = Command(CommandKind.ROLLBACK, "v2", NOW, {}, device="pi-07", expires=NOW + 60)
    g.remember(new, g.check(new))
    for cmd, want in ((old, "replayed"), (dataclasses.replace(new, job="v3", device="pi-08"), "wrong_target")):
        with pytest.raises(OtaError) as e:  # what a command says about its target and time still counts
            g.check(cmd)
        assert e.value.reason == want


def test_the_fleet_signs_what_the_device_checks(gate, key):
    cmd = signed_command(CommandKind.DEPLOY, "d1", device="pi-07", params={"probation": {"seconds": 60}}, key=key)
    gate.clock_.t = cmd.ts
    assert cmd.expires == pytest.approx(cmd.ts + COMMAND_TTL_S)
    gate.check(cmd)
    gate.clock_.t = cmd.expires + CLOCK_SKEW_S + 1
    assert reason(gate, cmd) == "expired"


def test_a_full_record_forgets_only_expired_entries_and_otherwise_refuses(tmp_path):
    clock = Clock()
    r = ReplayRecord(tmp_path / "r.sqlite", max_entries=3, clock=clock)
    for i, expires in enumerate((NOW - 10, NOW + 60, NOW + 60)):
        r.add(f"j{i}", "d", kind="deploy", expires=expires)
    r.make_room()  # j0 has expired: it goes
    assert (r.digest("j0"), len(r)) == (None, 2)
    r.add("j3", "d", kind="deploy", expires=NOW + 60)
    with pytest.raises(OtaError, match="all still valid") as e:
        r.make_room()
    assert e.value.reason == "busy" and len(r) == 3
