"""The model store: atomic pointers, install, revert, keep-K, recovery from leftovers."""

from __future__ import annotations

import json
import shutil

import pytest

from device_agent.contract.errors import OtaError
from device_agent.ota.store import ModelStore, slot_name


def install(store, release, job):
    d = store.incoming(job)
    for p in release.iterdir():
        shutil.copy(p, d / p.name)
    from device_agent.contract.manifest import load_manifest

    return store.install(job, slot_name(load_manifest(d).version))


def test_activate_switches_both_pointers_in_one_file(tmp_path, releases):
    s = ModelStore(tmp_path / "m")
    s.adopt(releases["v1"])
    slot = install(s, releases["v2"], "j1")
    assert slot.name == "1.1.0" and not (s.incoming_dir / "j1").exists()
    s.activate("1.1.0")
    doc = json.loads((tmp_path / "m" / "pointers.json").read_text())
    assert (doc["current"], doc["previous"]) == ("1.1.0", "1.0.0")
    assert ModelStore(tmp_path / "m").current == "1.1.0"  # durable: a new instance reads the same
    assert s.check() == []


def test_revert_goes_back_and_drops_the_reverted_version_from_history(tmp_path, releases):
    s = ModelStore(tmp_path / "m")
    s.adopt(releases["v1"])
    for v, j in (("v2", "a"), ("v3", "b")):
        s.activate(install(s, releases[v], j).name)
    assert s.revert() == "1.1.0"
    assert (s.current, s.previous) == ("1.1.0", "1.0.0")
    assert "1.2.0" not in s.history
    assert s.revert() == "1.0.0" and s.previous is None
    with pytest.raises(OtaError, match="no previous version") as e:
        s.revert()
    assert e.value.reason == "no_previous"


def test_gc_keeps_the_newest_k_and_never_current_or_previous(tmp_path, releases):
    s = ModelStore(tmp_path / "m", keep=2)
    s.adopt(releases["v1"])
    for v, j in (("v2", "a"), ("v3", "b")):
        s.activate(install(s, releases[v], j).name)
    assert s.gc() == ["1.0.0"]
    assert s.slots() == ["1.1.0", "1.2.0"] and s.check() == []


def test_install_is_idempotent_after_a_crash_between_rename_and_state(tmp_path, releases):
    s = ModelStore(tmp_path / "m")
    s.adopt(releases["v1"])
    install(s, releases["v2"], "j1")
    d = s.incoming("j1")  # the job's directory re-created by a resumed download
    shutil.copy(releases["v2"] / "mlp.onnx", d / "mlp.onnx")
    assert s.install("j1", "1.1.0").name == "1.1.0"
    assert not d.exists()


def test_recover_removes_leftovers_and_repairs_a_pointer_to_a_missing_slot(tmp_path, releases):
    s = ModelStore(tmp_path / "m")
    s.adopt(releases["v1"])
    s.activate(install(s, releases["v2"], "a").name)
    (tmp_path / "m" / "pointers.json.tmp").write_text("half-written")
    (s.incoming_dir / "stale-job").mkdir()
    (s.trash / "x.123").mkdir()
    (s.versions / "half").mkdir()  # a directory without a manifest
    shutil.rmtree(s.path("1.1.0"))  # current vanished (disk damage)
    r = ModelStore(tmp_path / "m").recover()
    assert r.current == "1.0.0" and any("1.1.0" in x for x in r.repaired)
    s2 = ModelStore(tmp_path / "m")
    assert s2.current == "1.0.0" and s2.check() == []
    assert not (tmp_path / "m" / "pointers.json.tmp").exists()
    assert list(s2.incoming_dir.iterdir()) == [] and list(s2.trash.iterdir()) == [] and s2.slots() == ["1.0.0"]


def test_recover_keeps_the_download_of_the_active_job(tmp_path, releases):
    s = ModelStore(tmp_path / "m")
    s.adopt(releases["v1"])
    (s.incoming("live") / "mlp.onnx.part").write_bytes(b"12")
    s.recover(keep_incoming=["live"])
    assert (s.incoming_dir / "live" / "mlp.onnx.part").read_bytes() == b"12"


def test_unreadable_pointers_are_rebuilt(tmp_path, releases):
    s = ModelStore(tmp_path / "m")
    s.adopt(releases["v1"])
    (tmp_path / "m" / "pointers.json").write_text("{not json")
    s2 = ModelStore(tmp_path / "m")
    r = s2.recover()
    assert r.current == "1.0.0" and any("unreadable" in x for x in r.repaired)


def test_adopt_refuses_a_directory_whose_files_do_not_match(tmp_path, releases):
    bad = tmp_path / "bad"
    shutil.copytree(releases["v1"], bad)
    (bad / "mlp.onnx").write_bytes(b"tampered")
    with pytest.raises(OtaError, match="cannot adopt"):
        ModelStore(tmp_path / "m").adopt(bad)
