"""Calibration / evaluation data: ``.npz``, ``.npy``, a folder of images, or generated inputs.

All arrays are kept in the model's *source* layout with the sample axis first. Shapes and dtypes
are checked against the model's inputs before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import TensorSpec, file_sha256
from edgekit.errors import DataError
from edgekit.preprocess.pillow import IMAGE_SUFFIXES
from edgekit.preprocess.spec import ImageSpec
from edgekit.tabular.table import TABLE_SUFFIXES

__all__ = ["Dataset", "ImageSpec", "generate", "load_data"]

LABEL_KEYS = ("labels", "label", "y")


@dataclass
class Dataset:
    """Named input arrays (sample axis first) and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    description: str = ""
    file: str | None = None
    sha256: str | None = None
    generated: bool = False
    class_names: list[str] | None = field(default=None)

    @property
    def n(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, n: int, *, seed: int = 0) -> Dataset:
        """At most ``n`` samples, drawn evenly (deterministic)."""
        if n >= self.n:
            return self
        idx = np.sort(np.random.default_rng(seed).choice(self.n, size=n, replace=False))
        return Dataset(
            {k: v[idx] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[idx],
            self.description, self.file, self.sha256, self.generated, self.class_names,
        )

    def batches(self, batch: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, self.n, batch):
            yield {k: v[i : i + batch] for k, v in self.inputs.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "samples": self.n,
            "file": Path(self.file).name if self.file else None,
            "sha256": self.sha256,
            "labelled": self.labels is not None,
            "generated": self.generated,
        }


def load_data(
    path: str | Path,
    inputs: tuple[TensorSpec, ...],
    *,
    image_spec: ImageSpec | None = None,
    data_layout: str | None = None,
    description: str | None = None,
    label: str | None = None,
    classes: list[str] | None = None,
) -> Dataset:
    """Read a data file, image folder or table and check it against the model's inputs.

    ``label`` names a table's column of true labels, mapped to ``classes`` (the model's, in the order of its scores).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {p}")
    if label is not None and p.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"--label {label!r} names a table column; {p.name} is not a table (.csv, .parquet). "
                        "In a .npz the labels are the 'labels' array; in an image folder, the class sub-folders")
    if p.suffix.lower() in TABLE_SUFFIXES:
        ds = _load_table(p, inputs, label, classes)
    elif p.is_dir():
        ds = _load_images(p, inputs, image_spec or ImageSpec())
    elif p.suffix == ".npz":
        ds = _load_npz(p, inputs)
    elif p.suffix == ".npy":
        ds = _load_npy(p, inputs)
    else:
        raise DataError(f"{p.name}: unsupported data file; use .npz (arrays named after the inputs, optional 'labels'), .npy, "
                        "a folder of images, or a table (.csv, .parquet) for a model with one input per column")
    if data_layout:
        ds.inputs = {k: _to_layout(v, data_layout, k) for k, v in ds.inputs.items()}
    # a table's missing values (NaN) are the pipeline's to impute: only tensors must be finite
    table = p.suffix.lower() in TABLE_SUFFIXES
    ds.inputs = {s.name: _check(ds.inputs[s.name], s, p.name) for s in inputs if s.name in ds.inputs}
    ds.inputs = {k: v if table else _finite(v, k, p.name) for k, v in ds.inputs.items()}
    n = {len(v) for v in ds.inputs.values()}
    if len(n) > 1:
        raise DataError(f"{p.name}: inputs have different sample counts {sorted(n)}; every array needs the same first axis")
    if ds.labels is not None and len(ds.labels) != ds.n:
        raise DataError(f"{p.name}: 'labels' has {len(ds.labels)} entries for {ds.n} samples")
    if ds.n == 0:
        raise DataError(f"{p.name} holds no samples")
    ds.description = description or ds.description
    ds.file = str(p)
    if p.is_file():
        ds.sha256 = file_sha256(p)
    return ds


def _load_table(p: Path, inputs: tuple[TensorSpec, ...], label: str | None, classes: list[str] | None) -> Dataset:
    from edgekit.tabular.table import read_table, table_inputs

    table = read_table(p)
    arrays, labels, classes = table_inputs(table, inputs, label=label, classes=classes, where=p.name)
    return Dataset(arrays, labels, description=f"{p.name} ({len(table)} rows)", class_names=classes)


def _load_npz(p: Path, inputs: tuple[TensorSpec, ...]) -> Dataset:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{p.name} is not a readable .npz file: {e}") from None
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = arrays.pop(label_key) if label_key else None
    names = [s.name for s in inputs]
    if len(inputs) == 1 and names[0] not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"{p.name} has arrays {', '.join(sorted(arrays))}; the model's input is {names[0]!r}. "
                f"Name the array {names[0]!r} (labels go in 'labels')"
            )
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(
            f"{p.name} has no array for input(s) {', '.join(repr(m) for m in missing)}; it has {', '.join(sorted(arrays)) or 'none'}. "
            "Name each array after a model input"
        )
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise DataError(f"{p.name} has array(s) {', '.join(extra)} that match no model input ({', '.join(names)}) and are not 'labels'")
    if labels is not None:
        labels = _labels(labels, p.name)
    return Dataset(arrays, labels, description=f"{p.name}")


def _labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        labels = labels.argmax(axis=1)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
            return labels.astype(np.int64)
        raise DataError(f"{where}: 'labels' must be integer class ids (1-D) or one-hot (2-D); got {labels.dtype} {list(labels.shape)}")
    return labels.astype(np.int64)


def _load_npy(p: Path, inputs: tuple[TensorSpec, ...]) -> Dataset:
    if len(inputs) != 1:
        raise DataError(f"{p.name}: a .npy holds one array but the model has {len(inputs)} inputs; use a .npz named after them")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{p.name} is not a readable .npy file: {e}") from None
    return Dataset({inputs[0].name: arr}, None, description=p.name)


def _load_images(p: Path, inputs: tuple[TensorSpec, ...], spec: ImageSpec) -> Dataset:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise DataError(f"an image folder feeds a model with one 4-D image input; this model's inputs are {_fmt_inputs(inputs)}")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    # class folders: <root>/<class>/<image>; labels are the sorted folder names' indices
    classes = sorted({f.parent.name for f in files}) if all(f.parent != p for f in files) else None
    labels = np.array([classes.index(f.parent.name) for f in files], dtype=np.int64) if classes else None
    if _takes_raw(inputs[0]):
        x, desc = _raw_images(files, inputs[0], spec)
    else:
        x, desc = _model_inputs(files, inputs[0], spec)
    return Dataset({inputs[0].name: x}, labels, description=f"{len(files)} images from {p.name}/ ({desc})", class_names=classes)


def _takes_raw(s: TensorSpec) -> bool:
    """A model whose image preprocessing is baked in takes raw uint8 RGB images [N, H, W, 3]."""
    return s.dtype == "uint8" and s.shape[3] == 3


def _raw_images(files: list[Path], s: TensorSpec, spec: ImageSpec) -> tuple[np.ndarray, str]:
    """The images as a device decodes them, uint8 [N, H, W, 3]; brought to one size (the model's, or the commonest) to batch."""
    from collections import Counter

    from edgekit.preprocess.pillow import fit_raw, load_rgb

    raws = [load_rgb(f) for f in files]
    fixed = (s.shape[1], s.shape[2]) if isinstance(s.shape[1], int) and isinstance(s.shape[2], int) else None
    size = fixed or spec.raw_size or Counter(r.shape[:2] for r in raws).most_common(1)[0][0]
    resized = sum(r.shape[:2] != tuple(size) for r in raws)
    note = f"; {resized} framed to that size (centre, bilinear)" if resized else ""
    return np.stack([fit_raw(r, (int(size[0]), int(size[1]))) for r in raws]), f"raw RGB uint8, {size[0]}x{size[1]}{note}"


def _model_inputs(files: list[Path], s: TensorSpec, spec: ImageSpec) -> tuple[np.ndarray, str]:
    """The images preprocessed in Python (the spec's Pillow reference), as the network's float input."""
    from edgekit.preprocess.pillow import load_rgb, reference_input

    layout = spec.layout or ("NHWC" if isinstance(s.shape[3], int) and s.shape[3] in (1, 3) and s.shape[1] not in (1, 3) else "NCHW")
    c_axis = 1 if layout == "NCHW" else 3
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    size = spec.size or (s.shape[h_axis], s.shape[w_axis])
    if not all(isinstance(d, int) for d in size):
        raise DataError(f"input {s.name!r} has symbolic height/width {list(s.shape)}; give the image size in the preprocessing spec (size: [H, W])")
    channels = s.shape[c_axis] if isinstance(s.shape[c_axis], int) else (1 if spec.channels == "gray" else 3)
    full = spec.for_model((int(size[0]), int(size[1])), layout, int(channels))
    x = np.stack([reference_input(load_rgb(f), full, where=str(f)) for f in files]).astype(s.dtype)
    return x, (f"{layout}, {size[0]}x{size[1]}, scale {full.scale:g}, mean {[np.float32(m) for m in full.mean]}, "
               f"std {[np.float32(v) for v in full.std]}")


def _to_layout(x: np.ndarray, layout: str, name: str) -> np.ndarray:
    layout = layout.upper()
    if x.ndim != 4:
        return x
    if layout == "NHWC":  # data is NHWC, model wants NCHW
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if layout == "NCHW":
        return x
    raise DataError(f"--data-layout is {layout!r}; allowed: NCHW, NHWC")


def _check(x: np.ndarray, s: TensorSpec, where: str) -> np.ndarray:
    if s.dtype == "string":
        if x.dtype.kind not in "OUS" or x.ndim != len(s.shape):
            raise DataError(f"Input {s.name!r} expects strings {_fmt_shape(list(s.shape))}; {where} gives {x.dtype} {list(x.shape)}")
        return x.astype(object)
    want = np.dtype(s.dtype)
    shape = list(s.shape)
    given = list(x.shape)
    if not shape and len(given) == 1:
        shape = ["N"]  # a scalar input (e.g. a sample rate): one value per sample
    ok = len(given) == len(shape) and all(not isinstance(d, int) or d == g for d, g in zip(shape[1:], given[1:], strict=True))
    if not ok:
        hint = ""
        if len(given) + 1 == len(shape):
            hint = " Add the missing axis (e.g. the channel axis: x[:, None])"
        elif (len(given) == len(shape) == 4 and shape[1] in (1, 3, 4) and given[3] == shape[1]
              and sorted(given[1:]) == sorted(d for d in shape[1:] if isinstance(d, int))):
            hint = " The data looks like it is in another layout: pass --data-layout NHWC"
        raise DataError(
            f"Input {s.name!r} expects shape {_fmt_shape(shape)} ({s.dtype}); {where} gives {given} ({x.dtype}).{hint}"
        )
    if x.dtype == want:
        return x
    if np.issubdtype(want, np.floating) and (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        return x.astype(want)
    if np.issubdtype(want, np.integer) and np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(want)
        if x.size and (x.min() < info.min or x.max() > info.max):
            raise DataError(f"Input {s.name!r} is {s.dtype}; {where} has values outside its range [{info.min}, {info.max}]")
        return x.astype(want)
    if want == np.bool_ and x.dtype == np.bool_:
        return x
    raise DataError(f"Input {s.name!r} expects {s.dtype}; {where} gives {x.dtype}, which does not convert safely. Save the array as {s.dtype}")


def _finite(x: np.ndarray, name: str, where: str) -> np.ndarray:
    """``x``, or DataError naming the first NaN/±inf: calibration ranges, accuracy and the manifest's profile need finite data."""
    if not np.issubdtype(x.dtype, np.floating):
        return x
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    value = x[index]
    kind = "NaN" if np.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    raise DataError(f"Input {name!r}: {where} holds {kind} at index {list(index)} (sample {index[0]}; {int(bad.sum())} non-finite "
                    "value(s) in all); calibration and evaluation data must be finite. Drop or repair those samples, e.g. "
                    "x = x[np.isfinite(x).reshape(len(x), -1).all(axis=1)]")


def generate(inputs: tuple[TensorSpec, ...], n: int = 64, *, seed: int = 0, batch_dim: int = 1) -> Dataset:
    """Random inputs for a model without data: N(0, 1) floats, small non-negative ints.

    Used for agreement checks and drift references when the user gives no data; the manifest says so.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for s in inputs:
        dims = [n] + [d if isinstance(d, int) and d > 0 else batch_dim for d in s.shape[1:]]
        if not s.shape:
            dims = [n]
        if s.dtype == "string":  # a table's categorical column: missing everywhere (imputed, or unknown to the encoder)
            arrays[s.name] = np.full(dims, "", dtype=object)
            continue
        dt = np.dtype(s.dtype)
        if np.issubdtype(dt, np.floating):
            arrays[s.name] = rng.standard_normal(dims).astype(dt)
        elif dt == np.bool_:
            arrays[s.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            arrays[s.name] = rng.integers(0, 10, dims).astype(dt)
    return Dataset(arrays, None, description=f"{n} generated samples (standard normal; no data given)", generated=True)


def _fmt_shape(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fmt_inputs(inputs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name} {_fmt_shape(list(s.shape))}" for s in inputs)
