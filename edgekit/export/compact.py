"""Store an ONNX artifact compactly: keep what the runtime needs, move debugging names aside.

An int8 model's weights are a quarter of the fp32 bytes, but the rest of the file does not shrink
with precision: every tensor name is written once where it is produced and again wherever it is
read, QDQ/QOperator models add a scale and a zero point (each with a long derived name such as
``/features/features.0/Conv_output_0_zero_point``) per tensor, and ``quant_pre_process`` leaves
a ``value_info`` entry per intermediate tensor. On a small model that is 10% of the int8 file.

:func:`compact` is a pure serialization change, like ``strip`` on a binary with the debug symbols
kept in a separate file:

- in quantized artifacts, internal tensor names (activations and initializers, never graph
  inputs/outputs) become short ids; the mapping back to the original names is returned, and edgekit keeps it in the manifest
  (``artifact.extra["tensor_names"]``) so per-layer reports still speak the exporter's names;
- node names stay: they carry the layer's identity (``/features/features.0/Conv``), they are what
  ``--exclude`` takes and what error messages from the runtime name;
- ``value_info`` (intermediate shapes, which onnxruntime infers again at load), node doc strings
  (exporters put stack traces there) and opset imports no node uses are dropped.

Outputs are bit-identical; a test holds the function to that.
"""

from __future__ import annotations

import onnx

from edgekit.onnx_model import iter_graphs

__all__ = ["NAMES_KEY", "compact", "rename_tensors", "restore_names"]

#: where the short → original tensor name mapping lives in a manifest artifact's ``extra``
NAMES_KEY = "tensor_names"
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def compact(model: onnx.ModelProto, *, rename: bool = True) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A compactly stored copy of ``model`` and the short → original mapping of renamed tensors.

    ``rename=False`` keeps every tensor name (edgekit does so for float artifacts: their names are the
    user's, e.g. a pruned model's weights keep their PyTorch names; in an int8 model most names are the
    quantizer's, and they are a tenth of the file).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for g in iter_graphs(out.graph):
        del g.value_info[:]
        for n in g.node:
            n.doc_string = ""
    _drop_unused_opsets(out)
    mapping = _rename_internal(out.graph) if rename else {}
    return out, mapping


def restore_names(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """The inverse of :func:`compact`'s renaming (a copy), for tools that match tensors by name."""
    if not mapping:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rename_tensors(out.graph, mapping)
    return out


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    used = {n.domain or "" for g in iter_graphs(model.graph) for n in g.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _rename_internal(graph: onnx.GraphProto) -> dict[str, str]:
    """Give the main graph's internal tensors short names; returns short → original."""
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    # subgraphs (If/Loop/Scan bodies) may read main-graph tensors by name: those keep theirs
    in_subgraphs = {name for g in iter_graphs(graph) if g is not graph for name in _names_in(g)}
    reserved = io | in_subgraphs
    internal: list[str] = []
    seen: set[str] = set()
    for name in [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output]:
        if name and name not in reserved and name not in seen:
            seen.add(name)
            internal.append(name)
    # a short id must not be any name already in the graph (a model may well have a tensor called "h")
    taken = reserved | _names_in(graph) | {t.name for t in graph.initializer} | {v.name for v in graph.input}
    forward: dict[str, str] = {}
    counter = 0
    for name in internal:
        short = _short(counter)
        counter += 1
        while short in taken:
            short = _short(counter)
            counter += 1
        if len(short) < len(name):
            forward[name] = short
    rename_tensors(graph, forward)
    return {short: name for name, short in forward.items()}


def _names_in(g: onnx.GraphProto) -> set[str]:
    return {i for n in g.node for i in n.input} | {o for n in g.node for o in n.output} | {v.name for v in g.output}


def rename_tensors(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors in place: initializers and node inputs/outputs of ``graph`` (not its subgraphs)."""
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in mapping:
                n.input[i] = mapping[name]
        for i, name in enumerate(n.output):
            if name in mapping:
                n.output[i] = mapping[name]


def _short(i: int) -> str:
    s = ""
    while True:
        i, r = divmod(i, len(_ALPHABET))
        s = _ALPHABET[r] + s
        if i == 0:
            return s
