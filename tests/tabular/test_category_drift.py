"""Categorical drift end to end: a real agent serving a table pipeline → Mosquitto → a collector (SQLite, PostgreSQL) → fleet drift."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.config import parse_config
from device_agent.contract.categories import category_profiles
from device_agent.contract.manifest import load_manifest
from device_agent.daemon import Daemon
from device_agent.serve.rows import Instances
from edgekit.cli.fleet_monitor import drift
from edgekit.monitor.collector import Collector
from tests.conftest import wait_until
from tests.tabular.conftest import pd

ROWS = 900  # past the automatic minimum for 3 categories and the 275 reference rows (about 560)


def _rows(train, rng, n, island=None):
    df = pd.read_csv(train).drop(columns=["species"])
    df = df.iloc[rng.integers(0, len(df), n)].reset_index(drop=True)
    if island is not None:
        df["island"] = island
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def test_window_counts_known_unseen_and_missing_categories(penguins_model):
    from device_agent.serve.agent import Agent

    agent = Agent.open(penguins_model["dir"])
    row = {"island": "Dream", "bill_length_mm": 41.0, "bill_depth_mm": 18.0, "flipper_length_mm": 190.0, "body_mass_g": 3500.0,
           "sex": "male", "year": 2008}
    agent.predict(Instances([row, row | {"island": "Atlantis"}, row | {"island": None}, row | {"island": "Biscoe", "sex": None}]))
    content = agent.window.close()
    island, sex = (next(f for f in content["features"] if f.name == n) for n in ("island", "sex"))
    assert (island.counts, island.over, island.nan, island.n) == ([1, 1, 0], 1, 1, 4)  # Biscoe, Dream, Torgersen; unseen; missing
    assert (sex.counts, sex.over, sex.nan) == ([0, 3], 0, 1) and sex.mean is None
    assert content["samples"] == 4 and "island" in agent.model_info()["tracked_features"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_shifted_category_mix_alerts_from_agent_to_fleet_drift(backend, request, mosquitto, penguins, penguins_model, tmp_path):
    store = str(tmp_path / "fleet.sqlite") if backend == "sqlite" else request.getfixturevalue("postgres")
    collector = Collector(mosquitto.url, store)
    collector.register(penguins_model["dir"])
    collector.start()
    cfg = parse_config({"device": {"id": "till-3", "group": "shops"}, "broker": {"url": mosquitto.url}, "model": {"path": str(penguins_model["dir"])},
                        "api": {"enabled": False}, "telemetry": {"interval_s": 3600}, "ota": {"enabled": False}, "state_dir": str(tmp_path / "state")},
                       base_dir=tmp_path, check_files=False)
    (tmp_path / "state").mkdir()
    daemon = Daemon.from_config(cfg)
    rng = np.random.default_rng(7)
    try:
        assert collector.wait_ready(10), "the collector did not subscribe"
        daemon.start()
        for _ in range(0, ROWS, 50):  # as the training data: Biscoe, Dream, Torgersen in their proportions
            daemon.agent.predict(Instances(_rows(penguins["train"], rng, 50)))
        daemon.publish_telemetry()
        # then the shop moves: every row from Torgersen, one in five from an island the model never saw
        for _ in range(0, ROWS, 50):
            daemon.agent.predict(Instances(_rows(penguins["train"], rng, 50, island=["Torgersen"] * 40 + ["Atlantis"] * 10)))
        daemon.publish_telemetry()
        wait_until(lambda: sum(s.totals.windows for s in collector.store.spans(since=0)) == 2, 20, what="both windows stored")
    finally:
        daemon.stop()
        collector.stop()
    r = CliRunner().invoke(drift, ["--db", store, "--device", "till-3", "--window", "1h", "--all-features", "--json"])
    assert r.exit_code == 0, r.output
    (report,) = json.loads(r.output)["reports"]
    features = {f["name"]: f for f in report["features"]}
    island = features["island"]
    assert report["samples"] == 2 * ROWS and island["level"] == "alert" and island["psi"] > 0.25
    assert 0.09 < island["out_of_range_share"] < 0.11  # the unseen share: 10 % of all rows
    assert island["ks"] is None and island["mean"] is None
    assert any(reason.startswith("PSI ") for reason in island["reasons"])
    assert features["sex"]["level"] == "ok" and features["bill_length_mm"]["level"] == "ok"
    assert island["categorical"] is True and features["bill_length_mm"]["categorical"] is False
    r = CliRunner().invoke(drift, ["--db", store, "--device", "till-3", "--window", "1h"])
    line = next(ln for ln in r.output.splitlines() if ln.strip().startswith("island"))
    assert r.exit_code == 0 and line.split()[1] == "alert" and "  unseen 10." in line and "out of range" not in line


def test_category_profiles_come_from_the_manifest(penguins_model):
    profiles = {p.name: p for p in category_profiles(load_manifest(penguins_model["dir"]))}
    island = profiles["island"]
    assert island.values == ("Biscoe", "Dream", "Torgersen") and sum(island.counts) == 275 and island.edges == (0.0, 1.0, 2.0, 3.0)
    assert profiles["sex"].nan_share > 0
