"""The manifest's drift reference profile and self-test vectors.

A *feature* is a column of a 2-D input, a channel of an image tensor (NCHW axis 1 / NHWC axis 3),
the last axis of other tensors. For each, quantile bin edges and the reference counts: the agent
bins live inputs on the same edges and the fleet computes PSI/KS from counts alone.
"""

from __future__ import annotations

import numpy as np

from device_agent.contract.manifest import FeatureProfile, TensorSpec, encode_tensor
from edgekit.data import Dataset
from edgekit.signature import fixed_batch

__all__ = ["MAX_FEATURES", "drift_profile", "feature_axis", "selftest_vectors"]

#: features tracked per model; keeps each telemetry window well under 16 KB
MAX_FEATURES = 64
BINS = 10
#: values per feature used for quantiles (large images are subsampled, seeded)
MAX_VALUES = 200_000


def feature_axis(spec: TensorSpec) -> int | None:
    """The axis whose entries are features, or None (the whole tensor is one feature)."""
    rank = len(spec.shape)
    if rank <= 1:
        return None
    if rank == 4:
        return 3 if spec.layout == "NHWC" else 1
    return rank - 1


def drift_profile(data: Dataset, inputs: tuple[TensorSpec, ...], *, bins: int = BINS, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    features: list[dict] = []
    for spec in inputs:
        if spec.name not in data.inputs or not (_floating(spec) or _raw_image(spec)):
            continue  # token ids, masks, flags and strings are not binned (a table's string columns get category counts)
        x = np.asarray(data.inputs[spec.name], dtype=np.float64)
        axis = feature_axis(spec)
        count = 1 if axis is None else x.shape[axis]
        for i in range(count):
            if len(features) >= MAX_FEATURES:
                break
            v = (x if axis is None else np.take(x, i, axis=axis)).reshape(-1)
            if v.size > MAX_VALUES:
                v = rng.choice(v, MAX_VALUES, replace=False)
            # a table column ([N, 1]) is one feature: named after its column
            name = spec.name if count == 1 and len(spec.shape) == 2 else None
            features.append(_feature(spec.name, axis if axis is not None else 0, i, v, bins, name_as=name).to_dict())
    return {"samples": data.n, "bins": bins, "generated": data.generated, "features": features}


def _floating(spec: TensorSpec) -> bool:
    return spec.dtype != "string" and bool(np.issubdtype(np.dtype(spec.dtype), np.floating))


def _raw_image(spec: TensorSpec) -> bool:
    """A raw uint8 RGB image input (preprocessing baked in): its channels are binned on pixel values."""
    return spec.dtype == "uint8" and len(spec.shape) == 4 and spec.layout == "NHWC"


def _feature(name: str, axis: int, index: int, v: np.ndarray, bins: int, *, name_as: str | None = None) -> FeatureProfile:
    finite = v[np.isfinite(v)]
    nan_share = float(1 - finite.size / v.size) if v.size else 0.0
    if finite.size == 0:
        edges = np.array([-0.5, 0.5])
    else:
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))
        if edges.size < 2:
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    counts, _ = np.histogram(finite, bins=edges)
    return FeatureProfile(
        input=name, axis=axis, index=index, name=name_as or (f"{name}[{index}]" if axis is not None else name),
        edges=tuple(float(e) for e in edges), counts=tuple(int(c) for c in counts),
        min=float(finite.min()) if finite.size else 0.0, max=float(finite.max()) if finite.size else 0.0,
        mean=float(finite.mean()) if finite.size else 0.0, std=float(finite.std()) if finite.size else 0.0,
        nan_share=nan_share,
    )


def selftest_inputs(data: Dataset, inputs: tuple[TensorSpec, ...], *, count: int = 3, max_bytes: int = 1 << 20) -> list[dict[str, np.ndarray]]:
    """Up to ``count`` single requests (batch 1 or the fixed batch), at most ``max_bytes`` in all (≥ 1)."""
    b = fixed_batch(inputs) or 1
    out, used = [], 0
    for i in range(0, min(data.n, count * b), b):
        if i + b > data.n:
            break
        vec = data.take(i, b)
        size = sum(a.nbytes for a in vec.values())
        if out and used + size > max_bytes:
            break
        out.append(vec)
        used += size
    return out


def selftest_vectors(vectors: list[dict[str, np.ndarray]], expected: dict[str, list[dict[str, np.ndarray]]]) -> list[dict]:
    """Manifest form: each vector's inputs and, per artifact file, its expected outputs."""
    return [
        {
            "inputs": {k: encode_tensor(v) for k, v in vec.items()},
            "expected": {art: {k: encode_tensor(y) for k, y in outs[i].items()} for art, outs in expected.items()},
        }
        for i, vec in enumerate(vectors)
    ]


def tolerance(precision: str, outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Self-test tolerance: int8/fp16 kernels differ across CPUs (x86 VNNI vs ARM dot-product)."""
    scale = max((float(np.abs(y).max()) for o in outputs for y in o.values() if np.issubdtype(y.dtype, np.floating)), default=1.0)
    rel = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2, "mixed": 5e-2}.get(precision, 5e-2)
    return {"atol": max(1e-5, rel * scale), "rtol": rel}
