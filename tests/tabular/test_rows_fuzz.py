"""schemathesis against a live agent serving a table pipeline: rows generated from the model's own field schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.serve.agent import Agent
from device_agent.serve.auth import Tokens
from device_agent.serve.server import serve

pytest.importorskip("schemathesis", reason="the dev extra installs schemathesis")

TOKEN = "fuzz-token-" + "r" * 40


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_in_table_rows(penguins_model, tmp_path):
    agent = Agent.open(penguins_model["dir"])
    server = serve(agent, tokens=Tokens([TOKEN]))
    report = tmp_path / "schemathesis.json"
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "100", "--seed", "17",
           "--report", "json", "--report-json-path", str(report), "--output-truncate", "false"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        server.close()
    answered = agent.metrics.http
    doc = json.loads(report.read_text())
    assert r.returncode == 0 and doc["failures"] == [] and doc["errors"] == [], r.stdout[-6000:]
    assert not [k for k in answered if k[2] >= 500], {k: v for k, v in answered.items() if k[2] >= 500}
    assert any(k[1] == "/v1/predict" and k[2] == 200 for k in answered)  # generated rows that fit the fields are served
    assert any(k[1] == "/v1/predict" and k[2] == 400 for k in answered)
