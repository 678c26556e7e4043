"""The ``fp16`` step: half-precision weights and compute, fp32 inputs and outputs kept."""

from __future__ import annotations

import onnx
from pydantic import Field

from edgekit.choices import Precision
from edgekit.onnx_model import fold_constants
from edgekit.pipeline import Context, StepConfig, StepOutcome, step

__all__ = ["Fp16Config", "fp16"]


class Fp16Config(StepConfig):
    keep_io_types: bool = Field(True, description="Keep fp32 inputs/outputs so callers need not change.")
    op_block_list: tuple[str, ...] = Field((), description="Op types to keep in fp32 (in addition to ORT's defaults).")


@step("fp16", Fp16Config)
def fp16(model: onnx.ModelProto, config: Fp16Config, ctx: Context) -> StepOutcome:
    """Convert weights and compute to float16 with onnxruntime's converter (fp32 inputs/outputs kept by default)."""
    # onnxruntime's float16 converter: maintained, handles subgraphs and keeps I/O types on request.
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    folded, n = fold_constants(model)
    block = list(DEFAULT_OP_BLOCK_LIST) + list(config.op_block_list)
    half = convert_float_to_float16(folded, keep_io_types=config.keep_io_types, op_block_list=block, disable_shape_infer=False)
    ctx.log.say("fp16: halves the file; CPUs without fp16 arithmetic run it through casts, so expect no speed-up on x86")
    return StepOutcome(half, Precision.FP16, {"constants_folded": n, "keep_io_types": config.keep_io_types, "op_block_list": block})
