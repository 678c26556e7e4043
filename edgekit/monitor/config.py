"""How the fleet monitor judges: thresholds, windows, accuracy bounds, retention (one frozen config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgekit.monitor.drift import DriftThresholds

__all__ = ["MonitorConfig"]


class MonitorConfig(BaseModel):
    """How the monitor judges. Shares and accuracies are fractions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thresholds: DriftThresholds = Field(default_factory=DriftThresholds, description="Drift warn/alert thresholds and minimum samples.")
    lookback_s: float = Field(default=3600.0, gt=0, description="How far back windows are merged for a verdict (devices) or a group report.")
    group_interval_s: float = Field(default=60.0, gt=0, description="How often groups are judged.")
    accuracy_max_drop: float = Field(default=0.05, ge=0, le=1, description="Accuracy below the manifest's minus this drop is a problem (0.05 = 5 points).")
    accuracy_min_labelled: int = Field(default=100, ge=1, description="Labelled rows needed before accuracy is judged.")
    accuracy_confidence: float = Field(default=0.95, gt=0.5, lt=1, description="One-sided confidence for an accuracy alert.")
    max_features_in_alert: int = Field(default=5, ge=1, description="Features named in one alert (the most moved).")
    retention_s: float = Field(default=30 * 86400.0, gt=0, description="Hourly roll-ups and alerts kept in the store.")
    raw_retention_s: float = Field(default=86400.0, gt=0, description="Raw windows kept (PostgreSQL drops them an hour partition at a time, once past it), "
                                   "and how far back device-level running totals reach (hourly resolution).")
    minute_retention_s: float | None = Field(default=None, gt=0, description="Running totals kept at minute resolution "
                                             "(None: twice the lookback); older ones keep one row an hour.")

    @property
    def minutes_s(self) -> float:
        """How long running totals keep minute resolution."""
        return self.minute_retention_s if self.minute_retention_s is not None else 2 * self.lookback_s
