"""schemathesis against a live agent: thousands of requests generated from its own ``/openapi.json``
(the V2 routes included, with a token) and every answer checked against the document.

Checks: no 5xx; every status, content type, header and body as documented; schema-violating
requests refused; undocumented methods answered 405 with ``Allow``; a missing token answered 401.
Not checked: ``positive_data_acceptance`` — a request that fits the schema may still not fit the
model (a tensor of the wrong shape is a documented 400), so acceptance is the validator's tests' job.
"""


import pytest

from device_agent.serve.agent import Agent
from tests.schemathesis_run import fuzz

pytest.importorskip("schemathesis", reason="the dev extra installs schemathesis")

TOKEN = "fuzz-token-" + "f" * 40


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(digits_dir, tmp_path):
    agent = Agent.open(digits_dir)
    r, doc = fuzz(agent, TOKEN, tmp_path)
    answered = agent.metrics.http
    requests = sum(answered.values())
    assert r.returncode == 0 and doc["failures"] == [] and doc["errors"] == [], r.stdout[-6000:]
    assert requests >= 2000, f"only {requests} requests were answered; schemathesis said:\n{r.stdout[-2000:]}"
    assert not [k for k in answered if k[2] >= 500], {k: v for k, v in answered.items() if k[2] >= 500}
    assert {k[1] for k in answered} >= {"/v1/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
    assert any(k[1] == "/v2/models/{name}/infer" and k[2] == 200 for k in answered)  # the document's examples reach real answers
