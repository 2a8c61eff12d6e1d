"""codegen: per-graph program as data: kernel calls with tiling data and a liveness-based buffer plan.

Options it reads (infer graphs; see options.py): ``exec_disable_reused_memory`` (buffer plan),
``precision_mode`` (cube steps marked ``"precision": "fp16"``), ``input_format`` (NHWC: 4-D feeds are declared
NHWC and a leading Transpose step makes the NCHW value the graph reads) and ``op_select_implmode``
(high_performance: Gelu/Erf/Exp/Tanh/Sigmoid steps marked ``"impl": "high_performance"``). The runtime only
executes what the program says.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .. import program
from ..errors import OptionInvalid
from ..ir.graph import Graph, Node, TensorType, encode_attr
from ..layouts import STANDARD, storage_shape
from ..program import APPROX_OPS, CONTROL_OPS, TRANSDATA, encode_tensor
from .stage import GRAPH, Input, Stage, StageContext

if TYPE_CHECKING:  # the typed classes load on first use (program.__getattr__): a no-op build never needs them
    from ..program import Body, Layout, Output, Plan, Program, Step, Value

NAME = "codegen"
VERSION = "3"
ALIGN = 64  # arena offsets are 64-byte aligned so every dtype view is aligned
CUBE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
MOVE_OPS = frozenset({"TransData", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat",
                      "Split", "Slice", "Gather", "Expand", "Tile", "Pad", "Shape", "Size", "Cast", "Dropout"})
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
NHWC_TO_NCHW = [0, 3, 1, 2]


def run(structure: dict, tiling: dict[str, dict], variables: dict, role: str, options: dict,
        assign: Mapping[str, str] | None = None) -> dict:
    """The program the runtime executes, as the JSON a bundle stores (``program.encode`` of ``build``)."""
    return program.encode(build(structure, tiling, variables, role, options, assign))


def build(structure: dict, tiling: dict[str, dict], variables: dict, role: str, options: dict,
          assign: Mapping[str, str] | None = None) -> Program:
    """The typed program. ``options``: the codegen subset of the graph's build options.

    ``assign`` (output -> variable) of an init/update graph: an output marked ``variable`` writes the variable
    of its own name, or the one named by ``writes``.
    """
    graph = Graph.from_json(structure)
    layouts = apply_input_format(graph, variables, options.get("input_format", "NCHW"))
    reads = [v for v in [*graph.inputs, *graph.weights] if v in variables]
    precision = options.get("precision_mode", "must_keep_origin_dtype")
    fast = options.get("op_select_implmode", "high_precision") == "high_performance"
    reuse = options.get("exec_disable_reused_memory", "0") != "1"
    emit = _Emit(tiling, precision, fast, reuse)
    steps = emit.steps(graph)
    values, arena, unshared = _plan(graph, reuse)
    # for inspect: what the other setting would cost (without reuse that is just the sum of the blocks)
    other = unshared if reuse else plan_buffers(graph, True)[1]
    return program.Program(
        graph=graph.name, role=role, opset=graph.opset, opsets=dict(sorted(graph.domain_opsets.items())),
        feeds=tuple(program.Feed(v, *_type(graph, v), layouts.get(v)) for v in graph.inputs if v not in variables),
        reads=tuple(sorted(reads)), weights=tuple(sorted(w for w in graph.weights if w not in variables)),
        consts={k: encode_tensor(v) for k, v in sorted(graph.consts.items())},
        outputs=tuple(_output(graph, o, variables, role, assign or {}) for o in graph.outputs),
        values=values, steps=steps, arena_bytes=arena, reuse_memory=reuse,
        arena_bytes_by_reuse={"on": arena if reuse else other, "off": other if reuse else arena},
        formats={k: v for k, v in sorted(graph.formats.items()) if v not in STANDARD})


def apply_input_format(graph: Graph, variables: dict, input_format: str) -> dict[str, str]:
    """NHWC: every 4-D feed ``x`` is declared [N,H,W,C]; a leading Transpose step writes ``x@nchw`` [N,C,H,W]
    and every node that read ``x`` reads that instead. Returns feed name -> declared layout (changed feeds only).

    NCHW and ND are the standard layout the graph already reads: nothing changes.
    """
    if input_format != "NHWC":
        return {}
    feeds = [v for v in graph.inputs if v not in variables]
    four_d = [v for v in feeds if len(graph.types[v].shape) == 4]
    if not four_d:
        shown = ", ".join(f"{v}{list(graph.types[v].shape)}" for v in feeds) or "none"
        raise OptionInvalid(f"input_format NHWC applies to 4-D inputs and graph {graph.name} has none "
                            f"(inputs: {shown}); use NCHW or ND", f"graph {graph.name}")
    leading = []
    for name in four_d:
        internal = _fresh(f"{name}@nchw", graph.types)
        n, c, h, w = graph.types[name].shape
        dtype = graph.types[name].dtype
        graph.types[internal] = TensorType((n, c, h, w), dtype)
        graph.types[name] = TensorType((n, h, w, c), dtype)
        for node in graph.nodes:
            node.inputs = [internal if i == name else i for i in node.inputs]
        if name in graph.formats:
            graph.formats[internal] = graph.formats.pop(name)
        leading.append(Node(_fresh(f"input_format/{name}", {n.name for n in graph.nodes}), "Transpose", [name],
                            [internal], {"perm": list(NHWC_TO_NCHW)}))
    graph.nodes[:0] = leading
    return dict.fromkeys(four_d, "NHWC")


def _fresh(name: str, taken) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}~{n}"
    return candidate


def _output(graph: Graph, name: str, variables: dict, role: str, assign: Mapping[str, str]) -> Output:
    """A graph output; when it writes a variable, ``variable`` is set (and ``writes`` names the variable if
    ``assign`` maps the output to another name). All writes of a run land together after it (the runtime)."""
    written = assign.get(name, name)
    writes = written in variables and role != "infer"
    return program.Output(name, *_type(graph, name), writes, written if writes and written != name else None)


def _type(graph: Graph, name: str) -> tuple[tuple[int, ...], str]:
    return tuple(graph.types[name].shape), graph.types[name].dtype


def _value(graph: Graph, name: str) -> Value:
    return program.Value(name, *_type(graph, name))


@dataclass(frozen=True)
class _Emit:
    """What every step of a graph (and of its control-flow bodies) is generated with."""

    tiling: dict[str, dict]
    precision: str
    fast: bool
    reuse: bool

    def steps(self, graph: Graph) -> tuple[Step, ...]:
        native = set(graph.native)  # a list in the IR: looked up once a node
        return tuple(self.step(node, graph, node.name in native) for node in graph.nodes)

    def step(self, node: Node, graph: Graph, native: bool) -> Step:
        bodies = node.bodies()
        attrs = {k: encode_attr(v) for k, v in sorted(node.attrs.items()) if k not in bodies} if node.attrs else {}
        common = {"node": node.name, "op": node.op_type, "inputs": tuple(node.inputs),
                  "outputs": tuple(node.outputs), "domain": node.domain, "tiling": self.tiling.get(node.name),
                  "attrs": attrs}
        if bodies:
            bodies = {attr: self.body(body) for attr, body in sorted(bodies.items())}
        if node.op_type == TRANSDATA and not node.domain:
            return program.TransDataStep(**common, layout=_layout(node, graph))
        rounded = self.precision == "force_fp16" and _float32_step(node, graph)
        if node.op_type in CONTROL_OPS and not node.domain:
            return program.ControlStep(**common, bodies=bodies, precision="fp16_round" if rounded else None)
        kernel = {**common, "bodies": bodies, "native": native, "layout": _layout(node, graph) if native else None}
        dtype = graph.types[node.inputs[0]].dtype if node.inputs and node.inputs[0] else None
        if node.op_type not in CUBE_OPS or node.domain:
            approx = self.fast and node.op_type in APPROX_OPS and not node.domain and dtype in FLOAT_DTYPES
            return program.KernelStep(**kernel, impl="high_performance" if approx else None,
                              precision="fp16_round" if rounded else None)
        fp16 = self.precision in ("allow_fp32_to_fp16", "force_fp16") and dtype == "float32"
        return program.KernelStep(**kernel, precision="fp16" if fp16 else None)  # cube inputs rounded, fp32 accum.

    def body(self, body: Graph) -> Body:
        """A control-flow body as a program of its own: formal inputs bound per call, its own arena.
        Values sized at run time (dims -1) have no planned buffer; the executor keeps the kernel's array."""
        values, arena = plan_buffers(body, self.reuse)
        return program.Body(graph=body.name, opset=body.opset, opsets=dict(sorted(body.domain_opsets.items())),
                    inputs=tuple(_value(body, v) for v in body.inputs),
                    consts={k: encode_tensor(v) for k, v in sorted(body.consts.items())},
                    outputs=tuple(_value(body, o) for o in body.outputs),
                    values=values, steps=self.steps(body), arena_bytes=arena)


