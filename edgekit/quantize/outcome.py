"""What the int8 search found: each candidate's measurements, the choice per artifact form, and the record of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.runtime import OrtBackend
from edgekit.choices import Objective
from edgekit.evaluate import Latency, Quality
from edgekit.onnx_model import WeightStats
from edgekit.quantize.candidates import Candidate, Kind
from edgekit.quantize.choose import Option

__all__ = ["CandidateResult", "SearchResult"]


@dataclass
class CandidateResult:
    candidate: Candidate
    status: str  # ok | failed | skipped
    reason: str = ""
    path: Path | None = None
    size_bytes: int = 0
    latency: Latency | None = None
    quality: Quality | None = None
    stats: WeightStats | None = None
    accepted: bool = False  # within the accuracy bound
    seconds: float = 0.0
    backend: OrtBackend | None = field(default=None, repr=False)  # kept until the interleaved timing
    ort_backend: OrtBackend | None = field(default=None, repr=False)
    ort_latency: Latency | None = None
    ort_size_bytes: int = 0
    split: str = ""  # a mixed candidate: the split it came from ("cost model (.onnx)", "1x1 convs only", ...)
    float_layers: list[dict[str, Any]] = field(default_factory=list)  # a mixed candidate: the layers left float, and why
    int8_layers: list[str] = field(default_factory=list)  # a mixed candidate: the layers quantized (what --exclude names)

    @property
    def is_int8(self) -> bool:
        return self.candidate.kind is not Kind.FLOAT

    def option(self, *, ort: bool = False) -> Option:
        """This candidate as the choice rule sees it, in the ``.onnx`` or the ``.ort`` form."""
        lat = self.ort_latency if ort else self.latency
        assert lat is not None and self.quality is not None  # only measured candidates are options
        return Option(self.candidate.name, lat.p50_ms, self.ort_size_bytes if ort else self.size_bytes, self.quality.drop,
                      self.accepted, self.is_int8)

    def to_dict(self, baseline: Latency | None = None, baseline_size: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.candidate.name, "status": self.status, **self.candidate.params()}
        if self.split:
            d["split"] = self.split
        if self.reason:
            d["reason"] = self.reason
        if self.status != "ok":
            return d
        d["size_bytes"] = self.size_bytes
        if baseline_size:
            d["size_ratio"] = round(self.size_bytes / baseline_size, 4)
        d["latency"] = self.latency.to_dict() if self.latency else None
        if baseline and self.latency:
            d["latency_ratio"] = round(self.latency.p50_ms / baseline.p50_ms, 4)
        if self.ort_latency:
            d["ort_size_bytes"] = self.ort_size_bytes
            d["ort_latency"] = self.ort_latency.to_dict()
            if baseline:
                d["ort_latency_ratio"] = round(self.ort_latency.p50_ms / baseline.p50_ms, 4)
        d["quality"] = self.quality.to_dict() if self.quality else None
        d["quantized_share"] = round(self.stats.quantized_share, 4) if self.stats else None
        d["accepted"] = self.accepted
        if self.int8_layers:
            d["int8_layers"] = self.int8_layers
        if self.float_layers:
            d["float_layers"] = self.float_layers
        d["build_and_check_s"] = round(self.seconds, 2)
        return d


@dataclass
class SearchResult:
    chosen: CandidateResult | None
    results: list[CandidateResult]
    baseline_latency: Latency
    baseline_size: int
    max_drop: float
    met_bound: bool
    slower_than_fp32: bool
    why: str
    objective: Objective = Objective.BALANCED
    conflict: str = ""
    #: the candidate the .ort is converted from (None: the .ort is not shipped, or no candidate made one)
    chosen_ort: CandidateResult | None = None
    why_ort: str = ""
    ort_slower_than_fp32: bool = False
    conflict_ort: str = ""
    baseline_ort_latency: Latency | None = None  # the float model as .ort
    #: exact graph rewrites the static candidates were quantized with (edgekit.onnx_rewrites)
    static_rewrites: dict[str, int] = field(default_factory=dict)
    #: per form ("onnx", "ort"): what the mixed-precision search measured and predicted
    mixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of the search's phases

    def to_dict(self) -> dict[str, Any]:
        ort: dict[str, Any] = {}
        if self.chosen_ort is not None:
            ort = {"chosen_ort": self.chosen_ort.candidate.name, "why_ort": self.why_ort, "ort_slower_than_fp32": self.ort_slower_than_fp32,
                   **({"conflict_ort": self.conflict_ort} if self.conflict_ort else {})}
        baseline: dict[str, Any] = {"size_bytes": self.baseline_size, "latency": self.baseline_latency.to_dict()}
        if self.baseline_ort_latency is not None:
            baseline["ort_latency"] = self.baseline_ort_latency.to_dict()
        return {
            "objective": str(self.objective),
            "chosen": self.chosen.candidate.name if self.chosen else None,
            "why": self.why,
            **({"conflict": self.conflict} if self.conflict else {}),
            **ort,
            "met_accuracy_bound": self.met_bound,
            "slower_than_fp32": self.slower_than_fp32,
            "max_drop_pts": self.max_drop,
            **({"static_rewrites": self.static_rewrites} if self.static_rewrites else {}),
            **({"mixed": self.mixed} if self.mixed else {}),
            "baseline": baseline,
            **({"seconds": self.seconds} if self.seconds else {}),
            "candidates": [r.to_dict(self.baseline_latency, self.baseline_size) for r in self.results],
        }
