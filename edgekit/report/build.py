"""Building the report (one dict, schema in :mod:`edgekit.report.schema`) from a compress result or from files."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_agent.contract.manifest import TensorSpec
from device_agent.runtime import BackendError, open_backend
from edgekit.errors import DataError, InputError
from edgekit.export.compact import NAMES_KEY
from edgekit.report.files import Entry, expand, gzip_size, onnx_facts, tflite_weight_stats
from edgekit.report.origin import origin_block
from edgekit.report.schema import REPORT_SCHEMA, REPORT_VERSION, ROW_KEYS
from edgekit.report.tflite import tflite_block

if TYPE_CHECKING:
    from edgekit.data import Dataset
    from edgekit.evaluate import Latency
    from edgekit.results import ArtifactResult, CompressResult

__all__ = ["compare_report", "compress_report"]

GENERATED_SAMPLES = 64


def compress_report(result: CompressResult) -> dict[str, Any]:
    """The report of one ``compress`` run: the source as baseline, every artifact as a row, ``result.gates`` as given.

    The per-layer analysis runs models: ``compress`` builds this once and keeps it as ``result.report``.
    """
    m = result.manifest
    metrics = m.metrics
    src = metrics.get("source", {})
    labelled = "accuracy" in src
    baseline = _row(result.source.name, "baseline", "onnx", "fp32")
    baseline.update(size_bytes=result.source_size, gzip_bytes=gzip_size(result.source), size_ratio=1.0, gzip_ratio=1.0,
                    latency_p50_ms=src.get("latency_p50_ms"), latency_p95_ms=src.get("latency_p95_ms"), latency_ratio=1.0,
                    accuracy=src.get("accuracy"), drop_pts=0.0, max_abs_error=0.0, cosine=1.0,
                    agreement=100.0 if m.task == "classification" else None)
    _, base_stats = onnx_facts(result.source)
    _weights(baseline, base_stats)
    by_file = {a.file: a for a in result.artifacts}
    rows = []
    for a in result.artifacts:
        am = metrics.get(a.file, {})
        path = _artifact_path(result, a)
        row = _row(a.file, "artifact", a.exported.format, a.exported.precision)
        gz = gzip_size(path)
        row.update(size_bytes=a.size_bytes, gzip_bytes=gz, size_ratio=_ratio(a.size_bytes, baseline["size_bytes"]),
                   gzip_ratio=_ratio(gz, baseline["gzip_bytes"]), latency_p50_ms=am.get("latency_p50_ms"),
                   latency_p95_ms=am.get("latency_p95_ms"), latency_ratio=am.get("latency_ratio"))
        for k in ("accuracy", "agreement", "cosine", "max_abs_error", "drop_pts"):
            row[k] = am.get(k)
        _weights(row, _artifact_stats(result, a, by_file, path))
        row["parity"] = am.get("parity")
        rows.append(row)
    notes = list(result.notes)
    layers = _compress_layers(result, notes)
    report = _report(
        kind="compress", model=m.name, version=m.version, output=str(result.output), threads=result.threads,
        data=m.raw.get("data"), quality_metric=_metric(labelled, m.task == "classification", (m.raw.get("data") or {}).get("generated")),
        baseline=baseline, rows=rows, layers=layers, steps=result.steps, recipe=m.raw.get("recipe"), gates=result.gates, notes=notes,
        accuracy_bound_failed=result.failed_bound, tflite_int8=tflite_block(result),
    )
    origin = origin_block(metrics, rows)  # a pipeline's original (the scikit-learn pickle) as its library runs it
    return report | ({"origin": origin} if origin else {})


def compare_report(
    paths: list[str | Path],
    *,
    data: str | Path | None = None,
    threads: int = 1,
    max_eval_samples: int = 2000,
    latency_budget_s: float = 10.0,
    data_layout: str | None = None,
    per_layer: bool = True,
) -> dict[str, Any]:
    """Measure every model given (the first is the baseline) on the same data, runtime settings and CPU.

    ``paths``: model files (.onnx, .ort, .tflite) and edgekit output directories (expanded to their
    artifacts). Without ``data``, generated inputs measure agreement with the baseline only.
    """
    from edgekit.evaluate import is_classifier, measure_latencies, one_sample, run_dataset

    entries, notes = expand(paths)
    backends = [_open(e, threads) for e in entries]
    base, base_backend = entries[0], backends[0]
    inputs, outputs = base_backend.inputs, base_backend.outputs
    dataset = _compare_data(data, entries, inputs, data_layout, notes).subset(max_eval_samples)
    classifier = is_classifier(outputs)
    aligned = [base_backend] + [_Aligned(b, inputs, outputs, e.file) for e, b in zip(entries[1:], backends[1:], strict=True)]
    results = [_run(b, dataset, inputs, e.file, run_dataset) for e, b in zip(entries, aligned, strict=True)]
    labels = dataset.labels if classifier else None
    feeds = one_sample(dataset, inputs)
    lat = measure_latencies({e.file: (b, feeds) for e, b in zip(entries, aligned, strict=True)}, budget_s=latency_budget_s)
    rows = _compare_rows(entries, results, lat, dataset, classifier=classifier, first=outputs[0].name, labels=labels)
    layers = {}
    if per_layer:
        layers = _compare_layers(entries, dataset, inputs, threads, notes)
    manifest = next((e.manifest for e in entries if e.manifest is not None), None)
    return _report(
        kind="compare", model=manifest.name if manifest else Path(base.file).stem.split(".")[0],
        version=manifest.version if manifest else None, output=None, threads=threads, data=dataset.describe(),
        quality_metric=_metric(labels is not None, classifier, dataset.generated), baseline=rows[0], rows=rows[1:],
        layers=layers, steps=[], recipe=None, gates=None, notes=notes, accuracy_bound_failed=None,
    )


def _compare_data(data: str | Path | None, entries: list[Entry], inputs: tuple[TensorSpec, ...], data_layout: str | None,
                  notes: list[str]) -> Dataset:
    """The data every model runs on: the file given, or generated inputs (quality is then agreement with the baseline)."""
    from edgekit.data import generate, load_data

    base = entries[0]
    if data is None:
        notes.append(f"no --data: {GENERATED_SAMPLES} generated inputs; quality is agreement with {base.file}, not accuracy")
        return generate(inputs, GENERATED_SAMPLES)
    try:
        return load_data(data, inputs, data_layout=data_layout)
    except DataError as ex:
        if base.format == "tflite" and base.artifact is None and len(entries) > 1:
            raise DataError(f"{ex}. Or put the model whose layout the data has first (e.g. the source .onnx): "
                            "the other models are fed in their own layout") from None
        raise


def _compare_rows(entries: list[Entry], results: list[dict[str, np.ndarray]], lat: dict[str, Latency], dataset: Dataset, *,
                  classifier: bool, first: str, labels: np.ndarray | None) -> list[dict[str, Any]]:
    """One row per model: sizes, weights, latency and quality, all relative to the first (the baseline)."""
    from edgekit.evaluate import compare

    ref = results[0]
    ref_acc = float((ref[first].argmax(1) == labels).mean() * 100) if labels is not None else None
    base_size, base_gz = entries[0].path.stat().st_size, gzip_size(entries[0].path)
    base_p50 = lat[entries[0].file].p50_ms
    rows = []
    for i, (e, outs) in enumerate(zip(entries, results, strict=True)):
        row = _row(e.file, "baseline" if i == 0 else "artifact", e.format, e.precision)
        size, gz = e.path.stat().st_size, gzip_size(e.path)
        q = compare(ref, outs, classifier=classifier, first_output=first, labels=labels, ref_accuracy=ref_acc,
                    generated=dataset.generated).to_dict()
        row.update(size_bytes=size, gzip_bytes=gz, size_ratio=_ratio(size, base_size), gzip_ratio=_ratio(gz, base_gz),
                   latency_p50_ms=round(lat[e.file].p50_ms, 4), latency_p95_ms=round(lat[e.file].p95_ms, 4),
                   latency_ratio=_ratio(lat[e.file].p50_ms, base_p50), **{k: q.get(k) for k in ("accuracy", "agreement", "cosine",
                                                                                                   "max_abs_error", "drop_pts")})
        _weights(row, e.stats)
        rows.append(row)
    return rows


# --- pieces -----------------------------------------------------------------------------------


def _report(*, kind: str, model: str, version: str | None, output: str | None, threads: int, data: dict[str, Any] | None,
            quality_metric: str, baseline: dict[str, Any], rows: list[dict[str, Any]], layers: dict[str, Any],
            steps: list[dict[str, Any]], recipe: dict[str, Any] | None, gates: dict[str, Any] | None, notes: list[str],
            accuracy_bound_failed: str | None, tflite_int8: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_VERSION,
        "kind": kind,
        "model": model,
        "version": version,
        "output": output,
        "threads": threads,
        "runtime": _runtime(threads),
        "data": data,
        "quality_metric": quality_metric,
        "baseline": baseline,
        "rows": rows,
        "layers": layers,
        "steps": steps,
        "recipe": recipe,
        "gates": gates,
        "notes": notes,
        "accuracy_bound_failed": accuracy_bound_failed,
        "tflite_int8": tflite_int8,
    }


def _row(file: str, role: str, fmt: str, precision: str | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(file=file, role=role, format=fmt, precision=precision)
    return row


def _weights(row: dict, stats: dict | None) -> None:
    if stats:
        for k in ("params", "sparsity", "quantized_share", "quantized_nodes", "weighted_nodes"):
            row[k] = stats.get(k)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _metric(labelled: bool, classifier: bool, generated: bool | None) -> str:
    if labelled and classifier:
        return "accuracy"
    if classifier and not generated:
        return "agreement"
    return "cosine"


def _runtime(threads: int) -> dict[str, Any]:
    versions = {}
    for dist in ("onnxruntime", "ai-edge-litert"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {"threads": threads, "batch": 1, "cpu": platform.processor() or platform.machine(), "versions": versions}


def _artifact_path(result: CompressResult, a: ArtifactResult) -> Path:
    # before compress moves its staging directory into place the files are there; after, in the output
    return a.exported.path if a.exported.path.is_file() else result.output / a.file


def _artifact_stats(result: CompressResult, a: ArtifactResult, by_file: dict, path: Path) -> dict | None:
    if a.stats:
        return a.stats
    if a.exported.format == "tflite":
        return tflite_weight_stats(path)
    parent = by_file.get(a.exported.parent or "")
    return parent.stats if parent is not None else None


def _compress_layers(result: CompressResult, notes: list[str]) -> dict[str, Any]:
    from edgekit.quantize.layers import MAX_SAMPLES, measure_layers

    out: dict[str, Any] = {}
    data = result.eval_data
    for a in result.artifacts:
        if a.exported.format != "onnx" or a.exported.precision not in ("int8", "mixed"):
            continue
        if data is None:
            notes.append(f"per-layer error of {a.file} needs the evaluation data; not computed")
            continue
        # the reference is the float model the int8 step quantized: the source, or the pruned / distilled model
        reference = result.float_model if result.float_model is not None else result.source
        ref_name = result.source.name if reference is result.source or not _changed(result) else "the float model before int8"
        try:
            run = measure_layers(reference, _artifact_path(result, a), data, result.manifest.inputs, threads=result.threads,
                                 names=a.exported.extra.get(NAMES_KEY))
        except Exception as e:  # noqa: BLE001 - a diagnostic must never fail the compression it describes
            notes.append(f"per-layer error of {a.file} could not be computed: {type(e).__name__}: {str(e)[:200]}")
            continue
        out[a.file] = _layer_block(ref_name, run, min(data.n, MAX_SAMPLES), data.generated, a.file, notes)
    return out


def _changed(result: CompressResult) -> bool:
    """Whether a step before quantization changed the float model (pruning, distillation)."""
    return any(s["name"] not in ("int8", "fp16") for s in result.steps)


def _compare_layers(entries: list[Entry], data: Dataset, inputs: tuple[TensorSpec, ...], threads: int, notes: list[str]) -> dict:
    from edgekit.quantize.layers import MAX_SAMPLES, measure_layers

    base = entries[0]
    out: dict[str, Any] = {}
    candidates = [e for e in entries[1:] if e.format == "onnx" and e.precision in ("int8", "mixed")]
    if not candidates:
        return out
    if base.format != "onnx" or base.precision not in ("fp32", "fp16"):
        notes.append(f"per-layer error needs a float .onnx baseline; {base.file} is {base.precision} {base.format}")
        return out
    for e in candidates:
        changed = [s["name"] for s in (e.manifest.raw.get("steps") or []) if s["name"] not in ("int8", "fp16")] if e.manifest else []
        if changed:
            # its float model was changed before int8 (pruned, distilled): the baseline is not what int8 quantized
            notes.append(f"per-layer error of {e.file} is not measured against {base.file}: {', '.join(changed)} changed the model "
                         "before int8; the report.json written by compress has it against the model int8 quantized")
            continue
        try:
            run = measure_layers(base.path, e.path, data, inputs, threads=threads, names=_tensor_names(e.artifact))
        except Exception as ex:  # noqa: BLE001 - diagnostics are best effort
            notes.append(f"per-layer error of {e.file} could not be computed: {type(ex).__name__}: {str(ex)[:200]}")
            continue
        if not run.errors:
            notes.append(f"per-layer error of {e.file}: no tensor of {base.file} could be matched by name")
            continue
        out[e.file] = _layer_block(base.file, run, min(data.n, MAX_SAMPLES), data.generated, e.file, notes)
    return out


def _tensor_names(artifact) -> dict[str, str]:
    """short → original tensor names of a compactly stored artifact (edgekit.export.compact), from its manifest record."""
    return dict((artifact.extra or {}).get(NAMES_KEY) or {}) if artifact is not None else {}


def _layer_block(reference: str, run, wanted: int, generated: bool, file: str, notes: list[str]) -> dict:
    """The report's per-layer block; when the activations' size cut the samples or the batch, it says so (and a note)."""
    block = {"reference": reference, "samples": run.samples or wanted, "generated_data": bool(generated),
             "layers": [e.to_dict() for e in run.errors]}
    note = run.note(wanted)
    if note:
        block["note"] = note
        notes.append(f"per-layer error of {file}: {note}")
    return block


def _run(backend, dataset, inputs, file: str, run_dataset) -> dict[str, np.ndarray]:
    try:
        return run_dataset(backend, dataset, inputs)
    except BackendError as ex:
        raise InputError(f"{file} failed on the data: {ex}") from None


def _open(e: Entry, threads: int):
    try:
        return open_backend(e.path, e.artifact, threads=threads)
    except BackendError as ex:
        raise InputError(f"{e.file} cannot be run: {ex}") from None


class _Aligned:
    """Feeds a model the baseline's inputs, matching names (by position when they differ) and layout.

    A file from an edgekit output directory already speaks the source layout (its manifest says
    how); a loose file may not: a .tflite from elsewhere is usually NHWC where the baseline .onnx is
    NCHW (or the other way round). A 4-D input whose shape matches the baseline's transposed is transposed.
    """

    def __init__(self, backend, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], file: str) -> None:
        self.backend = backend
        self.inputs, self.outputs = inputs, outputs
        mine_in, mine_out = backend.inputs, backend.outputs
        if len(mine_in) != len(inputs) or len(mine_out) != len(outputs):
            raise InputError(f"{file} has {len(mine_in)} input(s) and {len(mine_out)} output(s); the baseline has "
                             f"{len(inputs)} and {len(outputs)}: they are not the same model")
        self._in = {}
        for base, mine in zip(inputs, _by_name_or_position(inputs, mine_in), strict=True):
            perm = _nhwc_perm(base, mine)
            shape = [base.shape[i] for i in perm] if perm else list(base.shape)
            if len(shape) != len(mine.shape) or not _fits(shape, list(mine.shape)):
                raise InputError(f"{file} expects input {mine.name!r} as {_dims(mine.shape)}; the baseline takes {_dims(base.shape)}: "
                                 "they are not the same model")
            self._in[base.name] = (mine.name, perm)
        self._out = {}
        for base, mine in zip(outputs, _by_name_or_position(outputs, mine_out), strict=True):
            perm = _nhwc_perm(base, mine)
            self._out[mine.name] = (base.name, tuple(int(i) for i in np.argsort(perm)) if perm else None)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        native = {}
        for name, x in feeds.items():
            mine, perm = self._in.get(name, (name, None))
            native[mine] = np.ascontiguousarray(np.transpose(x, perm)) if perm else x
        out = {}
        for name, y in self.backend.run(native).items():
            base, inv = self._out.get(name, (name, None))
            out[base] = np.transpose(y, inv) if inv else y
        return out


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _by_name_or_position(base: tuple[TensorSpec, ...], mine: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    names = {s.name: s for s in mine}
    if all(b.name in names for b in base):
        return tuple(names[b.name] for b in base)
    return mine


def _nhwc_perm(base: TensorSpec, mine: TensorSpec) -> tuple[int, ...] | None:
    if len(base.shape) != 4 or len(mine.shape) != 4:
        return None
    b, m = list(base.shape), list(mine.shape)
    if _fits(b, m):
        return None
    for perm in ((0, 2, 3, 1), (0, 3, 1, 2)):  # NCHW baseline → NHWC model, and the other way round
        if _fits([b[i] for i in perm], m):
            return perm
    return None


def _fits(a: list, b: list) -> bool:
    return all(not isinstance(x, int) or not isinstance(y, int) or x == y for x, y in zip(a, b, strict=True))
