"""ONNX control-flow bodies -> closed IR bodies: weights hoisted to the top graph, outer reads made explicit.

ONNX bodies read outer values by name (implicit capture) and may hold their own weights. The IR wants
neither: a body's weights join the top graph's weight table (one table per graph is what dedupe, format
selection and pack know), and every value a body reads from outside becomes an explicit input of the
control node and a formal input of the body (``graph.py`` explains the convention). State kept while
converting one graph: a ``Scope`` with the top graph's weight table and the type of every value seen so
far; import first makes every value name unique across scopes (``scopes.uniquify_body_names``), so one
flat table serves every nesting level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..dtypes import is_extended
from ..errors import GraphInvalid, UnsupportedOp
from .graph import CONTROL_OPS, UNKNOWN_DTYPE, Graph, Node, TensorType, container_dtype

__all__ = ["CONTROL_OPS", "Scope", "convert_control", "has_bodies", "op_domain", "type_string", "used_opsets",
           "value_type"]

UNKNOWN_DIM = -1


@dataclass
class Scope:
    """What converting bodies reads and adds: the top graph's weights and every value's type."""

    weights: dict
    types: dict[str, TensorType]
    opset: int
    where: str
    is_const: Callable[[np.ndarray], bool]  # small integer tensors stay inline consts, the rest are weights
    attrs_of: Callable[[onnx.NodeProto], dict]
    constant_value: Callable[[onnx.NodeProto], np.ndarray]
    check_op: Callable[[onnx.NodeProto, int], None]
    hoisted: list[str] = field(default_factory=list)
    domain_opsets: dict[str, int] = field(default_factory=dict)  # the model's version of each non-default domain
    labels: set[str] = field(default_factory=set)  # node names handed out so far: tiling and bodies key on them

    def label(self, wanted: str) -> str:
        """A node name no other node of the model has (ONNX node names may repeat, or be empty)."""
        name, n = wanted, 1
        while name in self.labels:
            n += 1
            name = f"{wanted}~{n}"
        self.labels.add(name)
        return name


def op_domain(node: onnx.NodeProto) -> str:
    """The IR's domain of a node: "" for the default ONNX domain (spelt "" or "ai.onnx"), else its domain."""
    return "" if node.domain in ("", "ai.onnx") else node.domain


def used_opsets(nodes: list[Node], versions: dict[str, int]) -> dict[str, int]:
    """The version of each non-default domain that ``nodes`` (bodies included) use."""
    used: set[str] = set()
    for node in nodes:
        used |= {node.domain} if node.domain else set()
        used |= {n.domain for body in node.bodies().values() for _, n in body.walk() if n.domain}
    return {d: versions[d] for d in sorted(used)}


def convert_control(node: onnx.NodeProto, name: str, scope: Scope) -> Node:
    """The IR node of an op with bodies: bodies converted, captured outer values appended to its inputs."""
    bodies = {a.name: convert_body(a.g, f"{name}/{a.name}", scope)
              for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    if len(bodies) != sum(1 for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH,
                                                                   onnx.AttributeProto.GRAPHS)):
        raise UnsupportedOp(f"node {name!r} ({node.op_type}) has a list-of-graphs attribute", scope.where)
    captures = sorted(set().union(*(free_values(b) for b in bodies.values())))
    for body in bodies.values():
        body.inputs = [*body.inputs, *captures]
        for value in captures:
            body.types[value] = scope.types.get(value, TensorType((UNKNOWN_DIM,), UNKNOWN_DTYPE))
    return Node(name, node.op_type, [*node.input, *captures], list(node.output),
                {**scope.attrs_of(_without_bodies(node)), **bodies, "captures": len(captures)}, op_domain(node))


