"""``compress``: run a list of steps on a model, export every format, prove each artifact, write the directory.

Flow: load + check the source → data (given or generated) → the source's reference outputs →
steps (each a new model) → exporters → evaluation of every artifact (quality vs the source,
parity vs the artifact it was converted from, latency) → self-test vectors, drift profile →
manifest, recipe gates, report. Everything is written to a temporary directory next to the output
and renamed into place at the end: a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

from device_agent.contract.manifest import Manifest, ManifestError, TensorSpec
from device_agent.runtime import BackendError, OrtBackend, open_backend
from edgekit.artifacts import check_artifact, export_all, warn_slower
from edgekit.choices import Format, Precision
from edgekit.data import Dataset, generate, load_data
from edgekit.errors import AccuracyError, ExportError, InputError
from edgekit.evaluate import Latency, is_classifier, measure_latencies, one_sample, run_dataset
from edgekit.export import ExportSource
from edgekit.manifest import build_manifest
from edgekit.onnx_model import int_input_ranges, io_specs, load_onnx
from edgekit.options import CompressOptions
from edgekit.origin import Front, judge_artifacts, open_front, raw_inputs
from edgekit.pipeline import Context, FormatModel, StepConfig, StepSpec, file_tag, get_step, validate_step
from edgekit.profile import drift_profile, selftest_inputs
from edgekit.recipes import Recipe, check_data, evaluate_gates, raise_on_failed_gates
from edgekit.reference import Reference
from edgekit.report import compress_report, write_reports
from edgekit.results import ArtifactResult, CompressResult
from edgekit.runlog import RunLog, no_progress, silent
from edgekit.signature import IntRange, batch_axes, unknown_axes

__all__ = ["CompressOptions", "CompressResult", "compress", "compress_with_recipe", "default_output"]

GENERATED_SAMPLES = 128


def default_output(model: Path, steps: Sequence[StepSpec]) -> Path:
    """Where a run of ``steps`` on ``model`` writes by default: ``model.int8/``, ``model.pruned.int8/`` next to it."""
    return model.with_name(f"{model.stem}.{file_tag(steps)}")


def compress(
    model: str | Path,
    data: str | Path | None = None,
    options: CompressOptions | None = None,
    *,
    say: Callable[[str], None] = silent,
    progress: Callable[[str, float], None] = no_progress,
) -> CompressResult:
    """Compress ``model`` (an .onnx file) and write a self-describing output directory.

    Args:
        model: the ONNX model to compress.
        data: calibration / training data (.npz, .npy or an image folder); None generates inputs.
        options: steps, formats, output and the rest (:class:`~edgekit.options.CompressOptions`).
        say: called with each line worth showing now.
        progress: called with the current phase and how far it is (0..1).

    Raises ``AccuracyError`` (after writing the directory) when a step kept a model that misses
    its accuracy bound; any other ``EdgekitError`` leaves no output behind. Recipe gates are judged
    into ``result.gates``; :func:`compress_with_recipe` raises when one is missed.
    """
    opts = options or CompressOptions()
    log = RunLog(say=say, progress=progress)
    src = Path(model)
    configs = [(s, validate_step(s)) for s in opts.steps]  # fail on a bad config before any work
    if opts.recipe is not None:
        check_data(opts.recipe, data)
    source_model = load_onnx(src)
    with tempfile.TemporaryDirectory(prefix="edgekit.front.") as front_dir:
        # the model the run works on: the source, or the source with its image preprocessing baked in front
        front = open_front(src, source_model, image_spec=opts.image_spec, check=opts.origin_check, data=Path(data) if data else None,
                           workdir=Path(front_dir), threads=opts.threads)
        try:
            source_backend = OrtBackend(front.path, threads=opts.threads)
        except BackendError as e:
            raise InputError(_ort_cannot_run(source_model, src, e)) from None
        out = _output_dir(src, opts)
        staging = _staging(out)  # before any work: an output that cannot be written is said at once
        try:
            run = _start(src, front, source_backend, data, opts, log)
            with tempfile.TemporaryDirectory(prefix="edgekit.work.") as work:
                stepped = _run_steps(run, configs, Path(work))
                results, failures, source_latency = _export_and_check(run, stepped, staging, f"{src.stem}.{file_tag(opts.steps)}",
                                                                      Path(work))
                result = _write(run, stepped, results, source_latency, staging, out)
            _move_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if failures:
        raise ExportError(f"{'; '.join(failures)}. Still written to {out}: " + ", ".join(r.file for r in results))
    if stepped.failed_bound:
        raise AccuracyError(f"{stepped.failed_bound}. The best candidate was still written to {out}")
    return result


def compress_with_recipe(model: str | Path, data: str | Path | None, recipe: Recipe, options: CompressOptions | None = None, *,
                         say: Callable[[str], None] = silent, progress: Callable[[str, float], None] = no_progress) -> CompressResult:
    """Run ``recipe`` (its steps and formats; the rest from ``options``), then hold the artifacts to its gates.

    Data needs are checked before any work; a missed gate raises :class:`~edgekit.errors.GateError`
    (exit 3) after the output is written.
    """
    result = compress(model, data, (options or CompressOptions()).with_recipe(recipe), say=say, progress=progress)
    raise_on_failed_gates(result.gates, recipe=recipe.name, output=result.output)
    return result


@dataclass
class _Run:
    """What the phases of one run share."""

    src: Path
    front: Front  # the model the run works on (``front.model``), and the origin its artifacts are also checked against
    source_backend: OrtBackend
    dataset: Dataset  # the data given (or generated): calibration, training, drift profile
    ref: Reference
    opts: CompressOptions
    log: RunLog


@dataclass
class _Stepped:
    """The model after every step, and what the steps recorded."""

    model: onnx.ModelProto
    precision: Precision
    float_model: onnx.ModelProto  # the last float model: the TFLite exporter quantizes it with its own converter
    records: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    format_models: dict[Format, FormatModel] = field(default_factory=dict)
    failed_bound: str | None = None


def _output_dir(src: Path, opts: CompressOptions) -> Path:
    out = opts.output or default_output(src, opts.steps)
    if out.exists() and not opts.force:
        raise InputError(f"output directory {out} exists; pass --force to replace it, or -o another directory")
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} is a file; pass -o a directory path")
    return out


def _staging(out: Path) -> Path:
    """The temporary directory beside ``out`` the run writes into (renamed to ``out`` at the end); InputError when
    ``out``'s parent cannot be written (read-only mount, permissions), naming it and the fix."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        where = out.parent if out.parent.exists() else next((p for p in out.parents if p.exists()), out.parent)
        raise InputError(f"cannot write the output directory {out}: {where} is not writable ({e.strerror or e}); "
                         f"pass -o a directory you can write, or fix the permissions of {where}") from None


