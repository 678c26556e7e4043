"""The ``distill`` step: the incoming model is the teacher; the step returns a trained, smaller student.

Soft targets come from running the teacher in ONNX Runtime once over the training data; labels are
used when the data has them. The student is exported with the teacher's signature, so everything
after this step (int8, exporters, parity, the report) treats it like any model, and the report
compares it with the teacher.
"""

from __future__ import annotations

import onnx

from edgekit.choices import Precision
from edgekit.distill.config import DISTILL_EPOCHS, DistillConfig
from edgekit.distill.student import parse_width
from edgekit.errors import InputError, RecipeError
from edgekit.onnx_model import gzip_size, io_specs, weight_stats
from edgekit.pipeline import Context, StepOutcome, step

__all__ = ["distill"]


@step("distill", DistillConfig)
def distill(model: onnx.ModelProto, config: DistillConfig, ctx: Context) -> StepOutcome:
    """Build the student, train it on the teacher's soft targets (and the labels), and return it as ONNX with the teacher's signature."""
    from edgekit.distill.student import build_student
    from edgekit.torchbench.workbench import score_fn, train

    parse_width(config.student)  # a bad spec fails before any work
    if weight_stats(model).is_quantized:
        raise RecipeError("distill: the teacher is quantized; distill from the float model, then quantize the student (--int8)")
    if ctx.train_data is None:
        raise InputError("distill: training a student needs data: pass --data train.npz (labels optional: the teacher labels it)")
    if config.epochs == 0:
        raise RecipeError("distill: --epochs 0 would return an untrained student; give at least 1 epoch")
    tm, record = build_student(config.student, model, ctx.ref, keep=config.keep, round_to=config.round_to)
    metric, score = score_fn(ctx.ref)
    initial = score(tm.net)
    fit = train(tm, model, ctx, config, step="distill", default_epochs=DISTILL_EPOCHS)
    out = tm.export()
    src_out = [(s.name, tuple(s.shape)) for s in io_specs(model)[1]]
    new_out = [(s.name, tuple(s.shape)) for s in io_specs(out)[1]]
    if src_out != new_out:
        raise InputError(f"the exported student's outputs {new_out} differ from the teacher's {src_out}")
    before, after = _params(model), _params(out)
    record.update({
        "teacher": {"params": before, "bytes": model.ByteSize()},
        "params": {**record.get("params", {}), "before": before, "after": after, "ratio": round(after / max(before, 1), 4)},
        "size": {"before": model.ByteSize(), "after": out.ByteSize(), "gzip_before": gzip_size(model), "gzip_after": gzip_size(out)},
        "quality": {"metric": metric, "student_initial": round(initial, 4), "student": round(score(tm.net), 4)},
        "fine_tune": fit.to_dict() if fit else None,
        "soft_targets": "teacher (onnxruntime)", "hard_labels": ctx.train_data.labels is not None,
    })
    sz = record["size"]
    record["summary"] = (f"student {config.student}: params {before:,} → {after:,} ({after / max(before, 1):.2f}×), "
                         f"file {sz['before']:,} → {sz['after']:,} bytes ({sz['after'] / max(sz['before'], 1):.2f}×); "
                         f"{metric} on the given data: {record['quality']['student']:.2f}")
    ctx.log.say(f"distill: {record['summary']}")
    return StepOutcome(out, Precision.FP32, record)


def _params(model: onnx.ModelProto) -> int:
    """Every float weight and bias element (what torch counts as parameters)."""
    import numpy as np

    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
