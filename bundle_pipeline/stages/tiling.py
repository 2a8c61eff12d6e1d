"""tiling: per kernel, tile shapes that keep the workspace under the target's budget (cpu: im2col, matmul)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from ..dtypes import dtype_from_name
from ..ir.graph import Node, TensorType
from ..targets import Target
from .stage import GRAPH, Input, Stage, StageContext

if TYPE_CHECKING:  # tiling_search imports numpy: loaded by a task, not by the stage's declaration
    from .tiling_search import Problem

VERSION = "3"
TILED_OPS = frozenset({"Conv", "MatMul", "Gemm"})  # the kernels whose workspace grows with the problem


# A search over fewer candidates (under a millisecond) takes less time than the kernel cache would spend on it
# (building and hashing the signature, a failed open, then a 0.1-1 ms record), so it is made in-process, with
# all of the graph's other small searches in one vectorised evaluation. Larger searches (big layers: up to
# 64^3 candidates) are made one by one through the kernel cache: looked up, and recorded on a miss.
MEMO_MIN_CANDIDATES = 1 << 13

Memo = Callable[[dict, Callable[[], dict]], "dict | None"]


def run(structure: dict, target: Target, memo: Memo | None = None) -> dict[str, dict]:
    """Tiling data per node name, only for nodes whose untiled workspace would exceed the budget.

    ``memo(signature, decide)`` may return a tile search recorded for the same kernel signature (a tuning
    database: only searches of at least ``MEMO_MIN_CANDIDATES`` candidates are looked up; the workspace
    split of the portable kernels is arithmetic on the signature, cheaper than a lookup).
    """
    from . import tiling_search as search

    budget, buffers = int(target.buffers["workspace_bytes"]), search.Buffers.from_target(target.buffers)
    memo = memo or (lambda _signature, decide: decide())
    plan: dict[str, dict | None] = {}
    batched: dict[Problem, list[str]] = {}  # a small search's problem -> the nodes it tiles (equal problems, once)
    for owner, native, d in _tiled_nodes(structure):
        types = _static_types(owner, d)
        if types is None:
            continue  # a body value sized at run time: the untiled kernel
        name, (inputs, output) = d["name"], types
        if name not in native:
            plan[name] = choose(Node.from_json(d), inputs, output, budget)
            continue
        problem = native_problem(d["op"], d["attrs"], inputs, output)
        if search.candidate_count(problem, buffers) >= MEMO_MIN_CANDIDATES:
            signature = {**kernel_signature(Node.from_json(d), inputs, output, owner.get("formats", {}), 0),
                         "buffers": target.buffers}
            plan[name] = memo(signature, lambda p=problem: search.search(p, buffers))
        else:
            plan[name] = None  # keeps the walk order; search_many fills it in below
            batched.setdefault(problem, []).append(name)
    for names, found in zip(batched.values(), search.search_many(list(batched), buffers), strict=True):
        plan.update(dict.fromkeys(names, found))
    return {name: tiling for name, tiling in plan.items() if tiling}


def _static_types(graph: dict, node: dict) -> tuple[list[TensorType | None], TensorType] | None:
    """The node's input types (None for an omitted input) and first output type; None if one is dynamic."""
    types, inputs = graph["types"], []
    for name in node["inputs"]:
        if not name:
            inputs.append(None)
        elif (t := _static_type(tuple(types[name]["shape"]), types[name]["dtype"])) is None:
            return None
        else:
            inputs.append(t)
    out = types[node["outputs"][0]]
    output = _static_type(tuple(out["shape"]), out["dtype"])
    return None if output is None else (inputs, output)


@lru_cache(maxsize=1 << 12)
def _static_type(shape: tuple[int, ...], dtype: str) -> TensorType | None:
    """``TensorType.from_json``, or None for a dynamic type; remembered: the layers of a build repeat shapes."""
    t = TensorType(shape, dtype)
    return None if t.dynamic else t


def _tiled_nodes(graph: dict) -> Iterator[tuple[dict, frozenset[str], dict]]:
    """(graph, its native node names, node) of each Conv/MatMul/Gemm in ``Graph.walk`` order, control-flow
    bodies included (node names are unique across them), read from the structure's JSON as it is:
    ``Graph.from_json`` decodes every node, type and const, most of this stage's time on a 200-node graph."""
    native = frozenset(graph.get("native", ()))
    for node in graph["nodes"]:
        if node["op"] in TILED_OPS and not node.get("domain"):
            yield graph, native, node
        for value in node["attrs"].values():
            if isinstance(value, dict) and "graph" in value and "tensor" not in value:  # a body (decode_attr)
                yield from _tiled_nodes(value["graph"])


