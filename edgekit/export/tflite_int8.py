"""The full-integer int8 path of the TFLite worker: the float baseline, one calibration, the search, the chosen bytes.

Runs in the TF child process (:mod:`edgekit.export.tflite_worker`) when the job carries ``judge``
(what the parent measures artifacts with; see :mod:`edgekit.export.tflite_measure`). The float
baseline is the .tflite ``--format tflite`` writes for the float model: when the int8 graph was
rewritten first (stem, HardSigmoid, pseudo HardSwish), the unrewritten float model is converted
again for it (``job["baseline"]``), since rewrites that pay off in int8 can cost in float.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import Artifact, TensorSpec
from edgekit.export.tflite_keras import artifact_spec, input_perms, onnx_to_keras, save_serving, serving_function
from edgekit.export.tflite_measure import Judge
from edgekit.export.tflite_opcost import summarize
from edgekit.export.tflite_quant import calibrate, float_compute_ops, nodes, quantize
from edgekit.export.tflite_search import SearchContext, float_layers, search
from edgekit.tf_process import WorkerError

__all__ = ["DEBUG_SAMPLES", "baseline_float", "run_int8"]

#: inputs the quantization debugger runs to rank ops by int8 error (only when no variant is accurate)
DEBUG_SAMPLES = 32
#: float ops listed per variant in the manifest at most (a deny-list by type can cover hundreds)
MAX_LISTED = 200


def baseline_float(tf: Any, job: dict[str, Any], saved: str, sample: dict[str, np.ndarray], *, in_perms: dict[str, Any], workdir: Path,
                   convert_fp32: Callable[[str], bytes]) -> Path:
    """The float .tflite (unstripped) every int8 variant is timed against, written under ``workdir``."""
    src = job.get("baseline")
    if src:
        model = onnx_to_keras(Path(src["path"]), job, sample, workdir / "baseline")
        perms = input_perms(model, job["inputs"], onnx2tf_made=True, keep=job.get("keep_inputs") or ())
        if perms != in_perms:
            raise WorkerError("signature", f"the float and the int8 TensorFlow models take their inputs in different layouts "
                                           f"({perms} vs {in_perms}); convert with TfliteConfig(search=False)")
        fn, _ = serving_function(tf, model, job, perms)
        saved = save_serving(tf, fn, model, workdir / "baseline" / "serving")
    path = workdir / "float.tflite"
    path.write_bytes(convert_fp32(saved))
    return path


def run_int8(tf: Any, saved: str, job: dict[str, Any], *, gen: Callable[[], Iterator[dict[str, np.ndarray]]], names: dict[str, Any],
             in_perms: dict[str, Any], out_perms: dict[str, Any], float_path: Path, workdir: Path,
             progress: Callable[[str, float], None]) -> tuple[bytes, list[str], dict[str, Any], list[dict[str, Any]]]:
    """Calibrate, search, and return (chosen bytes, notes, the ``int8_search`` facts, per-tensor alternatives of the choice)."""
    progress("tflite int8: calibrating", 0.5)
    t0 = time.perf_counter()
    calibrated = calibrate(tf, saved, gen)
    calib_s = time.perf_counter() - t0
    record = _record(job, names, in_perms, out_perms)
    ctx = SearchContext(tf, calibrated, per_channel=job.get("per_channel", True), int8_io=job.get("io") == "int8",
                        work=_mkdir(workdir / "variants"), judge=Judge(job["judge"], record, threads=int(job.get("threads") or 1)),
                        float_path=float_path, objective=job.get("objective") or "balanced",
                        samples=_debug_samples(calibrated, gen, names), progress=progress)
    outcome = search(ctx)
    chosen = outcome.selection.chosen
    blob = outcome.blob(ctx)
    notes = ([outcome.selection.note] if outcome.selection.note else []) + ctx.notes
    whole = next(v for v in outcome.variants if v.name == "int8")
    leftover = [n.op for n in float_compute_ops(nodes(ctx.blobs[whole.facts["path"]]))]
    if leftover:
        notes.append(f"{len(leftover)} op(s) have no int8 kernel and stay float ({', '.join(sorted(set(leftover)))})")
    facts = {
        "objective": ctx.objective, "chosen": chosen.name, "why": outcome.selection.why, "note": outcome.selection.note,
        "precision": "fp32" if blob is None else ("mixed" if float_layers(outcome, ctx) else "int8"),
        "float_layers": float_layers(outcome, ctx)[:MAX_LISTED], "error_nodes": outcome.error_nodes,
        "float_tflite": {"size_bytes": outcome.baseline.size_bytes, "p50_ms": _round(outcome.baseline.p50_ms)},
        "clock": ctx.judge.clock, "candidates": [v.to_dict(outcome.baseline.size_bytes) for v in outcome.variants],
        "op_costs_us": summarize(outcome.costs), "rounds": outcome.rounds, "seconds": round(outcome.seconds, 1),
        "phases_s": {"calibration": round(calib_s, 1), **ctx.phases},
    }
    alternatives = []
    if blob is not None:
        for alt in job.get("alternatives") or []:
            try:
                alt_blob = quantize(tf, calibrated, per_channel=bool(alt.get("per_channel", True)), int8_io=ctx.int8_io,
                                    deny_ops=chosen.deny_ops, deny_nodes=chosen.deny_nodes)
                alternatives.append({**alt, "blob": alt_blob})
            except WorkerError as e:
                alternatives.append({**alt, "error": str(e)})
    return blob if blob is not None else float_path.read_bytes(), notes, facts, alternatives


def _record(job: dict[str, Any], names: dict[str, Any], in_perms: dict[str, Any], out_perms: dict[str, Any]) -> Artifact:
    """The artifact record LiteRT backends open every variant with: artifact layout, signature names, int8 I/O."""
    int8_io = job.get("io") == "int8"

    def spec(d: dict[str, Any]) -> TensorSpec:
        return TensorSpec(d["name"], "int8" if int8_io and d["dtype"] == "float32" else d["dtype"], tuple(d["shape"]), d.get("layout"),
                          tuple(d["perm"]) if d.get("perm") else None)

    ins = tuple(spec(artifact_spec(s, in_perms[s["name"]])) for s in job["inputs"])
    outs = tuple(spec(artifact_spec(s, out_perms[s["name"]])) for s in job["outputs"])
    return Artifact("variant.tflite", "tflite", "int8", 0, "0" * 64, "litert", ins, outs, {"tflite_names": names})


def _debug_samples(calibrated: bytes, gen: Callable[[], Iterator[dict[str, np.ndarray]]], names: dict[str, Any]) -> list[list[np.ndarray]]:
    """Up to DEBUG_SAMPLES calibration inputs as lists in the model's input order (what the quantization debugger feeds)."""
    from ai_edge_litert.interpreter import Interpreter

    order = [d["name"] for d in Interpreter(model_content=calibrated).get_input_details()]
    sig = list(names["inputs"].values())
    # signature inputs are named serving_default_<name>:0 in the converted model
    keys = [next((s for s in sig if n in (f"serving_default_{s}:0", s)), "") for n in order]
    if len(sig) == 1:
        keys = sig
    elif not all(keys):
        return []  # inputs not found by name: no per-layer error ranking (the search then keeps int8 as measured)
    out = []
    for i, sample in enumerate(gen()):
        if i >= DEBUG_SAMPLES:
            break
        out.append([np.asarray(sample[k]) for k in keys])
    return out


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
