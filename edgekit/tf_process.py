"""Run a TensorFlow job in a child process, so a crash or ``sys.exit`` inside TF cannot take edgekit down.

TensorFlow, onnx2tf and tf2onnx are heavy, print pages of logs and occasionally abort the process
(SIGABRT/SIGSEGV in the MLIR converter, ``sys.exit`` inside onnx2tf). edgekit therefore runs them
in a fresh interpreter: the parent writes ``job.json`` into a work directory, runs
``python -m <worker> <dir>``, and reads back ``result.json`` or ``error.json``. Logs go to
``worker.log`` (quoted, last lines only, when something fails); progress lines to ``progress.txt``.

Worker protocol (see :func:`worker_main`): ``result.json`` on success (exit 0); ``error.json`` with
``{"kind", "message", ...}`` on a known failure (exit 3).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, ExportError, MissingExtraError

__all__ = ["WorkerError", "quiet_tensorflow", "require", "run_worker", "worker_main"]

#: Environment for TF children: no log spam, no GPU probing, deterministic oneDNN off (faster start).
TF_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "ABSL_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONWARNINGS": "ignore",
}


class WorkerError(Exception):
    """Raised inside a worker for a known failure; becomes ``error.json`` (``kind`` + details)."""

    def __init__(self, kind: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


def require(modules: tuple[str, ...], what: str, extra: str) -> None:
    """Raise ``MissingExtraError`` unless every module in ``modules`` is importable (without importing it)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(what, extra)


def run_worker(
    module: str,
    job: dict[str, Any],
    workdir: Path,
    *,
    what: str,
    error_cls: type[EdgekitError] = ExportError,
    on_error: Callable[[dict[str, Any]], str] | None = None,
    progress: Callable[[str, float], None] = lambda m, f: None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Run ``python -m module workdir`` on ``job``; return its result or raise ``error_cls`` with one clean line.

    ``on_error`` turns a worker's ``error.json`` into the message (it may add what was still written).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "job.json").write_text(json.dumps(job, indent=1))
    for stale in ("result.json", "error.json", "progress.txt"):
        (workdir / stale).unlink(missing_ok=True)
    # the child's own temporary directory: TensorFlow's autograph leaves generated files in $TMPDIR, and a child
    # killed by Ctrl-C (or the deadline) cleans nothing up, so its whole TMPDIR goes when the child is done
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-tf-"))
    env = {**os.environ, **TF_ENV, "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
    try:
        returncode = _run_child(module, workdir, env, what=what, error_cls=error_cls, progress=progress, timeout_s=timeout_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    err_file, res_file = workdir / "error.json", workdir / "result.json"
    if returncode == 0 and res_file.is_file():
        return json.loads(res_file.read_text())
    if err_file.is_file():
        err = json.loads(err_file.read_text())
        raise error_cls(on_error(err) if on_error else f"{what} failed: {err['message']}")
    tail = _log_tail(workdir / "worker.log")
    if returncode < 0:
        import signal

        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        raise error_cls(f"{what} crashed inside TensorFlow ({sig}){': ' + tail if tail else ''}")
    raise error_cls(f"{what} failed (exit {returncode}){': ' + tail if tail else ''}")


def _run_child(module: str, workdir: Path, env: dict[str, str], *, what: str, error_cls: type[EdgekitError],
               progress: Callable[[str, float], None], timeout_s: float) -> int:
    """Run ``python -m module workdir`` to its end (or its deadline); the child is killed and reaped on any exit, Ctrl-C too."""
    with open(workdir / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, str(workdir)], cwd=workdir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        last = ""
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise error_cls(f"{what} did not finish within {timeout_s:.0f} s and was stopped")
                last = _forward_progress(workdir / "progress.txt", last, progress)
                time.sleep(0.2)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
    return proc.returncode


def _forward_progress(path: Path, last: str, progress: Callable[[str, float], None]) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return last
    if lines and lines[-1] != last:
        msg, _, frac = lines[-1].rpartition("\t")
        try:
            progress(msg, float(frac))
        except ValueError:
            pass
        return lines[-1]
    return last


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("WARNING", "W0000", "I0000", "E0000"))]
    return " | ".join(lines[-n:])[:600]


def quiet_tensorflow() -> None:
    """Inside a worker, before importing TF: no Python warnings, no absl noise."""
    import logging
    import warnings

    os.environ.update({k: v for k, v in TF_ENV.items() if k not in os.environ})
    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def worker_main(run: Callable[[dict[str, Any], Path], dict[str, Any]], argv: list[str] | None = None) -> int:
    """The body of a worker's ``__main__``: read the job, run it, write ``result.json`` or ``error.json``."""
    workdir = Path((argv if argv is not None else sys.argv[1:])[0])
    job = json.loads((workdir / "job.json").read_text())
    quiet_tensorflow()
    try:
        result = run(job, workdir)
    except WorkerError as e:
        _write(workdir / "error.json", {"kind": e.kind, "message": str(e), **e.details})
        return 3
    except SystemExit as e:  # onnx2tf calls sys.exit(1) after logging its error
        _write(workdir / "error.json", {"kind": "exit", "message": f"the converter stopped (exit {e.code}): {_log_tail(workdir / 'worker.log')}"})
        return 3
    except Exception as e:  # noqa: BLE001 - anything TF raises becomes one line for the parent
        traceback.print_exc()
        _write(workdir / "error.json", {"kind": "exception", "message": f"{type(e).__name__}: {_first_line(e)}", "type": type(e).__name__})
        return 3
    _write(workdir / "result.json", result)
    return 0


def report_progress(workdir: Path, message: str, fraction: float) -> None:
    with open(workdir / "progress.txt", "a") as f:
        f.write(f"{message}\t{fraction:.3f}\n")


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:400]
