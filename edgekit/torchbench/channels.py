"""Removing output channels with torch-pruning's dependency graph: channels are physically removed.

Every coupled tensor (the next layer's input channels, BatchNorm, residual adds, the Linear after a
Flatten) shrinks with the pruned layer, so parameters, MACs, file size and latency all drop.
Output layers (the weighted nodes that produce a model output) and layers named in ``keep`` never
lose output channels, so the pruned model's outputs have the source's shapes; a check after
pruning proves it.

Works on any ``torch.nn.Module``: :func:`prune_channels` is what structured pruning
(:mod:`edgekit.prune.structured`) and ``auto:W`` students (:mod:`edgekit.distill.student`) use, and
what a PyTorch user can call directly (also as ``edgekit.prune.prune_channels``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from edgekit.choices import StrChoice
from edgekit.errors import EdgekitError, RecipeError
from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS, WEIGHTED_OPS

if TYPE_CHECKING:
    import torch

__all__ = ["ChannelPruner", "Importance", "PruneResult", "count_macs_params", "layer_widths", "output_layer_nodes", "prunable_layers",
           "prune_channels", "resolve_layers"]


class Importance(StrChoice):
    """How channels are ranked: the smallest go first."""

    L2 = "l2"  # L2 norm of the channel's weights across its whole dependency group (torch-pruning's default)
    L1 = "l1"
    FPGM = "fpgm"  # distance from the geometric median: removes the most redundant channels


@dataclass
class PruneResult:
    """Widths before and after (out channels per prunable layer), MACs and parameters."""

    widths_before: dict[str, int]
    widths_after: dict[str, int]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ignored: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        layers = {k: {"before": v, "after": self.widths_after.get(k, v)} for k, v in self.widths_before.items()}
        return {
            "params": {"before": self.params_before, "after": self.params_after, "ratio": _ratio(self.params_after, self.params_before)},
            "macs": {"before": self.macs_before, "after": self.macs_after, "ratio": _ratio(self.macs_after, self.macs_before)},
            "out_channels": layers,
            "never_pruned": self.ignored,
        }


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 1.0


def output_layer_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the weighted nodes whose output channels reach a graph output without another weighted layer.

    Walks back from every output through weight-free ops (Flatten, Softmax, Add, Concat, pooling …)
    and stops at the first node with a weight initializer: pruning any of those would change an
    output's shape.
    """
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        value = stack.pop()
        node = producer.get(value)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in WEIGHTED_OPS and any(i in inits or i in consts for i in node.input[:2]):
            found.append(node.name)
            continue
        stack.extend(i for i in node.input if i and i not in inits and i not in consts)
    return found


def resolve_layers(patterns, names: dict[str, str], *, what: str) -> dict[str, str]:
    """Match node names or globs against ``names`` (display name → module name); every pattern must match.

    Returns display name → module name for the matches.
    """
    import difflib

    out: dict[str, str] = {}
    for pat in patterns:
        hits = {k: v for k, v in names.items() if fnmatch.fnmatchcase(k, pat) or k == pat}
        if not hits:
            near = difflib.get_close_matches(pat, list(names), n=3)
            hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            shown = ", ".join(list(names)[:8]) + (" …" if len(names) > 8 else "")
            raise RecipeError(f"{what}: {pat!r} matches no prunable layer{hint} Prunable layers: {shown}")
        out.update(hits)
    return out


