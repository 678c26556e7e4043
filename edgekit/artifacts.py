"""Every requested format exported from the compressed model, and every artifact checked before it ships.

``export_all`` writes the ``.onnx`` first (the other formats convert it, and it is their parity
reference), then each other format through its registered exporter; a format that cannot be made
is recorded and the others are still written. ``check_artifact`` runs an artifact over the
evaluation data with the device agent's backend: its quality against the source, its parity
against the model it was converted from, its weights.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from device_agent.contract.manifest import file_sha256
from device_agent.runtime import BackendError, open_backend
from edgekit.choices import Format, OrtTarget
from edgekit.errors import ExportError
from edgekit.evaluate import Latency, parity, run_dataset
from edgekit.export import ExportOptions, ExportSource, get_exporter
from edgekit.onnx_model import weight_stats
from edgekit.pipeline import FormatModel
from edgekit.reference import Reference
from edgekit.results import ArtifactResult, ExportedArtifact
from edgekit.runlog import RunLog

__all__ = ["artifact_parity", "check_artifact", "export_all", "warn_slower"]


def export_all(source: ExportSource, formats: tuple[Format, ...], out_dir: Path, stem: str, *, options: ExportOptions,
               format_models: dict[Format, FormatModel]) -> tuple[list[ExportedArtifact], list[str]]:
    """Write ``stem.<ext>`` for the ``.onnx`` and every format in ``formats``; return the artifacts and the failures.

    ``format_models`` gives a format another model than the ``.onnx``'s (the int8 search's fastest as
    ``.ort``). One format that cannot be made does not cost the others: its ExportError is returned
    as a failure, unless it was the only format asked for.
    """
    source.log.progress("exporting", 0.0)
    onnx_art = _export(Format.ONNX, source, out_dir, stem, options)[0]
    converted = source.converted_from(onnx_art)
    arts, failures = [onnx_art], []
    for fmt in formats:
        if fmt == Format.ONNX:
            continue
        try:
            if fmt in format_models:
                arts += _export_alternative(fmt, format_models[fmt], source, out_dir, stem, options)
            else:
                arts += _export(fmt, converted, out_dir, stem, options)
        except ExportError as e:
            if len(formats) == 1:
                raise
            failures.append(str(e))
    if failures and len(arts) == 1 and Format.ONNX not in formats:
        raise ExportError("; ".join(failures))
    return arts, failures


def _export(fmt: Format, source: ExportSource, out_dir: Path, stem: str, options: ExportOptions) -> list[ExportedArtifact]:
    return get_exporter(fmt)(source, out_dir, stem, options.for_format(fmt))


def _export_alternative(fmt: Format, alt_model: FormatModel, source: ExportSource, out_dir: Path, stem: str,
                        options: ExportOptions) -> list[ExportedArtifact]:
    """Export ``fmt`` from another model than the .onnx artifact's (not shipped as .onnx itself).

    Parity is checked against that model, the one the artifact was converted from. What the step recorded
    about the .onnx's model (its keys in ``alt_model.extra``) is replaced by what it recorded about this one.
    """
    side = out_dir / f".{fmt}-source"
    side.mkdir()
    model, alt_extra = alt_model.model, alt_model.extra
    try:
        extra = {k: v for k, v in source.extra.items() if k not in alt_extra and k != "mixed"} | alt_extra
        alt = replace(source, model=model, precision=alt_model.precision, extra=extra, onnx_artifact=None)
        src_art = _export(Format.ONNX, alt, side, stem, options)[0]
        ref = source.reference
        reference = run_dataset(open_backend(src_art.path, src_art.record(), threads=source.threads), ref.eval_data, ref.inputs)
        arts = _export(fmt, alt.converted_from(src_art), out_dir, stem, options)
        for a in arts:
            if a.reference_outputs is not None:
                continue  # converted from a model that is not an artifact (a .tflite from the float model): its own reference
            a.parent = f"the {alt_extra.get('candidate', 'int8')} model it was converted from"
            a.reference_outputs = reference
            a.extra["weights"] = weight_stats(model).to_dict()
        return arts
    finally:
        shutil.rmtree(side, ignore_errors=True)


def check_artifact(a: ExportedArtifact, all_arts: list[ExportedArtifact], ref: Reference, *, threads: int, allow_mismatch: bool,
                   log: RunLog) -> ArtifactResult:
    """Run ``a`` over the evaluation data: quality vs the source, parity vs its parent; ExportError when it does not run or match.

    The backend stays open in the result until the artifacts are timed together.
    """
    log.progress(f"evaluating {a.path.name}", 0.5)
    try:
        backend = open_backend(a.path, a.record(), threads=threads)
        outs = run_dataset(backend, ref.eval_data, ref.inputs)
    except BackendError as e:
        raise ExportError(f"{a.path.name} was written but does not run: {e}") from None
    quality = ref.quality(outs)
    checked = None
    if a.parent:
        if a.reference_outputs is not None:  # converted from a model that is not an artifact (a .tflite from the float model)
            parent_outs = a.reference_outputs
        else:
            parent = next(p for p in all_arts if p.path.name == a.parent)
            parent_outs = run_dataset(open_backend(parent.path, parent.record(), threads=threads), ref.eval_data, ref.inputs)
        checked = artifact_parity(a, parent_outs, outs, classifier=ref.classifier, first_output=ref.first_output)
        if not checked["ok"] and not allow_mismatch:
            raise ExportError(_mismatch(a, checked))
    # an artifact converted from a model not shipped as .onnx carries that model's weight facts
    stats = weight_stats(onnx.load(str(a.path))).to_dict() if a.format == Format.ONNX else a.extra.get("weights")
    return ArtifactResult(a, a.path.stat().st_size, file_sha256(a.path), quality, None, checked, stats, backend=backend, outputs=outs)


def artifact_parity(a: ExportedArtifact, parent: dict[str, np.ndarray], outputs: dict[str, np.ndarray], *, classifier: bool,
                    first_output: str) -> dict[str, Any]:
    """The parity record of ``a``'s ``outputs`` against its ``parent``'s (:func:`edgekit.evaluate.parity`), naming the parent."""
    p = parity(parent, outputs, a.precision, tolerance=a.parity_tolerance, classifier=classifier, first_output=first_output)
    return {"against": a.parent, **p}


def _mismatch(a: ExportedArtifact, p: dict[str, Any]) -> str:
    return (f"{a.path.name} does not match {a.parent}: output {p['worst_output']!r} max abs error "
            f"{p['max_abs_error']:.4g} (allowed {p['allowed']:.4g})"
            + (f", top-1 agreement {p['agreement']:.2f}%" if p.get("agreement") is not None else "")
            + f", cosine {p['cosine']:.4f}"
            + "; pass --allow-mismatch to keep it anyway")


def warn_slower(results: list[ArtifactResult], source: Latency, *, calibrated: bool, log: RunLog, objective: str = "balanced",
                failed_bound: bool = False) -> None:
    """Say plainly when a compressed artifact runs slower than the fp32 source on this CPU, and why.

    ``objective``: the ``--objective`` the int8 candidate was chosen for; ``failed_bound``: no candidate met the accuracy
    bound, so the most accurate one shipped whatever its speed."""
    for r in results:
        if r.latency is None:
            continue
        ratio = r.latency.p50_ms / source.p50_ms
        # below 5% or 5 µs per inference a difference is timing noise on a shared CPU, not a regression
        if r.exported.precision not in ("int8", "mixed") or ratio <= 1.05 or r.latency.p50_ms - source.p50_ms < 0.005:
            continue
        why = "int8 kernels for this model are slower than fp32 ones on this CPU"
        if r.exported.extra.get("candidate") == "weight-only":
            chosen = ("no int8 candidate met the accuracy bound and it was the most accurate" if failed_bound
                      else "--objective size asked for the smallest file" if objective == "size" else "it was the fastest candidate")
            hint = ("; calibration data (--data) gives a static int8 model that is fast" if not calibrated
                    else "; --objective balanced keeps the file at least as fast as fp32" if objective == "size" and not failed_bound else "")
            why = f"its weight-only int8 weights are dequantized on every run ({chosen}){hint}"
        elif r.exported.format == Format.ORT and r.exported.extra.get("ort_target", "arm") == "arm" and OrtTarget.host() is OrtTarget.AMD64:
            why = ("an .ort is built for ARM by default (no x86 blocked-layout float kernels), so its float layers are slower here "
                   "than the fp32 .onnx's; for an x86-64 device, pass --ort-target amd64 or deploy the .onnx")
        msg = f"warning: {r.file} runs at {ratio:.2f}x the fp32 latency: {why}"
        log.note(msg, shown=msg)
