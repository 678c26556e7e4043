"""The KD training loop: what it needs, what it keeps, how it stops, and that a seed fixes the result."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.errors import InputError

torch = pytest.importorskip("torch")

from edgekit.torchbench.trainer import TrainingInterrupted, TrainSettings, fit, split  # noqa: E402


def blobs(n: int = 240, seed: int = 0):
    """Three separable clusters in 8-D, and a 'teacher' that knows them."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 8)) * 3
    y = rng.integers(0, 3, n)
    x = (centers[y] + rng.standard_normal((n, 8))).astype(np.float32)
    teacher = (x @ centers.T).astype(np.float32)  # logits: similarity to each center
    return x, y.astype(np.int64), teacher


def student(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_no_labels_and_no_teacher_says_which_is_needed(tmp_path):
    x, _, _ = blobs()
    with pytest.raises(InputError, match=r"training needs a teacher or labels: the data has no 'labels' array and there is no "
                                         r"teacher model. Add labels to the data .* or pass --teacher"):
        fit(student(), [x], settings=TrainSettings(epochs=2), classifier=True, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("use_labels, use_teacher, metric", [(True, True, "val_accuracy"), (False, True, "val_agreement"),
                                                               (True, False, "val_accuracy")])
def test_learns_from_soft_targets_labels_or_both(tmp_path, use_labels, use_teacher, metric):
    x, y, t = blobs()
    net = student()
    r = fit(net, [x], settings=TrainSettings(epochs=15, lr=1e-2, patience=15), classifier=True,
            labels=y if use_labels else None, teacher=[t] if use_teacher else None, checkpoint_dir=tmp_path)
    assert r.metric == metric and r.best >= 90 and r.initial < r.best
    assert r.train_samples == 216 and r.val_samples == 24
    with torch.no_grad():
        assert (net(torch.from_numpy(x)).argmax(1).numpy() == y).mean() > 0.9


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    x, y, t = blobs()

    def train(seed):
        net = student(0)
        fit(net, [x], settings=TrainSettings(epochs=3, seed=seed), classifier=True, labels=y, teacher=[t], checkpoint_dir=tmp_path)
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    a, b, c = train(1), train(1), train(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_early_stopping_keeps_the_best_epoch_even_the_starting_one(tmp_path):
    x, y, t = blobs()
    net = student()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    # a learning rate this small changes nothing measurable: no epoch beats the start, so the start is kept
    r = fit(net, [x], settings=TrainSettings(epochs=20, lr=1e-12, patience=2), classifier=True, labels=y, teacher=[t],
            checkpoint_dir=tmp_path)
    assert r.best_epoch == 0 and r.epochs_run == 2 and r.stopped_early
    assert all(torch.equal(start[k], v) for k, v in net.state_dict().items())


def test_early_stopping_waits_patience_epochs_after_the_best(tmp_path):
    x, y, t = blobs()
    # a learning rate this large makes training erratic: it peaks early, then stalls
    r = fit(student(), [x], settings=TrainSettings(epochs=30, lr=1.0, patience=2), classifier=True, labels=y, teacher=[t],
            checkpoint_dir=tmp_path)
    assert r.stopped_early and r.epochs_run - r.best_epoch == 2
    assert r.best == max(h["val_accuracy"] for h in r.history)


def test_regression_models_fit_the_teachers_outputs_with_mse(tmp_path):
    x, _, t = blobs()
    net = student()
    r = fit(net, [x], settings=TrainSettings(epochs=10, lr=1e-2), classifier=False, teacher=[t], checkpoint_dir=tmp_path)
    assert r.metric == "val_mse" and r.best < r.initial


def test_ctrl_c_keeps_the_best_checkpoint_and_says_where(tmp_path):
    x, y, t = blobs()
    net = student()
    epochs_seen = []

    def progress(msg: str, frac: float) -> None:
        if msg.startswith("training: epoch 3/10 · loss"):
            epochs_seen.append(frac)
            raise KeyboardInterrupt  # what Ctrl-C raises in the training loop

    def export(model) -> str:
        path = tmp_path / "best.onnx"
        torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
        return path

    with pytest.raises(TrainingInterrupted) as e:
        fit(net, [x], settings=TrainSettings(epochs=10, lr=1e-2), classifier=True, labels=y, teacher=[t],
            checkpoint_dir=tmp_path, on_interrupt=export, progress=progress)
    msg = str(e.value)
    assert msg.startswith("training interrupted at epoch 3/10; the best checkpoint (epoch 2, val acc ")
    assert f"is kept at {tmp_path / 'best.onnx'} (weights also in {tmp_path / 'best.pt'})" in msg
    assert e.value.exit_code == 130 and e.value.checkpoint == tmp_path / "best.onnx"
    # the file holds the best epoch's weights: it runs and matches the restored model
    onnx.checker.check_model(onnx.load(str(tmp_path / "best.onnx")))
    s = ort.InferenceSession(str(tmp_path / "best.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.allclose(s.run(None, {"x": x})[0], net(torch.from_numpy(x)).numpy(), atol=1e-5)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(best[k], v) for k, v in net.state_dict().items())


def test_split_is_seeded_disjoint_and_never_empty():
    tr, va = split(100, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    assert np.array_equal(split(100, 0.1, seed=3)[1], va) and not np.array_equal(split(100, 0.1, seed=4)[1], va)
    assert len(split(5, 0.01, seed=0)[1]) == 1
    with pytest.raises(InputError, match="--val-split is 1.5; give a fraction in"):
        split(10, 1.5, seed=0)
