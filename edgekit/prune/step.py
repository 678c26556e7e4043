"""The ``prune`` step: structured (channels removed) or unstructured (weights zeroed), then KD fine-tuning.

Structured: ONNX → PyTorch (onnx2torch, or the user's ``torch_model`` factory) → torch-pruning's
dependency graph → fine-tune with the unpruned model as teacher → ONNX with the source's signature.
Unstructured: magnitude masks on the ONNX initializers (numpy); fine-tuning, when asked or when
data is given, runs in PyTorch and keeps every zero at zero.
"""

from __future__ import annotations

from enum import Enum

import onnx
from pydantic import Field, field_validator

from edgekit.distill.config import PRUNE_EPOCHS, STRUCTURED_EPOCHS, TrainingConfig
from edgekit.errors import EdgekitError, RecipeError
from edgekit.onnx_model import io_specs, weight_stats
from edgekit.pipeline import Context, StepOutcome, step
from edgekit.prune.structured import Importance, output_layer_nodes, resolve_layers
from edgekit.prune.unstructured import apply_masks, folded, gzip_size, magnitude_masks, prunable_weights, sparsity_by_layer

__all__ = ["PruneConfig", "PruneMethod", "Scope", "prune"]


class PruneMethod(str, Enum):
    STRUCTURED = "structured"  # whole channels removed: smaller and faster
    UNSTRUCTURED = "unstructured"  # single weights zeroed: compresses, not faster

    def __str__(self) -> str:
        return self.value


class Scope(str, Enum):
    GLOBAL = "global"
    LAYER = "layer"

    def __str__(self) -> str:
        return self.value


class PruneConfig(TrainingConfig):
    """``prune``: remove channels (structured) or zero weights (unstructured), then fine-tune with the source as teacher."""

    ratio: float = Field(0.5, ge=0, lt=1, description="Share pruned: of each layer's output channels (structured) or of the weights (unstructured).")
    method: PruneMethod = Field(PruneMethod.UNSTRUCTURED, description="structured (channels removed, faster) or unstructured (weights zeroed, compresses).")
    layers: dict[str, float] = Field({}, description="Per-layer ratios: node name or glob -> ratio, overriding `ratio` for those layers.")
    keep: tuple[str, ...] = Field((), description="Node names or globs never pruned (the output layers are never pruned anyway).")
    scope: Scope | None = Field(None, description="layer: every layer loses exactly `ratio`; global: one ranking across all layers "
                                                 "(uneven). Default: global for unstructured, layer for structured.")
    importance: Importance = Field(Importance.L2, description="Channel ranking for structured pruning: l2, l1 or fpgm.")
    round_to: int | None = Field(None, ge=1, description="Structured: keep channel counts a multiple of this (e.g. 8 for SIMD kernels).")
    sensitivity: bool = Field(False, description="Before pruning, prune each layer alone (no fine-tuning) and report the accuracy cost.")
    torch_model: str | None = Field(None, description="module:function returning the same model in PyTorch, when onnx2torch cannot convert it.")
    distill: bool = Field(True, description="Fine-tune with the unpruned model's soft targets (plus labels when given); false: labels only.")

    @field_validator("layers")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r < 1}
        if bad:
            raise ValueError(f"per-layer ratios must be in [0, 1); got {bad}")
        return v


@step("prune", PruneConfig)
def prune(model: onnx.ModelProto, config: PruneConfig, ctx: Context) -> StepOutcome:
    stats = weight_stats(model)
    if stats.is_quantized:
        raise RecipeError("prune: the model is already quantized; prune the float model, then quantize (--prune ... --int8)")
    if config.method == PruneMethod.STRUCTURED:
        return _structured(model, config, ctx)
    return _unstructured(model, config, ctx)


