"""A latency sketch: quantiles with bounded relative error in bounded memory, for telemetry windows."""

from __future__ import annotations

import math

from device_agent.contract.protocol import LatencySummary

__all__ = ["LatencySketch", "rounded"]

SIGNIFICANT = 6  # significant digits of floats in telemetry (keeps the payload small)


def rounded(x: float | None) -> float | None:
    """``x`` with SIGNIFICANT digits; None for None, NaN and ±inf (not JSON)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{SIGNIFICANT}g}")


class LatencySketch:
    """Log-bucketed quantile sketch (DDSketch-style): relative error ≤ ``alpha``, memory bounded.

    Values ≤ ``floor`` share one bucket. With alpha = 0.01 the range 1 µs … 1 h takes < 1,100 buckets.
    """

    def __init__(self, alpha: float = 0.01, floor: float = 1e-6) -> None:
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._lg = math.log(self.gamma)
        self.floor = floor
        self.reset()

    def reset(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, x: float) -> None:
        i = math.ceil(math.log(x) / self._lg) if x > self.floor else math.ceil(math.log(self.floor) / self._lg)
        self.buckets[i] = self.buckets.get(i, 0) + 1
        self.count += 1
        self.sum += x
        if x > self.max:
            self.max = x
        if x < self.min:
            self.min = x

    def quantile(self, q: float) -> float:
        """Value at quantile ``q`` (0..1); 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = q * (self.count - 1)
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                value = 2 * self.gamma**i / (self.gamma + 1)
                return min(max(value, self.min), self.max)
        return self.max

    def summary(self, scale: float = 1.0) -> LatencySummary | None:
        if not self.count:
            return None
        return LatencySummary(
            count=self.count, p50=rounded(self.quantile(0.5) * scale), p95=rounded(self.quantile(0.95) * scale),  # type: ignore[arg-type]
            p99=rounded(self.quantile(0.99) * scale), max=rounded(self.max * scale), mean=rounded(self.sum / self.count * scale),  # type: ignore[arg-type]
        )
