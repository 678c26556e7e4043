"""int8 .tflite against the float .tflite under LiteRT, on real CNN architectures: never slower (issue 13).

Models: torchvision 0.29.1's mobilenet_v3_small, mobilenet_v3_large, efficientnet_b0, resnet18, resnet50,
mobilenet_v2, squeezenet1_1 and shufflenet_v2_x1_0. No pretrained weights can be downloaded here, so
each is built with seeded random weights and its BatchNorm statistics re-estimated on crops of real
photos (scikit-image's bundled ``skimage.data`` images): every layer then sees activations in a
realistic range, as trained weights would give. Exported to ONNX (opset 17, batch 1) with input
``image`` [1, 3, 224, 224]; 64 other photo crops are the calibration and evaluation data.

For each model ``edgekit.compress`` writes the float .tflite (fp32) and the int8 .tflite (``--int8``,
default objective balanced: the int8 search keeps float what is slower or too inaccurate in int8);
then both are timed here as users run them: ``Interpreter(model_path, num_threads=1)``, default
delegates (XNNPACK), round-robin, p50 of single-sample calls, on the calling thread's CPU clock (a
1-thread LiteRT model runs on the caller: time spent waiting for a shared core is not the model's)
and on the wall clock. Target: int8 .tflite <= 1.00x the float .tflite (CPU clock) on every model.

``--added-time`` converts MobileNetV3-small and ResNet-18 to int8 again with ``TfliteConfig(search=False)``
(the whole-model int8 conversion edgekit shipped before the search) and prints what the search adds.

    python benchmarks/tflite_int8_matrix.py [--models mobilenet_v3_small,...] [--added-time] [--json FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet18", "resnet50", "mobilenet_v2", "squeezenet1_1",
          "shufflenet_v2_x1_0")
TARGET = 1.00
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# RGB (or grey) photos bundled in the scikit-image wheel: no download
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel",
          "camera", "coins", "clock", "moon", "page", "text", "grass", "brick")


def photo_batch(n: int, *, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` random crops (30-100 % of the shorter side, random flips) of the bundled photos, ImageNet-normalized, float32 NCHW."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        photos.append(np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]))
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(min(img.shape[:2]) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        crop = np.asarray(Image.fromarray(img[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR), np.float32) / 255
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return np.ascontiguousarray(((out - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2))


def export_torchvision(arch: str, work: Path) -> tuple[Path, Path]:
    """``arch`` with seeded random weights and BatchNorm statistics from photos, as ONNX; and 64 photo crops as its data."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for i in range(6):
            net(torch.from_numpy(photo_batch(16, seed=1000 + i)))
    net.eval()
    path = work / f"{arch}.onnx"
    torch.onnx.export(net, torch.from_numpy(photo_batch(1, seed=99)), str(path), input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    data = work / f"{arch}.npz"
    np.savez(data, image=photo_batch(64, seed=7))
    return path, data


def compress_pair(model: Path, data: Path, out: Path, *, search: bool = True) -> dict[str, dict]:
    """The fp32 and int8 .tflite of ``model``: {precision: {path, seconds, artifact}}."""
    from device_agent.contract.manifest import load_manifest
    from edgekit.compress import CompressOptions, compress
    from edgekit.export import ExportOptions, TfliteConfig
    from edgekit.pipeline import StepSpec

    runs = {"fp32": [], "int8": [StepSpec("int8", {"max_drop": 100.0, "search_time": 20.0})]}
    found = {}
    for precision, steps in runs.items():
        t0 = time.perf_counter()
        # random classifier heads make near-tied logits: parity is judged (cosine), the top-1 bound is not
        result = compress(model, data, CompressOptions(steps=steps, formats=("tflite",), output=out / f"{model.stem}.{precision}", force=True,
                                                       export=ExportOptions(tflite=TfliteConfig(search=search)), allow_mismatch=True))
        art = next(a for a in load_manifest(result.output).artifacts if a.format == "tflite")
        found[precision] = {"path": result.output / art.file, "seconds": time.perf_counter() - t0, "artifact": art,
                            "parity": result.manifest.metrics[art.file].get("parity")}
        print(f"  {model.stem} {precision}: {found[precision]['seconds']:.0f} s", file=sys.stderr)
    return found


def time_pair(paths: dict[str, Path], *, rounds: int = 300, budget_s: float = 60.0) -> dict[str, dict[str, float]]:
    """p50 ms (thread CPU clock and wall clock) of each .tflite, plain Interpreter, 1 thread, round-robin."""
    from ai_edge_litert.interpreter import Interpreter

    its = {}
    for k, p in paths.items():
        it = Interpreter(model_path=str(p), num_threads=1)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.random.default_rng(0).standard_normal(d["shape"]).astype(d["dtype"]))
        for _ in range(10):
            it.invoke()
        its[k] = it
    cpu: dict[str, list[float]] = {k: [] for k in its}
    wall: dict[str, list[float]] = {k: [] for k in its}
    deadline = time.perf_counter() + budget_s
    for i in range(rounds):
        for k, it in its.items():
            c0, w0 = time.thread_time(), time.perf_counter()
            it.invoke()
            cpu[k].append(time.thread_time() - c0)
            wall[k].append(time.perf_counter() - w0)
        if i >= 50 and time.perf_counter() > deadline:
            break
    return {k: {"cpu_ms": float(np.median(cpu[k]) * 1e3), "wall_ms": float(np.median(wall[k]) * 1e3)} for k in its}


