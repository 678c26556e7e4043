"""The issue's checks, through the agent's own API: predictions → telemetry windows → Monitor."""

import json

import numpy as np
import pytest

from device_agent.contract.manifest import load_manifest
from edgekit.monitor import ACCURACY, Monitor, MonitorConfig, accuracy_report, drift_reports, drift_summary
from edgekit.monitor.drift import Level, min_samples_for
from edgekit.monitor.store import SqliteStore
from tests.monitor.conftest import MEANS, STDS, reference_inputs, write_model

WINDOW = 600  # rows per window: above the automatic minimum for this profile (checked below)


@pytest.fixture
def monitor(tmp_path, model_dir):
    store = SqliteStore(tmp_path / "fleet.sqlite")
    m = Monitor(store, collector="test")
    m.register(load_manifest(model_dir), source=str(model_dir))
    yield m
    store.close()


def feed(monitor: Monitor, messages) -> list[dict]:
    alerts = []
    for topic, payload in messages:
        alerts += monitor.handle(topic, payload)
    return alerts


def test_window_size_is_sufficient(monitor):
    ref = monitor.store.reference("mlp", "1.0.0")
    need = max(min_samples_for(f.counts, monitor.config.thresholds) for f in ref.features)
    assert need <= WINDOW < 2 * need


def test_reference_inputs_for_many_windows_rarely_alert(monitor, model_dir, make_device, rng):
    dev = make_device(model_dir)
    feed(monitor, [dev.state()])
    windows, flagged, alerts = 60, 0, []
    for _ in range(windows):
        alerts += feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
        report = monitor.device_drift(dev.id, "mlp", "1.0.0")
        assert report.level is not Level.NOT_ENOUGH_DATA and report.windows == 1  # each window judged on its own
        flagged += report.level.rank >= Level.WARN.rank
    assert flagged / windows <= 0.05
    assert len([a for a in alerts if a["kind"] == "drift"]) / windows <= 0.05
    assert monitor.stats["telemetry"] == windows and monitor.stats["duplicates"] == 0


def test_one_std_shift_in_two_features_alerts_those_two_within_one_window(monitor, model_dir, make_device, rng):
    dev = make_device(model_dir)
    feed(monitor, [dev.state()])
    for _ in range(3):
        assert not feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
    x = reference_inputs(WINDOW, rng)
    x[:, [2, 5]] += STDS[[2, 5]]  # +1 reference std
    alerts = feed(monitor, dev.window(x))
    assert len(alerts) == 1
    a = alerts[0]
    assert a["kind"] == "drift" and a["level"] == "alert" and a["device"] == "pi-07" and a["group"] == "cameras"
    assert {f["name"] for f in a["features"]} == {"x[2]", "x[5]"}
    assert all(f["psi"] >= 0.25 and f["mean_shift_std"] == pytest.approx(1.0, abs=0.15) for f in a["features"])
    assert a["model"] == {"name": "mlp", "version": "1.0.0"} and a["update"] is None
    assert a["since"] == a["window"]["start"] and "pi-07: input drift (alert) in x" in a["message"]
    report = monitor.device_drift(dev.id, "mlp", "1.0.0")
    assert {f.name for f in report.features if f.level is not Level.OK} == {"x[2]", "x[5]"}
    # the state says since when; the next shifted window is no new alert, the recovery is one "resolved"
    assert feed(monitor, dev.window(x)) == []
    summary = drift_summary(monitor.store, "pi-07")
    assert summary["level"] == "alert" and set(summary["features"]) == {"x[2]", "x[5]"} and summary["since"] == a["since"]
    assert summary["text"].startswith("alert: x[")
    resolved = feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
    assert [r["kind"] for r in resolved] == ["resolved"]
    assert drift_summary(monitor.store, "pi-07")["text"] == "ok"
    assert [al.kind for al in monitor.store.alerts(name="pi-07")] == ["resolved", "drift"]