def _structured(model: onnx.ModelProto, config: PruneConfig, ctx: Context) -> StepOutcome:
    from edgekit.distill.workbench import example, load_torch, score_fn, train
    from edgekit.prune.sensitivity import sensitivity_scan
    from edgekit.prune.structured import prunable_layers, prune_channels

    tm = load_torch(model, ctx, what="structured pruning", factory=config.torch_model)
    display = tm.display()
    layers = {display[m]: m for m in prunable_layers(tm.net)}  # shown name -> module name
    outputs = {m for d, m in layers.items() if d in set(output_layer_nodes(model))}
    if config.torch_model and not outputs and layers:
        # a user's module has no ONNX node names: take its last prunable layer (the shape check after pruning guards the rest)
        outputs = {list(layers.values())[-1]}
    keep = set(resolve_layers(config.keep, layers, what="prune --keep").values()) | outputs
    ratios = {layers_m: config.layers[pat] for pat in config.layers
              for layers_m in resolve_layers([pat], layers, what="prune layers").values()}
    ex = example(model, ctx.eval_data)
    record: dict = {"method": "structured", "never_pruned": sorted(display.get(m, m) for m in keep)}
    metric, score = score_fn(ctx)
    if config.sensitivity:
        rows = sensitivity_scan(tm.net, ex, ratio=max([config.ratio, *ratios.values()]), score=score, keep=frozenset(keep),
                                importance=config.importance, display=display, progress=ctx.progress)
        record["sensitivity"] = {"metric": metric, "ratio": max([config.ratio, *ratios.values()]), "layers": rows}
        _say_sensitivity(ctx, rows, metric)
    before = score(tm.net)
    res = prune_channels(tm.net, ex, ratio=config.ratio, layer_ratios=ratios, keep=frozenset(keep), importance=config.importance,
                         global_pruning=config.scope == Scope.GLOBAL, round_to=config.round_to)
    after_prune = score(tm.net)
    ctx.say(f"prune: structured {config.ratio:.0%}: params {res.params_before:,} → {res.params_after:,} "
            f"({res.params_after / max(res.params_before, 1):.2f}×), MACs {res.macs_before:,} → {res.macs_after:,}; "
            f"{metric} {before:.2f} → {after_prune:.2f} before fine-tuning")
    fit = train(tm, model, ctx, config, step="prune", default_epochs=STRUCTURED_EPOCHS, use_teacher=config.distill)
    out = tm.export()
    _check_signature(model, out)
    final = score(tm.net)
    record.update(res.to_dict())
    record["out_channels"] = {display.get(k, k): v for k, v in record["out_channels"].items()}
    record["never_pruned"] = sorted(display.get(m, m) for m in keep)
    record["quality"] = {"metric": metric, "source": round(before, 4), "pruned": round(after_prune, 4), "fine_tuned": round(final, 4)}
    record["fine_tune"] = fit.to_dict() if fit else None
    record["size"] = {"before": model.ByteSize(), "after": out.ByteSize(), "gzip_before": gzip_size(model), "gzip_after": gzip_size(out)}
    sz = record["size"]
    record["summary"] = (
        f"channels removed: params {res.params_before:,} → {res.params_after:,} ({res.params_after / max(res.params_before, 1):.2f}×), "
        f"MACs {res.macs_before:,} → {res.macs_after:,} ({res.macs_after / max(res.macs_before, 1):.2f}×), "
        f"file {sz['before']:,} → {sz['after']:,} bytes ({sz['after'] / max(sz['before'], 1):.2f}×); {metric} on the given data: "
        f"source {before:.2f}, pruned {after_prune:.2f}, fine-tuned {final:.2f}"
    )
    if fit is None:
        ctx.say("prune: no fine-tuning (no --data, or --epochs 0): structured pruning without recovery usually costs accuracy")
    return StepOutcome(out, "fp32", record, tag="pruned")


