"""The typed config every training step shares (torch-free, so recipes validate without torch installed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekit.pipeline import StepConfig

if TYPE_CHECKING:
    from edgekit.torchbench.trainer import TrainSettings

__all__ = ["TrainingConfig", "training_settings"]


class TrainingConfig(StepConfig):
    """Fields every step that trains shares: pruning recovery and distillation."""

    epochs: int | None = Field(None, ge=0, description="Training epochs; default: the step's own (0 without --data).")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate (cosine-annealed over the epochs).")
    batch_size: int = Field(64, ge=2, description="Training batch size.")
    temperature: float = Field(4.0, gt=0, description="Distillation temperature T: the teacher's logits are softened by T.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the teacher's soft targets; 1 - alpha goes to hard labels when the data has them.")
    val_split: float = Field(0.1, ge=0, lt=1, description="Share of the training data held out to pick the best epoch and stop early.")
    patience: int = Field(5, ge=1, description="Stop after this many epochs without a better validation score.")
    seed: int = Field(0, description="Seed for the split, the shuffling and the initialisation: same seed, same model.")
    checkpoint_dir: str | None = Field(None, description="Where the best checkpoint is kept while training (default: next to the model).")


def training_settings(config: TrainingConfig, *, default_epochs: int, threads: int) -> TrainSettings:
    """The trainer's settings for a step config (``epochs=None`` → ``default_epochs``)."""
    from edgekit.torchbench.trainer import TrainSettings

    return TrainSettings(
        epochs=default_epochs if config.epochs is None else config.epochs, lr=config.lr, batch_size=config.batch_size,
        temperature=config.temperature, alpha=config.alpha, val_split=config.val_split, patience=config.patience,
        seed=config.seed, threads=threads,
    )
