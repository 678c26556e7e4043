"""device_agent/deploy/sstrip.py: a library cut to its mapped segments still loads and works; other files are refused."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "device_agent/deploy"))
from sstrip import sstrip  # noqa: E402


def test_a_stripped_extension_still_imports_and_parses(tmp_path):
    spec = importlib.util.find_spec("csimdjson")
    if spec is None or spec.origin is None:
        pytest.skip("pysimdjson is an agent dependency: pip install pysimdjson")
    lib = tmp_path / Path(spec.origin).name
    shutil.copy(spec.origin, lib)
    before = lib.stat().st_size
    cut = sstrip(lib)
    assert cut > 0 and lib.stat().st_size == before - cut and sstrip(lib) == 0  # a second pass finds nothing to cut
    code = ("import csimdjson, sys; assert csimdjson.__file__.startswith(sys.argv[1]), csimdjson.__file__; "
            "print(csimdjson.Parser().parse(b'{\"a\": [1.5, 2]}').as_dict())")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.strip() == "{'a': [1.5, 2]}", r.stderr


def test_a_file_that_is_not_a_64_bit_elf_is_refused(tmp_path):
    f = tmp_path / "x.so"
    f.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(SystemExit, match="not a 64-bit little-endian ELF file"):
        sstrip(f)
    assert f.read_bytes() == b"#!/bin/sh\n"
