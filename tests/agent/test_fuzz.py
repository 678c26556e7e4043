"""schemathesis against a live agent: thousands of requests generated from its own ``/openapi.json``
(the V2 routes included, with a token) and every answer checked against the document.

Checks: no 5xx; every status, content type, header and body as documented; schema-violating
requests refused; undocumented methods answered 405 with ``Allow``; a missing token answered 401.
Not checked: ``positive_data_acceptance`` — a request that fits the schema may still not fit the
model (a tensor of the wrong shape is a documented 400), so acceptance is the validator's tests' job.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.serve.agent import Agent
from device_agent.serve.auth import Tokens
from device_agent.serve.server import serve

pytest.importorskip("schemathesis", reason="the dev extra installs schemathesis")

TOKEN = "fuzz-token-" + "f" * 40


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(digits_dir, tmp_path):
    agent = Agent.open(digits_dir)
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
    requests = sum(answered.values())
    doc = json.loads(report.read_text())
    assert r.returncode == 0 and doc["failures"] == [] and doc["errors"] == [], r.stdout[-6000:]
    assert requests >= 2000, f"only {requests} requests were answered; schemathesis said:\n{r.stdout[-2000:]}"
    assert not [k for k in answered if k[2] >= 500], {k: v for k, v in answered.items() if k[2] >= 500}
    assert {k[1] for k in answered} >= {"/v1/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
    assert any(k[1] == "/v2/models/{name}/infer" and k[2] == 200 for k in answered)  # the document's examples reach real answers
