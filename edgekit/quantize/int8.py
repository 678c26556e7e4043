"""The ``int8`` step: search int8 candidates (whole-model and per-layer mixed) on this CPU and keep the best for the objective."""

from __future__ import annotations

from pathlib import Path

import onnx
from pydantic import Field

from edgekit.choices import Format, Precision
from edgekit.errors import RecipeError
from edgekit.onnx_model import fold_constants, upgrade_opset, weight_stats
from edgekit.pipeline import Context, FormatModel, StepConfig, StepOutcome, step
from edgekit.preprocess import PREFIX as PREPROCESS_PREFIX
from edgekit.quantize.candidates import CalibrationMethod, Candidate, Kind, candidates_for, pre_process, seven_bit_weights
from edgekit.quantize.classical import classical_parts
from edgekit.quantize.graph import name_nodes
from edgekit.quantize.mixed import NO_INT8_KERNEL
from edgekit.quantize.outcome import CandidateResult, SearchResult
from edgekit.quantize.search import SearchSettings, search

__all__ = ["Int8Config", "int8"]

#: an int8 model that stores at least this share of its weights as int8 is "int8"; below it, "mixed"
INT8_SHARE = 0.95


class Int8Config(StepConfig):
    calibration: CalibrationMethod = Field(CalibrationMethod.MINMAX, description="Calibration method for static quantization.")
    max_drop: float = Field(1.0, ge=0, le=100, description="Largest accepted accuracy drop, in points (agreement without labels).")
    search_time: float = Field(180.0, gt=0, description="Time budget for building and measuring candidates, seconds.")
    exclude: tuple[str, ...] = Field((), description="Node names to leave in float.")
    candidates: tuple[str, ...] | None = Field(None, description="Only try these whole-model candidates (names as in the report).")
    calib_samples: int = Field(256, ge=1, description="Samples used for calibration.")
    mode: str = Field("auto", pattern="^(auto|static|dynamic)$", description="auto: static with data, dynamic without.")
    mixed: bool = Field(True, description="With calibration data, also search per-layer float/int8 splits (profiled on this CPU).")


@step("int8", Int8Config)
def int8(model: onnx.ModelProto, config: Int8Config, ctx: Context) -> StepOutcome:
    """Quantize with every candidate worth trying, measure them on this CPU and keep the best within ``max_drop`` for the objective."""
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
    pre, pre_note, classical = _prepare(folded, work, ctx)
    fp32_path = work / "fp32.onnx"
    calib = ctx.ref.calib_data if config.mode != "dynamic" else None  # static quantization calibrates on the given data
    use_static = calib is not None
    # a run that ships no ONNX Runtime artifact (only a .tflite) needs the int8 .onnx only as a reference: the whole model
    onnx_ships = bool({Format.ONNX, Format.ORT} & set(ctx.formats))
    cands = _candidates(pre, config, use_static, onnx_ships)
    if not use_static:
        ctx.log.say("no calibration data: trying dynamic and weight-only int8. Calibration data (--data) gives a faster, more accurate model")
    settings = _settings(config, ctx, pre, mixed=config.mixed and onnx_ships)
    result = search(fp32_path, cands, ctx.ref, calib_data=calib.subset(config.calib_samples) if calib is not None else None,
                    settings=settings, workdir=work, on_progress=ctx.log.progress)
    record = {
        "constants_folded": n_folded,
        **({"opset_upgraded": {"from": old_opset, "to": 13, "why": "per-channel int8 needs opset 13"}} if old_opset else {}),
        "pre_process": pre_note,
        **classical,
        **({"weights_7bit": SEVEN_BIT_WHY} if seven_bit_weights() else {}),
        "calibration": str(config.calibration) if use_static else None,
        "calibration_samples": min(config.calib_samples, calib.n) if calib is not None else 0,
        "search": result.to_dict(),
    }
    if result.chosen is None:  # not one candidate could be built: the fp32 model is still a valid answer, written with exit 3
        ctx.log.say(f"warning: {result.why}; keeping the fp32 model")
        return StepOutcome(model, None, record | {"kept": "fp32"}, failed_bound=f"int8 quantization failed: {result.why}; the fp32 model "
                           "was kept")
    _say(result, ctx)
    chosen = result.chosen
    if result.chosen_ort is not None and Format.ONNX not in ctx.formats:
        chosen = result.chosen_ort  # the .onnx is only the .ort's parity reference here: quantize for the .ort
    # "every layer float" ships the model as it was given (the search timed its pre-processed twin)
    quantized = onnx.load(str(chosen.path)) if chosen.is_int8 else model
    after = weight_stats(quantized)
    record["weights"] = {"before": stats.to_dict(), "after": after.to_dict()}
    format_models: dict[Format, FormatModel] = {}
    alt = result.chosen_ort
    if alt is not None and alt is not chosen:
        alt_model = onnx.load(str(alt.path)) if alt.is_int8 else model
        format_models[Format.ORT] = FormatModel(alt_model, _precision(alt, weight_stats(alt_model).quantized_share), _extra(alt))
    whole = _whole_int8(result)
    if Format.TFLITE in ctx.formats and not chosen.is_int8 and whole is not None:
        # onnxruntime's timing says nothing about LiteRT: the .tflite stays int8, with the whole-int8 .onnx as its reference
        format_models[Format.TFLITE] = FormatModel(onnx.load(str(whole.path)), Precision.INT8, _extra(whole))
    return StepOutcome(quantized, _precision(chosen, after.quantized_share), record, artifact_extra=_extra(chosen),
                       failed_bound=None if result.met_bound else result.why, format_models=format_models)


