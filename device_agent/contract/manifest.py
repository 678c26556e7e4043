"""The model manifest (``edgekit.json``): one schema, one reader, used by edgekit and the agent.

The manifest is the model card of an output directory. ``edgekit`` writes it; the device agent
reads it (stdlib + numpy only, so it installs on a Raspberry Pi without onnx or pydantic).

Schema versions 1 and 2 (2 adds ``signature.fields`` and string tensors: :mod:`device_agent.contract.fields`)::

    schema            "edgekit.manifest"
    schema_version    1 or 2
    name, version     model name and version (version compares with :func:`version_key`)
    created_at        ISO-8601 UTC
    source            {file, sha256, size_bytes, format, origin?}  -- the ONNX compressed; origin: the PyTorch /
                      TensorFlow model it was exported from {kind, file, sha256?, weights?}
    task              "classification" | "generic"
    labels            optional list of class names (classification)
    signature         {inputs: [TensorSpec], outputs: [TensorSpec], fields?: [FieldSpec]}  -- the source layout
    preprocessing     optional {kind: "image", raw_input, model_input, spec, any_size, node_prefix, parity}: the image
                      preprocessing baked into every artifact (they take raw_input: uint8 RGB [N, H, W, 3])
    artifacts         [{file, format, precision, size_bytes, sha256, runtime,
                        inputs: [TensorSpec], outputs: [TensorSpec]}]  -- each in its own layout
    steps             [{name, params, result}]
    tools             {package: version}
    data              {description, samples, file, sha256, labelled}
    metrics           {"source": {...}, "<artifact file>": {...}}
    drift_profile     {samples, features: [FeatureProfile], categories?: [{input, name, values, counts, other, null_share}]}
    selftest          {vectors: [{inputs: {name: Tensor}, expected: {artifact file: {name: Tensor}}}],
                       tolerance: {artifact file: {atol, rtol, min_agreement}}}
    recipe            optional resolved recipe (list of steps) for reproduction

A TensorSpec is ``{name, dtype, shape, layout, perm}`` where ``shape`` holds ints or strings
(symbolic dims), ``layout`` is e.g. "NCHW"/"NHWC"/null and ``perm`` (artifact specs only) is the
axis permutation that turns a tensor in the *source* layout into this artifact's layout
(``np.transpose(x, perm)``); null means identical layout. A Tensor (self-test data) is
``{dtype, shape, b64}`` with little-endian raw bytes, or ``{dtype: "string", shape, values}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.fields import FieldSpec, schema_version_for
from device_agent.contract.types import Array, Feeds, JsonDict

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SIGNATURE_NAME",
    "Artifact",
    "FeatureProfile",
    "FieldSpec",
    "Manifest",
    "ManifestError",
    "TensorSpec",
    "decode_tensor",
    "encode_tensor",
    "file_sha256",
    "load_manifest",
    "schema_version_for",
    "version_key",
]

MANIFEST_NAME = "edgekit.json"
SIGNATURE_NAME = "edgekit.json.sig"
SCHEMA = "edgekit.manifest"
SCHEMA_VERSION = 2  # the newest this reader knows; it reads every version in SCHEMA_VERSIONS
SCHEMA_VERSIONS = (1, 2)
FORMATS = ("onnx", "ort", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool", "string")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or does not follow the schema."""


def _nonfinite_path(doc: object, path: str = "") -> str:
    """Where the first NaN/±inf in a JSON-like document is (``metrics.mlp.onnx.latency_ratio``), or ``"a value"``."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return path or "a value"
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, (list, tuple)) else ()
    for k, v in items:
        found = _nonfinite_path(v, f"{path}.{k}" if path and isinstance(k, str) else f"{path}[{k}]" if path else str(k))
        if found != "a value":
            return found
    return "a value"


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for model versions: numeric parts compare as numbers ("1.10" > "1.9")."""
    parts = re.split(r"[.\-+_]", version)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def encode_tensor(array: Array) -> JsonDict:
    if array.dtype.kind in "OUS":  # strings (a table's categorical columns, a classifier's labels)
        return {"dtype": "string", "shape": list(array.shape), "values": [str(v) for v in array.reshape(-1)]}
    a = np.ascontiguousarray(array)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(le.tobytes()).decode()}


