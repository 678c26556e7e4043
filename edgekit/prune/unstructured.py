"""Unstructured magnitude pruning: the smallest weights become zeros, on the ONNX initializers.

What it buys, honestly: the zeros are still stored and still multiplied, so the raw file and the
latency stay the same. It compresses: a gzipped (or int8 + gzipped) artifact is much smaller,
which is what an OTA download pays for. Sparse kernels that skip zeros are not used by ONNX
Runtime's CPU provider, so this is never reported as a speed-up.

The masks need numpy only; :func:`prune_unstructured` (the ``prune`` step without ``--structured``)
fine-tunes in PyTorch when there is data, keeping every zero at zero.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.choices import Precision
from edgekit.errors import EdgekitError
from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS, WEIGHTED_OPS, fold_constants, gzip_size
from edgekit.pipeline import Context, StepOutcome
from edgekit.prune.checks import check_signature
from edgekit.prune.config import PRUNE_EPOCHS, PruneConfig, Scope
from edgekit.torchbench.channels import output_layer_nodes, resolve_layers

if TYPE_CHECKING:
    from edgekit.torchbench.trainer import FitResult

__all__ = ["apply_masks", "magnitude_masks", "prunable_weights", "prune_unstructured", "sparsity_by_layer"]


def prunable_weights(model: onnx.ModelProto, *, skip_nodes: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """Node name → name of its weight initializer, for Conv/Gemm/MatMul/... nodes not in ``skip_nodes``.

    A weight shared by several nodes is listed once (under the first node).
    """
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, str] = {}
    taken: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type not in WEIGHTED_OPS or name in skip_nodes:
            continue
        for w in node.input[:2]:
            t = inits.get(w)
            if t is not None and w not in taken and t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2 \
                    and int(np.prod(t.dims)) >= MIN_WEIGHT_ELEMENTS:
                out[name] = w
                taken.add(w)
                break
    return out


def magnitude_masks(weights: dict[str, np.ndarray], ratio: float, *, per_layer: bool = False,
                    layer_ratios: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Boolean keep-masks that zero the ``ratio`` smallest-magnitude weights.

    Global (default): one threshold over all layers, so layers with many small weights lose more.
    ``per_layer``: every layer loses exactly ``ratio``. Layers in ``layer_ratios`` always get their
    own ratio and are left out of the global ranking.
    """
    layer_ratios = layer_ratios or {}
    masks: dict[str, np.ndarray] = {}
    pooled = {k: w for k, w in weights.items() if k not in layer_ratios}
    for k, w in weights.items():
        if k in layer_ratios or per_layer:
            masks[k] = _keep_largest(np.abs(w), layer_ratios.get(k, ratio))
    if not per_layer and pooled:
        flat = np.concatenate([np.abs(w).ravel() for w in pooled.values()])
        n_zero = int(round(ratio * flat.size))
        if n_zero == 0:
            masks.update({k: np.ones_like(w, dtype=bool) for k, w in pooled.items()})
        else:
            # rank, not threshold: ties at the threshold are broken by position, so exactly n_zero go
            order = np.argsort(flat, kind="stable")
            keep = np.ones(flat.size, dtype=bool)
            keep[order[:n_zero]] = False
            offset = 0
            for k, w in pooled.items():
                masks[k] = keep[offset:offset + w.size].reshape(w.shape)
                offset += w.size
    return masks


def _keep_largest(mag: np.ndarray, ratio: float) -> np.ndarray:
    n_zero = int(round(ratio * mag.size))
    keep = np.ones(mag.size, dtype=bool)
    if n_zero:
        keep[np.argsort(mag.ravel(), kind="stable")[:n_zero]] = False
    return keep.reshape(mag.shape)


def apply_masks(model: onnx.ModelProto, masks_by_init: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the masked initializers' weights set to zero."""
    out = copy.deepcopy(model)
    for t in out.graph.initializer:
        m = masks_by_init.get(t.name)
        if m is not None:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * m, t.name))
    return out


