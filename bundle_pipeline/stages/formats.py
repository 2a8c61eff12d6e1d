"""formats: one storage format per variable for the bundle, then every value's format, TransData where needed.

Per node the target's kernel table says which formats each input position takes and what comes out;
a native kernel (npu: Conv in NC1HWC0 x FRACTAL_Z, MatMul in FRACTAL_NZ, elementwise in the operands'
format...) is used when ``runtime.npu.supports`` accepts the call, else the node runs the portable
kernel on standard layouts (ND / NCHW, which are the same row-major bytes). Where a value is in another
format than its reader wants, a TransData node converts it, except for weights: their conversion is
folded into the stored constant (the ``formats.weights`` task transforms the bytes). Feeds and infer
outputs are standard layouts; a graph output that writes a variable ends in that variable's format,
so an update writes the stored bytes in place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..dtypes import dtype_from_name, is_extended
from ..ir.graph import Graph, Node
from ..runtime.formats import accepts, storage_shape
from ..targets import STANDARD, Target

NAME = "formats"
VERSION = "3"


def natural_format(rank: int, target: Target) -> str:
    """The standard layout users feed and read: NCHW for 4-D tensors where the target has it, else ND."""
    return "NCHW" if rank == 4 and "NCHW" in target.formats else "ND"


def same_layout(a: str, b: str) -> bool:
    return a == b or (a in STANDARD and b in STANDARD)


def native_plan(node: Node, graph: Graph, target: Target, formats: dict[str, str]
                ) -> tuple[list[str | None], str] | None:
    """(input formats, output format) when the target runs this node natively, else None."""
    from ..runtime.npu import supports

    if node.domain:
        return None  # ops of other domains (ai.onnx.ml, ...) have portable kernels only
    kernel = target.kernel(node.op_type)
    results = [o for o in node.outputs if o]
    if not kernel.native or len(results) != 1 or results[0] != node.outputs[0]:
        return None  # native kernels produce exactly one result (e.g. MaxPool without Indices)
    if any(graph.types[v].dynamic for v in [*filter(None, node.inputs), node.outputs[0]]):
        return None  # sized at run time: the portable kernel on standard layouts
    if any(is_extended(graph.types[v].dtype) for v in [*node.inputs, *results] if v in graph.types):
        return None  # bfloat16/float8/int4...: the native kernels model numpy types; the portable ones run these
    shapes = [graph.types[i].shape if i else None for i in node.inputs]
    if kernel.same_format:
        operands = [formats.get(i, "ND") for i, s in zip(node.inputs, shapes, strict=True)
                    if i and math.prod(s) > 1]
        chosen = next((f for f in operands if f not in STANDARD), None)
        if chosen is None:
            return None  # standard operands: the portable kernel is as good
        in_formats = [None if not i else chosen if math.prod(s) > 1 else "ND"
                      for i, s in zip(node.inputs, shapes, strict=True)]
        out = chosen
    else:
        in_formats = [kernel.accepted(p)[0] if i else None for p, i in enumerate(node.inputs)]
        out = kernel.output
    out_shape = graph.types[node.outputs[0]].shape
    values = [graph.consts.get(i) if i else None for i in node.inputs]
    if not supports(node.op_type, node.attrs, graph.opset, in_formats, shapes, out, out_shape, values):
        return None
    return in_formats, out


def _wanted(node: Node, position: int, graph: Graph, target: Target, formats: dict[str, str]) -> str:
    plan = native_plan(node, graph, target, formats)
    if plan is not None and plan[0][position] is not None:
        return plan[0][position]
    return natural_format(len(graph.types[node.inputs[position]].shape), target)


def assign(structures: dict[str, dict], variables: dict, target: Target) -> dict[str, str]:
    """Bundle-level step: each variable's one format, minimising the bytes TransData moves.

    Candidates are the natural (standard) layout and the formats the variable's readers' kernels want.
    A candidate's cost is measured, not estimated: ``insert`` runs on every reading graph with the
    variable in that format and the TransData bytes it adds are summed (so a conversion that an
    elementwise kernel merely moves downstream still counts). Reads happen on every inference, so they
    are compared first; then the bytes the writers (init/update graphs, which compute standard
    layouts) convert per refresh; ties go to the natural layout.
    """
    graphs = {name: Graph.from_json(s) for name, s in structures.items()}
    chosen: dict[str, str] = {}
    for name, var in variables.items():
        shape = tuple(var["shape"])
        natural = natural_format(len(shape), target)
        wanted = _wanted_formats(name, var, graphs, target)
        candidates = [natural, *sorted(f for f in wanted if f not in STANDARD and accepts(f, shape))]
        if len(candidates) == 1:
            chosen[name] = natural
            continue
        nbytes = math.prod(storage_shape(natural, shape)) * _itemsize(var["dtype"])

        def cost(fmt: str, name: str = name, var: dict = var, nbytes: int = nbytes,
                 natural: str = natural) -> tuple[int, int, bool]:
            reads = sum(transdata_bytes(insert(structures[g], {name: fmt}, target)) for g in var["readers"])
            writes = nbytes * len(var["writers"]) * (fmt not in STANDARD)
            return reads, writes, fmt != natural

        chosen[name] = min(candidates, key=lambda f, cost=cost: (*cost(f), f))
    return chosen


def _wanted_formats(name: str, var: dict, graphs: dict[str, Graph], target: Target) -> set[str]:
    wanted = set()
    for g in var["readers"]:
        graph = graphs[g]
        formats = {v: natural_format(len(graph.types[v].shape), target)
                   for v in [*graph.inputs, *graph.weights, *graph.consts]}
        wanted |= {_wanted(n, p, graph, target, formats) for n in graph.consumers().get(name, [])
                   for p, i in enumerate(n.inputs) if i == name}
    return wanted


def _itemsize(dtype: str) -> int:
    return dtype_from_name(dtype).itemsize


def transdata_bytes(structure: dict) -> int:
    """Bytes TransData nodes read, in their source format's storage shape."""
    total = 0
    for node in structure["nodes"]:
        if node["op"] == "TransData":
            ttype = structure["types"][node["inputs"][0]]
            src = node["attrs"]["src_format"]
            total += math.prod(storage_shape(src, tuple(ttype["shape"]))) * _itemsize(ttype["dtype"])
    return total


