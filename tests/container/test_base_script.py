"""scripts/container-base.sh refuses what it cannot do, in one line naming the value and the fix."""

import subprocess

from tests.container.buildah import BASE_SCRIPT


def test_base_script_names_an_unknown_option():
    r = subprocess.run(["bash", str(BASE_SCRIPT), "--archh", "arm64"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "container-base.sh: error: unknown option '--archh'" in r.stderr
    assert "usage: container-base.sh [--arch amd64|arm64]" in r.stderr


def test_base_script_names_a_missing_tool(tmp_path):
    # a PATH with bash and coreutils but neither debootstrap nor buildah
    r = subprocess.run(["/bin/bash", str(BASE_SCRIPT)], capture_output=True, text=True, timeout=60, env={"PATH": "/nonexistent:/bin"})
    if r.stderr.startswith("container-base.sh: error: run as root"):
        assert "debootstrap needs it" in r.stderr  # not root: that comes first
    else:
        assert r.returncode == 1 and "debootstrap is not installed: apt-get install debootstrap" in r.stderr, r.stderr
