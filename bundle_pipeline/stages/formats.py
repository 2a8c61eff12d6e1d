"""formats: one storage format per variable for the bundle, then every value's format, TransData where needed.

The per-graph pass (kernel formats, TransData, what-if costs) is ``format_pass.py``.

Per node the target's kernel table says which formats each input position takes and what comes out;
a native kernel (npu: Conv in NC1HWC0 x FRACTAL_Z, MatMul in FRACTAL_NZ, elementwise in the operands'
format...) is used when ``targets.npu.supports`` accepts the call, else the node runs the portable
kernel on standard layouts (ND / NCHW, which are the same row-major bytes). Where a value is in another
format than its reader wants, a TransData node converts it, except for weights: their conversion is
folded into the stored constant (the ``formats.weights`` task transforms the bytes). Feeds and infer
outputs are standard layouts; a graph output that writes a variable ends in that variable's format,
so an update writes the stored bytes in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..dtypes import dtype_from_name
from ..ir.graph import Graph
from ..layouts import STANDARD, accepts, storage_shape
from ..targets import Target
from .format_pass import FormatPass, natural_format, same_layout  # noqa: F401  (same_layout: part of the stage's API)
from .stage import GRAPH, Input, Stage, StageContext

VERSION = "5"  # 4: format costs measured per graph (formats.cost); 5: none for a variable with one possible format


def assign(structures: dict[str, dict], variables: dict, target: Target,
           passes: Callable[[str], FormatPass] | None = None) -> dict[str, str]:
    """``choose`` over every reading graph's ``costs``, in one call (the pipeline runs ``costs`` as a task per
    graph, so an edit of one graph re-measures that graph only). ``passes(g)``: graph ``g``'s pass, when the
    caller shares passes between tasks."""
    readers = sorted({g for var in variables.values() for g in var["readers"]})
    return choose({g: costs(passes(g) if passes else FormatPass(structures[g], target), g, variables, target)
                   for g in readers}, variables, target)


def costs(fp: FormatPass, graph: str, variables: dict, target: Target) -> dict[str, dict]:
    """Per-graph step: for each variable graph ``graph`` reads, the formats its kernels want it in and the
    TransData bytes the graph would read per inference with the variable stored in each format it may take.

    A cost is measured, not estimated: the bytes the per-graph insertion adds with the variable in that format
    (so a conversion that an elementwise kernel merely moves downstream still counts); ``FormatPass.
    transdata_bytes`` replays only the nodes that change. Every format the target has that fits the shape is
    measured, because another reader may propose it. A variable whose shape fits no format but the standard
    layouts (every variable on the cpu target, vectors on the npu) has nothing to weigh and no entry."""
    table: dict[str, dict] = {}
    for name, var in sorted(variables.items()):
        if graph not in var["readers"]:
            continue
        shape = tuple(var["shape"])
        formats = alternatives(shape, target)
        if not formats:
            continue
        table[name] = {"wanted": sorted(_wanted_formats(name, fp)),
                       "reads": {f: fp.transdata_bytes({name: f})
                                 for f in [natural_format(len(shape), target), *formats]}}
    return table


def choose(costs: dict[str, dict[str, dict]], variables: dict, target: Target) -> dict[str, str]:
    """Bundle-level step: each variable's one format, minimising the bytes TransData moves, from the reading
    graphs' ``costs``.

    Candidates are the natural (standard) layout and the formats the variable's readers' kernels want. Reads
    happen on every inference, so they are compared first; then the bytes the writers (init/update graphs,
    which compute standard layouts) convert per refresh; ties go to the natural layout.
    """
    chosen: dict[str, str] = {}
    for name, var in variables.items():
        shape = tuple(var["shape"])
        natural = natural_format(len(shape), target)
        if not alternatives(shape, target):  # ``costs`` measured nothing for it
            chosen[name] = natural
            continue
        tables = [costs[g][name] for g in var["readers"]]
        wanted = {f for t in tables for f in t["wanted"]}
        candidates = [natural, *sorted(f for f in wanted if f not in STANDARD and accepts(f, shape))]
        nbytes = math.prod(storage_shape(natural, shape)) * _itemsize(var["dtype"])

        def cost(fmt: str, tables: list = tables, var: dict = var, nbytes: int = nbytes,
                 natural: str = natural) -> tuple[int, int, bool, str]:
            reads = sum(t["reads"][fmt] for t in tables)
            writes = nbytes * len(var["writers"]) * (fmt not in STANDARD)
            return reads, writes, fmt != natural, fmt

        chosen[name] = natural if len(candidates) == 1 else min(candidates, key=cost)
    return chosen


def alternatives(shape: tuple[int, ...], target: Target) -> list[str]:
    """The formats besides the standard layouts that a variable of ``shape`` may be stored in on ``target``."""
    return [f for f in target.formats if f not in STANDARD and accepts(f, shape)]


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
    return fp.build_json(var_formats, assign)


def weight_formats(structure: dict) -> dict[str, str]:
    """The stored format of each weight of a formatted graph (what formats.weights converts to)."""
    formats = structure.get("formats", {})
    return {w: formats.get(w, "ND") for w in structure["weights"]}


def transdata_count(structure: dict) -> int:
    return sum(1 for n in structure["nodes"] if n["op"] == "TransData")


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """The formatted structure, and the format of each weight apart: all ``formats.weights`` reads."""
    fp = FormatPass.shared(ctx.hashes["structure"], inputs["structure"], ctx.target)
    structure = insert(fp, inputs["var_formats"], ctx.target, params.get("assign"))
    return {"structure": structure, "weight_formats": weight_formats(structure)}


STAGE = Stage("formats", VERSION, compute, outputs=("structure", "weight_formats"),
              inputs=(Input("parse", "structure"), Input("formats.assign", "var_formats")),
              params=("target", "assign"), scope=GRAPH)
