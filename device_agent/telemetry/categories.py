"""Category-frequency summaries of a table's string columns, bounded by the profile's categories.

Per categorical feature (:func:`device_agent.contract.categories.category_profiles`) a window counts
each known category, one "unseen" bucket for every other value and the missing ones (``""``, what
``null`` becomes): at most ``categories + 2`` numbers, however many distinct strings clients send.
The window is a :class:`~device_agent.contract.protocol.FeatureWindow` like a numeric feature's:
``counts`` per category, ``over`` = unseen, ``nan`` = missing, no moments.
"""

from __future__ import annotations

from collections.abc import Mapping

from device_agent.contract.categories import category_profiles
from device_agent.contract.manifest import FeatureProfile, Manifest
from device_agent.contract.protocol import FeatureWindow
from device_agent.contract.types import Array

__all__ = ["CategoryTracker", "category_tracker", "select_categories"]


def category_tracker(manifest: Manifest, numeric: list[FeatureProfile], max_payload_bytes: int) -> tuple[CategoryTracker | None, int]:
    """Category counts for a table model's string columns within what the ``numeric`` features tracked leave of the
    payload budget (None without categorical columns), and how many were left out."""
    profiles = category_profiles(manifest)
    if not profiles:
        return None, 0
    used = sum(176 + len(f.name) + 12 * len(f.counts) for f in numeric)  # as select_features prices them
    tracked, left = select_categories(profiles, max_payload_bytes - 1024 - used)
    return (CategoryTracker(tracked) if tracked else None), left


def select_categories(profiles: tuple[FeatureProfile, ...], budget: int) -> tuple[list[FeatureProfile], int]:
    """The categorical features whose windows fit in ``budget`` bytes (profile order), and how many were left out."""
    out, left, used = [], 0, 0
    for p in profiles:
        cost = 120 + len(p.name) + 12 * (len(p.counts) + 2)
        if used + cost > budget:
            left += 1
            continue
        used += cost
        out.append(p)
    return out, left


class CategoryTracker:
    """Counts per category, unseen and missing, per feature, until :meth:`take`. Not thread-safe: the window's lock guards it."""

    def __init__(self, features: list[FeatureProfile]) -> None:
        self.features = features
        self._index = [{v: i for i, v in enumerate(f.values or ())} for f in features]
        self.inputs = {f.input for f in features}
        self.reset()

    def reset(self) -> None:
        self.counts = [[0] * len(f.counts) for f in self.features]
        self.unseen = [0] * len(self.features)
        self.missing = [0] * len(self.features)
        self.samples = 0

    def add(self, arrays: Mapping[str, Array]) -> None:
        """Count the values of validated inputs (object arrays of str, ``[N, 1]``); other inputs are ignored."""
        rows = 0
        for j, f in enumerate(self.features):
            x = arrays.get(f.input)
            if x is None:
                continue
            index, counts = self._index[j], self.counts[j]
            values = x.reshape(-1).tolist()
            rows = max(rows, len(values))
            for v in values:
                i = index.get(v)
                if i is not None:
                    counts[i] += 1
                elif v == "" or v is None:
                    self.missing[j] += 1
                else:
                    self.unseen[j] += 1
        self.samples += rows

    def take(self) -> tuple[list[FeatureWindow], int]:
        """The windows since the last take and the samples they cover; then reset."""
        out = [FeatureWindow(name=f.name, n=sum(self.counts[j]) + self.unseen[j] + self.missing[j], counts=list(self.counts[j]), under=0,
                             over=self.unseen[j], nan=self.missing[j], min=None, max=None, mean=None, std=None)
               for j, f in enumerate(self.features)]
        samples = self.samples
        self.reset()
        return out, samples
