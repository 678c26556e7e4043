"""A table's categorical columns as drift features: the manifest's ``drift_profile.categories`` as :class:`FeatureProfile`.

A categorical feature is binned on its categories: bin ``i`` counts the ``i``-th known category
(``values[i]``), the overflow counts categories the training data never held ("unseen"), NaN counts
missing values (``null``, sent as ``""``). So its telemetry windows, running totals and PSI take the
very path of a numeric feature's (:class:`~device_agent.contract.protocol.FeatureWindow`,
``edgekit.monitor``); ``values`` tells them apart. Edges are the bin numbers ``0 … k``; moments are not kept.
"""

from __future__ import annotations

from device_agent.contract.manifest import FeatureProfile, Manifest

__all__ = ["category_profiles"]


def category_profiles(manifest: Manifest) -> tuple[FeatureProfile, ...]:
    """One profile per entry of ``drift_profile.categories`` (none for a manifest without them)."""
    out = []
    for c in (manifest.raw.get("drift_profile") or {}).get("categories") or []:
        values = tuple(str(v) for v in c.get("values") or ())
        counts = tuple(int(n) for n in c.get("counts") or ())
        if not values or len(values) != len(counts):
            continue  # a malformed entry judges nothing; the manifest reader is not the place to refuse a model for it
        out.append(FeatureProfile(input=str(c.get("input") or c.get("name")), axis=1, index=0, name=str(c.get("name") or c.get("input")),
                                  edges=tuple(float(i) for i in range(len(values) + 1)), counts=counts, min=0.0, max=float(len(values)),
                                  mean=0.0, std=0.0, nan_share=float(c.get("null_share") or 0.0), values=values))
    return tuple(out)