#: what the int8 record says when this machine quantizes weights to 7 bits (:func:`seven_bit_weights`)
SEVEN_BIT_WHY = ("x86-64 without VNNI: 8-bit weights would saturate onnxruntime's u8 x s8 kernels here and give other numbers "
                 "than an ARM device; 7-bit weights compute the same everywhere")


def _prepare(folded: onnx.ModelProto, work: Path, ctx: Context) -> tuple[onnx.ModelProto, str, dict[str, object]]:
    """The float model every candidate starts from (saved as ``work/fp32.onnx``), the pre-processing note, the classical parts."""
    pre, pre_note = pre_process(folded, work)
    pre = name_nodes(pre)  # the profiler and the mixed search name layers by node name; pre-processing leaves some unnamed
    pre, classical = classical_parts(pre)  # tree ensembles stay float; a pipeline's double linear layers become quantizable
    if "trees_float" in classical:
        ctx.log.say(f"int8: {classical['trees_float']}")
    onnx.save(pre, str(work / "fp32.onnx"))
    return pre, pre_note, classical


def _settings(config: Int8Config, ctx: Context, pre: onnx.ModelProto, *, mixed: bool) -> SearchSettings:
    # baked image preprocessing (Cast, Resize, Sub/Div on uint8 pixels) stays float: int8 there adds Q/DQ pairs and
    # rounding in front of the first layer and saves no weights; a Resize of any size breaks static int8 outright
    baked = tuple(n.name for n in pre.graph.node if n.name.startswith(PREPROCESS_PREFIX) and n.name not in config.exclude)
    return SearchSettings(max_drop=config.max_drop, method=config.calibration, threads=ctx.threads, time_budget_s=config.search_time,
                          exclude=(*config.exclude, *baked), ort=Format.ORT in ctx.formats, objective=ctx.objective, mixed=mixed,
                          ort_target=ctx.ort_target)


def _candidates(pre: onnx.ModelProto, config: Int8Config, use_static: bool, onnx_ships: bool) -> list[Candidate]:
    cands = candidates_for(pre, has_data=use_static)
    if config.candidates:
        every = candidates_for(pre, has_data=True)
        unknown = sorted(set(config.candidates) - {c.name for c in every})
        if unknown:
            raise RecipeError(f"int8: unknown candidate(s) {', '.join(unknown)}; known for this model: "
                              f"{', '.join(sorted(c.name for c in every))}")
        cands = [c for c in every if c.name in config.candidates]
    if not onnx_ships:
        cands = [c for c in cands if c.kind is not Kind.FLOAT] or cands
    return cands


def _whole_int8(result: SearchResult) -> CandidateResult | None:
    """The most accurate whole-model int8 candidate (static first), for a format onnxruntime's timing does not speak for."""
    whole = [r for r in result.results if r.status == "ok" and r.is_int8 and r.candidate.nodes is None and r.quality is not None]
    static = [r for r in whole if r.candidate.kind is Kind.STATIC] or whole
    return min(static, key=lambda r: (not r.accepted, r.quality.drop if r.quality else 0.0)) if static else None


def _precision(r: CandidateResult, quantized_share: float) -> Precision:
    """fp32 for the float model, int8 when (nearly) every weight is int8, mixed when layers were left float.

    A split that keeps layers float is mixed even when their weights are few (depthwise convs): the
    README promises ``mixed`` for a partly quantized model, and the layers only int8 lacks a kernel
    for stay float in the whole-int8 model too.
    """
    if not r.is_int8:
        return Precision.FP32
    split_float = any(f["why"] != NO_INT8_KERNEL for f in r.float_layers)
    return Precision.INT8 if quantized_share >= INT8_SHARE and not split_float else Precision.MIXED


def _extra(r: CandidateResult) -> dict:
    """What the manifest keeps about the artifact's candidate: its name and, for a mixed one, which layers stayed float."""
    extra: dict = {"candidate": r.candidate.name}
    if r.candidate.nodes is not None:
        extra["mixed"] = {"split": r.split, "int8_layers": r.int8_layers, "float_layers": [f["layer"] for f in r.float_layers]}
    return extra


def _say(result: SearchResult, ctx: Context) -> None:
    """One plain line each when int8 does not pay off, and when the size and the speed goals conflict."""
    lines: list[str] = []
    for chosen, why, conflict in ((result.chosen, result.why, result.conflict), (result.chosen_ort, result.why_ort, result.conflict_ort)):
        if chosen is not None and not chosen.is_int8:
            lines.append(f"int8: {why}")
        if conflict:
            lines.append(f"int8: {conflict}")
    for line in dict.fromkeys(lines):
        ctx.log.note(line, shown=line)