def _start(src: Path, front: Front, source_backend: OrtBackend, data: str | Path | None, opts: CompressOptions, log: RunLog) -> _Run:
    """Load the data, run the source over the evaluation data: the reference every artifact is judged against."""
    inputs, outputs = io_specs(front.model)
    inputs = raw_inputs(front, inputs)
    log.say(f"model: {src.name} ({src.stat().st_size:,} bytes), inputs {_sig(inputs)}, outputs {_sig(outputs)}")
    dataset = _data(data, inputs, opts, opts.data_desc, int_input_ranges(front.model))
    if dataset.generated and "integer inputs" in dataset.description:
        log.say(f"generated inputs: {dataset.description.split('integer inputs: ', 1)[1]}")
    # held-out evaluation data when given; otherwise a subset of the data (calibration/training data)
    eval_data = (_data(opts.eval_data, inputs, opts, None) if opts.eval_data is not None else dataset).subset(opts.max_eval_samples)
    classifier = is_classifier(outputs)
    try:
        ref_outputs = run_dataset(source_backend, eval_data, inputs)
    except BackendError as e:
        raise InputError(_source_fails(src, inputs, eval_data, e)) from None
    ref_acc = None
    if classifier and eval_data.labels is not None:
        ref_acc = float((ref_outputs[outputs[0].name].argmax(1) == eval_data.labels).mean() * 100)
    ref = Reference(front.path, inputs, outputs, classifier, eval_data, None if dataset.generated else dataset, ref_outputs, ref_acc)
    return _Run(src, front, source_backend, dataset, ref, opts, log)


