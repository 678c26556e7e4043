"""Update jobs end to end on a device (no MQTT): the happy path, and every bad input and attack
from the issue. Each ends in the right state with a reason, and the device keeps serving."""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import numpy as np
import pytest

from device_agent.contract.protocol import CommandKind, JobState
from device_agent.ota import OtaSettings, OtaState
from device_agent.ota.delivery import decode_chunk, encode_chunk
from device_agent.ota.job import Limits, ProbationPolicy
from device_agent.ota.verify import load_trusted_keys
from edgekit.fleet.jobs import Release
from edgekit.signing import load_private_key
from tests.ota.harness import wait_until
from tests.ota.models import inputs


def serves(dev, version: str) -> None:
    """The device answers, with finite outputs, from ``version``; the store agrees and is consistent."""
    out = dev.predict(inputs(2, seed=3)["x"])
    assert out is not None and np.isfinite(out["logits"]).all()
    assert dev.version == version
    assert dev.store.current == version
    assert dev.store.check() == []
    assert dev.failed_requests == 0


def states(dev, job):
    return [(r.state, r.ota_state) for r in dev.reports if r.job == job]


# --- the happy path --------------------------------------------------------------------------


def test_update_goes_through_every_state_and_commits(device, releases):
    dev = device()
    serves(dev, "1.0.0")
    dev.deploy(releases["v2"], "j1")
    r = dev.wait_final("j1")
    assert (r.state, r.reason, r.ota_state) == (JobState.SUCCEEDED, "passed", "COMMITTED")
    assert [s for _, s in states(dev, "j1")] == ["DOWNLOADING", "VERIFYING", "STAGED", "PROBATION", "COMMITTED"]
    serves(dev, "1.1.0")
    assert dev.store.previous == "1.0.0"
    assert not any(dev.store.incoming_dir.iterdir())  # the download directory is gone


def test_chunks_arriving_in_any_order_still_assemble(device, releases):
    dev = device()
    dev.deploy(releases["v2"], "j1", chunk_size=1024, tamper=lambda c: list(reversed(c)))
    assert dev.wait_final("j1").state == JobState.SUCCEEDED
    serves(dev, "1.1.0")


def test_keeps_last_k_versions(device, releases):
    dev = device()
    for i, v in enumerate(("v2", "v3")):
        dev.deploy(releases[v], f"j{i}")
        assert dev.wait_final(f"j{i}").state == JobState.SUCCEEDED
    assert dev.store.slots() == ["1.0.0", "1.1.0", "1.2.0"]
    serves(dev, "1.2.0")


def test_redeploying_the_served_version_is_a_no_op(device, releases):
    dev = device()
    dev.deploy(releases["v1"], "same")
    r = dev.wait_final("same", load=False)
    assert (r.state, r.reason) == (JobState.SUCCEEDED, "already_current")
    serves(dev, "1.0.0")


# --- signatures and keys ------------------------------------------------------------------------


def _job_params(release, **changes):
    p = Release.open(release).job_params(chunk_size=4096)
    p.update(changes)
    return p


def test_tampered_manifest_fails_its_signature(device, releases):
    dev = device()
    doc = json.loads((releases["v2"] / "edgekit.json").read_bytes())
    doc["metrics"]["mlp.onnx"]["accuracy"] = 99.9  # any change to the signed bytes
    dev.deploy(releases["v2"], "j1", params=_job_params(releases["v2"], manifest=base64.b64encode(json.dumps(doc).encode()).decode()))
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "bad_signature")
    assert "modified after signing" in r.detail
    serves(dev, "1.0.0")


def test_missing_signature_is_refused(device, releases):
    dev = device()
    dev.deploy(releases["unsigned"], "j1")
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "unsigned")
    assert "edgekit sign" in r.detail and "allow_unsigned" in r.detail
    serves(dev, "1.0.0")


def test_unsigned_is_accepted_when_the_config_allows_it(device, releases, keys):
    dev = device(trusted=load_trusted_keys([keys["good"].public], allow_unsigned=True))
    dev.deploy(releases["unsigned"], "j1")
    assert dev.wait_final("j1").state == JobState.SUCCEEDED
    serves(dev, "1.3.0")


def test_key_not_in_the_trusted_list_is_refused(device, releases, keys):
    dev = device()
    dev.deploy(releases["stranger"], "j1")
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "untrusted_key")
    assert "trusted_keys" in r.detail
    serves(dev, "1.0.0")


