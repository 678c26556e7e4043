"""schemathesis against a live agent serving a table pipeline: rows generated from the model's own field schema."""

from __future__ import annotations

import pytest

from device_agent.serve.agent import Agent
from tests.schemathesis_run import fuzz

pytest.importorskip("schemathesis", reason="the dev extra installs schemathesis")

TOKEN = "fuzz-token-" + "r" * 40


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_in_table_rows(penguins_model, tmp_path):
    agent = Agent.open(penguins_model["dir"])
    r, doc = fuzz(agent, TOKEN, tmp_path)
    answered = agent.metrics.http
    assert r.returncode == 0 and doc["failures"] == [] and doc["errors"] == [], r.stdout[-6000:]
    assert not [k for k in answered if k[2] >= 500], {k: v for k, v in answered.items() if k[2] >= 500}
    assert any(k[1] == "/v1/predict" and k[2] == 200 for k in answered)  # generated rows that fit the fields are served
    assert any(k[1] == "/v1/predict" and k[2] == 400 for k in answered)
