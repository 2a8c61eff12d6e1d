"""tiling: per kernel, tile shapes that keep the workspace under the target's budget (cpu: im2col, matmul)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..dtypes import dtype_from_name
from ..ir.graph import Graph, Node, TensorType
from ..targets import Target
from .stage import GRAPH, Input, Stage, StageContext

VERSION = "3"
TILED_OPS = frozenset({"Conv", "MatMul", "Gemm"})  # the kernels whose workspace grows with the problem


Memo = Callable[[dict, Callable[[], "dict | None"]], "dict | None"]


def run(structure: dict, target: Target, memo: Memo | None = None) -> dict[str, dict]:
    """Tiling data per node name, only for nodes whose untiled workspace would exceed the budget.

    ``memo(signature, decide)`` may return a tile search recorded for the same kernel signature (a tuning
    database: only searches are recorded; the workspace split of the portable kernels is arithmetic on the
    signature, cheaper than a lookup).
    """
    graph = Graph.from_json(structure)
    budget = int(target.buffers["workspace_bytes"])
    memo = memo or (lambda _signature, decide: decide())
    plan: dict[str, dict] = {}
    for owner, node in graph.walk():  # control-flow bodies too: node names are unique across them
        if node.op_type not in TILED_OPS or node.domain:
            continue
        types = [owner.types[i] if i else None for i in node.inputs]
        output = owner.types[node.outputs[0]]
        if any(t is not None and t.dynamic for t in [*types, output]):
            continue  # a body value sized at run time: the untiled kernel
        if node.name in owner.native:  # the target's cube unit: search tile shapes against its buffers
            signature = {**kernel_signature(node, types, output, owner, 0), "buffers": target.buffers}
            tiling = memo(signature, lambda n=node, t=types, o=output: search_native(n, t, o, target))
        else:
            tiling = choose(node, types, output, budget)
        if tiling:
            plan[node.name] = tiling
    return plan


def kernel_signature(node: Node, inputs: list[TensorType | None], output: TensorType, graph: Graph,
                     budget: int) -> dict:
    """Everything a kernel decision may depend on: op, attributes, types, formats, budget."""
    return {"op": node.op_type, "attrs": node.to_json()["attrs"],
            "inputs": [t.to_json() if t else None for t in inputs], "output": output.to_json(),
            "formats": [graph.format_of(i) if i else None for i in node.inputs], "budget": budget}


def search_native(node: Node, inputs: list[TensorType | None], output: TensorType, target: Target) -> dict:
    """Tile shapes (multiples of 16) for a native cube kernel: the argmin of tiling_search's cost model."""
    from .tiling_search import Buffers, search_conv, search_matmul

    buffers = Buffers.from_target(target.buffers)
    in_bytes, out_bytes = dtype_from_name(inputs[0].dtype).itemsize, dtype_from_name(output.dtype).itemsize
    if node.op_type == "Conv":
        (n, c, h, w), (o, _, kh, kw) = inputs[0].shape, inputs[1].shape
        found = search_conv(n, c, h, w, o, kh, kw, output.shape[2], output.shape[3], in_bytes, out_bytes, buffers)
    else:
        a, b = inputs[0].shape, inputs[1].shape
        trans_a = node.op_type == "Gemm" and node.attrs.get("transA", 0)
        trans_b = node.op_type == "Gemm" and node.attrs.get("transB", 0)
        m, k = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
        n = b[-2] if trans_b else b[-1]
        found = search_matmul(m, n, k, in_bytes, out_bytes, buffers)
    return found


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
