"""Models that are not ONNX yet, converted to ONNX before ``compress`` runs.

=============================  ===============================================================
``model.onnx``                 used as is (``--input-shape`` fixes symbolic dims in a copy)
``nets.py:build`` (``pkg.m:f``)  a PyTorch factory + ``--weights`` (state_dict) + ``--input-shape``
``model.pt2``                  a ``torch.export`` ExportedProgram
``saved_model_dir/``           a TensorFlow SavedModel (converted with tf2onnx)
``model.keras`` / ``.h5``       a Keras file (converted with tf2onnx)
``pipe.joblib`` / ``.pkl``      a fitted scikit-learn Pipeline (skl2onnx, onnxmltools), with ``data``: its table
``pipe.skops``                 the same, loaded with skops' trusted-type check
=============================  ===============================================================

:func:`imported` yields the ONNX file to compress (inside a temporary directory that lives as
long as the ``with`` block) and the path the default output directory is named after.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import InputError
from edgekit.reference import OriginCheck
from edgekit.tabular.load import SKLEARN_SUFFIXES

__all__ = ["ImportedModel", "detect_kind", "imported", "parse_input_shapes"]

KINDS = ("onnx", "torch_factory", "pt2", "saved_model", "keras", "sklearn")


@dataclass(frozen=True)
class ImportedModel:
    """The ONNX model to compress, and what it came from."""

    path: Path  # the .onnx file
    kind: str  # one of KINDS
    origin: str  # the model argument as given
    base: Path  # default outputs are named after this: <base>.int8/
    check: OriginCheck | None = None  # what every artifact is also checked against (a scikit-learn pipeline)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --input-shape by input name, for generated inputs

    @property
    def converted(self) -> bool:
        return self.kind != "onnx" or self.path != Path(self.origin)

    def describe(self, weights: Path | None = None) -> dict | None:
        """For the manifest's ``source.origin``: the model the compressed ONNX was exported from (None: it is the input)."""
        if not self.converted:
            return None
        from device_agent.contract.manifest import file_sha256

        p = Path(self.origin)
        d: dict = {"kind": self.kind, "file": p.name if p.exists() else self.origin}
        if p.is_file():
            d["sha256"] = file_sha256(p)
        if weights is not None:
            d["weights"] = {"file": weights.name, "sha256": file_sha256(weights)}
        return d


