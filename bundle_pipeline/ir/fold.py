"""Constant folding at import: nodes whose inputs are all known small integer consts (or static shapes) become
initializers, and an If whose condition is known is replaced by its taken branch. The kernels define what
each op computes (``kernels.run_kernel``), so folding and the runtime agree by construction."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import GraphInvalid
from .fold_budget import fold_output_bound
from .graph import SEQUENCE_OPS
from .node_attrs import node_attrs, tensor_array
from .scopes import bodies

CONST_MAX_ELEMENTS = 1024
MAX_FOLD_PASSES = 16  # fold + re-infer rounds; nested Ifs on static conditions need one round per level
CONST_DTYPES = (np.int64, np.int32)
# Ops whose result never depends on data at compile time or must not be folded.
UNFOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Dropout", "If", "Loop", "Scan", *SEQUENCE_OPS})


@dataclass
class Folded:
    """What one folding pass did: ``inlined`` an If (fold again after re-inferring: the branch may make more of
    the graph static), or ``changed`` the graph at all (if not, its inferred types still hold)."""

    inlined: bool = False
    changed: bool = False


def fold_constants(model: onnx.ModelProto, opset: int, where: str) -> tuple[onnx.ModelProto, Folded]:
    """Replace nodes whose inputs are all known small consts (or static shapes) by initializers, in bodies
    too, and inline every If whose condition is known."""
    done = Folded()
    _fold_graph(model.graph, {}, _StaticTypes(model.graph), opset, where, done)
    return model, done


class _StaticTypes(dict):
    """``_static_types`` of a graph, computed on the first look: most graphs have no node to fold, and then
    no shape is ever asked for."""

    def __init__(self, graph: onnx.GraphProto):
        super().__init__()
        self.graph: onnx.GraphProto | None = graph

    def _load(self) -> None:
        if self.graph is not None:
            self.update(_static_types(self.graph))
            self.graph = None

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def __getitem__(self, key: str) -> tuple[int, ...]:
        self._load()
        return super().__getitem__(key)

    def get(self, key: str, default: object = None) -> object:
        self._load()
        return super().get(key, default)


def _fold_graph(graph: onnx.GraphProto, consts: dict, types: dict, opset: int, where: str, done: Folded) -> None:
    from ..kernels import KernelError, run_kernel  # the kernels define op semantics

    consts.update({t.name: tensor_array(t) for t in graph.initializer if _is_const_array_proto(t)})
    pending = deque(graph.node)
    kept: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    while pending:
        node = pending.popleft()
        if node.op_type == "If" and node.input[0] in consts:
            pending.extendleft(reversed(
                _inline_branch(node, bool(np.asarray(consts[node.input[0]]).reshape(-1)[0]), graph)))
            done.inlined = done.changed = True
            continue
        for body in bodies(node):
            _fold_graph(body, dict(consts), types, opset, where, done)
        values = _foldable_inputs(node, consts, types)
        bound = None if values is None else fold_output_bound(node.op_type, values, [types.get(o) for o in node.output])
        if bound is None or bound > CONST_MAX_ELEMENTS:  # checked before the kernel allocates anything
            kept.append(node)
            continue
        try:
            outs = run_kernel(node.op_type, values, node_attrs(node), opset)
        except KernelError as err:
            raise GraphInvalid(f"while folding node {node.name!r} ({node.op_type}): {err}", where) from None
        small = all(np.asarray(o).size <= CONST_MAX_ELEMENTS for o in outs[: len(node.output)])
        if not small:
            kept.append(node)
            continue
        for name, value in zip(node.output, outs, strict=False):
            if name:
                consts[name] = np.asarray(value)
                folded.append(numpy_helper.from_array(np.asarray(value), name))
        done.changed = True
    if done.changed:  # else every node was kept, in order: nothing to rewrite
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(folded)


def _inline_branch(node: onnx.NodeProto, cond: bool, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes that replace an If whose condition is known: the taken branch, then an Identity per output.

    The branch's initializers move to ``graph``; its value names are already unique in the model
    (``scopes.uniquify_body_names`` ran at load), so they need no renaming.
    """
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
    graph.initializer.extend(branch.initializer)
    identities = [helper.make_node("Identity", [src.name], [dst], name=f"{node.name or 'If'}/{dst}")
                  for src, dst in zip(branch.output, node.output, strict=True) if dst]
    return [*branch.node, *identities]


def _foldable_inputs(node: onnx.NodeProto, consts: dict, types: dict) -> list | None:
    if node.op_type in UNFOLDABLE or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Shape", "Size") and node.input[0] in types:
        return [np.broadcast_to(np.uint8(0), types[node.input[0]])]  # only the shape is read: no bytes behind it
    if node.op_type == "Constant":
        # Only integer constants steer shapes; float Constants are weights (they may become variables).
        value = constant_value(node)
        return [] if value.dtype in CONST_DTYPES and value.size <= CONST_MAX_ELEMENTS else None
    if not node.input or not all(i == "" or i in consts for i in node.input):
        return None
    return [consts[i] if i else None for i in node.input]


def _static_types(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value in ``graph`` and its bodies (names are unique once scopes are uniquified)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = info.type.tensor_type
        if is_static(tt):
            shapes[info.name] = tuple(d.dim_value for d in tt.shape.dim)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in graph.node:
        for body in bodies(node):
            shapes.update(_static_types(body))
    return shapes


def is_static(tt: onnx.TypeProto.Tensor) -> bool:
    """Every dim known and non-negative (exporters write -1 for 'unknown')."""
    return tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim)


def _is_const_array_proto(t: onnx.TensorProto) -> bool:
    return t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and math.prod(t.dims) <= CONST_MAX_ELEMENTS


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    from ..kernels import run_kernel

    return np.asarray(run_kernel("Constant", [], node_attrs(node), 21)[0])


def is_const_array(value: np.ndarray) -> bool:
    return value.dtype in CONST_DTYPES and value.size <= CONST_MAX_ELEMENTS

