"""The ``prune`` step's typed config (torch-free, so recipes validate without torch installed)."""

from __future__ import annotations

from pydantic import Field, field_validator

from edgekit.choices import StrChoice
from edgekit.torchbench.channels import Importance
from edgekit.torchbench.config import TrainingConfig

__all__ = ["PRUNE_EPOCHS", "STRUCTURED_EPOCHS", "PruneConfig", "PruneMethod", "Scope"]

#: epochs when the config leaves them unset and training data is given
PRUNE_EPOCHS = 10  # unstructured: the masks keep most of the function; a short recovery is enough
STRUCTURED_EPOCHS = 30  # structured: a quarter of the parameters remain; recovery needs longer (early stopping bounds it)


class PruneMethod(StrChoice):
    """What pruning removes."""

    STRUCTURED = "structured"  # whole channels removed: smaller and faster
    UNSTRUCTURED = "unstructured"  # single weights zeroed: compresses, not faster


class Scope(StrChoice):
    """How the pruned share is spread over layers."""

    GLOBAL = "global"
    LAYER = "layer"


class PruneConfig(TrainingConfig):
    """``prune``: remove channels (structured) or zero weights (unstructured), then fine-tune with the source as teacher."""

    ratio: float = Field(0.5, ge=0, lt=1, description="Share pruned: of each layer's output channels (structured) or of the weights (unstructured).")
    method: PruneMethod = Field(PruneMethod.UNSTRUCTURED, description="structured (channels removed, faster) or unstructured (weights zeroed, compresses).")
    layers: dict[str, float] = Field({}, description="Per-layer ratios: node name or glob -> ratio, overriding `ratio` for those layers.")
    keep: tuple[str, ...] = Field((), description="Node names or globs never pruned (the output layers are never pruned anyway).")
    scope: Scope | None = Field(None, description="layer: every layer loses exactly `ratio`; global: one ranking across all layers "
                                                 "(uneven). Default: global for unstructured, layer for structured.")
    importance: Importance = Field(Importance.L2, description="Channel ranking for structured pruning: l2, l1 or fpgm.")
    round_to: int | None = Field(None, ge=1, description="Structured: keep channel counts a multiple of this (e.g. 8 for SIMD kernels).")
    sensitivity: bool = Field(False, description="Before pruning, prune each layer alone (no fine-tuning) and report the accuracy cost.")
    iterations: int = Field(1, ge=1, le=20, description="Structured: reach the ratio in this many prune → fine-tune rounds "
                                                      "(gradual pruning keeps more accuracy at high ratios; the epochs are shared out).")
    torch_model: str | None = Field(None, description="module:function returning the same model in PyTorch, when onnx2torch cannot convert it.")
    distill: bool = Field(True, description="Fine-tune with the unpruned model's soft targets (plus labels when given); false: labels only.")

    @field_validator("layers")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r < 1}
        if bad:
            raise ValueError(f"per-layer ratios must be in [0, 1); got {bad}")
        return v
