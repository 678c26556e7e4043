"""Large JSON tensors into arrays: the agent's parse (pysimdjson) against orjson + ``np.asarray``, in one run.

    python benchmarks/json_tensors.py              # ratios per body; --repeat N for more timings per body

What a request with a JSON tensor costs before validation: the bytes become an array. The agent's path is
``device_agent.serve.jsonbody.loads(body, tensors=True)`` (the density check, then simdjson straight into
an array); the usual path, what a hand-written server does and what the agent falls back to, is
``orjson.loads`` and ``np.asarray`` of the tensor's lists. Bodies: images as ``json.dumps`` of float32 writes
them (NCHW and channels-last), integer pixels, and a batch of flat rows. Timings alternate between the two
paths; the medians are compared. The values are checked equal first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device_agent.serve import jsontensor  # noqa: E402
from device_agent.serve.jsonbody import loads  # noqa: E402


def bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    return {
        "224x224 RGB, NCHW floats": json.dumps({"inputs": {"x": image.tolist()}}).encode(),
        "224x224 RGB, channels-last floats": json.dumps({"inputs": {"x": image.transpose(0, 2, 3, 1).tolist()}}).encode(),
        "224x224 RGB, NCHW integer pixels": json.dumps({"inputs": {"x": rng.integers(0, 256, (1, 3, 224, 224)).tolist()}}).encode(),
        "64 rows of 784 floats": json.dumps({"inputs": {"x": rng.random((64, 784), np.float32).tolist()}}).encode(),
    }


def _median_ms(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeat):
        for k, f in (fns.items() if i % 2 == 0 else list(fns.items())[::-1]):
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=30, help="timings per path and body")
    args = ap.parse_args(argv)
    if not jsontensor.available():
        raise SystemExit("pysimdjson is not installed (pip install pysimdjson): the agent would parse with orjson")
    print(f"JSON tensors into arrays, median of {args.repeat} alternating timings each")
    for name, body in bodies().items():
        def agent(body: bytes = body) -> np.ndarray:
            return np.asarray(loads(body, tensors=True)["inputs"]["x"])  # type: ignore[index]

        def usual(body: bytes = body) -> np.ndarray:
            return np.asarray(orjson.loads(body)["inputs"]["x"])

        a, u = agent(), usual()
        if not (isinstance(loads(body, tensors=True)["inputs"]["x"], np.ndarray) and a.dtype == u.dtype and np.array_equal(a, u)):  # type: ignore[index]
            raise SystemExit(f"{name}: the two paths disagree")
        ms = _median_ms({"agent": agent, "usual": usual}, args.repeat)
        print(f"  {name:36} {len(body) / 1e6:5.2f} MB   agent {ms['agent']:6.2f} ms   orjson + numpy {ms['usual']:6.2f} ms   "
              f"x{ms['usual'] / ms['agent']:.2f} faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
