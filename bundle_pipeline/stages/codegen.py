"""codegen: per-graph program as data: kernel calls with tiling data and a liveness-based buffer plan."""

from __future__ import annotations

from ..ir.graph import Graph, encode_tensor

NAME = "codegen"
VERSION = "1"
ALIGN = 64  # arena offsets are 64-byte aligned so every dtype view is aligned
CUBE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


def run(structure: dict, tiling: dict[str, dict], variables: dict, role: str, options: dict) -> dict:
    """The program the runtime executes. ``options``: exec_disable_reused_memory, precision_mode."""
    graph = Graph.from_json(structure)
    reads = [v for v in [*graph.inputs, *graph.weights] if v in variables]
    fp16 = options.get("precision_mode") == "force_fp16"
    steps = [_step(node, tiling, fp16, graph) for node in graph.nodes]
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


def _step(node, tiling: dict[str, dict], fp16: bool, graph: Graph) -> dict:
    step = {"node": node.name, "op": node.op_type, "inputs": node.inputs, "outputs": node.outputs,
            "attrs": node.to_json()["attrs"], "tiling": tiling.get(node.name)}
    if fp16 and node.op_type in CUBE_OPS and graph.types[node.inputs[0]].dtype == "float32":
        step["precision"] = "fp16"
    return step


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
