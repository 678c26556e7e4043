"""Sensitivity scan: prune each layer alone, without fine-tuning, and measure what it costs.

Layers whose scan costs many points are the ones to spare (``--keep NAME``) or to prune less (a
per-layer ratio in a recipe). The scan copies the model per layer; the input is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgekit.prune.structured import Importance, layer_widths, prunable_layers, prune_channels

if TYPE_CHECKING:
    import torch

__all__ = ["sensitivity_scan"]


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
