"""schemathesis, the real CLI, against a live agent: its own ``/openapi.json``, every check but acceptance.

``positive_data_acceptance`` is left out: a request that fits the schema may still not fit the model (a tensor of the
wrong shape is a documented 400), so acceptance is the validator's tests' job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from device_agent.serve.agent import Agent
from device_agent.serve.auth import Tokens
from device_agent.serve.server import serve


def fuzz(agent: Agent, token: str, workdir: Path) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """Serve ``agent`` with ``token``, run schemathesis over it (100 examples per operation, fixed seed); the CLI's
    result and its JSON report."""
    server = serve(agent, tokens=Tokens([token]))
    report = workdir / "schemathesis.json"
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {token}",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "100", "--seed", "17",
           "--report", "json", "--report-json-path", str(report), "--output-truncate", "false"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=workdir)
    finally:
        server.close()
    return r, json.loads(report.read_text())
