"""The ``prune`` step: structured (channels removed) or unstructured (weights zeroed), then KD fine-tuning.

Structured (:mod:`edgekit.prune.structured`): ONNX → PyTorch → torch-pruning's dependency graph →
fine-tune with the unpruned model as teacher → ONNX with the source's signature.
Unstructured (:mod:`edgekit.prune.unstructured`): magnitude masks on the ONNX initializers (numpy);
fine-tuning, when asked or when data is given, runs in PyTorch and keeps every zero at zero.
"""

from __future__ import annotations

import onnx

from edgekit.errors import RecipeError
from edgekit.onnx_model import weight_stats
from edgekit.pipeline import Context, StepOutcome, step
from edgekit.prune.config import PruneConfig, PruneMethod, Scope
from edgekit.prune.structured import prune_structured
from edgekit.prune.unstructured import prune_unstructured

__all__ = ["PruneConfig", "PruneMethod", "Scope", "prune"]


@step("prune", PruneConfig)
def prune(model: onnx.ModelProto, config: PruneConfig, ctx: Context) -> StepOutcome:
    """Prune the float ``model`` as ``config`` says; a quantized model is refused (prune first, then quantize)."""
    stats = weight_stats(model)
    if stats.is_quantized:
        raise RecipeError("prune: the model is already quantized; prune the float model, then quantize (--prune ... --int8)")
    if config.method == PruneMethod.STRUCTURED:
        return prune_structured(model, config, ctx)
    return prune_unstructured(model, config, ctx)
