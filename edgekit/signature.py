"""What a model's input signature says about feeding it: each input's batch axis, the fixed batch, integer value ranges.

Most inputs stack their samples on axis 0, but not all: silero-vad's LSTM state is ``state [2, N, 128]``,
its batch on axis 1, and a scalar (``sr``, a sample rate) has no axis at all. edgekit keeps every input's
samples on that input's own batch axis (in data files, generated inputs and evaluation batches):

- an input whose axis 0 is symbolic batches on axis 0;
- an input whose axis 0 is fixed batches on the axis that shares the batch symbol of the other inputs
  (an unnamed ``?`` counts when it is the input's only unknown size);
- an input without such an axis has no batch axis (``None``): a scalar, or a state fed whole; the data
  holds one value per sample, stacked on a new leading axis, and the model is run one sample at a time;
- when every input is fixed, axis 0 is the batch and its size the model's fixed batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from device_agent.contract.manifest import TensorSpec

__all__ = ["IntRange", "batch_axes", "batch_size", "calibration_batch", "fixed_batch", "is_fixed", "unknown_axes"]


def is_fixed(d: object) -> bool:
    """A known size: a positive int (a symbol, an unnamed ``?`` and Paddle's -1 are not)."""
    return isinstance(d, int) and d > 0


def _symbol(d: object) -> str | None:
    return None if is_fixed(d) else (d if isinstance(d, str) and d else "?")


def batch_axes(specs: Iterable[TensorSpec]) -> dict[str, int | None]:
    """Each input's batch axis (see the module docstring); None: a scalar, or an input fed whole."""
    specs = list(specs)
    symbols = {_symbol(s.shape[0]) for s in specs if s.shape and not is_fixed(s.shape[0])}
    out: dict[str, int | None] = {}
    for s in specs:
        if not s.shape:
            out[s.name] = None
        elif not is_fixed(s.shape[0]):
            out[s.name] = 0
        elif not symbols:
            out[s.name] = 0  # every input fixed: axis 0 is the model's fixed batch
        else:
            unknown = [i for i, d in enumerate(s.shape) if not is_fixed(d)]
            shared = [i for i in unknown if _symbol(s.shape[i]) in symbols and (_symbol(s.shape[i]) != "?" or len(unknown) == 1)]
            out[s.name] = shared[0] if shared else None
    return out


def fixed_batch(specs: Iterable[TensorSpec]) -> int | None:
    """The batch size the model is fixed to (the smallest fixed size on an input's batch axis), or None."""
    specs = list(specs)
    axes = batch_axes(specs)
    fixed = [s.shape[a] for s in specs if (a := axes[s.name]) is not None and is_fixed(s.shape[a])]
    return min(fixed) if fixed else None  # type: ignore[type-var]


def batch_size(specs: Iterable[TensorSpec], default: int) -> int:
    """Samples per run: the fixed batch; 1 when an input has no batch axis (it takes one sample's value); else ``default``."""
    specs = list(specs)
    fixed = fixed_batch(specs)
    if fixed is not None:
        return fixed
    return 1 if any(a is None for a in batch_axes(specs).values()) else default


def calibration_batch(specs: Iterable[TensorSpec], samples: int, default: int = 16) -> int:
    """Samples per calibration batch: the fixed batch; 1 when a non-scalar input is fed whole; else up to ``default``.

    Scalars take the batch's first value (a sample rate is the same for every sample of a batch).
    """
    specs = list(specs)
    fixed = fixed_batch(specs)
    if fixed is not None:
        return fixed
    axes = batch_axes(specs)
    if any(axes[s.name] is None and s.shape for s in specs):
        return 1
    return max(1, min(default, samples))


def unknown_axes(spec: TensorSpec, axis: int | None) -> list[int]:
    """Axes of ``spec`` whose size neither the signature nor the batch gives: edgekit has to guess them without data."""
    return [i for i, d in enumerate(spec.shape) if not is_fixed(d) and i != axis]


@dataclass(frozen=True)
class IntRange:
    """The values an integer input may take, read off the graph: ``values`` if listed, else ``low <= v < high``."""

    low: int
    high: int
    why: str
    values: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.values:
            return f"{' or '.join(map(str, self.values))} ({self.why})"
        span = "0/1" if (self.low, self.high) == (0, 2) else f"integers in [{self.low}, {self.high})"
        return f"{span} ({self.why})"