def sparsity_by_layer(model: onnx.ModelProto, layers: dict[str, str]) -> dict[str, dict]:
    """Node name → {shape, params, zeros, sparsity} for the given node → initializer map."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node, init in layers.items():
        a = numpy_helper.to_array(inits[init])
        zeros = int(a.size - np.count_nonzero(a))
        out[node] = {"shape": list(a.shape), "params": int(a.size), "zeros": zeros, "sparsity": round(zeros / a.size, 4)}
    return out


def folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights held in Constant nodes moved to initializers, so they can be pruned."""
    return fold_constants(model)[0]


def prune_unstructured(model: onnx.ModelProto, config: PruneConfig, ctx: Context) -> StepOutcome:
    """Zero the smallest weights (outputs and ``keep`` layers spared), fine-tune keeping the zeros when there is data, and record what it buys."""
    src = folded(model)
    out_nodes = set(output_layer_nodes(src))
    weights = prunable_weights(src)  # node -> initializer
    if not weights:
        raise EdgekitError("prune: the model has no Conv/Gemm/MatMul weights to prune")
    keep = set(resolve_layers(config.keep, {n: n for n in weights}, what="prune --keep")) | out_nodes
    ratios = {n: config.layers[p] for p in config.layers for n in resolve_layers([p], {n: n for n in weights}, what="prune layers")}
    if config.sensitivity:
        ctx.log.say("prune: --sensitivity scans structured pruning; ignored for unstructured pruning")
    targets = {n: w for n, w in weights.items() if n not in keep}
    inits = {i.name: i for i in src.graph.initializer}
    arrays = {n: numpy_helper.to_array(inits[w]) for n, w in targets.items()}
    masks = magnitude_masks(arrays, config.ratio, per_layer=config.scope == Scope.LAYER, layer_ratios={n: r for n, r in ratios.items() if n in targets})
    pruned = apply_masks(src, {targets[n]: m for n, m in masks.items()})
    fit = None
    wants_training = config.epochs is None and ctx.train_data is not None or bool(config.epochs)
    if wants_training and config.epochs is None and not _has_torch():
        ctx.log.say("prune: fine-tuning skipped: it needs the torch extra (pip install 'edgekit[torch]'); the zeros are applied as they are")
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
    ctx.log.say(f"prune: unstructured {config.ratio:.0%}: {record['summary']}")
    if not wants_training and ctx.train_data is None:
        ctx.log.say("prune: no fine-tuning (no --data): give training data to recover accuracy")
    return StepOutcome(pruned, Precision.FP32, record)


def _fine_tune_sparse(pruned: onnx.ModelProto, teacher: onnx.ModelProto, config: PruneConfig, ctx: Context) -> tuple[onnx.ModelProto, FitResult | None]:
    """Fine-tune with every zero kept at zero; returns the new ONNX model and the fit result."""
    import torch

    from edgekit.torchbench.convert import ConversionError, promote_buffers
    from edgekit.torchbench.workbench import load_torch, train

    try:
        tm = load_torch(pruned, ctx.ref, what="fine-tuning after unstructured pruning", factory=None)
    except ConversionError as e:
        raise ConversionError(f"{e}; or pass --epochs 0 to prune without fine-tuning (no torch needed)") from None
    if config.torch_model:
        ctx.log.say("prune: --torch-model is used by structured pruning only; unstructured fine-tuning converts the ONNX model")
    promote_buffers(tm.net)  # MatMul weights are buffers in onnx2torch: make them trainable (and masked) too
    masks = {n: (p != 0).to(p.dtype) for n, p in tm.net.named_parameters() if p.dim() >= 2 and bool((p == 0).any())}
    fit = train(tm, teacher, ctx, config, step="prune", default_epochs=PRUNE_EPOCHS, masks=masks, use_teacher=config.distill)
    with torch.no_grad():
        for n, p in tm.net.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    out = tm.export()
    check_signature(teacher, out)
    return out, fit


def _has_torch() -> bool:
    from edgekit.errors import MissingExtraError
    from edgekit.torchbench.convert import require_torch

    try:
        require_torch("fine-tuning")
    except MissingExtraError:
        return False
    return True
