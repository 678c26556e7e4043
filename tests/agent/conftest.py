"""Fixtures for the agent tests: ``digits_dir`` is the real thing — ``edgekit compress --int8
--data calib.npz`` on the digits CNN, built once per session. Helpers live in agent_helpers.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def digits_dir(digits, tmp_path_factory) -> Path:
    """An `edgekit compress --int8` output directory for the digits CNN (built once per session)."""
    out = tmp_path_factory.mktemp("digits-int8") / "out"
    r = subprocess.run([sys.executable, "-c", "import sys; from edgekit.cli.main import main; main(sys.argv[1:])", "compress", "--int8",
                        "--data", str(digits["calib"]), "-o", str(out), "--search-time", "60", str(digits["model"])],
                       capture_output=True, text=True, timeout=300)
    assert (out / "edgekit.json").is_file(), f"edgekit compress failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return out


@pytest.fixture
def digits_copy(digits_dir, tmp_path) -> Path:
    """A private copy of the digits model directory (tests may tamper with it)."""
    dst = tmp_path / "model"
    shutil.copytree(digits_dir, dst)
    return dst


