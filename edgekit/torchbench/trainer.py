"""Knowledge-distillation training: the loop behind pruning recovery and ``edgekit distill``.

Loss (Hinton et al. 2015), for a classifier's first output::

    alpha * T² * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * CE(student, labels)

Only the soft term without labels, only the hard term without a teacher. A classifier's further
outputs, and every output of other models (regressors, detectors), are fitted to the teacher's
values with MSE. A seeded validation split decides the best
epoch (accuracy with labels, top-1 agreement with the teacher without, MSE otherwise); the epoch-0
model competes too, so fine-tuning never returns something worse than it started from. Training
stops after ``patience`` epochs without progress. The best weights are saved to the checkpoint
directory on every improvement; Ctrl-C restores them, writes ``best.onnx`` and raises
:class:`TrainingInterrupted` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import EdgekitError, InputError

if TYPE_CHECKING:
    import torch

__all__ = ["FitResult", "TrainSettings", "TrainingInterrupted", "fit", "split"]


class TrainingInterrupted(EdgekitError):
    """Ctrl-C during training; the message says where the best checkpoint was kept."""

    exit_code = 130

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class TrainSettings:
    """How to train; the step configs map their fields onto this."""

    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.7
    val_split: float = 0.1
    patience: int = 3
    seed: int = 0
    threads: int = 1
    weight_decay: float = 0.0


@dataclass
class FitResult:
    """What happened: the history per epoch and which epoch's weights were kept."""

    metric: str
    initial: float
    best: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_samples: int
    val_samples: int
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "metric": self.metric, "initial": round(self.initial, 6), "best": round(self.best, 6),
            "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
            "train_samples": self.train_samples, "val_samples": self.val_samples, "history": self.history,
        }


def split(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices; at least one sample each side when ``val_split`` > 0."""
    if not 0 <= val_split < 1:
        raise InputError(f"--val-split is {val_split}; give a fraction in [0, 1), e.g. 0.1")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_split == 0 else min(max(1, round(n * val_split)), n - 1)
    if n_val == 0:
        return np.sort(perm), np.sort(perm)  # no split: validate on the training data (said in the record)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit(
    student: torch.nn.Module,
    inputs: list[np.ndarray],
    *,
    settings: TrainSettings,
    classifier: bool,
    labels: np.ndarray | None = None,
    teacher: list[np.ndarray] | None = None,
    checkpoint_dir: Path,
    on_interrupt: Callable[[torch.nn.Module], Path | None] = lambda net: None,
    masks: dict[str, torch.Tensor] | None = None,
    progress: Callable[[str, float], None] = lambda msg, frac: None,
    label: str = "training",
) -> FitResult:
    """Train ``student`` in place on ``inputs`` (the model's inputs, in order) and keep its best weights.

    ``teacher`` holds the teacher's outputs for the same samples (soft targets); ``labels`` are
    integer classes. ``masks`` (parameter name → 0/1 tensor) keep pruned weights at zero.
    ``on_interrupt`` saves the restored best model on Ctrl-C and returns where (e.g. an .onnx path).
    """
    import torch

    if teacher is None and (labels is None or not classifier):
        raise InputError(
            "training needs a teacher or labels: the data has no 'labels' array and there is no teacher model. "
            "Add labels to the data (.npz 'labels', or class sub-folders) or pass --teacher"
        )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, settings.threads))
    try:
        with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
            torch.manual_seed(settings.seed)
            run = _Run(student, inputs, labels, teacher, settings, classifier, checkpoint_dir / "best.pt", masks, progress, label)
            try:
                run.train()
            except KeyboardInterrupt:
                raise run.interrupted(on_interrupt) from None
            run.restore_best()
            return run.result
    finally:
        torch.set_num_threads(old_threads)


class _Run:
    """One training run's state: data as tensors, optimizer, the best score so far and its checkpoint."""

    def __init__(self, student, inputs, labels, teacher, settings: TrainSettings, classifier: bool, ckpt: Path, masks, progress,
                 label: str) -> None:
        import torch

        self.net, self.s, self.ckpt, self.progress, self.label = student, settings, ckpt, progress, label
        self.tr, self.va = split(len(inputs[0]), settings.val_split, settings.seed)
        self.metric = "val_accuracy" if classifier and labels is not None else "val_agreement" if classifier else "val_mse"
        self.x = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
        self.y = torch.from_numpy(labels) if labels is not None else None
        self.t = [torch.from_numpy(np.ascontiguousarray(a)).float() for a in teacher] if teacher is not None else None
        alpha = settings.alpha if (self.t is not None and self.y is not None) else (1.0 if self.t is not None else 0.0)
        self.loss_fn = _Loss(classifier, settings.temperature, alpha)
        self.opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, settings.epochs))
        named = dict(student.named_parameters())
        self.masks = [(named[k], m) for k, m in (masks or {}).items()]
        self.g = torch.Generator().manual_seed(settings.seed)
        self.best, self.best_loss = self.evaluate()  # the starting model competes too
        self.result = FitResult(self.metric, _shown(self.metric, self.best), _shown(self.metric, self.best), 0, 0, False,
                                len(self.tr), len(self.va))
        torch.save(student.state_dict(), ckpt)

    def _targets(self, idx):
        return ([a[idx] for a in self.t] if self.t is not None else None), (self.y[idx] if self.y is not None else None)

    def evaluate(self) -> tuple[float, float]:
        import torch

        self.net.eval()
        with torch.no_grad():
            outs = _forward_batches(self.net, self.x, self.va, self.s.batch_size)
            t, y = self._targets(torch.from_numpy(self.va))
            return _score(self.metric, outs, t, y), float(self.loss_fn(outs, t, y))

    def train(self) -> None:
        import torch

        stale = 0
        self.progress(f"{self.label}: epoch 0/{self.s.epochs} · {_fmt(self.metric, self.best)}", 0.0)
        for epoch in range(1, self.s.epochs + 1):
            loss = self._epoch(epoch)
            self.sched.step()
            score, val_loss = self.evaluate()
            self.result.history.append({"epoch": epoch, "loss": round(loss, 6), "val_loss": round(val_loss, 6),
                                        self.metric: round(_shown(self.metric, score), 4)})
            self.result.epochs_run = epoch
            self.progress(f"{self.label}: epoch {epoch}/{self.s.epochs} · loss {loss:.4f} · {_fmt(self.metric, score)}", epoch / self.s.epochs)
            # equal scores (e.g. 100% accuracy) are told apart by the validation loss
            if score > self.best + 1e-9 or (abs(score - self.best) <= 1e-9 and val_loss < self.best_loss - 1e-9):
                self.best, self.best_loss, stale = score, val_loss, 0
                self.result.best, self.result.best_epoch = _shown(self.metric, score), epoch
                torch.save(self.net.state_dict(), self.ckpt)
            else:
                stale += 1
                if stale >= self.s.patience:
                    self.result.stopped_early = epoch < self.s.epochs
                    return

    def _epoch(self, epoch: int) -> float:
        import torch

        self.net.train()
        order = torch.from_numpy(self.tr)[torch.randperm(len(self.tr), generator=self.g)]
        batches = order.split(self.s.batch_size)
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches = batches[:-1]  # BatchNorm cannot train on a batch of one
        total, count = 0.0, 0
        for i, idx in enumerate(batches):
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(_outputs(self.net, [a[idx] for a in self.x]), *self._targets(idx))
            if not torch.isfinite(loss.detach()):
                raise EdgekitError(f"{self.label}: the loss became {float(loss)} at epoch {epoch}; lower the learning rate (--lr)")
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                for p, m in self.masks:
                    p.mul_(m)
            total += loss.item() * len(idx)
            count += len(idx)
            self.progress(f"{self.label}: epoch {epoch}/{self.s.epochs} · loss {total / count:.4f} · {_fmt(self.metric, self.best)} (best)",
                          (epoch - 1 + (i + 1) / len(batches)) / self.s.epochs)
        return total / max(count, 1)

    def restore_best(self) -> None:
        import torch

        self.net.load_state_dict(torch.load(self.ckpt, weights_only=True))
        self.net.eval()

    def interrupted(self, on_interrupt: Callable) -> TrainingInterrupted:
        """Ctrl-C: the best weights back in the model, saved by ``on_interrupt``; the error that says where."""
        self.restore_best()
        try:
            where = on_interrupt(self.net)
        except Exception:  # noqa: BLE001 - the .pt checkpoint is still there; say that instead
            where = None
        kept = f"{where} (weights also in {self.ckpt})" if where else str(self.ckpt)
        return TrainingInterrupted(
            f"{self.label} interrupted at epoch {self.result.epochs_run + 1}/{self.s.epochs}; the best checkpoint "
            f"(epoch {self.result.best_epoch}, {_fmt(self.metric, self.best)}) is kept at {kept}", where or self.ckpt,
        )