def decode_tensor(obj: Mapping[str, Any]) -> Array:
    try:
        if obj["dtype"] == "string":
            strings: Array = np.array([str(v) for v in obj["values"]], dtype=object).reshape(obj["shape"])
            return strings
        dtype = np.dtype(obj["dtype"]).newbyteorder("<")
        raw = base64.b64decode(obj["b64"])
        tensor: Array = np.frombuffer(raw, dtype=dtype).reshape(obj["shape"]).astype(dtype.newbyteorder("="))
        return tensor
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"self-test tensor is malformed: {e}") from e


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str | None, ...]
    layout: str | None = None
    perm: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, d: JsonDict, where: str) -> TensorSpec:
        _require(d, ("name", "dtype", "shape"), where)
        if d["dtype"] not in DTYPES:
            raise ManifestError(f"{where}.dtype is {d['dtype']!r}; allowed: {', '.join(DTYPES)}")
        if not isinstance(d["shape"], list):
            raise ManifestError(f"{where}.shape must be a list, got {type(d['shape']).__name__}")
        perm = d.get("perm")
        if perm is not None and sorted(perm) != list(range(len(d["shape"]))):
            raise ManifestError(f"{where}.perm {perm} is not a permutation of {len(d['shape'])} axes")
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d.get("layout"), tuple(perm) if perm else None)

    def to_dict(self) -> JsonDict:
        out: JsonDict = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "layout": self.layout}
        if self.perm is not None:
            out["perm"] = list(self.perm)
        return out


@dataclass(frozen=True)
class Artifact:
    file: str
    format: str
    precision: str
    size_bytes: int
    sha256: str
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    extra: JsonDict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: JsonDict, where: str) -> Artifact:
        _require(d, ("file", "format", "precision", "size_bytes", "sha256", "inputs", "outputs"), where)
        if d["format"] not in FORMATS:
            raise ManifestError(f"{where}.format is {d['format']!r}; allowed: {', '.join(FORMATS)}")
        if d["precision"] not in PRECISIONS:
            raise ManifestError(f"{where}.precision is {d['precision']!r}; allowed: {', '.join(PRECISIONS)}")
        _safe_name(d["file"], f"{where}.file")
        if not re.fullmatch(r"[0-9a-f]{64}", str(d["sha256"])):
            raise ManifestError(f"{where}.sha256 is not a hex sha256")
        return cls(
            file=d["file"],
            format=d["format"],
            precision=d["precision"],
            size_bytes=int(d["size_bytes"]),
            sha256=d["sha256"],
            runtime=d.get("runtime") or ("litert" if d["format"] == "tflite" else "onnxruntime"),
            inputs=tuple(TensorSpec.from_dict(t, f"{where}.inputs[{i}]") for i, t in enumerate(d["inputs"])),
            outputs=tuple(TensorSpec.from_dict(t, f"{where}.outputs[{i}]") for i, t in enumerate(d["outputs"])),
            extra=dict(d.get("extra") or {}),
        )

    def to_dict(self) -> JsonDict:
        return {
            "file": self.file,
            "format": self.format,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "runtime": self.runtime,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "extra": self.extra,
        }


