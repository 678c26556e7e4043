"""``compress``: run a list of steps on a model, export every format, prove each artifact, write the directory.

Flow: load + check the source → data (given or generated) → the source's reference outputs →
steps (each a new model) → exporters → evaluation of every artifact (quality vs the source,
parity vs the artifact it was converted from, latency) → self-test vectors, drift profile →
manifest + report. Everything is written to a temporary directory next to the output and renamed
into place at the end: a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from device_agent.contract.manifest import Artifact, Manifest, TensorSpec, file_sha256
from device_agent.runtime import BackendError, OrtBackend, open_backend
from edgekit.data import Dataset, ImageSpec, generate, load_data
from edgekit.errors import AccuracyError, ExportError, InputError
from edgekit.evaluate import Latency, Quality, compare, is_classifier, measure_latencies, one_sample, parity, run_dataset
from edgekit.export import ExportedArtifact, exporter
from edgekit.manifest import build_manifest
from edgekit.onnx_model import io_specs, load_onnx, weight_stats
from edgekit.pipeline import Context, StepOutcome, StepSpec, get_step, validate_step
from edgekit.profile import drift_profile, selftest_inputs

__all__ = ["ArtifactResult", "CompressResult", "compress", "default_output"]

GENERATED_SAMPLES = 128


@dataclass
class ArtifactResult:
    exported: ExportedArtifact
    size_bytes: int
    sha256: str
    quality: Quality
    latency: Latency | None
    parity: dict | None = None
    stats: dict | None = None
    backend: object | None = field(default=None, repr=False)  # open until the interleaved timing

    @property
    def file(self) -> str:
        return self.exported.path.name


@dataclass
class CompressResult:
    output: Path
    manifest: Manifest
    source: Path
    source_size: int
    source_latency: Latency
    source_quality: dict
    artifacts: list[ArtifactResult]
    steps: list[dict]
    notes: list[str] = field(default_factory=list)
    failed_bound: str | None = None
    threads: int = 1
    eval_data: Dataset | None = field(default=None, repr=False)  # what quality was measured on (the report's per-layer error)
    float_model: onnx.ModelProto | None = field(default=None, repr=False)  # the model int8 quantized (after prune/distill)


def default_output(model: Path, tag: str) -> Path:
    return model.with_name(f"{model.stem}.{tag}")


def compress(
    model_path: str | Path,
    steps: list[StepSpec],
    *,
    formats: tuple[str, ...] = ("onnx", "ort"),
    data: str | Path | None = None,
    eval_data: str | Path | None = None,
    output: str | Path | None = None,
    force: bool = False,
    name: str | None = None,
    version: str | None = None,
    data_desc: str | None = None,
    image_spec: ImageSpec | None = None,
    data_layout: str | None = None,
    threads: int = 1,
    max_eval_samples: int = 2000,
    allow_mismatch: bool = False,
    export_options: dict[str, dict] | None = None,
    recipe: dict | None = None,
    origin: dict | None = None,
    say: Callable[[str], None] = lambda m: None,
    progress: Callable[[str, float], None] = lambda m, f: None,
) -> CompressResult:
    """Compress ``model_path`` with ``steps`` and write a self-describing output directory.

    Raises ``AccuracyError`` (after writing the directory) when a step kept a model that misses
    its accuracy bound; any other ``EdgekitError`` leaves no output behind.
    """
    src = Path(model_path)
    configs = [(s, validate_step(s)) for s in steps]  # fail on a bad config before any work
    model = load_onnx(src)
    try:
        source_backend = OrtBackend(src, threads=threads)
    except BackendError as e:
        raise InputError(_ort_cannot_run(model, src, e)) from None
    inputs, outputs = io_specs(model)
    tag = _tag(steps)
    out = Path(output) if output else default_output(src, tag)
    if out.exists() and not force:
        raise InputError(f"output directory {out} exists; pass --force to replace it, or -o another directory")
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} is a file; pass -o a directory path")

    say(f"model: {src.name} ({src.stat().st_size:,} bytes), inputs {_sig(inputs)}, outputs {_sig(outputs)}")
    dataset = _data(data, inputs, image_spec, data_layout, data_desc)
    # held-out evaluation data when given; otherwise a subset of --data (calibration/training data)
    eval_data = (_data(eval_data, inputs, image_spec, data_layout, None) if eval_data is not None else dataset).subset(max_eval_samples)
    classifier = is_classifier(outputs)
    ref = run_dataset(source_backend, eval_data, inputs)
    ref_acc = None
    if classifier and eval_data.labels is not None:
        ref_acc = float((ref[outputs[0].name].argmax(1) == eval_data.labels).mean() * 100)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    work = tempfile.TemporaryDirectory(prefix="edgekit.work.")
    try:
        ctx = Context(src, Path(work.name), inputs, outputs, classifier, eval_data,
                      None if dataset.generated else dataset, ref, ref_acc, threads=threads,
                      train_data=None if dataset.generated else dataset, progress=progress, say=say,
                      formats=tuple(formats))
        current, precision, records, extra, failed, format_models = model, "fp32", [], {}, None, {}
        float_model = model  # the last float model: the TFLite exporter quantizes it with its own converter
        for spec, cfg in configs:
            outcome: StepOutcome = get_step(spec.name)(current, cfg, ctx)
            current = outcome.model
            precision = outcome.precision or precision
            float_model = current if precision == "fp32" else float_model
            extra.update(outcome.artifact_extra)
            format_models = outcome.format_models  # a later step changes the model: earlier alternatives are stale
            failed = outcome.failed_bound or failed
            records.append({"name": spec.name, "params": cfg.model_dump(mode="json"), "result": outcome.record})
        stem = f"{src.stem}.{tag}"
        export_failures: list[str] = []
        exported = _export(current, formats, staging, stem, precision, extra, ctx, float_model=float_model,
                           options=export_options or {}, failures=export_failures, format_models=format_models)
        results = [_evaluate(a, exported, ctx, allow_mismatch) for a in exported]
        if "onnx" not in formats:
            # the .onnx was needed as the parity reference of the other formats; it was not asked for
            results = [r for r in results if r.exported.format != "onnx"]
            next(a for a in exported if a.format == "onnx").path.unlink()
        ctx.progress("timing the artifacts against the source", 0.9)
        feeds = one_sample(eval_data, inputs)
        lat = measure_latencies({"source": (source_backend, feeds)} | {r.file: (r.backend, feeds) for r in results}, budget_s=20)
        source_latency = lat["source"]
        for r in results:
            r.latency, r.backend = lat[r.file], None
        _warn_slower(results, source_latency, ctx)
        source_quality = {"accuracy": round(ref_acc, 4)} if ref_acc is not None else {}
        vectors = selftest_inputs(eval_data, inputs)
        manifest_doc = build_manifest(
            src=src, name=name or src.stem, version=version or _derived_version(), inputs=inputs, outputs=outputs,
            classifier=classifier, labels=dataset.class_names, artifacts=results, steps=records, dataset=dataset,
            source_latency=source_latency, source_quality=source_quality,
            profile=drift_profile(dataset, inputs), vectors=vectors,
            expected={r.file: [open_backend(r.exported.path, _artifact(r), threads=threads).run(v) for v in vectors] for r in results},
            recipe=recipe, threads=threads, origin=origin,
        )
        manifest = Manifest.from_dict(manifest_doc)
        (staging / "edgekit.json").write_text(manifest.to_json())
        result = CompressResult(out, manifest, src, src.stat().st_size, source_latency, source_quality, results, records,
                                ctx.notes, failed, threads, eval_data=eval_data, float_model=float_model)
        from edgekit.report import write_reports

        write_reports(result, staging)
        _move_into_place(staging, out)
        result.output = out
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        work.cleanup()
    if export_failures:
        raise ExportError(f"{'; '.join(export_failures)}. Still written to {out}: "
                          + ", ".join(r.file for r in results))
    if failed:
        raise AccuracyError(f"{failed}. The best candidate was still written to {out}")
    return result


def _tag(steps: list[StepSpec]) -> str:
    names = [s.name for s in steps]
    # model.pruned.int8.onnx, model.student.onnx: what was done, then the precision
    parts = [t for n, t in (("distill", "student"), ("prune", "pruned")) if n in names]
    parts += [p for p in ("int8", "fp16") if p in names][:1]
    return ".".join(parts) or "fp32"


def _data(data, inputs, image_spec, data_layout, data_desc) -> Dataset:
    if data is None:
        return generate(inputs, GENERATED_SAMPLES)
    return load_data(data, inputs, image_spec=image_spec, data_layout=data_layout, description=data_desc)


def _export(model: onnx.ModelProto, formats, staging: Path, stem: str, precision: str, extra: dict, ctx: Context, *,
            float_model: onnx.ModelProto | None = None, options: dict[str, dict] | None = None,
            failures: list[str] | None = None, format_models: dict | None = None) -> list[ExportedArtifact]:
    ctx.progress("exporting", 0.0)
    onnx_art = exporter("onnx")(model, staging, stem, precision=precision, extra=extra)[0]
    arts = [onnx_art]
    for fmt in formats:
        if fmt == "onnx":
            continue
        try:
            if fmt in (format_models or {}):
                arts += _export_alternative(fmt, *format_models[fmt], staging, stem, precision, extra, ctx)
                continue
            arts += exporter(fmt)(onnx_art, staging, stem, ctx=ctx, model=model, float_model=float_model, **(options or {}).get(fmt, {}))
        except ExportError as e:
            # one format that cannot be made must not cost the others: record it, write the rest, fail after
            if failures is None or len(formats) == 1:
                raise
            failures.append(str(e))
    if failures and len(arts) == 1 and "onnx" not in formats:
        raise ExportError("; ".join(failures))
    return arts


def _export_alternative(fmt: str, model: onnx.ModelProto, alt_extra: dict, staging: Path, stem: str, precision: str, extra: dict,
                        ctx: Context) -> list[ExportedArtifact]:
    """Export ``fmt`` from another model than the .onnx artifact's (not shipped as .onnx itself).

    Parity is checked against that model, the one the artifact was converted from.
    """
    side = staging / f".{fmt}-source"
    side.mkdir()
    try:
        extra = {k: v for k, v in extra.items() if k not in ("session_config", "candidate")} | alt_extra
        src_art = exporter("onnx")(model, side, stem, precision=precision, extra=extra)[0]
        reference = run_dataset(open_backend(src_art.path, _artifact(src_art), threads=ctx.threads), ctx.eval_data, ctx.inputs)
        arts = exporter(fmt)(src_art, staging, stem, ctx=ctx, model=model)
        for a in arts:
            a.parent = f"the {alt_extra.get('candidate', 'int8')} model it was converted from"
            a.reference_outputs = reference
            a.extra["weights"] = weight_stats(model).to_dict()
        return arts
    finally:
        shutil.rmtree(side, ignore_errors=True)


def _artifact(r: ArtifactResult | ExportedArtifact) -> Artifact:
    a = r.exported if isinstance(r, ArtifactResult) else r
    return Artifact(a.path.name, a.format, a.precision, 0, "0" * 64, "litert" if a.format == "tflite" else "onnxruntime",
                    a.inputs, a.outputs, a.extra)


def _evaluate(a: ExportedArtifact, all_arts: list[ExportedArtifact], ctx: Context, allow_mismatch: bool) -> ArtifactResult:
    ctx.progress(f"evaluating {a.path.name}", 0.5)
    try:
        backend = open_backend(a.path, _artifact(a), threads=ctx.threads)
        outs = run_dataset(backend, ctx.eval_data, ctx.inputs)
    except BackendError as e:
        raise ExportError(f"{a.path.name} was written but does not run: {e}") from None
    quality = compare(ctx.ref_outputs, outs, classifier=ctx.classifier, first_output=ctx.first_output,
                      labels=ctx.eval_data.labels, ref_accuracy=ctx.ref_accuracy, generated=ctx.eval_data.generated)
    parity = None
    if a.parent:
        if a.reference_outputs is not None:  # converted from a model that is not an artifact (a .tflite from the float model)
            parent_outs = a.reference_outputs
        else:
            parent = next(p for p in all_arts if p.path.name == a.parent)
            parent_outs = run_dataset(open_backend(parent.path, _artifact(parent), threads=ctx.threads), ctx.eval_data, ctx.inputs)
        parity = _parity(a, parent_outs, outs, ctx)
        if not parity["ok"] and not allow_mismatch:
            raise ExportError(
                f"{a.path.name} does not match {a.parent}: output {parity['worst_output']!r} max abs error "
                f"{parity['max_abs_error']:.4g} (allowed {parity['allowed']:.4g})"
                + (f", top-1 agreement {parity['agreement']:.2f}%" if parity.get("agreement") is not None else "")
                + f", cosine {parity['cosine']:.4f}"
                + "; pass --allow-mismatch to keep it anyway"
            )
    # an artifact converted from a model not shipped as .onnx carries that model's weight facts
    stats = weight_stats(onnx.load(str(a.path))).to_dict() if a.format == "onnx" else a.extra.get("weights")
    return ArtifactResult(a, a.path.stat().st_size, file_sha256(a.path), quality, None, parity, stats, backend=backend)


def _warn_slower(results: list[ArtifactResult], source: Latency, ctx: Context) -> None:
    """Say plainly when a compressed artifact runs slower than the fp32 source on this CPU, and why."""
    for r in results:
        ratio = r.latency.p50_ms / source.p50_ms
        # below 5% or 5 µs per inference a difference is timing noise on a shared CPU, not a regression
        if r.exported.precision != "int8" or ratio <= 1.05 or r.latency.p50_ms - source.p50_ms < 0.005:
            continue
        why = "int8 kernels for this model are slower than fp32 ones on this CPU"
        if r.exported.format == "ort" and r.exported.extra.get("weight_only"):
            why = ("ORT-format models are not re-optimized at load, so its weight-only int8 weights are dequantized on every run; "
                   + ("calibration data (--data) gives a static int8 .ort that is fast, or deploy the .onnx" if ctx.calib_data is None
                      else "no static int8 candidate was faster as .ort on this CPU; deploy the .onnx"))
        msg = f"warning: {r.file} runs at {ratio:.2f}x the fp32 latency: {why}"
        ctx.notes.append(msg)
        ctx.say(msg)


def _parity(a: ExportedArtifact, ref: dict[str, np.ndarray], new: dict[str, np.ndarray], ctx: Context) -> dict:
    p = parity(ref, new, a.precision, tolerance=a.parity_tolerance, classifier=ctx.classifier, first_output=ctx.first_output)
    return {"against": a.parent, **p}


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _derived_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y.%m.%d.%H%M%S")


def _sig(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in specs)


def _ort_cannot_run(model: onnx.ModelProto, src: Path, e: Exception) -> str:
    import onnxruntime as ort

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    text = str(e)
    if "opset" in text.lower() or "not supported" in text.lower() or "Could not find an implementation" in text:
        return (f"{src.name} uses opset {opset}, which onnxruntime {ort.__version__} cannot run ({text.split(': ', 1)[-1][:200]}); "
                "re-export with a lower opset or convert with onnx.version_converter")
    return f"onnxruntime {ort.__version__} cannot run {src.name}: {text[:300]}"

