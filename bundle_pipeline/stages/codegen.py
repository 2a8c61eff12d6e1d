"""codegen: per-graph program as data: kernel calls with tiling data and a liveness-based buffer plan."""

from __future__ import annotations

from collections.abc import Callable

from ..ir.graph import Graph, Node, encode_tensor

Memo = Callable[[dict, Callable[[], dict]], dict]

NAME = "codegen"
VERSION = "1"
ALIGN = 64  # arena offsets are 64-byte aligned so every dtype view is aligned
CUBE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


def run(structure: dict, tiling: dict[str, dict], variables: dict, role: str, options: dict,
        memo: Memo | None = None) -> dict:
    """The program the runtime executes. ``options``: exec_disable_reused_memory, precision_mode.

    ``memo(signature, decide)`` may return the kernel data recorded for the same kernel signature.
    """
    graph = Graph.from_json(structure)
    reads = [v for v in [*graph.inputs, *graph.weights] if v in variables]
    fp16 = options.get("precision_mode") == "force_fp16"
    memo = memo or (lambda _signature, decide: decide())
    steps = [_step(node, tiling.get(node.name), fp16, graph, memo) for node in graph.nodes]
    reuse = options.get("exec_disable_reused_memory", "0") != "1"
    buffers, arena = plan_buffers(graph, reuse)
    return {
        "graph": graph.name, "role": role, "opset": graph.opset,
        "feeds": [_typed(graph, v) for v in graph.inputs if v not in variables],
        "reads": sorted(reads),
        "weights": sorted(w for w in graph.weights if w not in variables),
        "consts": {k: encode_tensor(v) for k, v in sorted(graph.consts.items())},
        "outputs": [{**_typed(graph, o), "variable": o in variables and role != "infer"} for o in graph.outputs],
        "values": buffers,
        "steps": steps,
        "arena_bytes": arena,
        "reuse_memory": reuse,
        "formats": {k: v for k, v in sorted(graph.formats.items()) if v != "ND"},
    }


def _typed(graph: Graph, name: str) -> dict:
    return {"name": name, **graph.types[name].to_json()}


def _step(node: Node, tiling: dict | None, fp16: bool, graph: Graph, memo: Memo) -> dict:
    step = {"node": node.name, "op": node.op_type, "inputs": node.inputs, "outputs": node.outputs,
            "attrs": node.to_json()["attrs"]}
    if node.op_type not in CUBE_OPS:
        return {**step, "tiling": tiling}
    dtype = graph.types[node.inputs[0]].dtype
    signature = {"op": node.op_type, "attrs": step["attrs"], "tiling": tiling, "dtype": dtype, "fp16": fp16,
                 "inputs": [graph.types[i].to_json() if i else None for i in node.inputs]}
    return {**step, **memo(signature, lambda: _kernel_data(tiling, fp16 and dtype == "float32"))}


def _kernel_data(tiling: dict | None, fp16: bool) -> dict:
    """What the runtime needs besides the node: tiling data and the precision of the cube inputs."""
    return {"tiling": tiling, **({"precision": "fp16"} if fp16 else {})}


def plan_buffers(graph: Graph, reuse: bool) -> tuple[dict[str, dict], int]:
    """Assign every node output an arena offset; with ``reuse`` values whose lifetimes are disjoint share bytes.

    Lifetime of a value = [step that defines it, last step that reads it]; graph outputs live to the end.
    Greedy first fit in definition order (as TFLite's arena planner): place each value at the lowest
    aligned offset that does not overlap a live value already placed.
    """
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name:
                last_use[name] = index
    end = len(graph.nodes)
    placed: list[tuple[int, int, int, int]] = []  # (start step, end step, offset, size)
    buffers: dict[str, dict] = {}
    arena = 0
    for index, node in enumerate(graph.nodes):
        for name in filter(None, node.outputs):
            size = _aligned(graph.types[name].nbytes)
            life_end = end if name in graph.outputs else max(index, last_use.get(name, index))
            live = [(o, s) for (a, b, o, s) in placed if not reuse or (a <= life_end and index <= b)]
            offset = _first_fit(live, size)
            placed.append((index, life_end, offset, size))
            buffers[name] = {**graph.types[name].to_json(), "offset": offset}
            arena = max(arena, offset + size)
    return buffers, arena


def _first_fit(live: list[tuple[int, int]], size: int) -> int:
    offset = 0
    for start, length in sorted(live):
        if offset + size <= start:
            return offset
        offset = max(offset, start + length)
    return offset


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