def test_nan_burst_is_reported(monitor, model_dir, make_device, rng):
    dev = make_device(model_dir)
    feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
    x = reference_inputs(100, rng)
    x[::10, 3] = np.nan  # 10 single-row requests with a NaN: the agent rejects them, telemetry counts them
    dev.predict(x, batch=1)
    alerts = feed(monitor, dev.window())
    assert len(alerts) == 1 and alerts[0]["level"] == "alert"
    (f,) = alerts[0]["features"]
    assert f["name"] == "x[3]" and f["nan_share"] == pytest.approx(0.1) and f["reasons"][0] == "NaN share 10.0% ≥ 5.0%"
    assert dev.agent.metrics.snapshot()["errors"] == {"nonfinite": 10}


def test_small_windows_are_merged_until_there_is_enough_data(monitor, model_dir, make_device, rng):
    dev = make_device(model_dir)
    feed(monitor, dev.window(reference_inputs(100, rng)))
    assert monitor.device_drift(dev.id, "mlp", "1.0.0").level is Level.NOT_ENOUGH_DATA
    (r,) = drift_reports(monitor.store, device="pi-07")
    assert r.level is Level.NOT_ENOUGH_DATA and all(f.reasons[0].startswith("100 samples <") for f in r.features)
    for _ in range(5):
        feed(monitor, dev.window(reference_inputs(100, rng)))
    report = monitor.device_drift(dev.id, "mlp", "1.0.0")
    assert report.level is Level.OK and report.windows >= 4 and report.samples >= min(f.min_samples for f in report.features)


def test_drift_after_an_update_is_attributed_to_it(monitor, model_dir, model_dir_v2, make_device, rng):
    monitor.register(load_manifest(model_dir_v2))
    dev = make_device(model_dir)
    for _ in range(2):
        feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
    dev.close()
    dev2 = make_device(model_dir_v2)  # same device and outbox: the sequence continues on the new version
    x = reference_inputs(WINDOW, rng)
    x[:, 0] = MEANS[0] + 3 * STDS[0] * rng.standard_normal(WINDOW)  # the spread triples
    alerts = feed(monitor, dev2.window(x))
    assert len(alerts) == 1
    a = alerts[0]
    assert a["model"]["version"] == "2.0.0" and a["update"]["from"] == "1.0.0"
    assert [f["name"] for f in a["features"]] == ["x[0]"]
    assert "after the update from 1.0.0" in a["message"]
    # the verdicts are per version: 1.0.0 stays clean
    assert all(s.level == "ok" for s in monitor.store.drift_state("device", "pi-07", "mlp", "1.0.0").values())


def test_group_drift_merges_its_devices(monitor, model_dir, make_device, rng):
    devs = [make_device(model_dir, device=f"cam-{i}", group="cameras") for i in range(3)]
    other = make_device(model_dir, device="door-1", group="doors")
    for d in [*devs, other]:
        feed(monitor, [d.state()])
    for i, d in enumerate(devs):
        x = reference_inputs(250, rng)  # too few per device; enough for the group
        if i < 2:
            x[:, 6] += 1.5 * STDS[6]
        feed(monitor, d.window(x))
    feed(monitor, other.window(reference_inputs(250, rng)))
    alerts = monitor.evaluate_groups(force=True)
    cams = [a for a in alerts if a["name"] == "cameras"]
    assert len(cams) == 1 and cams[0]["scope"] == "group" and [f["name"] for f in cams[0]["features"]] == ["x[6]"]
    assert not [a for a in alerts if a["name"] == "doors"]
    reports = drift_reports(monitor.store, group="cameras")
    assert reports[0].scope == "group" and reports[0].devices == ("cam-0", "cam-1", "cam-2") and reports[0].samples == 750
    assert all(r.level is Level.NOT_ENOUGH_DATA for r in reports[1:])  # 250 rows per device


