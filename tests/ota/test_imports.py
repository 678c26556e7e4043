"""The device-side OTA modules stay light: no torch, tensorflow, onnx, pydantic or edgekit on the device."""

from __future__ import annotations

import os
import subprocess
import sys


def test_ota_modules_import_no_heavy_framework(tmp_path, releases, keys):
    code = f"""
import sys
from pathlib import Path
import device_agent.ota, device_agent.ota.updater, device_agent.ota.store, device_agent.ota.verify, device_agent.ota.job, device_agent.ota.delivery, device_agent.ota.probation
from device_agent.runtime.model import load_model
from device_agent.ota import ServingModel
from device_agent.ota.updater import Updater
from device_agent.ota.store import ModelStore
from device_agent.ota.gate import Identity
from device_agent.ota.verify import load_trusted_keys, verify_manifest
d = Path({str(releases["v2"])!r})
verify_manifest((d / "edgekit.json").read_bytes(), (d / "edgekit.json.sig").read_bytes(), load_trusted_keys([{str(keys["good"].public)!r}]))
store = ModelStore({str(tmp_path / "m")!r})
store.adopt(d)
s = ServingModel(None)
u = Updater(store, {str(tmp_path / "ota.json")!r}, trusted=load_trusted_keys([]), loader=load_model, get_model=s.get, swap=s.swap,
            identity=Identity("dev"))
s.model = load_model(u.boot())
heavy = {{"torch", "tensorflow", "onnx", "pydantic", "edgekit", "click", "yaml", "matplotlib", "sklearn", "scipy"}}
print(sorted({{m.split(".")[0] for m in sys.modules}} & heavy))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
