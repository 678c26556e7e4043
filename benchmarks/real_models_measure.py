"""Run artifacts as a user opens them: a plain ``onnxruntime.InferenceSession(path)`` (default SessionOptions but
intra_op_num_threads=1) for .onnx/.ort, a plain ``ai_edge_litert`` Interpreter(model_path, num_threads=1) for .tflite.

No edgekit code is imported: edgekit's manifest may carry session settings (``session_config``) that make an
artifact fast only inside edgekit; a user's runtime never reads them, so neither does this.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Runner", "judge", "load_runner", "round_robin", "sample"]


def batch_axes(src: Path) -> dict[str, int | None]:
    """Each source input's batch axis: its first unknown dim (silero's state [2, N, 128] -> 1); None for a scalar."""
    import onnx

    g = onnx.load(str(src), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    axes: dict[str, int | None] = {}
    for i in g.input:
        if i.name in inits:
            continue
        dims = i.type.tensor_type.shape.dim
        unknown = [k for k, d in enumerate(dims) if not d.HasField("dim_value") or d.dim_value <= 0]
        axes[i.name] = None if not dims else (unknown[0] if unknown else 0)
    return axes


def sample(arrays: dict[str, np.ndarray], axes: dict[str, int | None], i: int) -> dict[str, np.ndarray]:
    """Sample ``i`` of a --data file as a batch of one (a scalar input gets its i-th value, 0-d)."""
    out = {}
    for name, arr in arrays.items():
        ax = axes.get(name, 0)
        out[name] = np.asarray(arr[i]) if ax is None else np.take(arr, [i], axis=ax)
    return out


class Runner:
    """One artifact, opened the plain way; ``run(feeds)`` returns {output name: array} in the source layout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tflite = path.suffix == ".tflite"
        if self.tflite:
            from ai_edge_litert.interpreter import Interpreter

            self.interp = Interpreter(model_path=str(path), num_threads=1)
            self.interp.allocate_tensors()
            self.ins = self.interp.get_input_details()
            self.outs = self.interp.get_output_details()
        else:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._shapes: dict[str, tuple] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.tflite:
            names = [o.name for o in self.sess.get_outputs()]
            return dict(zip(names, self.sess.run(None, feeds), strict=True))
        for d in self.ins:
            x = _tflite_input(feeds, d["name"], tuple(d["shape"]), len(self.ins))
            if self._shapes.get(d["name"]) != x.shape:
                self.interp.resize_tensor_input(d["index"], list(x.shape))
                self.interp.allocate_tensors()
                self._shapes[d["name"]] = x.shape
            self.interp.set_tensor(d["index"], x.astype(d["dtype"]))
        self.interp.invoke()
        return {_plain(d["name"]): self.interp.get_tensor(d["index"]) for d in self.outs}


def _plain(name: str) -> str:
    """TFLite tensor names carry the signature's decoration ("serving_default_x:0"); keep the ONNX name."""
    name = name.removeprefix("serving_default_")
    return name[:-2] if name.endswith(":0") else name


def _tflite_input(feeds: dict[str, np.ndarray], name: str, shape: tuple, count: int) -> np.ndarray:
    plain = _plain(name)
    match = [k for k in feeds if k == plain or k.replace("/", "_").replace(":", "_") == plain]
    if not match and count == 1:
        match = list(feeds)
    if not match:
        raise KeyError(f"the .tflite input {name!r} matches no source input ({', '.join(feeds)})")
    x = feeds[match[0]]
    if x.ndim == 4 and tuple(shape[1:]) != x.shape[1:] and tuple(shape[1:]) == (x.shape[2], x.shape[3], x.shape[1]):
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # onnx2tf's NHWC
    return x


def load_runner(path: Path) -> Runner | str:
    """A runner, or the one-line reason the plain runtime cannot open the artifact."""
    try:
        return Runner(path)
    except Exception as e:  # noqa: BLE001 - any runtime refusal is a result to report
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def pick(outputs: dict[str, np.ndarray], name: str, ref: np.ndarray) -> np.ndarray:
    """The judged output of an artifact, by name, else the one of the reference's size, back in the source layout."""
    x = outputs.get(name)
    if x is None:
        same = [v for v in outputs.values() if v.size == ref.size]
        if not same:
            raise KeyError(f"no output named {name!r} or of {ref.size} values among {list(outputs)}")
        x = same[0]
    if x.shape != ref.shape and x.ndim == 4 and x.shape == (ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]):
        x = x.transpose(0, 3, 1, 2)
    return x.reshape(ref.shape)


def judge(how: str, ref: np.ndarray, new: np.ndarray) -> float:
    """Agreement with the fp32 outputs, in percent (see zoo.ZooModel.judge)."""
    ref, new = ref.astype(np.float64), new.astype(np.float64)
    if how == "top1":
        return float((ref.argmax(-1) == new.argmax(-1)).mean() * 100)
    if how == "mask":
        a, b = ref > 0.3, new > 0.3
        union = (a | b).sum()
        return float((a & b).sum() / union * 100) if union else 100.0
    if how == "close":
        return float((np.abs(ref - new) <= 0.1).mean() * 100)
    if how == "binary":
        return float(((ref > 0.5) == (new > 0.5)).mean() * 100)
    if how == "cosine":
        r, n = ref.reshape(len(ref), -1), new.reshape(len(new), -1)
        cos = (r * n).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(n, axis=1), 1e-12)
        return float(cos.mean() * 100)
    raise ValueError(f"unknown judge {how!r}; known: top1, mask, close, binary, cosine")


def round_robin(runners: dict[str, Runner], feeds: dict[str, np.ndarray], *, runs: int, budget_s: float,
                warmup: int = 5) -> dict[str, float | str]:
    """Median latency (ms) of each runner on one sample, timed one call each per round so all share the load."""
    result: dict[str, float | str] = {}
    live: dict[str, Runner] = {}
    for tag, r in runners.items():
        try:
            for _ in range(warmup):
                r.run(feeds)
            live[tag] = r
        except Exception as e:  # noqa: BLE001 - an artifact that does not run is a result
            result[tag] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    times: dict[str, list[float]] = {t: [] for t in live}
    deadline = time.perf_counter() + budget_s
    gc.disable()
    try:
        for i in range(runs):
            for tag, r in live.items():
                t0 = time.perf_counter()
                r.run(feeds)
                times[tag].append(time.perf_counter() - t0)
            if i >= 10 and time.perf_counter() > deadline:
                break
    finally:
        gc.enable()
    result.update({t: float(np.median(v) * 1e3) for t, v in times.items()})
    return result


def outputs_over(runner: Runner, arrays: dict[str, np.ndarray], axes: dict[str, int | None], name: str,
                 ref: list[np.ndarray] | None) -> list[np.ndarray]:
    """The judged output for every sample (one call per sample, as a device serves requests)."""
    n = len(next(v for k, v in arrays.items() if axes.get(k) == 0))
    got: list[Any] = []
    for i in range(n):
        out = runner.run(sample(arrays, axes, i))
        got.append(out[name] if ref is None else pick(out, name, ref[i]))
    return got