def test_accuracy_below_the_manifest_baseline_alerts(monitor, model_dir, make_device, rng):
    dev = make_device(model_dir)
    feed(monitor, [dev.state()])

    def labelled_window(n: int, wrong: float) -> list[dict]:
        x = reference_inputs(n, rng)
        preds = [dev.agent.predict({"x": x[i:i + 1]}) for i in range(n)]
        items = []
        for p in preds:
            t = int(p.outputs["logits"].argmax())
            items.append({"request_id": p.request_id, "label": (t + 1) % 4 if rng.random() < wrong else t})
        assert all(r.accepted for r in dev.agent.submit_feedback(items))
        return feed(monitor, dev.window())

    assert labelled_window(150, wrong=0.02) == []  # 98 % against a 95 % baseline
    rep = accuracy_report(monitor.store, "pi-07", "mlp", "1.0.0", since=0, config=monitor.config, artifact="model.onnx")
    assert rep.level is Level.OK and rep.baseline == pytest.approx(0.95) and rep.labelled == 150
    alerts = labelled_window(300, wrong=0.30)  # overall ~ 80 %: far below 95 % - 5 points
    assert [a["kind"] for a in alerts] == ["accuracy"]
    acc = alerts[0]["accuracy"]
    assert alerts[0]["level"] == "alert" and acc["baseline"] == pytest.approx(0.95) and acc["labelled"] == 450
    assert acc["upper_bound"] < 0.90 and "below 90.0%" in alerts[0]["message"]
    assert monitor.store.drift_state("device", "pi-07", "mlp", "1.0.0")[ACCURACY].level == "alert"
    assert drift_summary(monitor.store, "pi-07")["accuracy"] == "alert"


def test_labels_below_the_minimum_are_not_judged(tmp_path, model_dir, make_device, rng):
    store = SqliteStore(":memory:")
    m = Monitor(store, MonitorConfig(accuracy_min_labelled=50))
    m.register(load_manifest(model_dir))
    dev = make_device(model_dir)
    p = dev.agent.predict({"x": reference_inputs(1, rng)})
    dev.agent.submit_feedback([{"request_id": p.request_id, "label": (int(p.outputs["logits"].argmax()) + 1) % 4}])
    assert feed(m, dev.window()) == []
    rep = accuracy_report(store, "pi-07", "mlp", "1.0.0", since=0, config=m.config)
    assert rep.level is Level.NOT_ENOUGH_DATA and rep.reason == "1 labelled rows < 50 needed"


def test_malformed_duplicate_and_unknown_model_messages_never_raise(monitor, model_dir, make_device, rng, caplog, tmp_path):
    dev = make_device(model_dir)
    msgs = dev.window(reference_inputs(50, rng))
    assert feed(monitor, msgs + msgs) == []  # a QoS 1 repeat
    assert monitor.stats["duplicates"] == 1
    assert monitor.handle("edgekit/v1/pi-07/telemetry", b"{not json") == []
    assert monitor.handle("edgekit/v1/pi-07/telemetry", b'{"v": 99}') == []
    bad = json.loads(msgs[0][1])
    bad.update(seq=99, features_dropped="many", window=[1, 2])
    assert monitor.handle("edgekit/v1/pi-07/telemetry", json.dumps(bad).encode()) == []
    assert monitor.stats["malformed"] == 3
    unknown = make_device(write_model(tmp_path / "v9", version="9.9.9"), device="pi-08")
    feed(monitor, unknown.window(reference_inputs(WINDOW, rng)))
    assert ("mlp", "9.9.9") in monitor.missing_reference
    assert "no drift reference for mlp 9.9.9" in caplog.text


def test_with_trusted_keys_only_signed_deployed_manifests_become_references(tmp_path, model_dir_v2):
    import base64
    import shutil
    import time

    from device_agent.contract.protocol import Command, CommandKind, Topics, encode
    from device_agent.ota.verify import load_trusted_keys
    from edgekit.signing import generate_keys, sign_dir

    keys = generate_keys(tmp_path / "keys")
    signed = tmp_path / "signed"
    shutil.copytree(model_dir_v2, signed)
    sign_dir(signed, keys.private)
    m = Monitor(SqliteStore(":memory:"), trusted=load_trusted_keys([keys.public]))

    def deploy(job: str, directory, signature: str | None) -> None:
        params = {"manifest": base64.b64encode((directory / "edgekit.json").read_bytes()).decode(), "signature": signature}
        m.handle(Topics("pi-07").cmd, encode(Command(CommandKind.DEPLOY, job, time.time(), params, device="pi-07")))

    deploy("unsigned", model_dir_v2, None)
    assert m.store.reference("mlp", "2.0.0") is None and m.stats["rejected_references"] == 1
    deploy("signed", signed, (signed / "edgekit.json.sig").read_text())
    assert m.store.reference("mlp", "2.0.0").source == "deploy job signed"


