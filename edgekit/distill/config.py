"""The ``distill`` step's typed config (torch-free, so recipes validate without torch installed)."""

from __future__ import annotations

from pydantic import Field

from edgekit.torchbench.config import TrainingConfig

__all__ = ["DISTILL_EPOCHS", "DistillConfig"]

#: epochs when the config leaves them unset (training data is always given to distill)
DISTILL_EPOCHS = 30


class DistillConfig(TrainingConfig):
    """``distill``: train a smaller student to mimic the model (the teacher)."""

    student: str = Field("auto:0.5", description="auto:W (the teacher with every prunable layer's width × W) or module:function / file.py:function.")
    keep: tuple[str, ...] = Field((), description="For auto:W, layers (node names or globs) whose width is kept.")
    round_to: int | None = Field(None, ge=1, description="For auto:W, round kept channel counts to a multiple of this (e.g. 8 for SIMD).")
