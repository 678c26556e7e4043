"""Writing the manifest (``edgekit.json``). Reading and the schema live in ``device_agent.contract.manifest``."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import SCHEMA, SCHEMA_VERSION, TensorSpec, file_sha256, schema_version_for
from edgekit.data import Dataset
from edgekit.evaluate import Latency
from edgekit.profile import selftest_vectors, tolerance
from edgekit.results import ArtifactResult

__all__ = ["build_manifest", "tool_versions"]

TOOLS = ("edgekit", "numpy", "onnx", "onnxruntime", "onnxconverter-common", "tensorflow", "tensorflow-cpu", "onnx2tf",
         "ai-edge-litert", "torch", "onnx2torch", "torch-pruning")


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_manifest(
    *,
    src: Path,
    name: str,
    version: str,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    classifier: bool,
    labels: list[str] | None,
    artifacts: list[ArtifactResult],
    steps: list[dict[str, Any]],
    dataset: Dataset,
    source_latency: Latency,
    source_quality: dict[str, Any],
    profile: dict[str, Any],
    vectors: list[dict[str, np.ndarray]],
    expected: dict[str, list[dict[str, np.ndarray]]],
    recipe: dict[str, Any] | None,
    threads: int,
    origin: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest document of a run (validated by ``device_agent.contract.manifest.Manifest.from_dict`` before it is written).

    ``sections`` are what the model's origin adds (:mod:`edgekit.origin`): ``preprocessing``, ``signature.fields``,
    ``drift_profile.categories``; merged in, one level deep.
    """
    src_size = src.stat().st_size
    precision = {r.file: r.exported.precision for r in artifacts}
    tolerances = {art: tolerance(precision[art], outs) for art, outs in expected.items()}
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        # the ONNX model compressed; ``origin``: what it was exported from (a PyTorch or TensorFlow model)
        "source": {"file": src.name, "sha256": file_sha256(src), "size_bytes": src_size, "format": "onnx"}
                  | ({"origin": origin} if origin else {}),
        "task": "classification" if classifier else "generic",
        "labels": labels,
        "signature": {"inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs]},
        "artifacts": [_artifact(r) for r in artifacts],
        "steps": steps,
        "recipe": recipe,
        "tools": tool_versions(),
        "data": dataset.describe(),
        "metrics": _metrics(artifacts, src_size, source_latency, source_quality, threads),
        "drift_profile": profile,
        "selftest": {"vectors": selftest_vectors(vectors, expected), "tolerance": tolerances},
    }
    for key, value in (sections or {}).items():
        doc[key] = doc[key] | value if isinstance(doc.get(key), dict) and isinstance(value, dict) else value
    doc["schema_version"] = schema_version_for(doc)
    return doc


def _artifact(r: ArtifactResult) -> dict[str, Any]:
    return {
        "file": r.file,
        "format": str(r.exported.format),
        "precision": str(r.exported.precision),
        "size_bytes": r.size_bytes,
        "sha256": r.sha256,
        "runtime": "litert" if r.exported.format == "tflite" else "onnxruntime",
        "inputs": [s.to_dict() for s in r.exported.inputs],
        "outputs": [s.to_dict() for s in r.exported.outputs],
        "extra": r.exported.extra | ({"weights": r.stats} if r.stats else {}),
    }


def _metrics(artifacts: list[ArtifactResult], src_size: int, source_latency: Latency, source_quality: dict[str, Any],
             threads: int) -> dict[str, Any]:
    """Per artifact: size and latency (and their ratios to the source's), quality, parity; the source's own; the CPU."""
    metrics: dict[str, Any] = {
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "source": {"size_bytes": src_size, "latency_p50_ms": round(source_latency.p50_ms, 4),
                   "latency_p95_ms": round(source_latency.p95_ms, 4), **source_quality},
    }
    for r in artifacts:
        if r.latency is None:
            raise ValueError(f"{r.file} was not timed; time every artifact before writing the manifest")
        m = {
            "size_bytes": r.size_bytes,
            "size_ratio": round(r.size_bytes / src_size, 4),
            "latency_p50_ms": round(r.latency.p50_ms, 4),
            "latency_p95_ms": round(r.latency.p95_ms, 4),
            "latency_ratio": round(r.latency.p50_ms / source_latency.p50_ms, 4),
            **r.quality.to_dict(),
        }
        if r.parity:
            m["parity"] = {k: v for k, v in r.parity.items() if k != "ok"} | {"ok": r.parity["ok"]}
        if r.origin_parity:
            m["origin_parity"] = r.origin_parity
        metrics[r.file] = m
    return metrics
