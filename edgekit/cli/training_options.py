"""Click options shared by the commands that train (``compress --prune``, ``distill``) and their compilation to step params.

Kept here so ``compress`` gains pruning with one decorator and one call, and both commands spell
the training flags the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["prune_options", "prune_steps", "training_options", "training_params"]

_TRAINING = ("epochs", "lr", "batch_size", "temperature", "alpha", "val_split", "patience", "seed", "checkpoint_dir")
_PRUNE = ("prune", "structured", "keep", "prune_layer", "prune_scope", "sensitivity", "round_to", "prune_iterations", "torch_model",
          "importance")


def _apply(f: Callable, options: list[Callable]) -> Callable:
    for opt in reversed(options):
        f = opt(f)
    return f


def training_options(f: Callable) -> Callable:
    """--epochs, --lr, --batch-size, --temperature, --alpha, --val-split, --patience, --seed, --checkpoint-dir."""
    return _apply(f, [
        click.option("--epochs", type=click.IntRange(0), help="Training epochs (default with --data: 30 for --structured and distill, 10 for unstructured; 0: no training)."),
        click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=1e-3, show_default=True, help="Adam learning rate (cosine-annealed)."),
        click.option("--batch-size", type=click.IntRange(2), default=64, show_default=True),
        click.option("--temperature", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True, help="Distillation temperature T."),
        click.option("--alpha", type=click.FloatRange(0, 1), default=0.7, show_default=True,
                     help="Weight of the teacher's soft targets; 1-alpha on the labels when the data has them."),
        click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
                     help="Share of --data held out to pick the best epoch and stop early."),
        click.option("--patience", type=click.IntRange(1), help="Stop after this many epochs without a better validation score (default 5)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same data: same model."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Where the best checkpoint is kept while training (default: MODEL.<step>.ckpt/ next to the model)."),
    ])


def _layer_ratio(ctx, param, values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for v in values:
        name, sep, ratio = v.rpartition("=")
        try:
            r = float(ratio)
        except ValueError:
            r = -1.0
        if not sep or not name or not 0 <= r < 1:
            raise click.BadParameter(f"{v!r} is not NAME=RATIO with 0 <= RATIO < 1 (e.g. '/features/*=0.3')")
        out[name] = r
    return out


def prune_options(f: Callable) -> Callable:
    """--prune RATIO, --structured, --keep, --prune-layer, --prune-scope, --sensitivity, --round-to, --torch-model, + training options."""
    return _apply(training_options(f), [
        click.option("--prune", type=click.FloatRange(0, 1, min_open=True, max_open=True), metavar="RATIO",
                     help="Prune RATIO of the weights (unstructured: zeros, compresses) or with --structured of each layer's channels (removed: smaller and faster)."),
        click.option("--structured", is_flag=True, help="Remove whole channels (torch-pruning's dependency graph), then fine-tune with the source as teacher."),
        click.option("--keep", multiple=True, metavar="NAME", help="Never prune this node (name or glob; repeatable). Output layers are always kept."),
        click.option("--prune-layer", multiple=True, metavar="NAME=RATIO", callback=_layer_ratio, help="Per-layer ratio overriding --prune (repeatable)."),
        click.option("--prune-scope", type=click.Choice(["global", "layer"]), help="One ranking across layers or the same ratio per layer "
                     "(default: global for unstructured, layer for structured)."),
        click.option("--importance", type=click.Choice(["l2", "l1", "fpgm"]), default="l2", show_default=True, help="Channel ranking (--structured)."),
        click.option("--sensitivity", is_flag=True, help="Prune each layer alone first and report its accuracy cost (--structured)."),
        click.option("--round-to", type=click.IntRange(1), help="Keep channel counts a multiple of this (--structured)."),
        click.option("--prune-iterations", type=click.IntRange(1, 20), help="Reach --prune in N prune → fine-tune rounds (--structured; "
                     "gradual pruning keeps more accuracy at high ratios)."),
        click.option("--torch-model", metavar="MODULE:FUNCTION", help="The same model in PyTorch, when onnx2torch cannot convert the ONNX file."),
    ])


def training_params(kw: dict[str, Any]) -> dict[str, Any]:
    """Step params from the training flags (unset flags keep the step's defaults)."""
    return {k: kw[k] for k in _TRAINING if kw.get(k) is not None}


def prune_steps(kw: dict[str, Any]) -> list:
    """The ``prune`` step for the flags, or [] without --prune; usage errors for flags that need --prune."""
    from edgekit.pipeline import StepSpec

    if kw.get("prune") is None:
        given = [f"--{k.replace('_', '-')}" for k in ("structured", "keep", "prune_layer", "sensitivity", "round_to", "prune_iterations",
                                                      "torch_model", "prune_scope") if kw.get(k)]
        if given:
            raise click.UsageError(f"{', '.join(given)} need(s) --prune RATIO (e.g. --prune 0.5)")
        return []
    structured = bool(kw.get("structured"))
    if not structured:
        given = [f"--{k.replace('_', '-')}" for k in ("sensitivity", "round_to", "prune_iterations", "torch_model") if kw.get(k)]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to --structured pruning only")
    params: dict[str, Any] = {"ratio": kw["prune"], "method": "structured" if structured else "unstructured",
                              "keep": list(kw.get("keep") or ()), "layers": dict(kw.get("prune_layer") or {}),
                              "sensitivity": bool(kw.get("sensitivity")), **training_params(kw)}
    for k, p in (("round_to", "round_to"), ("torch_model", "torch_model"), ("prune_scope", "scope"), ("importance", "importance"),
                 ("prune_iterations", "iterations")):
        if kw.get(k) is not None:
            params[p] = kw[k]
    return [StepSpec("prune", params)]
