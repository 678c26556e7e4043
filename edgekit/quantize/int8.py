"""The ``int8`` step: search ORT's quantization candidates on this CPU and keep the best."""

from __future__ import annotations

import onnx
from pydantic import Field

from edgekit.choices import Format, Precision
from edgekit.errors import RecipeError
from edgekit.onnx_model import fold_constants, upgrade_opset, weight_stats
from edgekit.pipeline import Context, StepConfig, StepOutcome, step
from edgekit.quantize.candidates import CalibrationMethod, candidates_for, pre_process
from edgekit.quantize.search import SearchSettings, search

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
    """Quantize with every candidate worth trying, measure them on this CPU and keep the fastest within ``max_drop``."""
    stats = weight_stats(model)
    if stats.is_quantized:
        msg = (f"model is already quantized ({stats.quant_op_nodes} quantization nodes, {stats.quantized_share:.0%} of weights int8); "
               "not quantizing it again")
        ctx.log.say(msg)
        return StepOutcome(model, Precision.INT8, {"skipped": msg, "weights": stats.to_dict()})
    folded, n_folded = fold_constants(model)
    # static candidates write per-channel DequantizeLinear (its axis needs opset 13): an older model is converted up first
    folded, old_opset = upgrade_opset(folded, 13) if ctx.ref.calib_data is not None and config.mode != "dynamic" else (folded, None)
    work = ctx.workdir / "int8"
    work.mkdir(parents=True, exist_ok=True)
    pre, pre_note = pre_process(folded, work)
    fp32_path = work / "fp32.onnx"
    onnx.save(pre, str(fp32_path))
    calib = ctx.ref.calib_data if config.mode != "dynamic" else None  # static quantization calibrates on the given data
    use_static = calib is not None
    cands = candidates_for(pre, has_data=use_static)
    if config.candidates:
        known = {c.name for c in candidates_for(pre, has_data=True)}
        unknown = sorted(set(config.candidates) - known)
        if unknown:
            raise RecipeError(f"int8: unknown candidate(s) {', '.join(unknown)}; known for this model: {', '.join(sorted(known))}")
        cands = [c for c in candidates_for(pre, has_data=True) if c.name in config.candidates]
    if not use_static:
        ctx.log.say("no calibration data: trying dynamic and weight-only int8. Calibration data (--data) gives a faster, more accurate model")
    settings = SearchSettings(max_drop=config.max_drop, method=config.calibration, threads=ctx.threads, time_budget_s=config.search_time,
                              exclude=config.exclude, ort=Format.ORT in ctx.formats)
    result = search(fp32_path, cands, ctx.ref, calib_data=calib.subset(config.calib_samples) if calib is not None else None,
                    settings=settings, workdir=work, on_progress=ctx.log.progress)
    record = {
        "constants_folded": n_folded,
        **({"opset_upgraded": {"from": old_opset, "to": 13, "why": "per-channel int8 needs opset 13"}} if old_opset else {}),
        "pre_process": pre_note,
        "calibration": str(config.calibration) if use_static else None,
        "calibration_samples": min(config.calib_samples, calib.n) if calib is not None else 0,
        "search": result.to_dict(),
    }
    if result.chosen is None:  # not one candidate could be built: the fp32 model is still a valid answer, written with exit 3
        ctx.log.say(f"warning: {result.why}; keeping the fp32 model")
        return StepOutcome(model, None, record | {"kept": "fp32"}, failed_bound=f"int8 quantization failed: {result.why}; the fp32 model "
                           "was kept")
    chosen = result.chosen
    if result.chosen_ort is not None and Format.ONNX not in ctx.formats:
        chosen = result.chosen_ort  # the .onnx is only the .ort's parity reference here: quantize for the .ort
    quantized = onnx.load(str(chosen.path))
    after = weight_stats(quantized)
    record["weights"] = {"before": stats.to_dict(), "after": after.to_dict()}
    if after.float_params and after.quantized_share < 0.9:
        left = after.float_params
        ctx.log.say(f"warning: {left:,} weight values stay fp32 ({1 - after.quantized_share:.0%} of weights): they are in ops ORT does not quantize")
    format_models: dict[Format, tuple[onnx.ModelProto, dict[str, str]]] = {}
    alt = result.chosen_ort
    if alt is not None and alt is not chosen:
        alt_extra = {"candidate": alt.candidate.name} | ({"session_config": alt.session_config} if alt.session_config else {})
        format_models[Format.ORT] = (onnx.load(str(alt.path)), alt_extra)
    return StepOutcome(
        quantized, Precision.INT8, record,
        artifact_extra={"candidate": chosen.candidate.name} | ({"session_config": chosen.session_config} if chosen.session_config else {}),
        failed_bound=None if result.met_bound else result.why, format_models=format_models,
    )
