"""Sensitivity scan: prune each layer alone, without fine-tuning, and measure what it costs.

Layers whose scan costs many points are the ones to spare (``--keep NAME``) or to prune less (a
per-layer ratio in a recipe). The scan copies the model per layer; the input is never changed.
:func:`scan_layers` is what ``prune --sensitivity`` runs: the scan, the lines it prints, the record.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgekit.pipeline import Context
from edgekit.prune.config import PruneConfig
from edgekit.torchbench.channels import Importance, layer_widths, prunable_layers, prune_channels

if TYPE_CHECKING:
    import torch

    from edgekit.torchbench.workbench import TorchModel

__all__ = ["scan_layers", "sensitive_layers", "sensitivity_scan"]


def sensitivity_scan(
    net: torch.nn.Module,
    example: tuple,
    *,
    ratio: float,
    score: Callable[[torch.nn.Module], float],
    keep: set[str] | frozenset[str] = frozenset(),
    importance: Importance = Importance.L2,
    display: dict[str, str] | None = None,
    progress: Callable[[str, float], None] = lambda m, f: None,
) -> list[dict]:
    """One row per prunable layer: its width, the channels pruning it alone removes, the params saved, the score drop.

    ``score(model)`` returns a higher-is-better number in points (accuracy %, agreement %, …).
    Rows are sorted most sensitive first. Layers in ``keep`` are not scanned.
    """
    base = score(net)
    widths = layer_widths(net)
    layers = [n for n in prunable_layers(net) if n not in keep]
    rows = []
    for i, name in enumerate(layers):
        progress(f"sensitivity: {display.get(name, name) if display else name}", i / max(1, len(layers)))
        trial = copy.deepcopy(net)
        # the layer is pruned alone: every other layer's ratio is 0
        res = prune_channels(trial, example, ratio=0.0, layer_ratios={name: ratio}, keep=keep, importance=importance)
        after = res.widths_after.get(name, widths[name])
        if after == widths[name]:
            continue  # coupled to a kept layer: not prunable on its own
        s = score(trial)
        rows.append({
            "layer": display.get(name, name) if display else name,
            "out_channels": widths[name], "pruned_to": after,
            "params_saved": round(1 - res.params_after / res.params_before, 4) if res.params_before else 0.0,
            "score": round(s, 4), "drop_pts": round(base - s, 4),
        })
    rows.sort(key=lambda r: -r["drop_pts"])
    return rows


def scan_layers(tm: TorchModel, example: tuple[Any, ...], config: PruneConfig, ctx: Context, *, keep: set[str], ratios: dict[str, float],
                metric: str, score: Callable[[torch.nn.Module], float]) -> dict[str, Any]:
    """Scan every prunable layer at the step's largest ratio, say what each costs, and record it with the layers to spare."""
    ratio = max([config.ratio, *ratios.values()])
    rows = sensitivity_scan(tm.net, example, ratio=ratio, score=score, keep=frozenset(keep), importance=config.importance,
                            display=tm.display(), progress=ctx.log.progress)
    _say_sensitivity(ctx, rows, metric)
    return {"metric": metric, "ratio": ratio, "layers": rows, "suggested_keep": sensitive_layers(rows)}


def _say_sensitivity(ctx: Context, rows: list[dict], metric: str) -> None:
    if not rows:
        ctx.log.say("sensitivity: no layer can be pruned on its own")
        return
    ctx.log.say(f"sensitivity (each layer pruned alone, no fine-tuning; {metric} drop in points, most sensitive first):")
    for r in rows:
        ctx.log.say(f"  {r['layer']:<40} {r['out_channels']:>5} → {r['pruned_to']:<5} params −{r['params_saved']:.1%}  drop {r['drop_pts']:+.2f}")
    spare = sensitive_layers(rows)
    if spare:
        ctx.log.say("  to spare the most sensitive: " + " ".join(f"--keep {r}" for r in spare) + " (fine-tuning recovers much of the rest)")


def sensitive_layers(rows: list[dict]) -> list[str]:
    """The most sensitive cluster: the layers above the largest relative gap in cost (each over 1 point alone).

    ``rows`` are sorted most sensitive first, as :func:`sensitivity_scan` returns them.
    """
    drops = [r["drop_pts"] for r in rows if r["drop_pts"] > 1.0] + [1.0]  # 1 point: the floor of "sensitive"
    if len(drops) < 2:
        return []
    gaps = [drops[i] / drops[i + 1] for i in range(len(drops) - 1)]
    return [r["layer"] for r in rows[: gaps.index(max(gaps)) + 1]]