def test_wrong_signature_bytes_are_refused(device, releases):
    dev = device()
    sig = json.loads((releases["v2"] / "edgekit.json.sig").read_text())
    sig["signature"] = base64.b64encode(bytes(64)).decode()
    dev.deploy(releases["v2"], "j1", params=_job_params(releases["v2"], signature=json.dumps(sig)))
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "bad_signature")
    serves(dev, "1.0.0")


# --- what travels through the broker --------------------------------------------------------------


def _reframe(chunks, n, mutate):
    """Replace chunk n's data and re-frame it consistently (an attacker who controls the broker)."""
    out = list(chunks)
    header, data = decode_chunk(out[n][1])
    new = mutate(bytearray(data))
    out[n] = (n, encode_chunk(job=header["job"], n=header["n"], count=header["count"], file=header["file"], offset=header["offset"],
                              data=bytes(new)))
    return out


def test_tampered_artifact_bytes_fail_the_sha256(device, releases):
    dev = device()

    def flip(b):
        b[10] ^= 0xFF
        return b

    dev.deploy(releases["v2"], "j1", tamper=lambda c: _reframe(c, 0, flip))
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "sha256_mismatch")
    assert "tampered" in r.detail
    serves(dev, "1.0.0")


def test_truncated_chunk_is_refused(device, releases):
    dev = device()
    dev.deploy(releases["v2"], "j1", tamper=lambda c: [c[0], (1, c[1][1][:-100]), *c[2:]])
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "bad_chunk")
    assert "truncated" in r.detail
    serves(dev, "1.0.0")


def test_chunk_cut_short_but_consistently_framed_is_refused(device, releases):
    dev = device()
    dev.deploy(releases["v2"], "j1", tamper=lambda c: _reframe(c, 0, lambda b: b[:-10]))
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "bad_chunk")
    serves(dev, "1.0.0")


def test_out_of_order_chunk_is_refused(device, releases):
    dev = device()
    # chunk 1's content published as chunk 0: right job, wrong place
    dev.deploy(releases["v2"], "j1", tamper=lambda c: [(0, c[1][1]), *c[1:]])
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "chunk_order")
    serves(dev, "1.0.0")


def test_chunk_from_another_job_is_refused(device, releases):
    dev = device()
    foreign = list(Release.open(releases["v2"]).chunks("other-job", 4096))
    dev.deploy(releases["v2"], "j1", tamper=lambda c: [foreign[0], *c[1:]])
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "chunk_order")
    serves(dev, "1.0.0")


def test_oversized_chunk_is_refused(device, releases):
    dev = device()
    dev.deploy(releases["v2"], "j1", tamper=lambda c: _reframe(c, len(c) - 1, lambda b: b + b"\0" * 5000))
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "oversized")
    serves(dev, "1.0.0")


def test_oversized_update_is_refused_before_downloading(device, releases, settings):
    dev = device(settings=dataclasses.replace(settings, limits=Limits(max_update_bytes=2000)))
    dev.deploy(releases["v2"], "j1")
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "oversized")
    assert "at most 2,000" in r.detail
    assert [s for _, s in states(dev, "j1")] == ["IDLE"]  # refused on arrival: nothing downloaded
    serves(dev, "1.0.0")


def test_chunks_that_never_come_time_out(device, releases):
    dev = device()
    dev.deploy(releases["v2"], "j1", tamper=lambda c: c[:-1], timeout_s=1.0)
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.TIMED_OUT, "timeout")
    assert "chunks arrived" in r.detail
    serves(dev, "1.0.0")


# --- the job document ----------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "reason", "words"), [
    ({"job_version": 7}, "unsupported_job_version", "job_version 7 is not supported"),
    ({"schema": "something.else"}, "bad_job", "expected 'edgekit.job'"),
    ({"manifest": "%%% not base64 %%%"}, "bad_job", "base64"),
    ({"artifacts": "mlp.onnx"}, "bad_job", "non-empty list"),
    ({"delivery": {"method": "carrier-pigeon"}}, "bad_job", "delivery.method"),
    ({"probation": {"requests": -5}}, "bad_job", "out of range"),
    ({"probation": {"bogus": 1}}, "bad_job", "unknown key 'bogus'"),
    ({"timeout_s": "soon"}, "bad_job", "timeout_s"),
])
def test_malformed_job_documents_are_rejected(device, releases, change, reason, words):
    dev = device()
    dev.deploy(releases["v2"], "j1", params=_job_params(releases["v2"], **change))
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, reason)
    assert words in r.detail
    serves(dev, "1.0.0")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/dir.onnx", "..", ".hidden"])
def test_file_names_with_directories_or_dotdot_are_refused(device, releases, name):
    dev = device()
    p = _job_params(releases["v2"])
    p["artifacts"][0]["file"] = name
    dev.deploy(releases["v2"], "j1", params=p)
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "unsafe_path")
    assert "plain file name" in r.detail
    serves(dev, "1.0.0")
    assert not (dev.root / "etc").exists()