def has_bodies(node: onnx.NodeProto) -> bool:
    """If/Loop/Scan/SequenceMap, or an op of another domain with graph attributes (FlexAttention's score_mod)."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def convert_body(body: onnx.GraphProto, prefix: str, scope: Scope) -> Graph:
    types = body_types(body, scope.where)
    scope.types.update(types)
    consts: dict[str, np.ndarray] = {}
    for init in body.initializer:
        _keep_tensor(init.name, numpy_helper.to_array(init), consts, scope)
    nodes: list[Node] = []
    for index, node in enumerate(body.node):
        scope.check_op(node, index)
        name = scope.label(f"{prefix}/{node.name or f'{node.op_type}_{index}'}")
        domain = op_domain(node)
        if node.op_type == "Constant" and not domain:
            _keep_tensor(node.output[0], scope.constant_value(node), consts, scope)
        elif has_bodies(node):
            nodes.append(convert_control(node, name, scope))
        else:
            nodes.append(Node(name, node.op_type, list(node.input), list(node.output), scope.attrs_of(node), domain))
    graph = Graph(name=prefix, opset=scope.opset, inputs=[i.name for i in body.input],
                  outputs=[o.name for o in body.output], nodes=nodes, types=types, consts=consts,
                  domain_opsets=used_opsets(nodes, scope.domain_opsets))
    for value in consts:
        graph.types[value] = scope.types[value]
    _type_the_rest(graph)
    return graph


def free_values(body: Graph) -> set[str]:
    """Values a body reads (or returns) without defining them: what it captures from outside."""
    defined = {*body.inputs, *body.consts, *(o for n in body.nodes for o in n.outputs if o)}
    read = {i for n in body.nodes for i in n.inputs if i} | set(body.outputs)
    return read - defined


def body_types(body: onnx.GraphProto, where: str) -> dict[str, TensorType]:
    """Declared and inferred types of a body's values; dims known only at run time are ``UNKNOWN_DIM``
    (and a value of unknown rank is ``(UNKNOWN_DIM,)``: dynamic all the same)."""
    types: dict[str, TensorType] = {}
    for info in [*body.input, *body.value_info, *body.output]:
        t = value_type(info.type, info.name, where)
        if t is not None:
            types[info.name] = t
    return types


def value_type(tp: onnx.TypeProto, name: str, where: str) -> TensorType | None:
    """The IR type of an ONNX value: a tensor, or a sequence/optional (``graph.container_dtype``, shape
    ``(UNKNOWN_DIM,)``); None when inference left a tensor's element type undefined. Maps and sparse
    tensors are refused."""
    kind = tp.WhichOneof("value")
    if kind in ("sequence_type", "optional_type"):
        inner = tp.sequence_type.elem_type if kind == "sequence_type" else tp.optional_type.elem_type
        elem = value_type(inner, name, where) if inner.WhichOneof("value") else None
        return TensorType((UNKNOWN_DIM,), container_dtype("seq" if kind == "sequence_type" else "optional",
                                                          UNKNOWN_DTYPE if elem is None else elem.dtype))
    if kind not in ("tensor_type", None):
        raise UnsupportedOp(f"value {name!r} is a {kind.removesuffix('_type')}, not a tensor, sequence or optional "
                            f"(maps and sparse tensors are not supported)", where)
    tt = tp.tensor_type
    if tt.elem_type == onnx.TensorProto.UNDEFINED:
        return None
    dtype, problem = _element_type(tt.elem_type)
    if problem:
        raise UnsupportedOp(f"value {name!r} {problem}", where)
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else UNKNOWN_DIM
                 for d in tt.shape.dim) if tt.HasField("shape") else (UNKNOWN_DIM,)
    return TensorType(dims, dtype)


@cache
def _element_type(elem_type: int) -> tuple[str, str]:
    """(IR dtype name, "") of an ONNX element type, or ("", why it is not supported); once per type."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except KeyError:
        return "", f"has an unsupported element type {elem_type}"
    if dtype.type.__module__ != "numpy" and not is_extended(dtype):  # e.g. float6: no conversions
        return "", f"has element type {helper.tensor_dtype_to_string(elem_type)}, which is not supported"
    return dtype.name, ""


def type_string(tp: onnx.TypeProto, where: str) -> str:
    """A TypeProto attribute (Optional's ``type``) as an IR dtype string."""
    t = value_type(tp, "the type attribute", where)
    return UNKNOWN_DTYPE if t is None else t.dtype


def _keep_tensor(name: str, value: np.ndarray, consts: dict, scope: Scope) -> None:
    """A body tensor: an inline const of the body, or a weight hoisted to the top graph."""
    if scope.is_const(value):
        consts[name] = value
    else:
        if name in scope.weights:
            raise GraphInvalid(f"weight {name!r} is defined twice (in a body and outside); names must be unique",
                               scope.where)
        scope.weights[name] = value
        scope.hoisted.append(name)
    scope.types[name] = TensorType(tuple(value.shape), np.dtype(value.dtype).name)


def _without_bodies(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    kept = [a for a in copy.attribute if a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
    del copy.attribute[:]
    copy.attribute.extend(kept)
    return copy


def _type_the_rest(graph: Graph) -> None:
    """Values lenient inference left untyped (a branch that cannot run on these shapes) are sized at run
    time; their dtype is whatever the kernel returns."""
    for node in graph.nodes:
        for out in filter(None, node.outputs):
            graph.types.setdefault(out, TensorType((UNKNOWN_DIM,), UNKNOWN_DTYPE))
    for value in [*graph.inputs, *graph.outputs]:
        graph.types.setdefault(value, TensorType((UNKNOWN_DIM,), UNKNOWN_DTYPE))
