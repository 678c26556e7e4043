"""Unstructured magnitude pruning: the smallest weights become zeros, on the ONNX initializers.

What it buys, honestly: the zeros are still stored and still multiplied, so the raw file and the
latency stay the same. It compresses: a gzipped (or int8 + gzipped) artifact is much smaller,
which is what an OTA download pays for. Sparse kernels that skip zeros are not used by ONNX
Runtime's CPU provider, so this is never reported as a speed-up.

Needs numpy only; fine-tuning (in the ``prune`` step) needs torch and keeps the zeros at zero.
"""

from __future__ import annotations

import copy
import gzip

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS, WEIGHTED_OPS, fold_constants

__all__ = ["apply_masks", "gzip_size", "magnitude_masks", "prunable_weights", "sparsity_by_layer"]


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


def gzip_size(model: onnx.ModelProto | bytes) -> int:
    """Bytes of the serialized model after gzip -9: what a compressed download or OTA chunk stream costs."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights held in Constant nodes moved to initializers, so they can be pruned."""
    return fold_constants(model)[0]
