"""ota.json: the frozen, versioned OtaRecord, and the files agents wrote before the record had a version."""

from __future__ import annotations

import json
import logging

from device_agent.contract.protocol import CommandKind, JobState
from device_agent.ota import OtaState
from device_agent.ota.record import RECORD_VERSION, HistoryEntry, OtaRecord, QueuedJob, load_record, save_record
from tests.ota.harness import Device

# what an agent before the versioned record wrote on probation with a second job queued (job params shortened)
OLD_ON_PROBATION = {
    "state": "PROBATION",
    "job": {"id": "j1", "kind": "deploy", "ts": 1796577852.0473912, "device": "dev", "params": {"schema": "edgekit.job"}},
    "queue": [{"id": "j2", "kind": "deploy", "ts": 1796577852.1793869, "device": "dev", "params": {"schema": "edgekit.job"}}],
    "seen": {"j1": "e28c274356b79959", "j2": "7c0fc40749f3da8a"}, "crashes": 0, "clean_shutdown": False, "history": [],
    "started": 1796577852.052, "from_slot": "1.0.0", "to_slot": "1.1.0", "reason": "",
    "detail": "serving 1.1.0 on probation: 100000 requests or 600 s", "since": 1796577852.146, "baseline": 1.6445900064354637e-05,
    "probation_started": 1796577852.146,
}
# ... and back in IDLE after that job: the IDLE move cleared the job's fields, the history kept its outcome
OLD_IDLE = {
    "state": "IDLE", "job": None, "queue": [], "seen": {"j1": "e28c274356b79959"}, "crashes": 0, "clean_shutdown": True,
    "history": [{"job": "j1", "kind": "deploy", "state": "COMMITTED", "reason": "passed",
                 "detail": "committed 1.1.0: 40 requests, 0 errors, p95 0.020 ms in 0.4 s", "ts": 1796577853.5}],
    "since": 1796577853.5, "started": 1796577852.052, "from_slot": None, "to_slot": None, "reason": "", "detail": "", "target": None,
    "baseline": None, "probation_started": 1796577852.146,
}


def test_a_record_written_before_versioning_reads_field_by_field(tmp_path):
    path = tmp_path / "ota.json"
    path.write_text(json.dumps(OLD_ON_PROBATION))
    rec = load_record(path)
    assert rec.state == OtaState.PROBATION
    assert rec.job == QueuedJob("j1", CommandKind.DEPLOY, 1796577852.0473912, "dev", {"schema": "edgekit.job"})
    assert [q.id for q in rec.queue] == ["j2"]
    assert (rec.crashes, rec.clean_shutdown, rec.from_slot, rec.to_slot) == (0, False, "1.0.0", "1.1.0")
    assert (rec.started, rec.probation_started) == (1796577852.052, 1796577852.146)
    assert rec.target is None and rec.shadow_started is None and rec.rolled_back == ()  # keys the old file does not have: defaults


#: keys old files have that the record no longer keeps: the probation baseline (latency is measured in pairs now) and
#: the seen job ids (moved into the replay record when the updater starts: test_an_agent_restarted_on_an_old_record...)
DROPPED = ("seen", "baseline")


def test_the_record_keeps_every_old_key_and_value_and_adds_its_version(tmp_path):
    for old in (OLD_ON_PROBATION, OLD_IDLE):
        (tmp_path / "old.json").write_text(json.dumps(old))
        rec = load_record(tmp_path / "old.json")
        save_record(tmp_path / "new.json", rec)
        doc = json.loads((tmp_path / "new.json").read_text())
        assert doc["record_version"] == RECORD_VERSION
        assert {k: v for k, v in doc.items() if k in old} == {k: v for k, v in old.items() if k not in DROPPED}
        assert load_record(tmp_path / "new.json") == rec


def test_the_record_is_frozen_and_changes_make_new_records():
    rec = OtaRecord()
    moved = rec.changed(state=OtaState.DOWNLOADING, started=1.0)
    assert (rec.state, moved.state, moved.started) == (OtaState.IDLE, OtaState.DOWNLOADING, 1.0)
    reverted = rec.revert("mlp", "1.1.0", "latency", 3.0)
    assert reverted.reverted("mlp", "1.1.0").reason == "latency" and rec.reverted("mlp", "1.1.0") is None
    assert reverted.unrevert("1.1.0").rolled_back == ()
    done = moved.changed(job=QueuedJob("j1", CommandKind.DEPLOY, 1.0, "dev", {}), reason="passed").finished(2.0)
    assert done.history == (HistoryEntry("j1", "deploy", "DOWNLOADING", "passed", "", 2.0),)


def test_a_record_from_a_newer_agent_or_a_damaged_file_starts_idle(tmp_path, caplog):
    path = tmp_path / "ota.json"
    path.write_text(json.dumps({**OLD_ON_PROBATION, "record_version": RECORD_VERSION + 1}))
    with caplog.at_level(logging.ERROR, "edgekit.agent.ota"):
        assert load_record(path) == OtaRecord()
    assert f"record_version {RECORD_VERSION + 1} was written by a newer agent" in caplog.text and "upgrade the agent" in caplog.text
    for damaged in ("{not json", json.dumps(["PROBATION"]), json.dumps({"state": "LIMBO"}), json.dumps({**OLD_IDLE, "queue": [7]})):
        path.write_text(damaged)
        assert load_record(path) == OtaRecord()


def test_an_agent_restarted_on_an_old_record_keeps_its_history_and_dedup(tmp_path, releases, trusted, settings, signer):
    root = tmp_path / "dev"
    root.mkdir()
    (root / "ota.json").write_text(json.dumps(OLD_IDLE))
    dev = Device(root, releases["v1"], trusted=trusted, settings=settings, key=signer)
    try:
        assert dev.updater.state == OtaState.IDLE
        assert [h["detail"] for h in dev.updater.status()["history"]] == [OLD_IDLE["history"][0]["detail"]]
        assert "seen" not in json.loads((root / "ota.json").read_text())  # moved into the replay record
        # job ids are single-use: j1 was seen by the agent that wrote the file
        dev.deploy(releases["v2"], "j1")
        (r,) = dev.reports
        assert (r.job, r.state, r.reason, r.record) == ("j1", JobState.REJECTED, "duplicate_job", False)
    finally:
        dev.stop()