def _data(data: str | Path | None, inputs: tuple[TensorSpec, ...], opts: CompressOptions, description: str | None,
          int_ranges: dict[str, IntRange] | None = None) -> Dataset:
    if data is None:
        return generate(inputs, GENERATED_SAMPLES, int_ranges=int_ranges, sizes=opts.input_shapes)
    return load_data(data, inputs, image_spec=opts.image_spec, data_layout=opts.data_layout, description=description, label=opts.label,
                     classes=getattr(opts.origin_check, "classes", None))


def _run_steps(run: _Run, configs: list[tuple[StepSpec, StepConfig]], workdir: Path) -> _Stepped:
    """Each step on the previous one's model; a later step that changes the model makes earlier per-format models stale."""
    ctx = Context(run.ref, workdir, threads=run.opts.threads, train_data=run.ref.calib_data, log=run.log, formats=run.opts.formats,
                  objective=run.opts.objective, ort_target=run.opts.export.ort.target)
    s = _Stepped(run.front.model, Precision.FP32, run.front.model)
    for spec, cfg in configs:
        outcome = get_step(spec.name)(s.model, cfg, ctx)
        s.model = outcome.model
        s.precision = outcome.precision or s.precision
        s.float_model = s.model if s.precision == Precision.FP32 else s.float_model
        s.extra.update(outcome.artifact_extra)
        s.format_models = outcome.format_models
        s.failed_bound = outcome.failed_bound or s.failed_bound
        s.records.append({"name": spec.name, "params": cfg.model_dump(mode="json"), "result": outcome.record})
    return s


def _export_and_check(run: _Run, s: _Stepped, staging: Path, stem: str,
                      workdir: Path) -> tuple[list[ArtifactResult], list[str], Latency]:
    """Export every format, check every artifact, time them all together with the source (whose latency is returned)."""
    opts = run.opts
    source = ExportSource(s.model, s.precision, run.ref, workdir, log=run.log, threads=opts.threads, extra=s.extra,
                          float_model=s.float_model)
    exported, failures = export_all(source, opts.formats, staging, stem, options=opts.export_options(),
                                    format_models=s.format_models)
    results = []
    for a in exported:
        try:
            results.append(check_artifact(a, exported, run.ref, threads=opts.threads, allow_mismatch=opts.allow_mismatch, log=run.log))
        except ExportError as e:
            if a.format == Format.ONNX:
                raise  # every other format was converted from it
            failures.append(str(e))  # a format that fails its check costs only itself: not shipped, not in the manifest
            for f in (a.path, *a.side_files):
                f.unlink(missing_ok=True)
    if Format.ONNX not in opts.formats:
        # the .onnx was needed as the parity reference of the other formats; it was not asked for
        results = [r for r in results if r.exported.format != Format.ONNX]
        next(a for a in exported if a.format == Format.ONNX).path.unlink()
    if failures and not results:
        raise ExportError("; ".join(failures))  # nothing asked for could be written
    judge_artifacts(run.front, results, {r.file: r.outputs for r in results if r.outputs is not None}, run.ref,
                    allow_mismatch=opts.allow_mismatch, log=run.log)
    for r in results:
        r.outputs = None
    run.log.progress("timing the artifacts against the source", 0.9)
    feeds = one_sample(run.ref.eval_data, run.ref.inputs)
    timed = {"source": (run.source_backend, feeds)} | {r.file: (r.backend, feeds) for r in results if r.backend is not None}
    lat = measure_latencies(timed, budget_s=20)
    for r in results:
        r.latency, r.backend = lat[r.file], None
    warn_slower(results, lat["source"], calibrated=run.ref.calib_data is not None, log=run.log, objective=str(run.opts.objective),
                failed_bound=s.failed_bound is not None)
    return results, failures, lat["source"]


