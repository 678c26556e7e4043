"""benchmarks/fleet_scale.py scaled down: the same simulator, broker config, collector command and checks, on a small fleet.

No timing is asserted here (the benchmark prints those); what must hold at any size is: every window the
broker acknowledged is stored exactly once, ``fleet status`` lists every device, ``fleet drift`` answers
for the group and each of its devices, the drifted devices (and only they) raise alerts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import MOSQUITTO_BIN
from tests.services import need

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.slow


def test_a_fleet_of_300_devices_for_30_seconds(tmp_path):
    need(MOSQUITTO_BIN, "mosquitto is not installed", "make mosquitto")
    import fleet_scale
    from scale_sim import device_name, drifted

    p = {"devices": 300, "interval": 5.0, "samples": 50, "history_s": 300.0, "duration_s": 30.0}
    r = fleet_scale.run_ingest("fast", p, backend="sqlite", workdir=tmp_path, pg=None, model=fleet_scale.make_model(tmp_path))
    d, c = r["delivery"], r["commands"]
    assert r["history_windows"] == 300 * 60
    assert d["acknowledged"] == 300 * 6 and d["lost"] == 0 and d["stored"] == d["acknowledged"]
    assert c["status"]["rows"] == c["status_db"]["rows"] == 300
    assert c["drift"]["rows"] == c["drift_db"]["rows"] == 1 + 30  # group g3 merged, then its 30 devices
    a = r["alerts"]
    assert a["drifted_devices"] == len([i for i in range(300) if drifted(i)]) == a["alerted"] == 20
    # ~15,000 verdicts (300 devices x 6 windows x 8 features) at a per-verdict false-warning rate of about 0.01 %
    assert a["false_alerts"] <= 0.05 * (300 - 20) and a["groups_alerted"] == 0
    month = fleet_scale.storage_month(r["storage"], "sqlite")
    assert month["raw_gb"] > 0 and month["totals_gb"] > 0 and month["rollups_gb"] > 0
    assert device_name(7) == "dev-00007"


def test_two_collectors_on_postgresql_drain_a_backlog_without_loss_or_double_counting(tmp_path, postgres_server):
    need(MOSQUITTO_BIN, "mosquitto is not installed", "make mosquitto")
    import fleet_scale

    class Server:
        def create(self, name: str) -> str:
            return postgres_server.createdb(f"{name}_{tmp_path.name[-8:]}".replace("-", "_"))

    r = fleet_scale.run_pair({"devices": 60, "per_device": 10, "duplicates": 0.1}, workdir=tmp_path, pg=Server(),
                             model=fleet_scale.make_model(tmp_path))
    for n in (1, 2):
        got = r[f"collectors_{n}"]
        assert (got["distinct"], got["repeated"], got["acknowledged"]) == (600, 60, 660)
        assert got["stored"] == got["counted"] == 600 and got["lost"] == 0 and got["counted_twice"] == 0
