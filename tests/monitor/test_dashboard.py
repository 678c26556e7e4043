"""The Grafana dashboard in deploy/grafana (issue 15): a valid dashboard whose every query names metrics the collector exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgekit.monitor.metrics import FleetMetrics, serve_metrics
from tests.monitor.test_metrics import PROMTOOL, fleet_db, scrape  # noqa: F401  (fleet_db: the fixture)
from tests.services import need

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "edgekit-fleet.json"
# words of PromQL that are not metric names
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
# what Grafana substitutes before a query reaches Prometheus
_GRAFANA = {"$__rate_interval": "5m", "$__interval": "1m", "$group": ".*", "$version": ".*", "$job": ".*"}


def panels(doc: dict) -> list[dict]:
    out = []
    for p in doc["panels"]:
        out.append(p)
        out += p.get("panels", [])  # a collapsed row holds its panels
    return out


def exprs(doc: dict) -> list[str]:
    return [t["expr"] for p in panels(doc) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside label matchers, strings, ranges and grouping clauses
    that are not functions (followed by a parenthesis) or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[m.end():].lstrip()
        if m.group() not in _KEYWORDS and not rest.startswith("("):
            names.add(m.group())
    return names


def test_the_dashboard_is_a_grafana_dashboard_with_the_three_views():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "edgekit-fleet" and isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36 and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert set(variables) == {"datasource", "group", "version", "job"} and variables["datasource"]["query"] == "prometheus"
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Model version $version", "Rollout $job"]
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for p in panels(doc):
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            assert all(t["refId"] and t["expr"] for t in p["targets"]), p["title"]


def test_every_query_names_metrics_a_real_scrape_exposes_and_parses_as_promql(fleet_db, tmp_path):  # noqa: F811
    store, m = fleet_db
    server = serve_metrics(FleetMetrics(store, collector="watch-d", stats=lambda: dict(m.stats)), port=0)
    try:
        text = scrape(server.url)
    finally:
        server.close()
    families = list(text_string_to_metric_families(text))
    # a family without samples yet (no late labels in this store) is still exposed: its TYPE line names it
    exposed = {s.name for fam in families for s in fam.samples} | {f.name for f in families if f.type == "gauge"} | {"up"}
    doc = json.loads(DASHBOARD.read_text())
    queries = exprs(doc) + [re.sub(r"^label_values\((\w+)(\{.*\})?, \w+\)$", r"\1\2", v["query"]["query"])
                            for v in doc["templating"]["list"] if v["type"] == "query"]
    used = set().union(*(metric_names(q) for q in queries))
    assert used and used <= exposed, f"the dashboard reads metrics nobody exposes: {sorted(used - exposed)}"
    assert {"edgekit_devices", "edgekit_drift_psi", "edgekit_rollout_devices", "edgekit_messages_total"} <= used
    # PromQL syntax: each query as a recording rule, checked by Prometheus' own parser
    need(PROMTOOL, "promtool is not installed", "run 'make test-debs' (Debian package prometheus)")
    rules = []
    for i, q in enumerate(queries):
        for k, v in _GRAFANA.items():
            q = q.replace(k, v)
        rules.append({"record": f"edgekit:dashboard_query_{i}", "expr": q})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    r = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


def test_metric_names_skips_functions_labels_ranges_and_grouping():
    assert metric_names('sum by (collector) (rate(edgekit_messages_total{kind="telemetry", outcome="x"}[$__rate_interval]))') == \
        {"edgekit_messages_total"}
    assert metric_names('sum(edgekit_devices{status="online"}) or vector(0)') == {"edgekit_devices"}
    assert metric_names("edgekit_rollout_status{job=~\"$job\"} == 1") == {"edgekit_rollout_status"}
