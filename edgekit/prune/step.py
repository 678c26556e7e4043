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
    iterations: int = Field(1, ge=1, le=20, description="Structured: reach the ratio in this many prune → fine-tune rounds "
                                                      "(gradual pruning keeps more accuracy at high ratios; the epochs are shared out).")
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
    from edgekit.distill.workbench import example, load_torch, score_fn

    tm = load_torch(model, ctx, what="structured pruning", factory=config.torch_model)
    display = tm.display()
    keep, ratios = _structured_targets(model, config, tm)
    ex = example(model, ctx.eval_data)
    metric, score = score_fn(ctx)
    record: dict = {"method": "structured", "never_pruned": sorted(display.get(m, m) for m in keep)}
    if config.sensitivity:
        record["sensitivity"] = _sensitivity(tm, ex, config, ctx, keep, ratios, metric, score)
    before = score(tm.net)
    res, rounds, fit = _prune_rounds(tm, ex, model, config, ctx, keep, ratios, metric, score)
    out = tm.export()
    _check_signature(model, out)
    final = score(tm.net)
    record.update(res.to_dict())
    record["out_channels"] = {display.get(k, k): v for k, v in record["out_channels"].items()}
    record["never_pruned"] = sorted(display.get(m, m) for m in keep)
    record["quality"] = {"metric": metric, "source": round(before, 4), "pruned": round(rounds[-1]["pruned"], 4),
                         "fine_tuned": round(final, 4)}
    record["fine_tune"] = fit.to_dict() if fit else None
    if config.iterations > 1:
        record["rounds"] = rounds
    record["size"] = {"before": model.ByteSize(), "after": out.ByteSize(), "gzip_before": gzip_size(model), "gzip_after": gzip_size(out)}
    sz = record["size"]
    record["summary"] = (
        f"channels removed: params {res.params_before:,} → {res.params_after:,} ({res.params_after / max(res.params_before, 1):.2f}×), "
        f"MACs {res.macs_before:,} → {res.macs_after:,} ({res.macs_after / max(res.macs_before, 1):.2f}×), "
        f"file {sz['before']:,} → {sz['after']:,} bytes ({sz['after'] / max(sz['before'], 1):.2f}×); {metric} on the given data: "
        f"source {before:.2f}, pruned {rounds[-1]['pruned']:.2f}, fine-tuned {final:.2f}"
    )
    if fit is None:
        ctx.say("prune: no fine-tuning (no --data, or --epochs 0): structured pruning without recovery usually costs accuracy")
    return StepOutcome(out, "fp32", record, tag="pruned")


def _structured_targets(model: onnx.ModelProto, config: PruneConfig, tm) -> tuple[set[str], dict[str, float]]:
    """Module names never pruned (output layers + --keep) and per-layer ratios by module name."""
    from edgekit.prune.structured import prunable_layers

    display = tm.display()
    layers = {display[m]: m for m in prunable_layers(tm.net)}  # shown name -> module name
    outputs = {m for d, m in layers.items() if d in set(output_layer_nodes(model))}
    if config.torch_model and not outputs and layers:
        # a user's module has no ONNX node names: take its last prunable layer (the shape check after pruning guards the rest)
        outputs = {list(layers.values())[-1]}
    keep = set(resolve_layers(config.keep, layers, what="prune --keep").values()) | outputs
    ratios = {m: config.layers[pat] for pat in config.layers for m in resolve_layers([pat], layers, what="prune layers").values()}
    return keep, ratios


def _sensitivity(tm, ex, config: PruneConfig, ctx: Context, keep, ratios, metric: str, score) -> dict:
    from edgekit.prune.sensitivity import sensitivity_scan

    ratio = max([config.ratio, *ratios.values()])
    rows = sensitivity_scan(tm.net, ex, ratio=ratio, score=score, keep=frozenset(keep), importance=config.importance,
                            display=tm.display(), progress=ctx.progress)
    _say_sensitivity(ctx, rows, metric)
    return {"metric": metric, "ratio": ratio, "layers": rows, "suggested_keep": sensitive_layers(rows)}


def _prune_rounds(tm, ex, model: onnx.ModelProto, config: PruneConfig, ctx: Context, keep, ratios, metric: str, score):
    """Prune in ``config.iterations`` rounds, fine-tuning after each; the epochs are shared out between rounds."""
    from edgekit.distill.workbench import train
    from edgekit.prune.structured import ChannelPruner

    pruner = ChannelPruner(tm.net, ex, ratio=config.ratio, layer_ratios=ratios, keep=frozenset(keep), importance=config.importance,
                           global_pruning=config.scope == Scope.GLOBAL, round_to=config.round_to, steps=config.iterations)
    total = config.epochs if config.epochs is not None else (STRUCTURED_EPOCHS if ctx.train_data is not None else 0)
    k = config.iterations
    rounds, fit, res = [], None, None
    for i in range(k):
        res = pruner.step()
        if res.params_after == res.params_before:
            raise EdgekitError(
                "structured pruning found no channels it can remove: torch-pruning prunes Conv and Linear (Gemm) layers, and this "
                "model's weights are elsewhere (MatMul) or all kept. Prune without --structured (zeroed weights), or --keep fewer layers"
            )
        pruned = score(tm.net)
        where = f" round {i + 1}/{k}" if k > 1 else ""
        ctx.say(f"prune: structured {config.ratio:.0%}{where}: params {res.params_before:,} → {res.params_after:,} "
                f"({res.params_after / max(res.params_before, 1):.2f}×), MACs {res.macs_before:,} → {res.macs_after:,}; "
                f"{metric} {pruned:.2f} before fine-tuning")
        epochs = total // k + (1 if i < total % k else 0)
        fit = train(tm, model, ctx, config.model_copy(update={"epochs": epochs}), step="prune", default_epochs=0,
                    use_teacher=config.distill) if epochs else None
        rounds.append({"round": i + 1, "params": res.params_after, "macs": res.macs_after, "pruned": round(pruned, 4),
                       "fine_tuned": round(score(tm.net), 4), "epochs": fit.epochs_run if fit else 0})
    return res, rounds, fit


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

    from edgekit.distill.convert import ConversionError, promote_buffers
    from edgekit.distill.workbench import load_torch, train

    try:
        tm = load_torch(pruned, ctx, what="fine-tuning after unstructured pruning", factory=None)
    except ConversionError as e:
        raise ConversionError(f"{e}; or pass --epochs 0 to prune without fine-tuning (no torch needed)") from None
    if config.torch_model:
        ctx.say("prune: --torch-model is used by structured pruning only; unstructured fine-tuning converts the ONNX model")
    promote_buffers(tm.net)  # MatMul weights are buffers in onnx2torch: make them trainable (and masked) too
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
    spare = sensitive_layers(rows)
    if spare:
        ctx.say("  to spare the most sensitive: " + " ".join(f"--keep {r}" for r in spare) + " (fine-tuning recovers much of the rest)")


def sensitive_layers(rows: list[dict]) -> list[str]:
    """The most sensitive cluster: the layers above the largest relative gap in cost (each over 1 point alone).

    ``rows`` are sorted most sensitive first, as :func:`sensitivity_scan` returns them.
    """
    drops = [r["drop_pts"] for r in rows if r["drop_pts"] > 1.0] + [1.0]  # 1 point: the floor of "sensitive"
    if len(drops) < 2:
        return []
    gaps = [drops[i] / drops[i + 1] for i in range(len(drops) - 1)]
    return [r["layer"] for r in rows[: gaps.index(max(gaps)) + 1]]
