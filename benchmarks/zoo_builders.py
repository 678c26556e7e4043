"""ONNX exports for the zoo's PyTorch models: torchvision architectures, MTCNN's ONet, all-MiniLM-L6-v2.

Each builder writes one ``.onnx`` the way a user would export it (``torch.onnx.export``, TorchScript exporter,
opset 17, a dynamic batch axis) and needs the ``torch`` extra (the text encoder also ``transformers``, in the
``zoo`` extra). torchvision gives architectures only here (no pretrained weights can be downloaded), so their
BatchNorm statistics are re-estimated on real photo crops: every layer then sees activations in a realistic
range, as trained weights would give, instead of vanishing layer by layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from zoo_inputs import imagenet_batch

__all__ = ["export_minilm", "export_mtcnn_onet", "export_torchvision"]

OPSET = 17


def export_torchvision(arch: str, out: Path) -> Path:
    """torchvision ``arch`` (seeded random weights, BatchNorm calibrated on photos) -> ``out``: image [N,3,224,224] -> logits."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None)
    _calibrate_batchnorm(net)
    torch.onnx.export(net, torch.from_numpy(imagenet_batch(1, seed=99)), str(out), input_names=["image"], output_names=["logits"],
                      opset_version=OPSET, dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return out


def _calibrate_batchnorm(net, batches: int = 6, batch: int = 16) -> None:
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for i in range(batches):
            net(torch.from_numpy(imagenet_batch(batch, seed=1000 + i)))
    net.eval()


def export_mtcnn_onet(wheel_root: Path, out: Path) -> Path:
    """facenet-pytorch's MTCNN ONet with its shipped weights -> face [N,3,48,48] -> box, landmarks, prob."""
    import torch

    sys.path.insert(0, str(wheel_root))
    try:
        from facenet_pytorch.models.mtcnn import ONet
    finally:
        sys.path.remove(str(wheel_root))
    net = ONet(pretrained=True).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 48, 48), str(out), input_names=["face"], output_names=["box", "landmarks", "prob"],
                      opset_version=OPSET, dynamic_axes={n: {0: "N"} for n in ("face", "box", "landmarks", "prob")}, dynamo=False)
    return out


def export_minilm(model_dir: Path, out: Path) -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers) + mean pooling + L2 norm, as sentence-transformers computes it -> embedding [N, 384]."""
    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never ask the hub
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(model_dir)).eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    ids = torch.ones(1, 16, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "N", 1: "T"} for n in names} | {"embedding": {0: "N"}}
    torch.onnx.export(SentenceEncoder().eval(), (ids, ids, torch.zeros_like(ids)), str(out), input_names=names,
                      output_names=["embedding"], opset_version=OPSET, dynamic_axes=axes, dynamo=False)
    return out


def tokenize(model_dir: Path, texts: list[str], length: int) -> dict[str, np.ndarray]:
    """The model's own WordPiece tokenizer (tokenizer.json), padded/truncated to ``length``: int64 arrays."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(length=length)
    tok.enable_truncation(max_length=length)
    enc = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