def _outputs(net: torch.nn.Module, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    from edgekit.torchbench.convert import run_torch

    return run_torch(net, tuple(args))


def _forward_batches(net, x, idx: np.ndarray, batch: int) -> tuple[torch.Tensor, ...]:
    import torch

    parts: list[tuple[torch.Tensor, ...]] = []
    ii = torch.from_numpy(idx)
    for chunk in ii.split(max(batch, 256)):
        parts.append(_outputs(net, [a[chunk] for a in x]))
    return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))


class _Loss:
    def __init__(self, classifier: bool, temperature: float, alpha: float) -> None:
        self.classifier, self.t, self.alpha = classifier, temperature, alpha

    def __call__(self, outs, teacher, labels):
        import torch.nn.functional as F

        if not self.classifier:
            return sum(F.mse_loss(o.float(), t) for o, t in zip(outs, teacher, strict=False)) / len(outs)
        z = outs[0]
        loss = 0.0
        if teacher is not None and self.alpha > 0:
            t = self.t
            soft = F.kl_div(F.log_softmax(z / t, dim=1), F.log_softmax(teacher[0] / t, dim=1), reduction="batchmean", log_target=True)
            loss = loss + self.alpha * soft * t * t
        if labels is not None and self.alpha < 1:
            loss = loss + (1 - self.alpha) * F.cross_entropy(z, labels)
        if teacher is not None and len(outs) > 1:
            # further heads (boxes, embeddings, auxiliary logits) follow the teacher's values
            loss = loss + sum(F.mse_loss(o.float(), t) for o, t in zip(outs[1:], teacher[1:], strict=True)) / (len(outs) - 1)
        return loss


def _score(metric: str, outs, teacher, labels) -> float:
    """Higher is better."""
    if metric == "val_accuracy":
        return float((outs[0].argmax(1) == labels).float().mean() * 100)
    if metric == "val_agreement":
        return float((outs[0].argmax(1) == teacher[0].argmax(1)).float().mean() * 100)
    mse = sum(float(((o.float() - t) ** 2).mean()) for o, t in zip(outs, teacher, strict=False)) / len(outs)
    return -mse if math.isfinite(mse) else -math.inf


def _shown(metric: str, score: float) -> float:
    return -score if metric == "val_mse" else score


def _fmt(metric: str, score: float) -> str:
    if metric == "val_mse":
        return f"val mse {-score:.4g}"
    return f"{'val acc' if metric == 'val_accuracy' else 'val agreement'} {score:.2f}%"