def _unstructured(model: onnx.ModelProto, config: PruneConfig, ctx: Context) -> StepOutcome:
    src = folded(model)
    out_nodes = set(output_layer_nodes(src))
    weights = prunable_weights(src)  # node -> initializer
    if not weights:
        raise EdgekitError("prune: the model has no Conv/Gemm/MatMul weights to prune")
    keep = set(resolve_layers(config.keep, {n: n for n in weights}, what="prune --keep")) | out_nodes
    ratios = {n: config.layers[p] for p in config.layers for n in resolve_layers([p], {n: n for n in weights}, what="prune layers")}
    if config.sensitivity:
        ctx.say("prune: --sensitivity scans structured pruning; ignored for unstructured pruning")
    targets = {n: w for n, w in weights.items() if n not in keep}
    from onnx import numpy_helper

    inits = {i.name: i for i in src.graph.initializer}
    arrays = {n: numpy_helper.to_array(inits[w]) for n, w in targets.items()}
    masks = magnitude_masks(arrays, config.ratio, per_layer=config.scope == Scope.LAYER, layer_ratios={n: r for n, r in ratios.items() if n in targets})
    pruned = apply_masks(src, {targets[n]: m for n, m in masks.items()})
    fit = None
    wants_training = config.epochs is None and ctx.train_data is not None or bool(config.epochs)
    if wants_training and config.epochs is None and not _has_torch():
        ctx.say("prune: fine-tuning skipped: it needs the torch extra (pip install 'edgekit[torch]'); the zeros are applied as they are")
        wants_training = False
    if wants_training:
        pruned, fit = _fine_tune_sparse(pruned, model, config, ctx)
    per_layer = sparsity_by_layer(pruned, prunable_weights(pruned))  # re-read: export renames initializers
    total = sum(v["params"] for v in per_layer.values())
    zeros = sum(v["zeros"] for v in per_layer.values())
    record = {
        "method": "unstructured",
        "never_pruned": sorted(keep),
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "layers": per_layer,
        "size": {"before": model.ByteSize(), "after": pruned.ByteSize(), "gzip_before": gzip_size(model), "gzip_after": gzip_size(pruned)},
        "fine_tune": fit.to_dict() if fit else None,
        "note": "zeros are stored and computed: raw size and latency are unchanged; the gain is compressed size (gzip, int8 + gzip)",
    }
    s = record["size"]
    record["summary"] = (f"{zeros:,}/{total:,} weights zero ({record['sparsity']:.1%}); raw size {s['before']:,} → {s['after']:,} bytes "
                         f"(unchanged: zeros are stored), gzip {s['gzip_before']:,} → {s['gzip_after']:,} bytes. "
                         "Not a speed-up: ONNX Runtime multiplies the zeros too")
    ctx.say(f"prune: unstructured {config.ratio:.0%}: {record['summary']}")
    if not wants_training and ctx.train_data is None:
        ctx.say("prune: no fine-tuning (no --data): give training data to recover accuracy")
    return StepOutcome(pruned, "fp32", record, tag="pruned")


def _fine_tune_sparse(pruned: onnx.ModelProto, teacher: onnx.ModelProto, config: PruneConfig, ctx: Context):
    """Fine-tune with every zero kept at zero; returns the new ONNX model and the fit result."""
    import torch

    from edgekit.distill.convert import ConversionError
    from edgekit.distill.workbench import load_torch, train

    try:
        tm = load_torch(pruned, ctx, what="fine-tuning after unstructured pruning", factory=None)
    except ConversionError as e:
        raise ConversionError(f"{e}; or pass --epochs 0 to prune without fine-tuning (no torch needed)") from None
    if config.torch_model:
        ctx.say("prune: --torch-model is used by structured pruning only; unstructured fine-tuning converts the ONNX model")
    masks = {n: (p != 0).to(p.dtype) for n, p in tm.net.named_parameters() if p.dim() >= 2 and bool((p == 0).any())}
    fit = train(tm, teacher, ctx, config, step="prune", default_epochs=PRUNE_EPOCHS, masks=masks, use_teacher=config.distill)
    with torch.no_grad():
        for n, p in tm.net.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    out = tm.export()
    _check_signature(teacher, out)
    return out, fit


def _has_torch() -> bool:
    from edgekit.distill.convert import require_torch
    from edgekit.errors import MissingExtraError

    try:
        require_torch("fine-tuning")
    except MissingExtraError:
        return False
    return True


def _check_signature(src: onnx.ModelProto, new: onnx.ModelProto) -> None:
    a, b = io_specs(src), io_specs(new)
    if [(s.name, s.dtype, tuple(s.shape)) for s in a[1]] != [(s.name, s.dtype, tuple(s.shape)) for s in b[1]] or \
            [(s.name, s.dtype) for s in a[0]] != [(s.name, s.dtype) for s in b[0]]:
        raise EdgekitError(f"the pruned model's signature changed: inputs {list(b[0])} outputs {list(b[1])}; "
                           f"expected inputs {list(a[0])} outputs {list(a[1])}")


def _say_sensitivity(ctx: Context, rows: list[dict], metric: str) -> None:
    if not rows:
        ctx.say("sensitivity: no layer can be pruned on its own")
        return
    ctx.say(f"sensitivity (each layer pruned alone, no fine-tuning; {metric} drop in points, most sensitive first):")
    for r in rows:
        ctx.say(f"  {r['layer']:<40} {r['out_channels']:>5} → {r['pruned_to']:<5} params −{r['params_saved']:.1%}  drop {r['drop_pts']:+.2f}")
