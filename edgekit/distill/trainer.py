"""Knowledge-distillation training: the loop behind pruning recovery and ``edgekit distill``.

Loss (Hinton et al. 2015), for a classifier's first output::

    alpha * T² * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * CE(student, labels)

Only the soft term without labels, only the hard term without a teacher. Other models (regressors,
detectors) are fitted to the teacher's outputs with MSE. A seeded validation split decides the best
epoch (accuracy with labels, top-1 agreement with the teacher without, MSE otherwise); the epoch-0
model competes too, so fine-tuning never returns something worse than it started from. Training
stops after ``patience`` epochs without progress. The best weights are saved to the checkpoint
directory on every improvement; Ctrl-C restores them, writes ``best.onnx`` and raises
:class:`TrainingInterrupted` naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

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
    """
    import torch

    if teacher is None and (labels is None or not classifier):
        raise InputError(
            "training needs a teacher or labels: the data has no 'labels' array and there is no teacher model. "
            "Add labels to the data (.npz 'labels', or class sub-folders) or pass --teacher"
        )
    n = len(inputs[0])
    tr, va = split(n, settings.val_split, settings.seed)
    metric = "val_accuracy" if classifier and labels is not None else "val_agreement" if classifier else "val_mse"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_dir / "best.pt"
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, settings.threads))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        g = torch.Generator().manual_seed(settings.seed)
        x = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
        y = torch.from_numpy(labels) if labels is not None else None
        t = [torch.from_numpy(np.ascontiguousarray(a)).float() for a in teacher] if teacher is not None else None
        loss_fn = _Loss(classifier, settings.temperature, settings.alpha if t is not None and y is not None else (1.0 if t is not None else 0.0))
        params = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, settings.epochs))
        named = dict(student.named_parameters())
        mask_pairs = [(named[k], m) for k, m in (masks or {}).items()]

        def evaluate() -> tuple[float, float]:
            student.eval()
            with torch.no_grad():
                outs = _forward_batches(student, x, va, settings.batch_size)
                tv = [a[va] for a in t] if t is not None else None
                yv = y[va] if y is not None else None
                loss = float(loss_fn(outs, tv, yv))
                return _score(metric, outs, tv, yv), loss

        best, best_loss = evaluate()
        result = FitResult(metric, _shown(metric, best), _shown(metric, best), 0, 0, False, len(tr), len(va))
        torch.save(student.state_dict(), ckpt)
        stale = 0
        progress(f"{label}: epoch 0/{settings.epochs} · {_fmt(metric, best)}", 0.0)
        try:
            for epoch in range(1, settings.epochs + 1):
                student.train()
                order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)]
                batches = order.split(settings.batch_size)
                if len(batches) > 1 and len(batches[-1]) == 1:
                    batches = batches[:-1]  # BatchNorm cannot train on a batch of one
                total, count = 0.0, 0
                for i, idx in enumerate(batches):
                    opt.zero_grad(set_to_none=True)
                    outs = _outputs(student, [a[idx] for a in x])
                    loss = loss_fn(outs, [a[idx] for a in t] if t is not None else None, y[idx] if y is not None else None)
                    if not torch.isfinite(loss.detach()):
                        raise EdgekitError(f"{label}: the loss became {float(loss)} at epoch {epoch}; lower the learning rate (--lr)")
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for p, m in mask_pairs:
                            p.mul_(m)
                    total += loss.item() * len(idx)
                    count += len(idx)
                    progress(f"{label}: epoch {epoch}/{settings.epochs} · loss {total / count:.4f} · {_fmt(metric, best)} (best)",
                             (epoch - 1 + (i + 1) / len(batches)) / settings.epochs)
                sched.step()
                score, val_loss = evaluate()
                improved = score > best + 1e-9 or (abs(score - best) <= 1e-9 and val_loss < best_loss - 1e-9)
                result.history.append({"epoch": epoch, "loss": round(total / max(count, 1), 6), "val_loss": round(val_loss, 6),
                                       metric: round(_shown(metric, score), 4)})
                result.epochs_run = epoch
                progress(f"{label}: epoch {epoch}/{settings.epochs} · loss {total / max(count, 1):.4f} · {_fmt(metric, score)}",
                         epoch / settings.epochs)
                if improved:
                    best, best_loss, stale = score, val_loss, 0
                    result.best, result.best_epoch = _shown(metric, best), epoch
                    torch.save(student.state_dict(), ckpt)
                else:
                    stale += 1
                    if stale >= settings.patience:
                        result.stopped_early = epoch < settings.epochs
                        break
        except KeyboardInterrupt:
            student.load_state_dict(torch.load(ckpt, weights_only=True))
            student.eval()
            where = None
            try:
                where = on_interrupt(student)
            except Exception:  # noqa: BLE001 - the .pt checkpoint is still there; say that
                where = None
            kept = f"{where} (weights also in {ckpt})" if where else str(ckpt)
            raise TrainingInterrupted(
                f"{label} interrupted at epoch {result.epochs_run + 1}/{settings.epochs}; the best checkpoint "
                f"(epoch {result.best_epoch}, {_fmt(metric, best)}) is kept at {kept}", where or ckpt,
            ) from None
        finally:
            torch.set_num_threads(old_threads)
        student.load_state_dict(torch.load(ckpt, weights_only=True))
        student.eval()
    return result


def _outputs(net: torch.nn.Module, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    from edgekit.distill.convert import run_torch

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
            return sum(F.mse_loss(o.float(), t) for o, t in zip(outs, teacher)) / len(outs)
        z = outs[0]
        loss = 0.0
        if teacher is not None and self.alpha > 0:
            t = self.t
            soft = F.kl_div(F.log_softmax(z / t, dim=1), F.log_softmax(teacher[0] / t, dim=1), reduction="batchmean", log_target=True)
            loss = loss + self.alpha * soft * t * t
        if labels is not None and self.alpha < 1:
            loss = loss + (1 - self.alpha) * F.cross_entropy(z, labels)
        return loss


def _score(metric: str, outs, teacher, labels) -> float:
    """Higher is better."""
    if metric == "val_accuracy":
        return float((outs[0].argmax(1) == labels).float().mean() * 100)
    if metric == "val_agreement":
        return float((outs[0].argmax(1) == teacher[0].argmax(1)).float().mean() * 100)
    mse = sum(float(((o.float() - t) ** 2).mean()) for o, t in zip(outs, teacher)) / len(outs)
    return -mse if math.isfinite(mse) else -math.inf


def _shown(metric: str, score: float) -> float:
    return -score if metric == "val_mse" else score


def _fmt(metric: str, score: float) -> str:
    if metric == "val_mse":
        return f"val mse {-score:.4g}"
    return f"{'val acc' if metric == 'val_accuracy' else 'val agreement'} {score:.2f}%"
