"""What a run compresses when the model came as more than an ONNX network: the front of the pipeline.

:func:`open_front` decides the ONNX model the run works on. With an image preprocessing spec
(``bake: true``) that is the network with the preprocessing baked in front of it (raw uint8 images
in), written to a scratch file; for a scikit-learn pipeline (already converted by
:mod:`edgekit.importers`), the model as given with the importer's check. Either way the result
names an :class:`~edgekit.reference.OriginCheck`, and :func:`judge_artifacts` holds every artifact
to it after the usual checks: the parity record lands in the manifest's metrics
(``origin_parity``), and a float artifact that misses it is an ExportError (unless ``--allow-mismatch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from device_agent.contract.manifest import TensorSpec
from edgekit.errors import ExportError, InputError
from edgekit.evaluate import is_classifier, run_dataset
from edgekit.onnx_model import io_specs
from edgekit.preprocess.spec import ImageSpec
from edgekit.reference import OriginCheck, Reference
from edgekit.results import ArtifactResult
from edgekit.runlog import RunLog

__all__ = ["Front", "judge_artifacts", "open_front"]


@dataclass(frozen=True)
class Front:
    """The ONNX model a run works on (``path``, ``model``) and what its artifacts are also checked against."""

    path: Path
    model: onnx.ModelProto
    check: OriginCheck | None = None

    def sections(self, data: Any) -> dict[str, Any]:
        """Top-level manifest sections the origin adds (``preprocessing``; ``signature.fields`` for tables)."""
        return self.check.manifest_sections(data) if self.check is not None else {}


def open_front(src: Path, model: onnx.ModelProto, *, image_spec: ImageSpec | None, check: OriginCheck | None, data: Path | None,
               workdir: Path, threads: int) -> Front:
    """The model to compress: ``model`` itself, or with the image preprocessing baked in front (written under ``workdir``)."""
    if image_spec is None or not image_spec.bake:
        return Front(src, model, check)
    if check is not None:
        raise InputError("a model with its own origin check (a scikit-learn pipeline) takes no image preprocessing spec")
    from edgekit.preprocess.bake import bake
    from edgekit.preprocess.check import PillowReference, native_images

    inputs, outputs = io_specs(model)
    baked = bake(model, image_spec, inputs)
    path = workdir / src.name
    onnx.save(baked.model, str(path))
    natives = native_images(data) if image_spec.raw_size is None else []
    pillow = PillowReference(src, baked, classifier=is_classifier(outputs), first_output=outputs[0].name, natives=natives, threads=threads)
    return Front(path, baked.model, pillow)


def raw_inputs(front: Front, inputs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    """The run's input signature, with the layout of a baked image input said (NHWC, RGB uint8)."""
    baked = getattr(front.check, "baked", None)
    if baked is None:
        return inputs
    return tuple(baked.raw_input if s.name == baked.raw_input.name else s for s in inputs)


def judge_artifacts(front: Front, results: list[ArtifactResult], outputs: dict[str, dict[str, np.ndarray]], ref: Reference, *,
                    allow_mismatch: bool, log: RunLog) -> None:
    """Compare every artifact's outputs on the evaluation data with the origin's; record it, raise for a float artifact that misses."""
    if front.check is None:
        return
    log.progress(f"checking the artifacts against {front.check.against}", 0.8)
    expected = _expected(front.check, ref)
    for r in results:
        record = front.check.judge(expected, outputs[r.file], precision=str(r.exported.precision))
        r.origin_parity = record
        if not record["ok"] and not allow_mismatch:
            raise ExportError(f"{r.file} does not match {record['against']}: " + ", ".join(
                f"{k} {v}" for k, v in record.items() if k not in ("against", "ok", "enforced") and v is not None)
                + "; pass --allow-mismatch to keep it anyway")


def _expected(check: OriginCheck, ref: Reference) -> dict[str, np.ndarray]:
    """The origin's outputs over the evaluation data, in batches (the origin may be slow: Pillow, scikit-learn)."""

    class _Origin:
        path = ref.source_path
        inputs, outputs, runtime = ref.inputs, ref.outputs, "origin"

        def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return check.expected(feeds)

    return run_dataset(_Origin(), ref.eval_data, ref.inputs)