def test_job_artifact_list_must_match_the_signed_manifest(device, releases):
    dev = device()
    p = _job_params(releases["v2"])
    p["artifacts"][0]["size"] += 1
    dev.deploy(releases["v2"], "j1", params=p)
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "manifest_mismatch")
    serves(dev, "1.0.0")


# --- models that are wrong -------------------------------------------------------------------------


def test_model_that_fails_to_load_is_rejected_never_served(device, releases):
    dev = device()
    dev.deploy(releases["noload"], "j1")
    r = dev.wait_final("j1")
    assert (r.state, r.reason, r.ota_state) == (JobState.REJECTED, "load_failed", "REJECTED")
    assert "does not load" in r.detail
    serves(dev, "1.0.0")
    assert "1.7.0" not in dev.store.slots()


def test_model_with_nan_outputs_is_rolled_back(device, releases):
    dev = device()
    dev.deploy(releases["nan"], "j1")
    r = dev.wait_final("j1")
    assert (r.state, r.reason, r.ota_state) == (JobState.FAILED, "nan_outputs", "ROLLED_BACK")
    assert "NaN/Inf" in r.detail
    serves(dev, "1.0.0")


def test_model_whose_self_test_fails_is_rejected(device, releases):
    dev = device()
    dev.deploy(releases["nan_selftest"], "j1")
    r = dev.wait_final("j1")
    assert (r.state, r.reason) == (JobState.REJECTED, "selftest_failed")
    serves(dev, "1.0.0")


def test_model_ten_times_slower_is_rolled_back(device, releases):
    dev = device()
    dev.deploy(releases["slow"], "j1")
    r = dev.wait_final("j1")
    assert (r.state, r.reason, r.ota_state) == (JobState.FAILED, "latency", "ROLLED_BACK")
    assert "previous model's" in r.detail
    serves(dev, "1.0.0")


def test_model_with_an_incompatible_signature_is_rejected(device, releases):
    dev = device()
    dev.deploy(releases["incompatible"], "j1")
    r = dev.wait_final("j1")
    assert (r.state, r.reason) == (JobState.REJECTED, "incompatible")
    assert "--allow-incompatible" in r.detail
    serves(dev, "1.0.0")


def test_runtime_errors_on_probation_roll_back(device, releases, monkeypatch):
    dev = device()
    dev.deploy(releases["v2"], "j1")
    assert wait_until(lambda: dev.updater.state == OtaState.PROBATION and dev.version == "1.1.0")
    cand = dev.serving.get()
    from device_agent.runtime import BackendError

    def broken(feeds):
        raise BackendError("simulated runtime failure")

    monkeypatch.setattr(cand, "run", broken)
    for _ in range(30):
        dev.predict(inputs(1)["x"])
    r = dev.wait_final("j1")
    assert (r.state, r.reason) == (JobState.FAILED, "error_rate")
    dev.failed_requests = 0  # the candidate's failures were the point
    serves(dev, "1.0.0")


def test_downgrade_is_refused(device, releases):
    dev = device("v2")
    dev.deploy(releases["v1"], "j1")
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.REJECTED, "downgrade")
    assert "fleet rollback" in r.detail
    serves(dev, "1.1.0")


# --- jobs against jobs ----------------------------------------------------------------------------


def test_duplicate_job_id_is_refused_and_redelivery_ignored(device, releases):
    dev = device()
    cmd = dev.deploy(releases["v2"], "j1")
    dev.updater.handle(cmd)  # QoS 1 redelivery of the same command: answered "replayed" (not recorded), not run again
    assert (dev.answer("j1").reason, dev.answer("j1").record) == ("replayed", False)
    assert dev.wait_final("j1").state == JobState.SUCCEEDED
    dev.deploy(releases["v3"], "j1")  # a different command reusing the id
    r = [x for x in dev.reports if x.job == "j1"][-1]
    assert (r.state, r.reason, r.record) == (JobState.REJECTED, "duplicate_job", False)  # the committed record stands
    assert "single-use" in r.detail
    time.sleep(0.3)
    serves(dev, "1.1.0")
    assert sum(1 for x in dev.reports if x.job == "j1" and x.ota_state == "DOWNLOADING") == 1
    assert dev.final("j1").state == JobState.SUCCEEDED


