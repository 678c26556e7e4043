"""Property tests (hypothesis) of everything that reads a command from the broker: the protocol decoder, the job
document parser and the inbox behind the gate. Whatever arrives, the only exception is the documented one
(``ProtocolError`` / ``OtaError``), and a command the device did not accept changes nothing on it."""

from __future__ import annotations

import base64
import collections
import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.contract.errors import OtaError, ProtocolError
from device_agent.contract.protocol import Command, CommandKind, JobState, decode, encode
from device_agent.ota.job import Limits, ProbationPolicy, parse_job
from edgekit.fleet.jobs import Release, signed_command
from edgekit.signing import load_private_key
from tests.ota.harness import DEVICE, Device

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ids = st.sampled_from(["j1", "pi-07", "dev", "default", "", "a/b", "#", "x" * 70]) | st.text(max_size=12)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**70, 2**70) | st.sampled_from([time.time(), 0, -1]) | json_values


@st.composite
def command_dicts(draw) -> dict:
    """Well-formed command messages (any version, target, time, signature) with up to three fields junk or dropped."""
    now = time.time()
    d = {"v": 1, "type": "command", "device": draw(st.sampled_from([DEVICE, "pi-08", ""])), "kind": draw(st.sampled_from(list(CommandKind))),
         "job": draw(st.sampled_from(["j1", "j2", "deploy-1"])), "ts": now + draw(st.floats(-1e5, 1e5)),
         "params": draw(st.dictionaries(st.sampled_from(["to", "target", "schema", "probation", "auth"]), json_values, max_size=3)),
         "group": draw(st.sampled_from(["", "", "default", "lab"])), "expires": now + draw(st.floats(-1e5, 2e5)),
         "command_version": draw(st.sampled_from([1, 2, 2])),
         "auth": draw(st.none() | st.fixed_dictionaries({"key_id": st.text(max_size=16), "signature": st.text(max_size=90)}))}
    junk = {"v": st.sampled_from([2, "1", None]), "type": st.sampled_from(["job", None, 3]), "device": ids, "kind": st.sampled_from(["reboot", 5]),
            "job": ids, "ts": numbers, "params": json_values, "group": ids, "expires": numbers,
            "command_version": st.sampled_from([3, True, "2", None]), "auth": json_values}
    for key in draw(st.lists(st.sampled_from(sorted(d)), max_size=3)):
        if draw(st.booleans()):
            d.pop(key, None)
        else:
            d[key] = draw(junk[key])
    return d


@SETTINGS
@given(st.binary(max_size=300))
def test_decode_of_any_bytes_raises_only_protocol_error(payload):
    try:
        decode(payload)
    except ProtocolError:
        pass


@SETTINGS
@given(command_dicts())
def test_decode_of_any_command_raises_only_protocol_error_and_reads_back_what_it_accepts(d):
    try:
        msg = decode(json.dumps(d))
    except ProtocolError:
        return
    if isinstance(msg, Command):
        assert math.isfinite(msg.ts) and math.isfinite(msg.expires)
        assert decode(encode(msg)) == msg  # what was accepted survives the round trip unchanged (the signature depends on it)


@st.composite
def job_documents(draw, valid: dict) -> dict:
    """A valid job document with fields replaced by junk, junk manifests (base64 of any JSON) and junk artifacts."""
    p = json.loads(json.dumps(valid))
    for key in draw(st.lists(st.sampled_from(sorted(p) + ["probation", "allow_incompatible", "allow_rolled_back"]), max_size=3)):
        p[key] = draw(json_values | st.builds(lambda v: base64.b64encode(json.dumps(v).encode()).decode(), json_values))
    if draw(st.booleans()):
        p["artifacts"] = [draw(st.dictionaries(st.sampled_from(["file", "size", "sha256", "url"]), json_values, max_size=4))]
    if draw(st.booleans()):
        p["probation"] = draw(st.dictionaries(st.sampled_from(["requests", "seconds", "shadow", "latency_samples", "bogus"]), json_values))
    return p


@pytest.fixture(scope="module")
def valid_job(releases) -> dict:
    return Release.open(releases["v2"]).job_params(chunk_size=4096)


def test_the_job_parser_raises_only_ota_error(valid_job):
    @SETTINGS
    @given(job_documents(valid_job))
    def check(params):
        try:
            job = parse_job("j1", params, defaults=ProbationPolicy(), limits=Limits())
        except OtaError as e:
            assert e.reason and str(e).startswith("job j1")
            return
        assert job.total_bytes >= 0 and job.timeout_s > 0

    check()


@pytest.fixture(scope="module")
def idle_device(tmp_path_factory, releases, keys):
    """One device (its updater thread not started: the inbox alone is under test), shared by the examples."""
    from device_agent.ota.verify import load_trusted_keys

    dev = Device(tmp_path_factory.mktemp("fuzz") / "dev", releases["v1"], trusted=load_trusted_keys([keys["good"].public]), start=False)
    yield dev
    dev.stop()


def _state(dev: Device) -> tuple[bytes, int]:
    return (dev.root / "ota.json").read_bytes(), len(dev.updater.replay)


def test_junk_commands_change_nothing_and_raise_nothing(idle_device):
    dev = idle_device

    @SETTINGS
    @given(command_dicts())
    def check(d):
        try:
            msg = decode(json.dumps(d))
        except ProtocolError:
            return
        if not isinstance(msg, Command):
            return
        before, n = _state(dev), len(dev.reports)
        dev.updater.handle(msg)  # never raises
        (r,) = dev.reports[n:]  # one answer per command
        assert (r.state, r.record) == (JobState.REJECTED, False) and r.reason
        assert _state(dev) == before  # refused: not queued, not remembered, nothing written

    check()


def test_signed_commands_with_any_parameters_never_raise(idle_device, keys, valid_job):
    dev = idle_device
    key = load_private_key(keys["good"].private)
    counter = iter(range(10**9))
    outcomes: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(st.sampled_from(list(CommandKind)), job_documents(valid_job))
    def check(kind, params):
        job = f"p{next(counter)}"
        try:
            cmd = signed_command(kind, job, device=DEVICE, params=params, key=key)
        except ValueError:  # NaN/inf in params: canonical JSON cannot sign it, so no one can send it signed
            return
        before = _state(dev)
        n = len(dev.reports)
        dev.updater.handle(cmd)
        reports = dev.reports[n:]
        assert all(r.state in JobState for r in reports)
        if any(not r.record for r in reports):
            assert _state(dev) == before
        assert dev.updater.replay.digest(job) is not None or any(not r.record for r in reports)
        outcomes.update(r.reason or str(r.state) for r in reports)
        outcomes["accepted"] += dev.updater.replay.digest(job) is not None
        rec = dev.updater.record
        dev.updater.runner.save(rec.changed(queue=()))  # keep the queue from filling: each example starts with room

    check()
    assert outcomes["accepted"] > 50 and outcomes["bad_job"] > 10, outcomes  # the examples reached the job parser and the queue
