"""A small CNN trained on scikit-learn's bundled digits: the demo's, tests' and benchmarks' model.

No download: the 1,797 8x8 images ship with scikit-learn. Needs the torch extra.

    python -m edgekit.examples.digits OUT_DIR    # writes digits.onnx, train.npz, calib.npz, eval.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["DigitsNet", "load_digits_arrays", "train_digits"]


def load_digits_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Digits as float32 [N, 1, 8, 8] in [0, 1], split 70/30 into train/eval (stratified, seeded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return {"x_train": x_tr, "y_train": y_tr, "x_eval": x_ev, "y_eval": y_ev}


def _net(width: int = 32):
    import torch.nn as nn

    class DigitsNet(nn.Module):
        """conv(16)-conv(32)-pool-conv(64)-pool-fc(64)-fc(10); ~45k parameters at width 32."""

        def __init__(self) -> None:
            super().__init__()
            w = width
            self.features = nn.Sequential(
                nn.Conv2d(1, w // 2, 3, padding=1), nn.BatchNorm2d(w // 2), nn.ReLU(),
                nn.Conv2d(w // 2, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 4, 2 * w), nn.ReLU(), nn.Linear(2 * w, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    return DigitsNet()


def DigitsNet(width: int = 32):  # noqa: N802 - a factory named like the class it returns
    return _net(width)


def train_digits(out_dir: str | Path, *, epochs: int = 30, seed: int = 0, width: int = 32) -> dict[str, Path]:
    """Train the digits CNN and write ``digits.onnx`` plus train/calib/eval ``.npz`` files.

    Returns the written paths. Deterministic for a seed (single-threaded CPU training, ~10 s).
    """
    import torch
    import torch.nn.functional as F

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    a = load_digits_arrays(seed)
    net = _net(width)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, y = torch.from_numpy(a["x_train"]), torch.from_numpy(a["y_train"])
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    net.eval()
    paths = {
        "model": out / "digits.onnx",
        "train": out / "train.npz",
        "calib": out / "calib.npz",
        "eval": out / "eval.npz",
    }
    export_onnx(net, paths["model"], torch.zeros(1, 1, 8, 8))
    np.savez(paths["train"], x=a["x_train"], labels=a["y_train"])
    np.savez(paths["calib"], x=a["x_train"][:256])
    np.savez(paths["eval"], x=a["x_eval"], labels=a["y_eval"])
    torch.save(net.state_dict(), out / "digits.pt")
    paths["weights"] = out / "digits.pt"
    return paths


def export_onnx(net, path: Path, example, *, opset: int = 17) -> None:
    """torch → ONNX with a symbolic batch axis, weights as initializers (the TorchScript exporter)."""
    import torch

    torch.onnx.export(
        net, example, str(path), input_names=["x"], output_names=["logits"], opset_version=opset,
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, dynamo=False,
    )


if __name__ == "__main__":  # pragma: no cover
    for k, v in train_digits(sys.argv[1] if len(sys.argv) > 1 else "digits").items():
        print(f"{k}: {v}")
