"""``--input-shape`` on an ONNX model: a copy with symbolic input dims replaced by the given sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from edgekit.errors import InputError
from edgekit.onnx_model import io_specs, load_onnx

__all__ = ["FixedShapes", "fix_input_shapes"]


@dataclass(frozen=True)
class FixedShapes:
    """The sizes given per input (by name), and whether they were written into the model's copy."""

    shapes: dict[str, tuple[int, ...]]
    written: bool = True
    why_not: str = ""


def fix_input_shapes(src: Path, out: Path, shapes: dict[str | None, tuple[int, ...]]) -> FixedShapes:
    """Write ``src`` to ``out`` with each named input's symbolic dims fixed (fixed dims must agree).

    The batch axis stays symbolic when the given batch is 1 and the model's batch is symbolic, so
    evaluation can still run batches; every other axis takes the given size. A model onnxruntime
    refuses with those sizes (an ``If`` whose other branch only takes other sizes: silero-vad's 8 kHz
    path at 576 samples) is written unchanged: the sizes then only shape the generated inputs.
    """
    model = load_onnx(src)
    inputs, _ = io_specs(model)
    by_name = {s.name: s for s in inputs}
    if None in shapes:
        if len(inputs) != 1:
            raise InputError(f"{src.name} has {len(inputs)} inputs ({', '.join(by_name)}); name each: --input-shape NAME:1,3,224,224")
        shapes = {inputs[0].name: shapes[None]}
    unknown = [n for n in shapes if n not in by_name]
    if unknown:
        raise InputError(f"--input-shape names {', '.join(map(repr, unknown))}, which {src.name} does not have; its inputs: {', '.join(by_name)}")
    original = model.SerializeToString()
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        want = shapes[vi.name]
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(want):
            raise InputError(f"--input-shape for {vi.name!r} has {len(want)} dims; the model's input is {list(by_name[vi.name].shape)}")
        for i, (d, w) in enumerate(zip(dims, want, strict=False)):
            fixed = d.HasField("dim_value") and d.dim_value > 0  # a size <= 0 (Paddle's -1) is symbolic
            if fixed and d.dim_value != w:
                raise InputError(f"--input-shape for {vi.name!r}: axis {i} is fixed to {d.dim_value} in the model, not {w}")
            if i == 0 and not fixed and w == 1:
                continue  # keep a symbolic batch
            d.dim_value = w
    # no shape inference saved into the copy: onnxruntime infers at load, and a saved inference would type both
    # branches of an If for the given sizes
    onnx.save(model, str(out))
    named = {str(k): v for k, v in shapes.items()}
    refused = _ort_refuses(out)
    if refused and not _ort_refuses(src):
        out.write_bytes(original)
        return FixedShapes(named, written=False, why_not=refused)
    return FixedShapes(named)


def _ort_refuses(path: Path) -> str:
    """onnxruntime's reason for not loading ``path`` as edgekit runs it (optimized: inlining an If types its branches), or ''."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types; the reason is what matters
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        # the innermost reason: "Node (...) Op (Add) [ShapeInferenceError] Incompatible dimensions", not the temp path it was loaded from
        return text.rsplit("inferencing failed: ", 1)[-1].rsplit(" failed:", 1)[-1].strip()[:200]
    return ""
