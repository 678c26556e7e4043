"""The report's JSON schema: every key, its type and meaning. The single source for docs and tests.

Keys are stable: every row carries every key in :data:`ROW_KEYS` (``null`` when unknown), so a CI
gate can read ``rows[0].accuracy`` without checking for its presence. New keys may be added in a
schema version; existing ones do not change meaning without a version bump.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LAYER_KEYS", "REPORT_KEYS", "REPORT_SCHEMA", "REPORT_VERSION", "ROW_KEYS", "json_schema"]

REPORT_SCHEMA = "edgekit.report"
REPORT_VERSION = 1

#: top-level key → (JSON type, meaning)
REPORT_KEYS: dict[str, tuple[str, str]] = {
    "schema": ("string", 'always "edgekit.report"'),
    "schema_version": ("integer", "1"),
    "kind": ("string", '"compress" (written by edgekit compress) or "compare" (edgekit report)'),
    "model": ("string", "model name (the manifest's, else the baseline file's stem)"),
    "version": ("string|null", "model version from the manifest"),
    "output": ("string|null", "output directory (compress)"),
    "threads": ("integer", "intra-op threads every latency was measured with"),
    "runtime": ("object", "{threads, batch, cpu, versions: {onnxruntime, ai-edge-litert}}: the settings shared by all rows"),
    "data": ("object|null", "{description, samples, file, sha256, labelled, generated}: what quality was measured on"),
    "quality_metric": ("string", '"accuracy" (labels given), "agreement" (top-1 vs baseline) or "cosine" (other outputs, generated data)'),
    "baseline": ("Row", "the reference every ratio and error is relative to (the source model)"),
    "rows": ("[Row]", "every other model/artifact, in the order given"),
    "layers": ("object", "artifact file → LayerBlock: per-layer error of int8 .onnx artifacts (empty when none)"),
    "steps": ("[object]", "compress only: each step's {name, params, result} (int8 candidates and why one was chosen)"),
    "recipe": ("object|null", "the resolved recipe the artifacts were made with (a valid recipe document)"),
    "gates": ("object|null", "{limits, results: [{gate, file, value, limit, ok}], passed} when the recipe sets gates"),
    "notes": ("[string]", "what was assumed or could not be measured"),
    "accuracy_bound_failed": ("string|null", "compress only: why no int8 candidate met --max-drop"),
    "tflite_int8": ("object|null", "compress only: the int8 .tflite's search {file, objective, chosen, why, note, precision, clock, "
                                   "float_tflite, float_layers: [{op, node, why}], candidates: [{name, origin, deny_ops, deny_nodes, "
                                   "size_ratio, latency_ratio, accurate, ...}], seconds}"),
}

#: row key → (JSON type, meaning). Sizes in bytes, latency in ms, quality in percent / points.
ROW_KEYS: dict[str, tuple[str, str]] = {
    "file": ("string", "file name"),
    "role": ("string", '"baseline" or "artifact"'),
    "format": ("string", "onnx | ort | tflite"),
    "precision": ("string|null", "fp32 | fp16 | int8 | mixed (from the manifest, else read off the weights)"),
    "size_bytes": ("integer", "file size"),
    "gzip_bytes": ("integer", "size after gzip -9: what a download costs; shows what sparsity buys"),
    "size_ratio": ("number", "size_bytes / baseline size_bytes"),
    "gzip_ratio": ("number", "gzip_bytes / baseline gzip_bytes"),
    "params": ("integer|null", "weight values (tensors of at least 16 elements)"),
    "sparsity": ("number|null", "share of weight values that are zero"),
    "quantized_share": ("number|null", "share of weight values stored as int8"),
    "quantized_nodes": ("integer|null", "conv/matmul/gemm layers with int8 weights"),
    "weighted_nodes": ("integer|null", "conv/matmul/gemm layers"),
    "latency_p50_ms": ("number|null", "median latency, batch 1, runtime.threads threads, this CPU, interleaved with the others"),
    "latency_p95_ms": ("number|null", "95th percentile latency"),
    "latency_ratio": ("number|null", "latency_p50_ms / baseline latency_p50_ms"),
    "accuracy": ("number|null", "top-1 accuracy in percent, when the data has labels"),
    "agreement": ("number|null", "top-1 agreement with the baseline in percent (classifiers)"),
    "cosine": ("number|null", "lowest mean per-sample cosine similarity of any output with the baseline's"),
    "max_abs_error": ("number|null", "largest absolute output difference from the baseline"),
    "drop_pts": ("number|null", "quality loss in points: accuracy drop, else disagreement, else (1 - cosine) x 100"),
    "parity": ("object|null", "compress only: check against the artifact it was converted from {against, max_abs_error, allowed, agreement, ok}"),
}

#: a LayerBlock is {reference, samples, generated_data, layers: [Layer]} (+ note: why fewer samples or smaller batches, when the
#: activations were too large); Layer key → (type, meaning)
LAYER_KEYS: dict[str, tuple[str, str]] = {
    "node": ("string", "node name in the quantized model: what `edgekit compress --exclude NODE` takes"),
    "op_type": ("string", "the op computing the tensor"),
    "tensor": ("string", "the compared tensor (the float model's name)"),
    "sqnr_db": ("number|null", "signal-to-quantization-noise ratio vs the float model, dB, cumulative (null: exact)"),
    "rel_error": ("number", "RMS error / RMS value, cumulative"),
    "added_rel_error": ("number", "the relative error this layer adds to what its inputs carried; layers are sorted by it"),
    "max_abs_error": ("number", "largest absolute difference"),
}


def _props(keys: dict[str, tuple[str, str]]) -> dict[str, Any]:
    out = {}
    for k, (t, desc) in keys.items():
        if t.startswith("["):
            out[k] = {"type": "array", "description": desc}
        elif t in ("Row",):
            out[k] = {"$ref": "#/$defs/Row", "description": desc}
        else:
            out[k] = {"type": [x for x in t.split("|")], "description": desc}
    return out


def json_schema() -> dict[str, Any]:
    """The report schema as JSON Schema (draft 2020-12), for CI tools that validate."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "edgekit report",
        "type": "object",
        "required": list(REPORT_KEYS),
        "properties": _props(REPORT_KEYS) | {"rows": {"type": "array", "items": {"$ref": "#/$defs/Row"},
                                                      "description": REPORT_KEYS["rows"][1]}},
        "$defs": {
            "Row": {"type": "object", "required": list(ROW_KEYS), "properties": _props(ROW_KEYS)},
            "Layer": {"type": "object", "required": list(LAYER_KEYS), "properties": _props(LAYER_KEYS)},
        },
    }
