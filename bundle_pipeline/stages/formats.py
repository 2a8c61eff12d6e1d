"""formats: one storage format per variable for the bundle, then TransData where a kernel wants another."""

from __future__ import annotations

from ..ir.graph import Graph, Node, TensorType
from ..targets import Target

NAME = "formats"
VERSION = "1"


def natural_format(rank: int, target: Target) -> str:
    """The standard layout users feed and read: NCHW for 4-D tensors where the target has it, else ND."""
    return "NCHW" if rank == 4 and "NCHW" in target.formats else "ND"


def assign(structures: dict[str, dict], variables: dict, target: Target) -> dict[str, str]:
    """Bundle-level step: pick each variable's format to minimise TransData bytes over all its readers.

    Cost of a candidate = sum over reading kernels that do not accept it of the variable's bytes (each
    such read needs a TransData). Ties go to the natural format, so the cpu target keeps ND/NCHW.
    """
    graphs = {name: Graph.from_json(s) for name, s in structures.items()}
    chosen: dict[str, str] = {}
    for name, var in variables.items():
        ttype = TensorType(tuple(var["shape"]), var["dtype"])
        natural = natural_format(len(ttype.shape), target)
        candidates = [f for f in target.formats if f == natural or f not in ("NCHW", "ND")]
        consumers = {g: graphs[g].consumers().get(name, []) for g in var["readers"]}

        def cost(fmt: str, consumers: dict = consumers, ttype: TensorType = ttype) -> int:
            # insert() converts a value once per graph and destination format, however many nodes read it
            return sum(ttype.nbytes * len({target.kernel(n.op_type).inputs[0] for n in nodes
                                           if fmt not in target.kernel(n.op_type).inputs})
                       for nodes in consumers.values())

        chosen[name] = min(candidates, key=lambda f: (cost(f), f != natural, f))
    return chosen


def insert(structure: dict, var_formats: dict[str, str], target: Target) -> dict:
    """Per-graph step: give every value a format; insert TransData where a consumer cannot take it.

    Graph outputs that write a variable are converted to that variable's stored format, so an update
    writes the stored bytes in place; other outputs return to the natural layout users read.
    """
    graph = Graph.from_json(structure)
    formats = {v: var_formats.get(v, natural_format(len(graph.types[v].shape), target))
               for v in [*graph.inputs, *graph.weights, *graph.consts]}
    converted: dict[tuple[str, str], str] = {}
    nodes: list[Node] = []

    def convert(value: str, dst: str) -> str:
        if formats[value] == dst:
            return value
        key = (value, dst)
        if key not in converted:
            out = f"{value}@{dst}"
            nodes.append(Node(f"TransData_{out}", "TransData", [value], [out],
                              {"src_format": formats[value], "dst_format": dst}))
            graph.types[out] = graph.types[value]
            formats[out] = dst
            converted[key] = out
        return converted[key]

    for node in graph.nodes:
        kernel = target.kernel(node.op_type)
        node.inputs = [convert(i, kernel.inputs[0]) if i and formats[i] not in kernel.inputs else i
                       for i in node.inputs]
        nodes.append(node)
        for out in node.outputs:
            if out:
                formats[out] = _output_format(kernel.output, len(graph.types[out].shape), target)
    graph.nodes, graph.formats = nodes, formats
    for out in graph.outputs:
        wanted = var_formats.get(out, natural_format(len(graph.types[out].shape), target))
        if formats[out] != wanted:
            _convert_output(graph, out, wanted)
    return graph.to_json()


def _output_format(produced: str, rank: int, target: Target) -> str:
    """ND and NCHW name the same row-major bytes: a standard-layout result is labelled by its rank."""
    return natural_format(rank, target) if produced in ("ND", "NCHW") else produced


def _convert_output(graph: Graph, out: str, dst: str) -> None:
    """Rename the value computed for graph output ``out`` and append a TransData that writes ``out``."""
    pre = f"{out}@pre"
    for node in graph.nodes:
        node.inputs = [pre if i == out else i for i in node.inputs]
        node.outputs = [pre if o == out else o for o in node.outputs]
    graph.types[pre] = graph.types[out]
    graph.formats[pre] = graph.formats[out]
    graph.formats[out] = dst
    graph.nodes.append(Node(f"TransData_{out}", "TransData", [pre], [out],
                            {"src_format": graph.formats[pre], "dst_format": dst}))


def transdata_count(structure: dict) -> int:
    return sum(1 for n in structure["nodes"] if n["op"] == "TransData")
