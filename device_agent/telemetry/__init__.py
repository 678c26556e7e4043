"""The telemetry room: what the agent measures and reports about its requests (never raw inputs).

- ``sketch``: latency quantiles with ≤ 1 % relative error in bounded memory;
- ``features``: per-feature counts on the manifest's reference bins, and moments (``FeatureTracker``);
- ``window``: one telemetry window — counts, latency, features — filled by the request path;
- ``metrics``: cumulative Prometheus metrics for ``GET /metrics``;
- ``feedback``: late ground truth joined with earlier predictions (windowed accuracy).

Imports the contract room only. The names below are re-exported for ``from device_agent.telemetry import ...``.
"""

from device_agent.telemetry.features import FeatureTracker, select_features
from device_agent.telemetry.metrics import Metrics
from device_agent.telemetry.sketch import LatencySketch
from device_agent.telemetry.window import Window

__all__ = ["FeatureTracker", "LatencySketch", "Metrics", "Window", "select_features"]