def insert(structure: dict, var_formats: dict[str, str], target: Target,
           assign: Mapping[str, str] | None = None) -> dict:
    """Per-graph step: every value's format, TransData nodes where a reader needs another, native nodes.

    ``assign`` (output -> variable) names the variable an output writes when it is not the output's own name:
    that output ends in the variable's format. An output that is a graph input passed through unchanged is
    left as it is (its name is the input's); the runtime converts it when it writes the variable."""
    graph = Graph.from_json(structure)
    assign = assign or {}
    formats = {v: var_formats.get(v, natural_format(len(graph.types[v].shape), target))
               for v in [*graph.inputs, *graph.weights, *graph.consts]}
    foldable = {w for w in graph.weights if w not in var_formats}  # constants: convert the stored bytes
    converted: dict[tuple[str, str], str] = {}
    nodes: list[Node] = []
    native: list[str] = []

    def convert(value: str, dst: str) -> str:
        if same_layout(formats[value], dst):
            return value
        if value in foldable:
            formats[value] = dst  # the first reader decides the stored format of a constant
            foldable.discard(value)
            return value
        if (value, dst) not in converted:
            out = f"{value}@{dst}"
            nodes.append(Node(f"TransData_{out}", "TransData", [value], [out],
                              {"src_format": formats[value], "dst_format": dst}))
            graph.types[out] = graph.types[value]
            formats[out] = dst
            converted[value, dst] = out
        return converted[value, dst]

    for node in graph.nodes:
        plan = native_plan(node, graph, target, formats)
        wanted = plan[0] if plan else [natural_format(len(graph.types[i].shape), target) if i else None
                                       for i in node.inputs]
        node.inputs = [convert(i, w) if i else i for i, w in zip(node.inputs, wanted, strict=True)]
        foldable.difference_update(node.inputs)  # a constant read as it is keeps its format
        nodes.append(node)
        for index, out in enumerate(node.outputs):
            if out:
                rank = len(graph.types[out].shape)
                formats[out] = plan[1] if plan and index == 0 else natural_format(rank, target)
        if plan:
            native.append(node.name)
    graph.nodes, graph.formats, graph.native = nodes, formats, native
    produced = {o for node in nodes for o in node.outputs}
    for out in graph.outputs:
        wanted = var_formats.get(assign.get(out, out), natural_format(len(graph.types[out].shape), target))
        if out in produced and not same_layout(formats[out], wanted):
            _convert_output(graph, out, wanted)
    return graph.to_json()


def _convert_output(graph: Graph, out: str, dst: str) -> None:
    """Rename the value computed for graph output ``out`` and make a TransData write ``out``: the one a reader
    already needed (``out@dst``), which then writes ``out`` itself, or else a new one at the end."""
    pre = f"{out}@pre"
    reused = next((n for n in graph.nodes if n.op_type == "TransData" and n.inputs == [out]
                   and n.attrs["dst_format"] == dst), None)
    for node in graph.nodes:
        node.inputs = [pre if i == out else i for i in node.inputs]
        node.outputs = [pre if o == out else o for o in node.outputs]
    graph.types[pre] = graph.types[out]
    graph.formats[pre] = graph.formats[out]
    graph.formats[out] = dst
    if reused is None:
        graph.nodes.append(Node(f"TransData_{out}", "TransData", [pre], [out],
                                {"src_format": graph.formats[pre], "dst_format": dst}))
        return
    converted = reused.outputs[0]
    reused.outputs = [out]
    for node in graph.nodes:
        node.inputs = [out if i == converted else i for i in node.inputs]
    graph.types.pop(converted, None)
    graph.formats.pop(converted, None)


def weight_formats(structure: dict) -> dict[str, str]:
    """The stored format of each weight of a formatted graph (what formats.weights converts to)."""
    formats = structure.get("formats", {})
    return {w: formats.get(w, "ND") for w in structure["weights"]}


def transdata_count(structure: dict) -> int:
    return sum(1 for n in structure["nodes"] if n["op"] == "TransData")