def _layout(node: Node, graph: Graph) -> Layout:
    """What a formatted kernel needs besides the arrays: each operand's format and logical shape."""
    formats, types = graph.formats, graph.types
    return program.Layout(tuple(formats.get(i, "ND") if i else None for i in node.inputs),
                          tuple(types[i].shape if i else None for i in node.inputs),
                          formats.get(node.outputs[0], "ND"), types[node.outputs[0]].shape)


def _float32_step(node: Node, graph: Graph) -> bool:
    """force_fp16 rounds float32 vector ops; shape/data movement ops move values and round nothing."""
    outs = [graph.types[o].dtype for o in node.outputs if o]
    return node.op_type not in MOVE_OPS and bool(outs) and all(d == "float32" for d in outs)


def plan_buffers(graph: Graph, reuse: bool) -> tuple[dict[str, Plan], int]:
    """Assign every node output an arena offset; with ``reuse`` values whose lifetimes are disjoint share bytes.

    Lifetime of a value = [step that defines it, last step that reads it]; graph outputs live to the end.
    Greedy first fit in definition order (as TFLite's arena planner): place each value at the lowest
    aligned offset that does not overlap a live value already placed.
    """
    values, arena, _ = _plan(graph, reuse)
    return values, arena


def _plan(graph: Graph, reuse: bool) -> tuple[dict[str, Plan], int, int]:
    """``plan_buffers`` and, from the same pass, the arena without reuse (the sum of the aligned blocks)."""
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = index  # "" (an omitted input) too: no output is named ""
    end = len(graph.nodes)
    outputs = set(graph.outputs)
    types, formats = graph.types, graph.formats
    blocks: dict[tuple[str, int], tuple[tuple[int, ...] | None, int]] = {}  # (format, id of a type) -> block
    free = _FreeList()
    dying: dict[int, list[tuple[int, int]]] = {}  # step -> (offset, size) of the blocks that die before it
    buffers: dict[str, Plan] = {}
    arena = unshared = 0
    make_plan = program.Plan
    for index, node in enumerate(graph.nodes):
        for offset, size in dying.pop(index, ()):  # placed in definition order: a dead block never matters again
            free.release(offset, size)
        for name in node.outputs:
            if not name:
                continue
            ttype = types[name]
            if ttype.dynamic:
                continue  # sized at run time (inside a control-flow body): allocated by its kernel
            fmt = formats.get(name, "ND")
            block = blocks.get((fmt, id(ttype)))  # types are interned: ids repeat, and hash faster than types
            if block is None:
                block = blocks[fmt, id(ttype)] = _block(fmt, ttype.shape, ttype.dtype, ttype.itemsize)
            storage, size = block
            life_end = end if name in outputs else max(index, last_use.get(name, index))
            # without reuse nothing dies, every block is packed from 0 without gaps: first fit is the end
            offset = free.take(size) if reuse else unshared
            if reuse:
                dying.setdefault(life_end + 1, []).append((offset, size))
            buffers[name] = (make_plan(ttype.shape, ttype.dtype, offset) if storage is None
                             else make_plan(ttype.shape, ttype.dtype, offset, fmt, storage))
            unshared += size
            arena = max(arena, offset + size)
    return buffers, arena, unshared


