"""The baked preprocessing checked against its Pillow reference, as part of every artifact's checks.

Two measures (:class:`PillowReference` is an :class:`~edgekit.reference.OriginCheck`):

- the preprocessing alone: the baked ops' output against :func:`~edgekit.preprocess.pillow.reference_input`
  on every image, in pixel levels (0..255 before scaling). Measured on photos: the fixed-size
  graph (Pillow's own tables) is exact for nearest and within one level for bilinear/bicubic (the
  last bit of a 22-bit fixed-point sum); the any-size graph (ONNX Resize, antialias) is within one
  level for bilinear/bicubic; any-size nearest can pick a neighbouring row or column where Pillow's
  accumulated position lands exactly on a pixel edge. :data:`MAX_LEVELS` holds the graph to that.
- each artifact on the evaluation images (raw uint8) against the float network fed by Pillow:
  top-1 agreement ≥ :data:`MIN_AGREEMENT` % for a classifier, output cosine ≥ :data:`MIN_COSINE`;
  enforced on float artifacts (int8 ones are judged by the int8 search's accuracy bound and recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from device_agent.runtime import OrtBackend
from edgekit.errors import ExportError
from edgekit.preprocess.bake import Baked
from edgekit.preprocess.pillow import IMAGE_SUFFIXES, load_rgb, reference_input

__all__ = ["MAX_LEVELS", "MIN_AGREEMENT", "MIN_COSINE", "PillowReference", "native_images"]

#: the baked ops may differ from Pillow by this many pixel levels (bilinear/bicubic rounding; see the module doc)
MAX_LEVELS = 1.0
MIN_AGREEMENT = 99.0
MIN_COSINE = 0.999
#: native-size photos the any-size graph is measured on, at most
NATIVE_SAMPLES = 16
_ENFORCED = ("fp32", "fp16")


def native_images(folder: Path | None, limit: int = NATIVE_SAMPLES) -> list[np.ndarray]:
    """Up to ``limit`` images of an image folder at their own size (uint8 RGB), for the any-size graph."""
    if folder is None or not Path(folder).is_dir():
        return []
    files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    return [load_rgb(f) for f in files[:limit]]


class PillowReference:
    """The float network fed by the Python (Pillow) preprocessing: what the baked artifacts must reproduce."""

    def __init__(self, network: Path, baked: Baked, *, classifier: bool, first_output: str, natives: list[np.ndarray],
                 threads: int = 1) -> None:
        self.against = f"Pillow preprocessing + {network.name} (fp32)"
        self.baked = baked
        self.classifier = classifier
        self.first_output = first_output
        self.natives = natives
        self._network = OrtBackend(network, threads=threads)
        self._threads = threads

    def expected(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = feeds[self.baked.raw_input.name]
        x = np.stack([reference_input(r, self.baked.spec) for r in raw]).astype(self.baked.model_input.dtype)
        return self._network.run({self.baked.model_input.name: x})

    def judge(self, expected: dict[str, np.ndarray], got: dict[str, np.ndarray], *, precision: str) -> dict[str, Any]:
        err = max(float(np.abs(expected[k].astype(np.float64) - got[k].astype(np.float64)).max(initial=0.0)) for k in expected)
        cos = min(_cosine(expected[k], got[k]) for k in expected)
        agreement = None
        if self.classifier:
            agreement = float((expected[self.first_output].argmax(1) == got[self.first_output].argmax(1)).mean() * 100)
        enforced = precision in _ENFORCED
        ok = not enforced or (cos >= MIN_COSINE and (agreement is None or agreement >= MIN_AGREEMENT))
        return {"against": self.against, "max_abs_error": float(f"{err:.6g}"), "cosine": round(cos, 6), "agreement": agreement,
                "min_agreement": MIN_AGREEMENT if self.classifier else None, "min_cosine": MIN_COSINE, "enforced": enforced, "ok": ok}

    def manifest_sections(self, data: Any) -> dict[str, Any]:
        """The manifest's ``preprocessing`` section, with the preprocessing's own parity measured on the data's images."""
        raws = list(data.inputs[self.baked.raw_input.name][:NATIVE_SAMPLES]) if data is not None else []
        measured = self.measure(raws if self.baked.spec.raw_size is not None else raws + self.natives)
        return {"preprocessing": self.baked.record() | {"parity": measured}}

    def measure(self, raws: list[np.ndarray]) -> dict[str, Any]:
        """The baked ops against Pillow, in pixel levels, image by image (each at its own size when the graph takes any)."""
        import onnxruntime as ort

        if not raws:
            return {"images": 0}
        sess = ort.InferenceSession(self.baked.preprocess.SerializeToString(), providers=["CPUExecutionProvider"])
        spec, worst, total, count = self.baked.spec, 0.0, 0.0, 0
        step = np.array(spec.std, np.float64) / spec.scale  # one pixel level in the network's units, per channel
        for raw in raws:
            got = sess.run(None, {self.baked.raw_input.name: raw[None]})[0][0]
            want = reference_input(raw, spec)
            axis = 0 if spec.layout == "NCHW" else -1
            shape = [1, 1, 1]
            shape[axis] = len(step)
            levels = np.abs(got.astype(np.float64) - want) * step.reshape(shape)
            worst, total, count = max(worst, float(levels.max())), total + float(levels.sum()), count + levels.size
        record = {"images": len(raws), "max_levels": round(worst, 3), "mean_levels": float(f"{total / count:.3g}"), "allowed_levels": MAX_LEVELS}
        if worst > MAX_LEVELS + 1e-3 and not (spec.interpolation == "nearest" and spec.raw_size is None):
            raise ExportError(f"the baked preprocessing differs from its Pillow reference by {worst:.2f} pixel levels (allowed "
                              f"{MAX_LEVELS}); report it with the spec {spec.to_dict()}")
        return record


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / denom) if denom else float(not x.any() and not y.any())
