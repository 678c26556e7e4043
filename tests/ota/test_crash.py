"""kill -9 at named points of an update (and of a rollback); after a restart the device serves a
valid model, the store is consistent, and the job still reaches its final state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (crash point, release): every durable step of the update path, and of a rollback
POINTS = [
    ("move.IDLE.start", "v2"), ("moved.DOWNLOADING", "v2"), ("chunk.written:1", "v2"), ("chunk.written:2", "v2"),
    ("download.done", "v2"), ("moved.VERIFYING", "v2"), ("verify.done", "v2"), ("install.before_rename", "v2"),
    ("install.after_rename", "v2"), ("moved.STAGED", "v2"), ("move.STAGED.swap", "v2"), ("moved.PROBATION", "v2"),
    ("swap.activated", "v2"), ("move.PROBATION.pass", "v2"), ("moved.COMMITTED", "v2"), ("discard.before_rmtree", "nan"),
    ("move.COMMITTED.done", "v2"), ("write.unsynced:3", "v2"), ("write.before_rename:5", "v2"), ("write.before_dirsync:7", "v2"),
    ("write.before_rename:9", "v2"), ("move.PROBATION.fail", "nan"), ("moved.ROLLED_BACK", "nan"), ("rollback.reverted", "nan"),
    ("move.ROLLED_BACK.done", "nan"), ("write.before_rename:8", "nan"),
]


def run(root: Path, releases, release: str, job: str, keys, crash: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EDGEKIT_CRASHPOINT", None)
    if crash:
        env["EDGEKIT_CRASHPOINT"] = crash
    return subprocess.run([sys.executable, "-m", "tests.ota.crash_device", str(root), str(releases["v1"]), str(releases[release]), job,
                           str(keys["good"].public)], env=env, capture_output=True, text=True, timeout=90, cwd=ROOT)


def crash_and_resume(args):
    point, release, root, releases, keys = args
    first = run(root, releases, release, "job-1", keys, point)
    second = run(root, releases, release, "job-1", keys, None)
    return point, release, first, second


@pytest.mark.slow
def test_kill_9_at_every_point_then_restart_serves_a_valid_model(tmp_path, releases, keys):
    assert len({p for p, _ in POINTS}) >= 20
    jobs = [(p, r, tmp_path / f"dev{i}", releases, keys) for i, (p, r) in enumerate(POINTS)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(crash_and_resume, jobs))
    for point, release, first, second in results:
        where = f"crash point {point} ({release}): first rc {first.returncode} {first.stderr[-800:]}\nsecond: {second.stderr[-1500:]}"
        assert first.returncode == -9, where  # it really died there
        assert second.returncode == 0, where
        res = json.loads(second.stdout.strip().splitlines()[-1])
        assert res["problems"] == [], where
        assert res["failed"] == 0, where
        assert res["final"] is not None, where
        if release == "v2":
            assert res["final"]["state"] == "COMMITTED" and res["version"] == "1.1.0", (where, res)
        else:
            assert res["final"]["state"] == "ROLLED_BACK" and res["version"] == "1.0.0", (where, res)
            assert res["final"]["reason"] == "nan_outputs", (where, res)
        assert set(res["versions"]) <= {"1.0.0", "1.1.0", "1.5.0"}, where