def kernel_signature(node: Node, inputs: list[TensorType | None], output: TensorType, formats: Mapping[str, str],
                     budget: int) -> dict:
    """Everything a kernel decision may depend on: op, attributes, types, formats (value -> format, ND when
    absent: the graph's ``formats``), budget."""
    return {"op": node.op_type, "attrs": node.to_json()["attrs"],
            "inputs": [t.to_json() if t else None for t in inputs], "output": output.to_json(),
            "formats": [formats.get(i, "ND") if i else None for i in node.inputs], "budget": budget}


def native_problem(op: str, attrs: Mapping[str, Any], inputs: list[TensorType | None],
                   output: TensorType) -> Problem:
    """The tiling_search problem of a native cube kernel (Conv, or MatMul/Gemm with their transposes)."""
    from .tiling_search import conv_problem, matmul_problem

    in_bytes, out_bytes = _itemsize(inputs[0].dtype), _itemsize(output.dtype)
    if op == "Conv":
        (n, c, _h, _w), (o, _, kh, kw) = inputs[0].shape, inputs[1].shape
        return conv_problem(n, c, o, kh, kw, output.shape[2], output.shape[3], in_bytes, out_bytes)
    a, b = inputs[0].shape, inputs[1].shape
    trans_a = op == "Gemm" and attrs.get("transA", 0)
    trans_b = op == "Gemm" and attrs.get("transB", 0)
    m, k = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
    n = b[-2] if trans_b else b[-1]
    return matmul_problem(m, n, k, in_bytes, out_bytes)


def search_native(node: Node, inputs: list[TensorType | None], output: TensorType, target: Target) -> dict:
    """Tile shapes (multiples of 16) for a native cube kernel: the argmin of tiling_search's cost model."""
    from .tiling_search import Buffers, search

    return search(native_problem(node.op_type, node.attrs, inputs, output), Buffers.from_target(target.buffers))


@cache
def _itemsize(dtype: str) -> int:
    return dtype_from_name(dtype).itemsize


def choose(node: Node, inputs: list[TensorType | None], output: TensorType, budget: int) -> dict | None:
    """The tiling of one kernel, a function of its signature only (op, attrs, types, budget)."""
    if node.op_type == "Conv":
        return _conv(node, inputs, output, budget)
    if node.op_type in ("MatMul", "Gemm"):
        return _matmul(node, inputs, budget)
    return None


def _conv(node: Node, inputs: list[TensorType | None], output: TensorType, budget: int) -> dict | None:
    """Untiled, the kernel builds one im2col of (batch x groups x output positions x C/group*prod(kernel));
    tiled, one chunk of ``tile_hw`` positions for one image and group at a time."""
    weight = inputs[1]
    itemsize = dtype_from_name(weight.dtype).itemsize
    column = math.prod(weight.shape[1:]) * itemsize  # bytes of one im2col row of one group
    positions = math.prod(output.shape[2:])
    images_x_groups = output.shape[0] * int(node.attrs.get("group", 1))
    if images_x_groups * positions * column <= budget:
        return None
    tile_hw = max(1, min(positions, budget // column))
    return {"tile_hw": tile_hw, "workspace_bytes": tile_hw * column}


def _matmul(node: Node, inputs: list[TensorType | None], budget: int) -> dict | None:
    """Blocks of tile_m x tile_n outputs: A rows (tile_m x K) + B cols (K x tile_n) + the block stay in budget."""
    a, b = inputs[0], inputs[1]
    if len(a.shape) < 2 or len(b.shape) < 2:
        return None
    trans_a = node.op_type == "Gemm" and node.attrs.get("transA", 0)
    trans_b = node.op_type == "Gemm" and node.attrs.get("transB", 0)
    m, k = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
    n = b.shape[-2] if trans_b else b.shape[-1]
    itemsize = max(dtype_from_name(a.dtype).itemsize, 4)

    def workspace(tm: int, tn: int) -> int:
        return (tm * k + k * tn + tm * tn) * itemsize

    if workspace(m, n) <= budget:
        return None
    tile_m, tile_n = _pow2_floor(m), _pow2_floor(n)
    while workspace(tile_m, tile_n) > budget and (tile_m > 1 or tile_n > 1):
        if tile_m >= tile_n and tile_m > 1:
            tile_m //= 2
        else:
            tile_n //= 2
    return {"tile_m": tile_m, "tile_n": tile_n, "workspace_bytes": workspace(tile_m, tile_n)}


def _pow2_floor(x: int) -> int:
    return 1 << max(0, int(math.log2(max(1, x))))


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """``run`` with tile searches shared through the kernel-level cache."""
    return {"tiling": run(inputs["structure"], ctx.target, ctx.memo("tiling", VERSION))}


STAGE = Stage("tiling", VERSION, compute, outputs=("tiling",), inputs=(Input("formats", "structure"),),
              params=("target",), scope=GRAPH)
