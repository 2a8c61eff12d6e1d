"""formats: one storage format per variable for the bundle, then every value's format, TransData where needed.

The per-graph pass (kernel formats, TransData, what-if costs) is ``format_pass.py``.

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
from collections.abc import Callable, Mapping

from ..dtypes import dtype_from_name
from ..ir.graph import Graph
from ..layouts import STANDARD, accepts, storage_shape
from ..targets import Target
from .format_pass import FormatPass, natural_format, same_layout  # noqa: F401  (same_layout: part of the stage's API)

NAME = "formats"
VERSION = "3"


def assign(structures: dict[str, dict], variables: dict, target: Target,
           passes: Callable[[str], FormatPass] | None = None) -> dict[str, str]:
    """Bundle-level step: each variable's one format, minimising the bytes TransData moves.

    Candidates are the natural (standard) layout and the formats the variable's readers' kernels want.
    A candidate's cost is measured, not estimated: the TransData bytes the per-graph insertion would add on
    every reading graph with the variable in that format (so a conversion that an elementwise kernel merely
    moves downstream still counts); ``FormatPass.transdata_bytes`` replays only the nodes that change. Reads
    happen on every inference, so they are compared first; then the bytes the writers (init/update graphs,
    which compute standard layouts) convert per refresh; ties go to the natural layout.
    """
    made: dict[str, FormatPass] = {}

    def reader(g: str) -> FormatPass:  # ``passes(g)`` when the caller shares passes between tasks
        if g not in made:
            made[g] = passes(g) if passes else FormatPass(structures[g], target)
        return made[g]

    chosen: dict[str, str] = {}
    for name, var in variables.items():
        shape = tuple(var["shape"])
        natural = natural_format(len(shape), target)
        wanted = {f for g in var["readers"] for f in _wanted_formats(name, reader(g))}
        candidates = [natural, *sorted(f for f in wanted if f not in STANDARD and accepts(f, shape))]
        if len(candidates) == 1:
            chosen[name] = natural
            continue
        nbytes = math.prod(storage_shape(natural, shape)) * _itemsize(var["dtype"])

        def cost(fmt: str, name: str = name, var: dict = var, nbytes: int = nbytes,
                 natural: str = natural) -> tuple[int, int, bool]:
            reads = sum(reader(g).transdata_bytes({name: fmt}) for g in var["readers"])
            writes = nbytes * len(var["writers"]) * (fmt not in STANDARD)
            return reads, writes, fmt != natural

        chosen[name] = min(candidates, key=lambda f, cost=cost: (*cost(f), f))
    return chosen


def _wanted_formats(name: str, fp: FormatPass) -> set[str]:
    """The formats the kernels reading ``name`` take it in, with every input in its standard layout."""
    graph = fp.graph
    natural = fp.natural_sources
    wanted = set()
    for i in fp.readers.get(name, []):
        node = graph.nodes[i]
        plan = fp.plan(i, lambda x: natural.get(x, "ND"))
        for position, value in enumerate(node.inputs):
            if value == name:
                wanted.add(plan[0][position] if plan and plan[0][position] is not None else fp.natural[name])
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


def insert(structure: dict | Graph | FormatPass, var_formats: dict[str, str], target: Target,
           assign: Mapping[str, str] | None = None) -> dict:
    """Per-graph step: every value's format, TransData nodes where a reader needs another, native nodes.

    ``assign`` (output -> variable) names the variable an output writes when it is not the output's own name:
    that output ends in the variable's format. An output that is a graph input passed through unchanged is
    left as it is (its name is the input's); the runtime converts it when it writes the variable."""
    fp = structure if isinstance(structure, FormatPass) else FormatPass(structure, target)
    return fp.build(var_formats, assign).to_json()


def weight_formats(structure: dict) -> dict[str, str]:
    """The stored format of each weight of a formatted graph (what formats.weights converts to)."""
    formats = structure.get("formats", {})
    return {w: formats.get(w, "ND") for w in structure["weights"]}


def transdata_count(structure: dict) -> int:
    return sum(1 for n in structure["nodes"] if n["op"] == "TransData")
