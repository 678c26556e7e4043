"""`make demo` is a contract: the whole story runs and each stage says what happened."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgekit.demo", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\[(\d)\] (.*)$", proc.stdout, re.M)}
    assert sorted(lines) == list(range(1, 10)), proc.stdout
    assert "compressed v1 with --int8" in lines[2] and "digits.int8.ort" in lines[2]
    assert "serves digits 1.0.0" in lines[3]
    assert "signed and deployed v2: job SUCCEEDED" in lines[5] and "now serving 2.0.0" in lines[5]
    assert "refusing to deploy digits 3.0.0" in lines[6] and "job FAILED (rolled back 3.0.0" in lines[6]
    assert "'error'" not in lines[5] + lines[6] and lines[6].endswith("now serving 2.0.0")
    assert "drift alert on MQTT" in lines[7] and "x[0]" in lines[7]
    assert "demo-pi" in proc.stdout.split("[8] fleet status:")[1]
    assert (out / "v1" / "report.html").is_file() and (out / "v1" / "edgekit.json.sig").is_file()


@pytest.mark.slow
def test_tabular_demo_serves_raw_rows_refuses_a_bad_one_and_sees_the_islands_drift(tmp_path):
    pytest.importorskip("palmerpenguins")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgekit.demo", "--tabular", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\[(\d)\] (.*)$", proc.stdout, re.M)}
    assert sorted(lines) == list(range(1, 8)), proc.stdout
    assert "compressed the whole pipeline" in lines[2] and "100.0% agreement with predict_proba" in lines[2]
    assert "agent serves penguins 1.0.0" in lines[3] and "island, bill_length_mm" in lines[3]
    agree = re.search(r"(\d+)/(\d+) as the pipeline's own predict", lines[4])
    assert agree and agree.group(1) == agree.group(2), lines[4]
    assert lines[5] == "a bad row answered 400: row 1, field 'body_mass_g': 'heavy' is a string; allowed: a number (training range [2850, 6300]) or null"
    assert "drift alert on MQTT" in lines[6] and "in island since" in lines[6]
    assert (out / "v1" / "edgekit.json.sig").is_file() and (out / "v1" / "penguins.fp32.ort").is_file()
