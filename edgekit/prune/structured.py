"""Structured pruning: ONNX → PyTorch (onnx2torch, or the user's ``torch_model`` factory) → torch-pruning's
dependency graph removes channels → fine-tune with the unpruned model as teacher → ONNX with the source's signature.

Channel removal itself is :mod:`edgekit.torchbench.channels` (shared with ``auto:W`` students);
this module decides what to prune, in how many rounds, and records what it cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from edgekit.choices import Precision
from edgekit.errors import EdgekitError
from edgekit.onnx_model import gzip_size
from edgekit.pipeline import Context, StepOutcome
from edgekit.prune.checks import check_signature
from edgekit.prune.config import STRUCTURED_EPOCHS, PruneConfig, Scope
from edgekit.prune.sensitivity import scan_layers
from edgekit.torchbench.channels import output_layer_nodes, resolve_layers

if TYPE_CHECKING:
    from edgekit.torchbench.workbench import TorchModel

__all__ = ["prune_structured"]


def prune_structured(model: onnx.ModelProto, config: PruneConfig, ctx: Context) -> StepOutcome:
    """Remove channels (torch-pruning), fine-tune with the unpruned model as teacher, and return the ONNX model with the source's signature."""
    from edgekit.torchbench.workbench import example, load_torch, score_fn

    tm = load_torch(model, ctx.ref, what="structured pruning", factory=config.torch_model)
    display = tm.display()
    keep, ratios = _structured_targets(model, config, tm)
    ex = example(model, ctx.ref.eval_data)
    metric, score = score_fn(ctx.ref)
    record: dict = {"method": "structured", "never_pruned": sorted(display.get(m, m) for m in keep)}
    if config.sensitivity:
        record["sensitivity"] = scan_layers(tm, ex, config, ctx, keep=keep, ratios=ratios, metric=metric, score=score)
    before = score(tm.net)
    res, rounds, fit = _prune_rounds(tm, ex, model, config, ctx, keep, ratios, metric, score)
    out = tm.export()
    check_signature(model, out)
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
        ctx.log.say("prune: no fine-tuning (no --data, or --epochs 0): structured pruning without recovery usually costs accuracy")
    return StepOutcome(out, Precision.FP32, record)


def _structured_targets(model: onnx.ModelProto, config: PruneConfig, tm: TorchModel) -> tuple[set[str], dict[str, float]]:
    """Module names never pruned (output layers + --keep) and per-layer ratios by module name."""
    from edgekit.torchbench.channels import prunable_layers

    display = tm.display()
    layers = {display[m]: m for m in prunable_layers(tm.net)}  # shown name -> module name
    outputs = {m for d, m in layers.items() if d in set(output_layer_nodes(model))}
    if config.torch_model and not outputs and layers:
        # a user's module has no ONNX node names: take its last prunable layer (the shape check after pruning guards the rest)
        outputs = {list(layers.values())[-1]}
    keep = set(resolve_layers(config.keep, layers, what="prune --keep").values()) | outputs
    ratios = {m: config.layers[pat] for pat in config.layers for m in resolve_layers([pat], layers, what="prune layers").values()}
    return keep, ratios


def _prune_rounds(tm, ex, model: onnx.ModelProto, config: PruneConfig, ctx: Context, keep, ratios, metric: str, score):
    """Prune in ``config.iterations`` rounds, fine-tuning after each; the epochs are shared out between rounds."""
    from edgekit.torchbench.channels import ChannelPruner
    from edgekit.torchbench.workbench import train

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
        ctx.log.say(f"prune: structured {config.ratio:.0%}{where}: params {res.params_before:,} → {res.params_after:,} "
                f"({res.params_after / max(res.params_before, 1):.2f}×), MACs {res.macs_before:,} → {res.macs_after:,}; "
                f"{metric} {pruned:.2f} before fine-tuning")
        epochs = total // k + (1 if i < total % k else 0)
        fit = train(tm, model, ctx, config.model_copy(update={"epochs": epochs}), step="prune", default_epochs=0,
                    use_teacher=config.distill) if epochs else None
        rounds.append({"round": i + 1, "params": res.params_after, "macs": res.macs_after, "pruned": round(pruned, 4),
                       "fine_tuned": round(score(tm.net), 4), "epochs": fit.epochs_run if fit else 0})
    return res, rounds, fit