def prunable_layers(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name → Conv/Linear module with a weight big enough to matter."""
    import torch.nn as nn

    return {n: m for n, m in net.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)) and m.weight.numel() >= MIN_WEIGHT_ELEMENTS}


def layer_widths(net: torch.nn.Module) -> dict[str, int]:
    import torch.nn as nn

    return {n: (m.out_features if isinstance(m, nn.Linear) else m.out_channels) for n, m in prunable_layers(net).items()}


def count_macs_params(net: torch.nn.Module, example: tuple) -> tuple[int, int]:
    """Multiply-accumulates for one example and parameter count (torch-pruning's counter)."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(net, example if len(example) > 1 else example[0])
    return int(macs), int(params)


def _importance(kind: Importance):
    import torch_pruning as tp

    if kind == Importance.FPGM:
        return tp.importance.FPGMImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if kind == Importance.L1 else 2)


class ChannelPruner:
    """Removes channels from ``net`` in ``steps`` equal rounds (torch-pruning's iterative schedule), in place.

    Gradual pruning — a round, some fine-tuning, the next round — keeps more accuracy at high
    ratios than one cut: each round ranks channels on the weights the last fine-tuning left.
    After every round the model must still run and give outputs of the original shapes.
    """

    def __init__(self, net: torch.nn.Module, example: tuple, *, ratio: float, layer_ratios: dict[str, float] | None = None,
                 keep: set[str] | frozenset[str] = frozenset(), importance: Importance = Importance.L2,
                 global_pruning: bool = False, round_to: int | None = None, steps: int = 1) -> None:
        import torch
        import torch_pruning as tp

        from edgekit.torchbench.convert import run_torch

        self.net, self.example, self.keep, self.steps, self.done = net, example, sorted(keep), steps, 0
        modules = dict(net.named_modules())
        self.widths_before = layer_widths(net)
        with torch.no_grad():
            self.shapes = [tuple(y.shape) for y in run_torch(net.eval(), example)]
        self.macs0, self.params0 = count_macs_params(net, example)
        self._pruner = tp.pruner.MetaPruner(
            net, example if len(example) > 1 else example[0], importance=_importance(importance), pruning_ratio=ratio,
            pruning_ratio_dict={modules[k]: float(r) for k, r in (layer_ratios or {}).items() if k in modules} or None,
            global_pruning=global_pruning, ignored_layers=[modules[k] for k in self.keep if k in modules], round_to=round_to,
            iterative_steps=steps,
            # a global ranking may empty a layer whose weights are all small; no layer loses more than 90%
            max_pruning_ratio=0.9 if global_pruning else 1.0,
        )

    def step(self) -> PruneResult:
        """One round; returns the widths, MACs and parameters so far (against the model before round 1)."""
        import torch

        from edgekit.torchbench.convert import run_torch

        self._pruner.step()
        self.done += 1
        try:
            with torch.no_grad():
                shapes = [tuple(y.shape) for y in run_torch(self.net.eval(), self.example)]
        except Exception as e:
            line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise EdgekitError(
                f"structured pruning left a model that does not run ({line}): an op after a pruned layer has a fixed "
                "channel count. Spare that layer with --keep NAME, or prune without --structured"
            ) from None
        if shapes != self.shapes:
            raise EdgekitError(f"structured pruning changed the output shapes {self.shapes} -> {shapes}; "
                               "pass the layer that produces the output with --keep NAME")
        macs, params = count_macs_params(self.net, self.example)
        return PruneResult(self.widths_before, layer_widths(self.net), self.macs0, macs, self.params0, params, self.keep)


def prune_channels(
    net: torch.nn.Module,
    example: tuple,
    *,
    ratio: float,
    layer_ratios: dict[str, float] | None = None,
    keep: set[str] | frozenset[str] = frozenset(),
    importance: Importance = Importance.L2,
    global_pruning: bool = False,
    round_to: int | None = None,
) -> PruneResult:
    """Remove ``ratio`` of the output channels of every prunable layer of ``net``, in place, in one cut.

    Args:
        net: the model; modified in place (callers copy first).
        example: one batch of inputs, as positional arguments of ``net``.
        ratio: share of channels removed per layer (or over all layers with ``global_pruning``).
        layer_ratios: module name → ratio, overriding ``ratio`` for that layer.
        keep: module names whose output channels are never removed (give the output layers here).
        importance: how channels are ranked.
        global_pruning: rank channels across layers (uneven widths) instead of per layer.
        round_to: keep channel counts a multiple of this.
    """
    return ChannelPruner(net, example, ratio=ratio, layer_ratios=layer_ratios, keep=keep, importance=importance,
                         global_pruning=global_pruning, round_to=round_to).step()