def bench(arch: str, work: Path, out: Path) -> dict:
    model, data = export_torchvision(arch, work)
    found = compress_pair(model, data, out)
    t = time_pair({p: f["path"] for p, f in found.items()})
    art = found["int8"]["artifact"]
    search = art.extra["tflite"].get("int8_search") or {}
    return {"model": arch, "precision": art.precision, "chosen": search.get("chosen"), "note": search.get("note"),
            "float_ops": len(search.get("float_layers") or []), "size_ratio": art.size_bytes / found["fp32"]["artifact"].size_bytes,
            "cpu_ratio": t["int8"]["cpu_ms"] / t["fp32"]["cpu_ms"], "wall_ratio": t["int8"]["wall_ms"] / t["fp32"]["wall_ms"],
            "fp32_cpu_ms": t["fp32"]["cpu_ms"], "int8_cpu_ms": t["int8"]["cpu_ms"], "search_s": search.get("seconds"),
            "phases_s": search.get("phases_s"), "int8_seconds": found["int8"]["seconds"], "parity": found["int8"]["parity"],
            "candidates": [(c["name"], c.get("latency_ratio"), c.get("size_ratio"), c.get("accurate")) for c in search.get("candidates", [])]}


def added_time(arch: str, work: Path, out: Path) -> dict:
    """The int8 .tflite conversion with and without the search, and the search's own phases."""
    model, data = work / f"{arch}.onnx", work / f"{arch}.npz"
    if not model.exists():
        model, data = export_torchvision(arch, work)
    plain = compress_pair(model, data, out / "plain", search=False)["int8"]["seconds"]
    searched = compress_pair(model, data, out / "searched", search=True)["int8"]
    return {"model": arch, "without_search_s": plain, "with_search_s": searched["seconds"],
            "phases_s": searched["artifact"].extra["tflite"]["int8_search"]["phases_s"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--added-time", action="store_true", help="also time the int8 conversion without the search (MobileNetV3-small, ResNet-18)")
    ap.add_argument("--out", type=Path, default=None, help="keep the output directories here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit.bench.") as tmp:
        work = Path(tmp)
        out = args.out or work / "out"
        rows = [bench(m.strip(), work, out) for m in args.models.split(",") if m.strip()]
        extra = [added_time(m, work, out) for m in ("mobilenet_v3_small", "resnet18")] if args.added_time else []
    print(f"{'model':<20} {'int8 .tflite':<14} {'size×fp32':>9} {'cpu×fp32':>8} {'wall×fp32':>9} {'float ops':>9} {'search s':>8}  chosen")
    for r in rows:
        print(f"{r['model']:<20} {r['precision']:<14} {r['size_ratio']:>9.3f} {r['cpu_ratio']:>8.2f} {r['wall_ratio']:>9.2f} "
              f"{r['float_ops']:>9} {r['search_s'] or 0:>8.0f}  {r['chosen']}" + (f"  ({r['note']})" if r["note"] else ""))
    for e in extra:
        print(f"{e['model']}: int8 .tflite in {e['without_search_s']:.0f} s without the search, {e['with_search_s']:.0f} s with it "
              f"(+{e['with_search_s'] - e['without_search_s']:.0f} s; search phases {e['phases_s']})")
    misses = 0
    for r in rows:
        ok = r["cpu_ratio"] <= TARGET
        misses += not ok
        print(f"{'PASS' if ok else 'MISS'}  {r['model']}: int8 .tflite latency × float .tflite (1 thread, CPU clock): {r['cpu_ratio']:.3f} "
              f"(target ≤ {TARGET:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "added_time": extra}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