def unshared_arena(graph: Graph) -> int:
    """The arena ``plan_buffers(graph, reuse=False)`` plans: every value its own aligned block, end to end."""
    return _plan(graph, False)[1]


@lru_cache(maxsize=4096)
def _block(fmt: str, shape: tuple[int, ...], dtype: str, itemsize: int) -> tuple[tuple[int, ...] | None, int]:
    """(physical shape when ``fmt`` is not a standard layout, else None; aligned bytes) of a static value: a
    graph has a few dozen distinct types and formats, and a build plans thousands of values."""
    storage = storage_shape(fmt, shape)
    size = _aligned(math.prod(storage) * itemsize)
    return (None if fmt in STANDARD else tuple(storage)), size


class _FreeList:
    """The free bytes of an arena as sorted, merged gaps (the last one endless): first fit is the lowest gap
    that holds the block, found without walking every live block (a graph with thousands of outputs, all live
    to the end, made that quadratic)."""

    def __init__(self) -> None:
        self.starts: list[int] = [0]
        self.ends: list[float] = [math.inf]

    def take(self, size: int) -> int:
        if size == 0:
            return 0  # an empty value overlaps nothing
        for i, (start, end) in enumerate(zip(self.starts, self.ends, strict=True)):
            if end - start >= size:
                if end - start == size:
                    del self.starts[i], self.ends[i]
                else:
                    self.starts[i] = start + size
                return start
        raise AssertionError("the last gap is endless")

    def release(self, offset: int, size: int) -> None:
        if size == 0:
            return
        i = bisect.bisect_left(self.starts, offset)
        start, end = offset, offset + size
        if i > 0 and self.ends[i - 1] == start:  # merge with the gap below
            i -= 1
            start = self.starts[i]
            del self.starts[i], self.ends[i]
        if i < len(self.starts) and self.starts[i] == end:  # and with the gap above
            end = self.ends[i]
            del self.starts[i], self.ends[i]
        self.starts.insert(i, start)
        self.ends.insert(i, end)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """``run`` on the formatted structure, its tiling and the variable table (the stage calling convention)."""
    return {"program": run(inputs["structure"], inputs["tiling"], inputs["variables"], params["role"],
                           params["options"], params.get("assign"))}


STAGE = Stage("codegen", VERSION, compute, outputs=("program",),
              inputs=(Input("formats", "structure"), Input("tiling", "tiling"), Input("dedupe", "variables")),
              params=("role", "options", "target", "assign"), scope=GRAPH,
              preload=("bundle_pipeline.program.schema",))  # the typed step classes (lazy for a no-op)