def test_group_accuracy_adds_up_devices_too_quiet_alone(monitor, model_dir, make_device, rng):
    devs = [make_device(model_dir, device=f"cam-{i}") for i in range(3)]
    for d in devs:
        feed(monitor, [d.state()])
        x = reference_inputs(60, rng)  # 60 labelled rows each: below the 100 a device needs, 180 for the group
        preds = [d.agent.predict({"x": x[i:i + 1]}) for i in range(60)]
        d.agent.submit_feedback([{"request_id": p.request_id, "label": (int(p.outputs["logits"].argmax()) + (i % 2)) % 4}
                                 for i, p in enumerate(preds)])  # every other label disagrees: 50 %
        assert feed(monitor, d.window()) == []
    alerts = [a for a in monitor.evaluate_groups(force=True) if a["kind"] == "accuracy"]
    assert len(alerts) == 1 and alerts[0]["scope"] == "group" and alerts[0]["name"] == "cameras"
    assert alerts[0]["accuracy"]["labelled"] == 180 and alerts[0]["accuracy"]["value"] == pytest.approx(0.5)


def test_behind_a_device_judged_recently_is_remembered_not_judged_again(monitor, model_dir, make_device, rng, monkeypatch):
    """A backlog (coalesce) judges each device at most once per REJUDGE_S; a NaN burst is judged regardless."""
    import edgekit.monitor.monitor as monitor_mod

    dev = make_device(model_dir)
    feed(monitor, [dev.state()])
    calls: list[str] = []
    real = monitor.evaluator.on_telemetry
    monkeypatch.setattr(monitor.evaluator, "on_telemetry", lambda m: calls.append(m.device) or real(m))
    first = monitor.ingest_batch(dev.window(reference_inputs(WINDOW, rng)))
    monitor.judge(first, coalesce=True)
    assert calls == [dev.id]  # never judged before: judged
    again = monitor.ingest_batch(dev.window(reference_inputs(WINDOW, rng)))
    monitor.judge(again, coalesce=True)
    assert calls == [dev.id] and monitor.stats["coalesced"] >= 1  # judged a moment ago: only remembered
    x = reference_inputs(WINDOW, rng)
    x[: WINDOW // 2, 0] = np.nan
    burst = monitor.ingest_batch(dev.window(x))
    monitor.judge(burst, coalesce=True)
    assert calls == [dev.id, dev.id]  # a NaN burst is always judged
    monkeypatch.setattr(monitor_mod, "REJUDGE_S", 0.0)
    later = monitor.ingest_batch(dev.window(reference_inputs(WINDOW, rng)))
    monitor.judge(later, coalesce=True)
    assert calls == [dev.id] * 3  # long enough ago: judged again
    monitor.judge(monitor.ingest_batch(dev.window(reference_inputs(WINDOW, rng))))
    assert calls == [dev.id] * 4  # not behind: every window is judged


def test_a_devices_group_is_read_once_per_ttl_and_again_after_its_state(monitor, model_dir, make_device, rng, monkeypatch):
    """Judging reads the group for a device's alerts from the store at most every GROUP_TTL_S, or after a state message."""
    import edgekit.monitor.evaluation as evaluation

    dev = make_device(model_dir)
    feed(monitor, [dev.state()])
    reads: list[str] = []
    real = monitor.store.device
    monkeypatch.setattr(monitor.store, "device", lambda d: reads.append(d) or real(d))
    for _ in range(3):
        feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
    assert reads == [dev.id]
    feed(monitor, [dev.state()])  # a state message (a group may have changed): read again
    feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
    assert reads == [dev.id, dev.id]
    monkeypatch.setattr(evaluation, "GROUP_TTL_S", 0.0)
    feed(monitor, dev.window(reference_inputs(WINDOW, rng)))
    assert reads == [dev.id] * 3