def test_second_job_while_one_runs_is_queued_then_runs(device, releases):
    dev = device()
    dev.deploy(releases["v2"], "j1")
    dev.deploy(releases["v3"], "j2")
    q = [x for x in dev.reports if x.job == "j2"][0]
    assert q.state == JobState.QUEUED and "queued behind job j1" in q.detail
    assert dev.wait_final("j1").state == JobState.SUCCEEDED
    assert dev.wait_final("j2").state == JobState.SUCCEEDED
    serves(dev, "1.2.0")


def test_second_job_is_refused_when_the_queue_is_full(device, releases, settings):
    dev = device(settings=dataclasses.replace(settings, queue_size=0))
    dev.deploy(releases["v2"], "j1")
    dev.deploy(releases["v3"], "j2")
    r = dev.final("j2")
    assert (r.state, r.reason) == (JobState.REJECTED, "busy")
    assert "job j1 is running" in r.detail
    assert dev.wait_final("j1").state == JobState.SUCCEEDED
    serves(dev, "1.1.0")


def test_cancel_during_download(device, releases, keys):
    dev = device()
    dev.deploy(releases["v2"], "j1", tamper=lambda c: c[:-1])  # stalls in DOWNLOADING
    assert wait_until(lambda: dev.updater.state == OtaState.DOWNLOADING)
    dev.command(CommandKind.CANCEL, "c1", key=load_private_key(keys["good"].private), params={"target": "j1"})
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.CANCELED, "canceled")
    assert dev.final("c1").state == JobState.SUCCEEDED
    serves(dev, "1.0.0")


# --- manual rollback --------------------------------------------------------------------------------


def test_signed_manual_rollback_returns_to_the_previous_version(device, releases, keys):
    dev = device()
    dev.deploy(releases["v2"], "j1")
    assert dev.wait_final("j1").state == JobState.SUCCEEDED
    dev.command(CommandKind.ROLLBACK, "rb1", key=load_private_key(keys["good"].private))
    r = dev.wait_final("rb1", load=False)
    assert (r.state, r.reason, r.ota_state) == (JobState.SUCCEEDED, "manual_rollback", "ROLLED_BACK")
    serves(dev, "1.0.0")


@pytest.mark.parametrize(("key", "reason"), [(None, "unsigned"), ("other", "untrusted_key")])
def test_manual_rollback_must_be_signed_by_a_trusted_key(device, releases, keys, key, reason):
    dev = device()
    dev.deploy(releases["v2"], "j1")
    assert dev.wait_final("j1").state == JobState.SUCCEEDED
    dev.command(CommandKind.ROLLBACK, "rb1", key=load_private_key(keys[key].private) if key else None)
    r = dev.final("rb1")
    assert (r.state, r.reason) == (JobState.REJECTED, reason)
    serves(dev, "1.1.0")


def test_manual_rollback_during_probation_reverts_the_update(device, releases, keys):
    dev = device(settings=OtaSettings(probation=ProbationPolicy(requests=10_000, seconds=600, min_requests=10, latency_floor_ms=50.0)))
    dev.deploy(releases["v2"], "j1")
    assert wait_until(lambda: dev.updater.state == OtaState.PROBATION)
    dev.command(CommandKind.ROLLBACK, "rb1", key=load_private_key(keys["good"].private))
    r = dev.wait_final("j1", load=False)
    assert (r.state, r.reason) == (JobState.FAILED, "manual_rollback")
    assert dev.wait_final("rb1", load=False).state == JobState.SUCCEEDED
    serves(dev, "1.0.0")


# --- shadow mode -----------------------------------------------------------------------------------


def test_shadow_mode_promotes_an_agreeing_candidate(device, releases, tmp_path, keys):
    from edgekit.signing import sign_dir
    from tests.ota.models import make_model_dir, mlp

    same = make_model_dir(tmp_path / "same", mlp(0), version="2.0.0")
    sign_dir(same, keys["good"].private)
    dev = device()
    dev.deploy(same, "j1", probation={"shadow": True, "shadow_sample": 1.0, "shadow_requests": 20})
    r = dev.wait_final("j1")
    assert r.state == JobState.SUCCEEDED
    assert "SHADOW" in [s for _, s in states(dev, "j1")]
    serves(dev, "2.0.0")


def test_shadow_mode_keeps_a_disagreeing_candidate_out(device, releases):
    dev = device()
    dev.deploy(releases["disagree"], "j1", probation={"shadow": True, "shadow_sample": 1.0, "shadow_requests": 40,
                                                      "shadow_min_agreement": 0.99})
    r = dev.wait_final("j1")
    assert (r.state, r.reason, r.ota_state) == (JobState.REJECTED, "shadow_disagreement", "REJECTED")
    assert "top-1 agreement" in r.detail
    serves(dev, "1.0.0")
