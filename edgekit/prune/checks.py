"""What every pruned model must keep: the source's signature (input names and dtypes, output names, dtypes and shapes)."""

from __future__ import annotations

import onnx

from edgekit.errors import EdgekitError
from edgekit.onnx_model import io_specs

__all__ = ["check_signature"]


def check_signature(src: onnx.ModelProto, new: onnx.ModelProto) -> None:
    """An EdgekitError when ``new`` (the pruned model) no longer has ``src``'s signature."""
    a, b = io_specs(src), io_specs(new)
    if [(s.name, s.dtype, tuple(s.shape)) for s in a[1]] != [(s.name, s.dtype, tuple(s.shape)) for s in b[1]] or \
            [(s.name, s.dtype) for s in a[0]] != [(s.name, s.dtype) for s in b[0]]:
        raise EdgekitError(f"the pruned model's signature changed: inputs {list(b[0])} outputs {list(b[1])}; "
                           f"expected inputs {list(a[0])} outputs {list(a[1])}")
