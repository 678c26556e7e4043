"""``make demo``: the whole story on one machine, each stage one clear line saying what happened and where.

    python -m edgekit.demo [--out demo-out]

Stages: train a small CNN on scikit-learn's digits → compress it to int8 (.onnx + .ort, with the
measured candidate search) → print the comparison table and the manifest summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def stage(n: int, text: str) -> None:
    print(f"[{n}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="edgekit end-to-end demo")
    ap.add_argument("--out", default="demo-out", type=Path)
    args = ap.parse_args(argv)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.monotonic()

    from edgekit.examples.digits import train_digits

    paths = train_digits(out / "model")
    stage(1, f"trained a digits CNN on scikit-learn's bundled digits -> {paths['model']} (+ calib/eval data beside it)")

    from rich.console import Console

    from device_agent.manifest import load_manifest
    from edgekit.compress import compress
    from edgekit.pipeline import StepSpec
    from edgekit.report import render_compress_table

    formats = ("onnx", "ort", "tflite") if _has_tflite() else ("onnx", "ort")
    result = compress(paths["model"], [StepSpec("int8", {"search_time": 120})], data=paths["eval"], output=out / "v1",
                      formats=formats, version="1.0.0", data_desc="scikit-learn digits, 30% held-out split with labels")
    arts = ", ".join(a.file for a in result.artifacts)
    stage(2, f"compressed to int8 ({arts}) with manifest and report -> {result.output}/")
    render_compress_table(result, Console(width=150))
    m = load_manifest(result.output, verify_files=True)
    stage(3, f"manifest {result.output / 'edgekit.json'}: {m.name} {m.version}, {len(m.artifacts)} artifacts verified by sha256, "
             f"{len(m.features)} drift feature(s), {len(m.raw['selftest']['vectors'])} self-test vectors")
    stage(4, f"done in {time.monotonic() - t0:.0f} s; everything is under {out}/")
    return 0


def _has_tflite() -> bool:
    import importlib.util

    from edgekit.export import EXPORTERS

    return "tflite" in EXPORTERS and importlib.util.find_spec("edgekit.export.tflite") is not None and \
        importlib.util.find_spec("tensorflow") is not None


if __name__ == "__main__":
    sys.exit(main())
