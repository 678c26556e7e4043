"""ONNX ↔ PyTorch for the training steps: onnx2torch in, the TorchScript exporter out.

Pruning and distillation train in PyTorch but take and return ONNX. ``to_torch`` names every op
onnx2torch cannot convert before converting anything; ``to_onnx`` exports with the source's input
and output names, dtypes, symbolic axes and opset, and gives nodes back their original names so
``--exclude NODE`` / ``--keep NODE`` still mean the same node after a pruning step.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgekit.errors import InputError, MissingExtraError
from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS, fold_constants, io_specs

if TYPE_CHECKING:
    import torch

__all__ = [
    "ConversionError",
    "example_inputs",
    "load_factory",
    "module_names",
    "promote_buffers",
    "require_torch",
    "run_torch",
    "to_onnx",
    "to_torch",
    "unsupported_ops",
]

#: opsets the TorchScript exporter writes; the source's opset is kept when it is in this range
EXPORT_OPSETS = range(9, 21)
DEFAULT_EXPORT_OPSET = 17


class ConversionError(InputError):
    """onnx2torch cannot turn the ONNX model into a PyTorch module."""


def require_torch(what: str) -> None:
    """Raise ``MissingExtraError`` naming ``what`` when torch, onnx2torch or torch-pruning is missing."""
    for mod in ("torch", "onnx2torch", "torch_pruning"):
        try:
            importlib.import_module(mod)
        except ImportError:
            raise MissingExtraError(what, "torch") from None


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(op_type, first node name)`` for every op onnx2torch has no converter for, in graph order."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = _opsets(model)
    seen: dict[str, str] = {}
    for node in model.graph.node:
        key = f"{node.domain + '.' if node.domain not in ('', 'ai.onnx') else ''}{node.op_type}"
        if key in seen:
            continue
        try:
            get_converter(node.op_type, opsets.get(node.domain or "", 1), node.domain or "")
        except NotImplementedError:
            seen[key] = node.name or "(unnamed)"
    return list(seen.items())


def to_torch(model: onnx.ModelProto, *, what: str = "this step") -> torch.nn.Module:
    """The model as an ``fx.GraphModule`` (onnx2torch), in eval mode; ``model`` is not modified.

    Raises ``ConversionError`` naming every unconvertible op, and the fix.
    """
    require_torch(what)
    from onnx2torch import convert

    folded = _prepared(model)
    bad = unsupported_ops(folded)
    if bad:
        ops = ", ".join(f"{op} (node {name!r})" for op, name in bad)
        raise ConversionError(
            f"{what} needs the model in PyTorch, and onnx2torch cannot convert op {ops}; "
            "pass the PyTorch model instead (a module:function factory returning the trained nn.Module)"
        )
    try:
        net = convert(folded)
    except Exception as e:  # a converter that exists but rejects this node's attributes
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConversionError(
            f"{what} needs the model in PyTorch, and onnx2torch cannot convert it: {line}; "
            "pass the PyTorch model instead (a module:function factory returning the trained nn.Module)"
        ) from None
    return net.eval()


def module_names(model: onnx.ModelProto) -> dict[str, str]:
    """onnx2torch module name → ONNX node name (onnx2torch replaces dots and de-duplicates)."""
    from onnx2torch.onnx_graph import OnnxGraph

    return {uname: node.proto.name for uname, node in OnnxGraph(_prepared(model).graph).nodes.items()}


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy onnx2torch converts well: Constant-node weights and Identity-of-initializer aliases become initializers.

    Constant-node weights would become untrainable buffers. torch.onnx deduplicates equal
    tensors (e.g. two zero biases) into one initializer plus Identity nodes, and onnx2torch
    needs a Conv's weight and bias to be initializers themselves.
    """
    out, _ = fold_constants(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            alias = copy.deepcopy(inits[node.input[0]])
            alias.name = node.output[0]
            g.initializer.append(alias)
            inits[alias.name] = alias
            continue
        keep.append(node)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    return out


def promote_buffers(net: torch.nn.Module) -> int:
    """Turn onnx2torch's float weight buffers (MatMul/Add constants) into trainable parameters.

    onnx2torch keeps initializers that are not a Conv/Linear weight as buffers, so fine-tuning
    would leave them frozen. Returns how many were promoted.
    """
    import torch

    n = 0
    for module in net.modules():  # onnx2torch keeps them in an "initializers" container module
        for name, buf in list(module.named_buffers(recurse=False)):
            if name.startswith("onnx_initializer") and buf.is_floating_point() and buf.numel() >= MIN_WEIGHT_ELEMENTS:
                delattr(module, name)
                module.register_parameter(name, torch.nn.Parameter(buf.detach().clone()))
                n += 1
    return n


def example_inputs(model: onnx.ModelProto, data: dict[str, np.ndarray] | None = None, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """One batch in the model's input order: from ``data`` when given, else zeros (symbolic dims → ``batch``)."""
    import torch

    ins, _ = io_specs(model)
    out = []
    for s in ins:
        if data is not None and s.name in data:
            out.append(torch.from_numpy(np.ascontiguousarray(data[s.name][:batch])))
        else:
            shape = [d if isinstance(d, int) and d > 0 else batch for d in s.shape]
            out.append(torch.zeros(shape, dtype=getattr(torch, np.dtype(s.dtype).name)))
    return tuple(out)


def run_torch(net: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Call ``net`` and always get a tuple of outputs back."""
    y = net(*args)
    if isinstance(y, dict):
        return tuple(y.values())
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def to_onnx(net: torch.nn.Module, like: onnx.ModelProto, *, example: tuple[torch.Tensor, ...] | None = None,
            names: dict[str, str] | None = None) -> onnx.ModelProto:
    """Export ``net`` to ONNX with ``like``'s signature (input/output names, symbolic axes, opset).

    ``names`` (module name → node name, from :func:`module_names`) gives exported nodes back their
    source names. The TorchScript exporter is used: it keeps weights as plain initializers and
    exports onnx2torch's modules; the dynamo exporter does not handle ``fx.GraphModule`` from onnx2torch.
    """
    import torch

    from edgekit.errors import ExportError

    ins, outs = io_specs(like)
    opset = next((o.version for o in like.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_EXPORT_OPSET)
    opset = opset if opset in EXPORT_OPSETS else DEFAULT_EXPORT_OPSET
    dynamic = {s.name: {i: d for i, d in enumerate(s.shape) if not isinstance(d, int)} for s in (*ins, *outs)}
    dynamic = {k: v for k, v in dynamic.items() if v}
    args = example if example is not None else example_inputs(like)
    buf = io.BytesIO()
    was_training = net.training
    net.eval()
    try:
        torch.onnx.export(net, args, buf, input_names=[s.name for s in ins], output_names=[s.name for s in outs],
                          opset_version=opset, dynamic_axes=dynamic or None, do_constant_folding=True, dynamo=False)
    except Exception as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"exporting the trained model back to ONNX (opset {opset}) failed: {line}") from None
    finally:
        net.train(was_training)
    out = onnx.load_from_string(buf.getvalue())
    if names:
        _restore_node_names(out, names)
        _restore_initializer_names(out, like)
    out.producer_name = "edgekit"
    return out


def _restore_node_names(model: onnx.ModelProto, names: dict[str, str]) -> None:
    # The exporter names a node "/<module name>/<OpType>"; when exactly one node came from a
    # module, it gets the source node's name back.
    by_module: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.name.startswith("/") and node.name.count("/") >= 2:
            by_module.setdefault(node.name[1:].rsplit("/", 1)[0], []).append(node)
    taken = {n.name for n in model.graph.node}
    for module, nodes in by_module.items():
        src = names.get(module)
        if src and len(nodes) == 1 and src not in taken:
            nodes[0].name = src
            taken.add(src)


def _restore_initializer_names(model: onnx.ModelProto, like: onnx.ModelProto) -> None:
    # A weight gets the name it had in the source when its node kept the source's name: the
    # pruned model reads like the source with fewer channels (and names stay short).
    src, _ = fold_constants(like)
    src_inits = {i.name for i in src.graph.initializer}
    src_nodes = {n.name: n for n in src.graph.node if n.name}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    inits = {i.name: i for i in model.graph.initializer}
    taken = set(inits) | {v for n in model.graph.node for v in n.output} | {v.name for v in (*model.graph.input, *model.graph.output)}
    rename: dict[str, str] = {}
    for node in model.graph.node:
        old = src_nodes.get(node.name)
        if old is None or old.op_type != node.op_type:
            continue
        for new_in, old_in in zip(node.input, old.input, strict=False):
            if new_in in inits and old_in in src_inits and uses.get(new_in) == 1 and old_in not in taken and new_in not in rename:
                rename[new_in] = old_in
                taken.add(old_in)
    for old_name, new_name in rename.items():
        inits[old_name].name = new_name
    for node in model.graph.node:
        for k, i in enumerate(node.input):
            if i in rename:
                node.input[k] = rename[i]


def load_factory(spec: str, *, what: str) -> Callable[..., Any]:
    """Resolve ``module:function`` or ``path/to/file.py:function`` to the callable."""
    if ":" not in spec:
        raise InputError(f"{what} {spec!r} is not module:function; give e.g. nets.py:small_net or mypkg.models:small_net")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise InputError(f"{what} {spec!r}: file {path} not found")
        from edgekit.importers.userfile import import_user_file

        try:
            module = import_user_file(path)
        except Exception as e:  # noqa: BLE001 - the user's file may raise anything on import
            raise InputError(f"{what} {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise InputError(f"{what} {spec!r}: cannot import module {target!r} ({e}); give a .py path or an importable module") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InputError(f"{what} {spec!r}: {target} has no function {attr!r}; it has {', '.join(public[:12]) or 'no functions'}")
    return fn