@dataclass(frozen=True)
class FeatureProfile:
    """Reference distribution of one input feature (a column of a 2-D input, a channel of an image).

    ``index`` addresses the feature along ``axis`` of input ``input`` in the source layout.
    ``edges`` are quantile bin edges (len = bins + 1); ``counts`` the reference counts per bin.
    Values below ``edges[0]`` / above ``edges[-1]`` are the under/overflow on the device.
    """

    input: str
    axis: int
    index: int
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    min: float
    max: float
    mean: float
    std: float
    nan_share: float
    values: tuple[str, ...] | None = None  # a categorical column's categories (bins 0..k-1; the overflow is "unseen")

    @classmethod
    def from_dict(cls, d: JsonDict, where: str) -> FeatureProfile:
        _require(d, ("input", "axis", "index", "edges", "counts"), where)
        if len(d["edges"]) != len(d["counts"]) + 1:
            raise ManifestError(f"{where}: {len(d['edges'])} edges for {len(d['counts'])} counts (need counts + 1)")
        return cls(
            input=d["input"],
            axis=int(d["axis"]),
            index=int(d["index"]),
            name=d.get("name") or f"{d['input']}[{d['index']}]",
            edges=tuple(float(e) for e in d["edges"]),
            counts=tuple(int(c) for c in d["counts"]),
            min=float(d.get("min", 0.0)),
            max=float(d.get("max", 0.0)),
            mean=float(d.get("mean", 0.0)),
            std=float(d.get("std", 0.0)),
            nan_share=float(d.get("nan_share", 0.0)),
            values=tuple(str(v) for v in d["values"]) if d.get("values") is not None else None,
        )

    def to_dict(self) -> JsonDict:
        return {
            "input": self.input,
            "axis": self.axis,
            "index": self.index,
            "name": self.name,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "nan_share": self.nan_share,
        } | ({"values": list(self.values)} if self.values is not None else {})


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``raw`` keeps the full document (unknown optional sections included)."""

    name: str
    version: str
    created_at: str
    task: str
    labels: tuple[str, ...] | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    artifacts: tuple[Artifact, ...]
    features: tuple[FeatureProfile, ...]
    raw: JsonDict
    fields: tuple[FieldSpec, ...] = ()

    @property
    def metrics(self) -> JsonDict:
        return self.raw.get("metrics") or {}

    def artifact(self, file: str) -> Artifact:
        for a in self.artifacts:
            if a.file == file:
                return a
        raise ManifestError(f"manifest has no artifact {file!r}; it has: {', '.join(a.file for a in self.artifacts)}")

    def selftest_vectors(self, artifact_file: str) -> list[tuple[Feeds, Feeds]]:
        """(inputs in source layout, expected outputs in source layout) for one artifact."""
        out = []
        for v in (self.raw.get("selftest") or {}).get("vectors", []):
            expected = (v.get("expected") or {}).get(artifact_file)
            if expected is None:
                continue
            inputs = {k: decode_tensor(t) for k, t in v["inputs"].items()}
            out.append((inputs, {k: decode_tensor(t) for k, t in expected.items()}))
        return out

    def selftest_tolerance(self, artifact_file: str) -> dict[str, float]:
        tol = (self.raw.get("selftest") or {}).get("tolerance", {}).get(artifact_file) or {}
        return {"atol": float(tol.get("atol", 1e-3)), "rtol": float(tol.get("rtol", 1e-3))}

    def to_json(self) -> str:
        """The manifest as strict JSON. NaN and Infinity are not JSON (other readers refuse them): ManifestError names the field."""
        try:
            return json.dumps(self.raw, indent=2, sort_keys=False, allow_nan=False) + "\n"
        except ValueError:
            raise ManifestError(f"{MANIFEST_NAME} of {self.name} {self.version}: {_nonfinite_path(self.raw)} is not a finite number; NaN and Infinity are not JSON, "
                                "and a manifest that holds one cannot be read by strict consumers") from None

    @classmethod
    def from_dict(cls, d: JsonDict, where: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: the manifest must be a JSON object")
        if d.get("schema") != SCHEMA:
            raise ManifestError(f"{where}: not an edgekit manifest (schema is {d.get('schema')!r}, expected {SCHEMA!r})")
        sv = d.get("schema_version")
        if sv not in SCHEMA_VERSIONS:
            raise ManifestError(
                f"{where}: schema_version {sv!r} is not supported (this reader knows {', '.join(map(str, SCHEMA_VERSIONS))}); "
                "upgrade the agent or re-create the model with a matching edgekit"
            )
        _require(d, ("name", "version", "created_at", "signature", "artifacts"), where)
        _require(d["signature"], ("inputs", "outputs"), f"{where}: signature")
        task = d.get("task", "generic")
        if task not in ("classification", "generic"):
            raise ManifestError(f"{where}: task is {task!r}; allowed: classification, generic")
        arts = tuple(Artifact.from_dict(a, f"artifacts[{i}]") for i, a in enumerate(d["artifacts"]))
        if len({a.file for a in arts}) != len(arts):
            raise ManifestError(f"{where}: duplicate artifact file names")
        profile = d.get("drift_profile") or {}
        labels = d.get("labels")
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            created_at=str(d["created_at"]),
            task=task,
            labels=tuple(str(x) for x in labels) if labels else None,
            inputs=tuple(TensorSpec.from_dict(t, f"signature.inputs[{i}]") for i, t in enumerate(d["signature"]["inputs"])),
            outputs=tuple(TensorSpec.from_dict(t, f"signature.outputs[{i}]") for i, t in enumerate(d["signature"]["outputs"])),
            artifacts=arts,
            features=tuple(FeatureProfile.from_dict(f, f"drift_profile.features[{i}]") for i, f in enumerate(profile.get("features", []))),
            raw=d,
            fields=tuple(FieldSpec.from_dict(f, f"signature.fields[{i}]", ManifestError) for i, f in enumerate(d["signature"].get("fields") or [])),
        )


def load_manifest(path: str | Path, *, verify_files: bool = False) -> Manifest:
    """Read and validate ``edgekit.json`` (``path`` may be the file or its directory).

    With ``verify_files`` every artifact's size and sha256 are checked against the files on disk.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {p}: is this an edgekit output directory?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{p} is not readable JSON: {e}") from None
    m = Manifest.from_dict(doc, str(p))
    if verify_files:
        for a in m.artifacts:
            f = p.parent / a.file
            if not f.is_file():
                raise ManifestError(f"artifact {a.file} listed in {p} is missing")
            size = f.stat().st_size
            if size != a.size_bytes:
                raise ManifestError(f"artifact {a.file} is {size} bytes; the manifest says {a.size_bytes}")
            if file_sha256(f) != a.sha256:
                raise ManifestError(f"artifact {a.file} does not match its sha256 in the manifest (modified or corrupt)")
    return m


def _require(d: object, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(d, dict):
        raise ManifestError(f"{where} must be an object")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ManifestError(f"{where} is missing {', '.join(missing)}")


def _safe_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ManifestError(f"{where} {name!r} must be a plain file name (no directories, no '..')")
