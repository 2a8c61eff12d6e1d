"""Give every value of a model one unique name across its scopes, so one flat table can describe them all.

ONNX forbids a body to shadow an outer name, but sibling scopes (an If's two branches, the bodies of two
different nodes) may define the same name. The importer keeps flat name -> shape/type/weight tables and
inlines branches into their parent graph, so a value defined in a body whose name is already defined
elsewhere is renamed (``t`` -> ``t~2``), with every read of it inside that body and its nested bodies.
Top-level names (the user's inputs, outputs, weights) never change.
"""

from __future__ import annotations

import onnx

_GRAPH, _GRAPHS = onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraph attributes of a node (If branches, Loop/Scan bodies, ...)."""
    found: list[onnx.GraphProto] = []
    for a in node.attribute:  # one pass: protobuf attribute access is what this costs
        kind = a.type
        if kind == _GRAPH:
            found.append(a.g)
        elif kind == _GRAPHS:
            found.extend(a.graphs)
    return found


def body_reads(node: onnx.NodeProto) -> set[str]:
    """Every name read inside ``node``'s bodies (nested ones too), outer-scope captures among them."""
    reads: set[str] = set()
    for body in bodies(node):
        for inner in body.node:
            reads.update(i for i in inner.input if i)
            reads |= body_reads(inner)
        reads.update(o.name for o in body.output)
    return reads


def defined_names(graph: onnx.GraphProto) -> list[str]:
    """Names a graph defines in its own scope: formal inputs, initializers, node outputs."""
    return [*(i.name for i in graph.input), *(t.name for t in graph.initializer),
            *(o for n in graph.node for o in n.output if o)]


def uniquify_body_names(model: onnx.ModelProto) -> int:
    """Rename body-defined values whose names another scope defined first; returns how many were renamed."""
    taken = set(defined_names(model.graph))
    return sum(_rename_scope(body, {}, taken) for node in model.graph.node for body in bodies(node))


def _rename_scope(graph: onnx.GraphProto, outer: dict[str, str], taken: set[str]) -> int:
    mapping = dict(outer)  # reads of outer values renamed further out follow them
    renamed = 0
    for name in defined_names(graph):
        if name in taken:
            mapping[name] = _fresh(name, taken)
            renamed += 1
        taken.add(mapping.get(name, name))
    if renamed or outer:
        _apply(graph, mapping)
    for node in graph.node:
        for body in bodies(node):
            renamed += _rename_scope(body, mapping, taken)
    return renamed


def _apply(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = mapping.get(info.name, info.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
        node.output[:] = [mapping.get(o, o) for o in node.output]


def _fresh(name: str, taken: set[str]) -> str:
    n = 2
    while f"{name}~{n}" in taken:
        n += 1
    return f"{name}~{n}"
