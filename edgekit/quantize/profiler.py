"""What each node costs, from onnxruntime's own profiler, on the graph the session really ran.

A session with ``enable_profiling`` writes one event per kernel per run (``end_profiling`` gives the
JSON file); the graph it ran (after fusions and layout changes) is saved with
``optimized_model_filepath``. Both name the same nodes, so each event can be placed in the graph.
Several models are profiled round-robin, one run each per round, so they share the CPU's load.
Profiling sessions are only for *attributing* time to nodes: every latency edgekit prints or
compares comes from a plain session (:func:`edgekit.evaluate.measure_latencies`).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = ["Profile", "ProfileTarget", "RunNode", "parse_events", "profile"]

_SUFFIX = "_kernel_time"
_EIGHT_BIT = ("uint8", "int8")


@dataclass(frozen=True)
class RunNode:
    """A node of the graph a session ran."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ProfileTarget:
    """A file to profile as a user opens it; for an ``.ort``, the ``.onnx`` it was converted from (its graph names the nodes)."""

    path: Path
    graph_source: Path | None = None


@dataclass(frozen=True)
class Profile:
    """Kernel time per node (µs per run, 25th percentile), which nodes moved 8-bit data, the graph, the median run (µs)."""

    kernel_us: dict[str, float]
    eight_bit: frozenset[str]
    op_types: dict[str, str]
    graph: dict[str, RunNode]
    run_us: float


def profile(targets: dict[str, ProfileTarget], feeds: dict[str, np.ndarray], *, threads: int, runs: int, workdir: Path,
            warmup: int = 3) -> dict[str, Profile]:
    """Profile every target over ``runs`` runs (after ``warmup``), round-robin; keyed like ``targets``."""
    import onnxruntime as ort

    workdir.mkdir(parents=True, exist_ok=True)
    sessions, graphs = {}, {}
    for key, target in targets.items():
        opts = _options(ort, threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(workdir / f"prof-{_slug(key)}")
        saved = workdir / f"run-graph-{_slug(key)}.onnx"
        if target.path.suffix == ".ort":
            opts.add_session_config_entry("session.load_model_format", "ORT")
            if target.graph_source is not None:
                _save_ort_graph(ort, target.graph_source, saved, threads)
        else:
            opts.optimized_model_filepath = str(saved)
        sessions[key] = ort.InferenceSession(str(target.path), sess_options=opts, providers=["CPUExecutionProvider"])
        graphs[key] = _run_graph(saved)
    for _ in range(warmup + runs):
        for s in sessions.values():
            s.run(None, feeds)
    out = {}
    for key, s in sessions.items():
        path = Path(s.end_profiling())
        out[key] = parse_events(json.loads(path.read_text()), graphs[key], skip=warmup)
        path.unlink(missing_ok=True)
    return out


def parse_events(events: list[dict[str, Any]], graph: dict[str, RunNode], *, skip: int = 0) -> Profile:
    """A :class:`Profile` from onnxruntime's profile JSON (``skip`` first runs dropped as warm-up)."""
    per_node: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    eight: set[str] = set()
    runs: list[float] = []
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs.append(float(e["dur"]))
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(_SUFFIX):
            continue
        name = e["name"][: -len(_SUFFIX)]
        args = e.get("args", {})
        per_node.setdefault(name, []).append(float(e["dur"]))
        ops[name] = args.get("op_name", "")
        types = [t for shapes in (args.get("input_type_shape", []), args.get("output_type_shape", [])) for d in shapes for t in d]
        if any(t in _EIGHT_BIT for t in types):
            eight.add(name)
    # the 25th percentile: on a shared CPU, interruptions only ever add time, and they move it least
    kernel = {n: float(np.percentile(d[skip:] if len(d) > skip else d, 25)) for n, d in per_node.items()}
    run = float(np.median(runs[skip:] if len(runs) > skip else runs)) if runs else float(sum(kernel.values()))
    return Profile(kernel, frozenset(eight), ops, graph, run)


def _options(ort: Any, threads: int) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def _save_ort_graph(ort: Any, source: Path, saved: Path, threads: int) -> None:
    """The graph an ``.ort`` holds, as ONNX: its source optimized as the converter does (every optimization but x86's NCHWc)."""
    opts = _options(ort, threads)
    opts.optimized_model_filepath = str(saved)
    with contextlib.suppress(Exception):  # without the graph, events are placed by their names alone
        ort.InferenceSession(str(source), sess_options=opts, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])


def _run_graph(saved: Path) -> dict[str, RunNode]:
    if not saved.is_file():
        return {}
    try:
        m = onnx.load(str(saved), load_external_data=False)
    except Exception:  # noqa: BLE001 - a graph onnx cannot read back is only a missing hint
        return {}
    finally:
        with contextlib.suppress(OSError):
            for p in saved.parent.glob(f"{saved.name}*"):
                p.unlink()
    return {n.name: RunNode(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in m.graph.node if n.name}


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in key)[:60] + f"-{time.monotonic_ns() % 10**6}"