def detect_kind(model: str) -> str:
    """What ``model`` (a CLI argument) is: a file by suffix, a SavedModel directory, or a ``module:factory``."""
    p = Path(model)
    if p.is_dir():
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise InputError(f"{p} is a directory without saved_model.pb; pass a SavedModel directory or a model file")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "pt2"
    if suffix in (".keras", ".h5"):
        return "keras"
    if suffix in SKLEARN_SUFFIXES:
        return "sklearn"
    if re.fullmatch(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*", model) and not p.exists():
        return "torch_factory"
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise InputError(f"{p.name} holds weights, not a model: pass the code that builds the model and the weights, "
                         f"e.g. nets.py:build_net --weights {p.name} --input-shape 1,3,224,224")
    if suffix in (".tflite", ".ort"):
        raise InputError(f"{p.name} is already an edge artifact; compress the model it was made from (.onnx, PyTorch or TensorFlow)")
    if not p.exists():
        raise InputError(f"model file not found: {p}")
    return "onnx"  # unknown suffix: let the ONNX loader say what it is


def parse_input_shapes(values: tuple[str, ...] | list[str]) -> dict[str | None, tuple[int, ...]]:
    """``("1,3,224,224",)`` → {None: (1, 3, 224, 224)}; ``("image:1,3,224,224", "mask:1,1,224,224")`` → by name."""
    out: dict[str | None, tuple[int, ...]] = {}
    for v in values:
        name, _, dims = v.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InputError(f"--input-shape {v!r} is not a shape; write 1,3,224,224 or NAME:1,3,224,224") from None
        if not shape or any(d <= 0 for d in shape):
            raise InputError(f"--input-shape {v!r} needs positive sizes, e.g. 1,3,224,224")
        key = name or None
        if key in out:
            raise InputError(f"--input-shape is given twice for {name or 'the input'}")
        out[key] = shape
    if None in out and len(out) > 1:
        raise InputError("with several --input-shape values, name each input: NAME:1,3,224,224")
    return out


@contextlib.contextmanager
def imported(
    model: str | Path,
    *,
    weights: Path | None = None,
    input_shapes: dict[str | None, tuple[int, ...]] | None = None,
    data: Path | None = None,
    say: Callable[[str], None] = lambda m: None,
    progress: Callable[[str, float], None] = lambda m, f: None,
) -> Iterator[ImportedModel]:
    """Yield the ONNX model for ``model``, converting PyTorch/TensorFlow/scikit-learn (``data``: its table) inputs in a temporary directory."""
    text = str(model)
    kind = detect_kind(text)
    shapes = input_shapes or {}
    if weights is not None and kind != "torch_factory":
        raise InputError(f"--weights applies to a PyTorch module:factory; {Path(text).name} carries its own weights")
    if kind == "onnx" and not shapes:
        yield ImportedModel(Path(text), kind, text, Path(text))
        return
    with tempfile.TemporaryDirectory(prefix="edgekit.import.") as tmp:
        if kind == "torch_factory":
            from edgekit.importers.pytorch import export_factory

            factory = text.rpartition(":")[2]
            out = Path(tmp) / f"{factory}.onnx"
            say(f"exporting {text} to ONNX (torch.onnx)")
            export_factory(text, out, weights=weights, input_shapes=shapes, say=say)
            yield ImportedModel(out, kind, text, Path(factory))
            return
        p = Path(text)
        stem = p.name if kind == "saved_model" else p.stem
        out = Path(tmp) / f"{stem}.onnx"
        if kind == "sklearn":
            from edgekit.importers.sklearn import export_sklearn

            if shapes:
                raise InputError(f"{p.name} takes one input per column; drop --input-shape")
            check = export_sklearn(p, out, data=data, say=say)
            yield ImportedModel(out, kind, text, p.with_name(stem), check)
            return
        if kind == "pt2":
            from edgekit.importers.pytorch import export_pt2

            if shapes:
                raise InputError(f"{p.name} fixes its input shapes at torch.export time; drop --input-shape")
            say(f"exporting {p.name} to ONNX (torch.onnx, dynamo)")
            export_pt2(p, out, say=say)
        elif kind in ("saved_model", "keras"):
            from edgekit.importers.tfmodel import export_tf

            say(f"converting {p.name} to ONNX (tf2onnx)")
            export_tf(p, kind, out, input_shapes=shapes, progress=progress)
        else:
            yield _onnx_with_shapes(p, out, shapes, text, say)
            return
        yield ImportedModel(out, kind, text, p.with_name(stem))


def _onnx_with_shapes(p: Path, out: Path, shapes: dict[str | None, tuple[int, ...]], text: str,
                      say: Callable[[str], None]) -> ImportedModel:
    """An ONNX model with --input-shape sizes written into a copy (``out``), or as it is when onnxruntime refuses them."""
    from edgekit.importers.onnx_shapes import fix_input_shapes

    fixed = fix_input_shapes(p, out, shapes)
    sizes = ", ".join(f"{k} {list(v)}" for k, v in fixed.shapes.items())
    if not fixed.written:
        say(f"input shapes kept symbolic: onnxruntime does not load {p.name} with {sizes} ({fixed.why_not}); "
            "generated inputs take these sizes")
        return ImportedModel(p, "onnx", text, p.with_name(p.stem), input_shapes=fixed.shapes)
    say(f"input shapes fixed to {sizes}")
    return ImportedModel(out, "onnx", text, p.with_name(p.stem), input_shapes=fixed.shapes)
