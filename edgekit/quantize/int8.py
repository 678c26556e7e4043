"""The ``int8`` step: search ORT's quantization candidates on this CPU and keep the best."""

from __future__ import annotations

import onnx
from pydantic import Field

from edgekit.errors import EdgekitError, RecipeError
from edgekit.onnx_model import fold_constants, weight_stats
from edgekit.pipeline import Context, StepConfig, StepOutcome, step
from edgekit.quantize.candidates import CalibrationMethod, candidates_for, pre_process
from edgekit.quantize.search import search

__all__ = ["Int8Config", "int8"]


class Int8Config(StepConfig):
    calibration: CalibrationMethod = Field(CalibrationMethod.MINMAX, description="Calibration method for static quantization.")
    max_drop: float = Field(1.0, ge=0, le=100, description="Largest accepted accuracy drop, in points (agreement without labels).")
    search_time: float = Field(180.0, gt=0, description="Time budget for building and measuring candidates, seconds.")
    exclude: tuple[str, ...] = Field((), description="Node names to leave in float.")
    candidates: tuple[str, ...] | None = Field(None, description="Only try these candidates (names as in the report).")
    calib_samples: int = Field(256, ge=1, description="Samples used for calibration.")
    mode: str = Field("auto", pattern="^(auto|static|dynamic)$", description="auto: static with data, dynamic without.")


@step("int8", Int8Config)
def int8(model: onnx.ModelProto, config: Int8Config, ctx: Context) -> StepOutcome:
    stats = weight_stats(model)
    if stats.is_quantized:
        msg = (f"model is already quantized ({stats.quant_op_nodes} quantization nodes, {stats.quantized_share:.0%} of weights int8); "
               "not quantizing it again")
        ctx.say(msg)
        return StepOutcome(model, "int8", {"skipped": msg, "weights": stats.to_dict()}, tag="int8")
    folded, n_folded = fold_constants(model)
    work = ctx.workdir / "int8"
    work.mkdir(parents=True, exist_ok=True)
    pre, pre_note = pre_process(folded, work)
    fp32_path = work / "fp32.onnx"
    onnx.save(pre, str(fp32_path))
    use_static = ctx.calib_data is not None and config.mode != "dynamic"
    cands = candidates_for(pre, has_data=use_static)
    if config.candidates:
        known = {c.name for c in candidates_for(pre, has_data=True)}
        unknown = sorted(set(config.candidates) - known)
        if unknown:
            raise RecipeError(f"int8: unknown candidate(s) {', '.join(unknown)}; known for this model: {', '.join(sorted(known))}")
        cands = [c for c in candidates_for(pre, has_data=True) if c.name in config.candidates]
    if not use_static:
        ctx.say("no calibration data: trying dynamic and weight-only int8. Calibration data (--data) gives a faster, more accurate model")
    result = search(
        fp32_path, cands,
        eval_data=ctx.eval_data, calib_data=ctx.calib_data.subset(config.calib_samples) if use_static else None,
        ref_outputs=ctx.ref_outputs, ref_accuracy=ctx.ref_accuracy, inputs=ctx.inputs, classifier=ctx.classifier,
        first_output=ctx.first_output, max_drop=config.max_drop, method=config.calibration, threads=ctx.threads,
        time_budget_s=config.search_time, workdir=work, exclude=config.exclude, on_progress=ctx.progress,
        ort="ort" in ctx.formats,
    )
    record = {
        "constants_folded": n_folded,
        "pre_process": pre_note,
        "calibration": str(config.calibration) if use_static else None,
        "calibration_samples": min(config.calib_samples, ctx.calib_data.n) if use_static else 0,
        "search": result.to_dict(),
    }
    if result.chosen is None:
        raise EdgekitError(f"int8 quantization failed: {result.why}")
    chosen = result.chosen
    if result.chosen_ort is not None and "onnx" not in ctx.formats:
        chosen = result.chosen_ort  # the .onnx is only the .ort's parity reference here: quantize for the .ort
    quantized = onnx.load(str(chosen.path))
    after = weight_stats(quantized)
    record["weights"] = {"before": stats.to_dict(), "after": after.to_dict()}
    if after.float_params and after.quantized_share < 0.9:
        left = after.float_params
        ctx.say(f"warning: {left:,} weight values stay fp32 ({1 - after.quantized_share:.0%} of weights): they are in ops ORT does not quantize")
    format_models = {}
    alt = result.chosen_ort
    if alt is not None and alt is not chosen:
        alt_extra = {"candidate": alt.candidate.name} | ({"session_config": alt.session_config} if alt.session_config else {})
        format_models["ort"] = (onnx.load(str(alt.path)), alt_extra)
    return StepOutcome(
        quantized, "int8", record,
        artifact_extra={"candidate": chosen.candidate.name} | ({"session_config": chosen.session_config} if chosen.session_config else {}),
        tag="int8", failed_bound=None if result.met_bound else result.why, format_models=format_models,
    )
