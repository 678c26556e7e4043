"""``--input-shape`` on an ONNX model: a copy with symbolic input dims replaced by the given sizes."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgekit.errors import InputError
from edgekit.onnx_model import io_specs, load_onnx

__all__ = ["fix_input_shapes"]


def fix_input_shapes(src: Path, out: Path, shapes: dict[str | None, tuple[int, ...]]) -> Path:
    """Write ``src`` to ``out`` with each named input's symbolic dims fixed (fixed dims must agree).

    The batch axis stays symbolic when the given batch is 1 and the model's batch is symbolic, so
    evaluation can still run batches; every other axis takes the given size.
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
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        want = shapes[vi.name]
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(want):
            raise InputError(f"--input-shape for {vi.name!r} has {len(want)} dims; the model's input is {list(by_name[vi.name].shape)}")
        for i, (d, w) in enumerate(zip(dims, want, strict=False)):
            if d.HasField("dim_value") and d.dim_value != w:
                raise InputError(f"--input-shape for {vi.name!r}: axis {i} is fixed to {d.dim_value} in the model, not {w}")
            if i == 0 and not d.HasField("dim_value") and w == 1:
                continue  # keep a symbolic batch
            d.dim_value = w
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is a nicety here; the runtime re-infers
        pass
    onnx.save(model, str(out))
    return out