def _write(run: _Run, s: _Stepped, results: list[ArtifactResult], source_latency: Latency, staging: Path, out: Path) -> CompressResult:
    """The manifest, the recipe gates' outcome and the report, written into ``staging`` (to become ``out``)."""
    ref, opts, src = run.ref, run.opts, run.src
    source_quality = {"accuracy": round(ref.ref_accuracy, 4)} if ref.ref_accuracy is not None else {}
    vectors = selftest_inputs(ref.eval_data, ref.inputs)
    expected = {r.file: [open_backend(r.exported.path, r.exported.record(), threads=opts.threads).run(v) for v in vectors] for r in results}
    manifest = Manifest.from_dict(build_manifest(
        src=src, name=opts.name or src.stem, version=opts.version or _derived_version(), inputs=ref.inputs, outputs=ref.outputs,
        classifier=ref.classifier, labels=run.dataset.class_names, artifacts=results, steps=s.records, dataset=run.dataset,
        source_latency=source_latency, source_quality=source_quality, profile=drift_profile(run.dataset, ref.inputs), vectors=vectors,
        expected=expected, recipe=opts.recipe.document() if opts.recipe else None, threads=opts.threads, origin=opts.origin,
        sections=run.front.sections(run.dataset),
    ))
    try:
        text = manifest.to_json()
    except ManifestError as e:  # a measurement came out NaN/Inf: say which, rather than write JSON nothing else reads
        raise ExportError(f"{e}. This is a bug in a measurement: please report it") from None
    (staging / "edgekit.json").write_text(text)
    gates = None
    if opts.recipe is not None and opts.recipe.gates.active():
        gates = evaluate_gates(opts.recipe.gates, [{"file": r.file, **manifest.metrics[r.file]} for r in results])
    result = CompressResult(out, manifest, src, src.stat().st_size, source_latency, source_quality, results, s.records,
                            run.log.notes, s.failed_bound, opts.threads, eval_data=ref.eval_data, float_model=s.float_model, gates=gates)
    result.report = compress_report(result)
    write_reports(result.report, staging)
    return result


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


def _source_fails(src: Path, inputs: tuple[TensorSpec, ...], data: Dataset, e: Exception) -> str:
    """One line for a source model that does not run on the run's data: which input is the likely cause, and the fix."""
    reason = str(e).rsplit("Status Message: ", 1)[-1].strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    axes = batch_axes(inputs)
    if not data.generated:
        stacked = [f"{s.name!r} on axis {axes[s.name]}" if axes[s.name] is not None else f"{s.name!r} one value per sample"
                   for s in inputs if axes[s.name] != 0 and s.shape]
        where = f" (samples stacked: {', '.join(stacked)})" if stacked else ""
        return (f"{src.name} does not run on {Path(data.file).name if data.file else 'the data'}: {reason}. Check that each array "
                f"holds what its input expects{where}")
    guessed = [(s, unknown_axes(s, axes[s.name])) for s in inputs if unknown_axes(s, axes[s.name])]
    if not guessed:
        return f"{src.name} does not run on generated inputs: {reason}. Pass real inputs with --data"
    which = "; ".join(f"input {s.name!r} {_shape(s.shape)} axis {', '.join(map(str, ax))}" for s, ax in guessed)
    flags = " ".join(f"--input-shape {s.name}:{_shape_flag(s, axes[s.name])}" for s, _ in guessed)
    return (f"{src.name} does not run on generated inputs ({reason}): edgekit cannot know the size of {which} without data and "
            f"generated 1. Pass the sizes your application feeds, {flags} (SIZE filled in), or real inputs with --data")


def _shape(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _shape_flag(s: TensorSpec, axis: int | None) -> str:
    """``--input-shape`` value for ``s``: the batch as 1, fixed sizes as they are, SIZE where the user must say."""
    return ",".join("1" if i == axis else (str(d) if isinstance(d, int) and d > 0 else "SIZE") for i, d in enumerate(s.shape))
