"""Format insertion over one graph: every value's format, TransData where a reader wants another, what-ifs.

Per node the target's kernel table says which formats each input position takes and what comes out; a
native kernel is used when ``targets.npu.supports`` accepts the call, else the node runs the portable kernel
on standard layouts. Where a value is in another format than its reader wants, a TransData converts it,
except for weights: the first reader decides a constant's stored format (``formats.weights`` converts the
bytes), later readers convert it like any value.

``FormatPass`` parses a structure once and keeps:

- the native-plan decision of each node, memoised per (node, input formats): a plan depends on nothing else;
- one recorded *baseline* pass (no variable formats given) with what each node saw and did.

``build(var_formats)`` runs the whole pass and returns the formatted structure (the per-graph ``formats``
stage). ``transdata_bytes(var_formats)`` answers what format assignment asks for every candidate format of
every variable without re-running the pass: starting from the baseline, it replays, in topological order,
only the nodes that would see an input differently, and stops where the difference stops (an elementwise
kernel that carries a new format onward is replayed, a node whose inputs look as in the baseline is not).
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import ChainMap, Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from ..dtypes import dtype_from_name, is_extended
from ..ir.graph import Graph, Node
from ..layouts import STANDARD, storage_shape
from ..targets import Target

SHARED_PASSES = 256  # passes kept per process (FormatPass.shared)
_SHARED: OrderedDict[tuple[str, str], FormatPass] = OrderedDict()
_SHARED_LOCK = threading.Lock()
Plan = tuple[list[str | None], str] | None  # (input formats, output format) of a native call, else None
State = tuple[str, bool]  # (format, foldable): a value's format and whether a reader may still fold it
Pair = tuple[str, str]  # (value, destination format): one TransData
Conversion = tuple[str, str, str]  # (value, destination format, source format): its bytes depend on all three


def natural_format(rank: int, target: Target) -> str:
    """The standard layout users feed and read: NCHW for 4-D tensors where the target has it, else ND."""
    return "NCHW" if rank == 4 and "NCHW" in target.formats else "ND"


def same_layout(a: str, b: str) -> bool:
    return a == b or (a in STANDARD and b in STANDARD)


def native_plan(node: Node, graph: Graph, target: Target, formats: dict[str, str]) -> Plan:
    """(input formats, output format) when the target runs this node natively, else None."""
    from ..targets.npu import supports

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


@dataclass(frozen=True)
class Step:
    """What the pass did at one node."""

    seen: tuple[State | None, ...]  # each input's state when the node ran (None: an omitted input)
    plan: Plan
    reads: tuple[str | Pair, ...]  # per input: the value as it is ("" when omitted), or the TransData it reads
    converted: dict[Pair, str]  # the TransData pairs it reads through -> their source format
    after: dict[str, State]  # the state each weight it read is left in
    outs: tuple[str | None, ...]  # the format of each output


class FormatPass:
    """One graph's format insertion, parsed once; see the module docstring."""

    @staticmethod
    def shared(key: str, structure: dict, target: Target) -> FormatPass:
        """The pass of the structure whose content hash is ``key``, kept for the next task of this process that
        needs it: format assignment runs every reading graph's baseline pass, and each graph's ``formats``
        task then reuses it instead of parsing the graph and running it again."""
        memo_key = (key, target.fingerprint)
        with _SHARED_LOCK:
            found = _SHARED.get(memo_key)
            if found is not None:
                _SHARED.move_to_end(memo_key)
                return found
        made = FormatPass(structure, target)
        with _SHARED_LOCK:
            _SHARED[memo_key] = made
            while len(_SHARED) > SHARED_PASSES:
                _SHARED.popitem(last=False)
        return made

    def __init__(self, structure: dict | Graph, target: Target):
        self.graph = structure if isinstance(structure, Graph) else Graph.from_json(structure)
        self.target = target
        g = self.graph
        self.natural = {v: natural_format(len(t.shape), target) for v, t in g.types.items()}
        self.sources = [*g.inputs, *g.weights, *g.consts]  # the values no node produces
        self.weights = frozenset(g.weights)
        self.readers: dict[str, list[int]] = {}
        for i, node in enumerate(g.nodes):
            for name in dict.fromkeys(filter(None, node.inputs)):
                self.readers.setdefault(name, []).append(i)
        self.producer = {o: (i, k) for i, node in enumerate(g.nodes) for k, o in enumerate(node.outputs) if o}
        self._plans: dict[tuple, Plan] = {}
        self.full_passes = 0  # how often the whole pass ran (format assignment must not scale with candidates)
        self.base_initial = self.initial({})

    @cached_property
    def base(self) -> list[Step]:
        """The baseline pass: no variable formats given (every source in its standard layout)."""
        return self._run({})

    @cached_property
    def natural_sources(self) -> dict[str, str]:
        """The standard layout of each graph input, weight and const."""
        return {v: self.natural[v] for v in self.sources}

    @cached_property
    def base_counts(self) -> dict[Conversion, int]:
        """How many baseline nodes read through each TransData."""
        counts: dict[Conversion, int] = {}
        for step in self.base:
            for conv in _conversions(step):
                counts[conv] = counts.get(conv, 0) + 1
        return counts

    @cached_property
    def base_made(self) -> dict[Pair, int]:
        """The baseline's TransData per (value, format) pair (one each: a pair has one source format a run)."""
        return {(x, dst): 1 for x, dst, _ in self.base_counts}

    @cached_property
    def base_pair_bytes(self) -> int:
        return sum(self._nbytes(x, src) for x, _, src in self.base_counts)

    def plan(self, i: int, formats: Callable[[str], str]) -> Plan:
        """Node ``i``'s native plan given its inputs' formats, memoised: a plan depends on nothing else."""
        node = self.graph.nodes[i]
        key = (i, *(formats(x) if x else None for x in node.inputs))
        if key not in self._plans:
            self._plans[key] = native_plan(node, self.graph, self.target, dict(zip(node.inputs, key[1:], strict=True)))
        return self._plans[key]

    def initial(self, var_formats: dict[str, str]) -> dict[str, State]:
        """The state of each graph input, weight and const before the first node."""
        return {v: (var_formats.get(v, self.natural[v]), v in self.weights and v not in var_formats)
                for v in self.sources}

    def step(self, i: int, state: Callable[[str], State]) -> Step:
        """Run node ``i`` against the states ``state(value)`` gives."""
        node = self.graph.nodes[i]
        seen = tuple(state(x) if x else None for x in node.inputs)
        now = {x: s for x, s in zip(node.inputs, seen, strict=True) if x}
        plan = self.plan(i, lambda x: now[x][0])
        wanted = plan[0] if plan else [self.natural[x] if x else None for x in node.inputs]
        reads: list[str | Pair] = []
        converted: dict[Pair, str] = {}
        for x, dst in zip(node.inputs, wanted, strict=True):
            if not x:
                reads.append(x)  # an omitted optional input stays ""
                continue
            fmt, foldable = now[x]
            if same_layout(fmt, dst):
                reads.append(x)
            elif foldable:  # the first reader decides a constant's stored format
                now[x] = (dst, False)
                reads.append(x)
            else:
                converted.setdefault((x, dst), fmt)
                reads.append((x, dst))
        after = {x: (now[x][0], False) for x in now if x in self.weights}  # read once: no longer foldable
        outs = tuple(None if not o else plan[1] if plan and k == 0 else self.natural[o]
                     for k, o in enumerate(node.outputs))
        return Step(seen, plan, tuple(reads), converted, after, outs)

    def _run(self, var_formats: dict[str, str]) -> list[Step]:
        self.full_passes += 1
        states = self.initial(var_formats)
        steps = []
        for i, node in enumerate(self.graph.nodes):
            step = self.step(i, states.__getitem__)
            steps.append(step)
            states.update(step.after)
            states.update({o: (f, False) for o, f in zip(node.outputs, step.outs, strict=True) if o})
        return steps

    # -- the per-graph stage -----------------------------------------------------------------------

    def build(self, var_formats: dict[str, str], assign: Mapping[str, str] | None = None) -> Graph:
        """The formatted graph: every value's format, TransData nodes, native node names; ``assign``: see
        ``formats.insert``."""
        steps = self.base if self.initial(var_formats) == self.base_initial else self._run(var_formats)
        g = self.graph
        graph = Graph(g.name, g.opset, list(g.inputs), list(g.outputs), [], dict(g.types), list(g.weights),
                      dict(g.consts), {}, [], dict(g.domain_opsets))
        formats = {v: s[0] for v, s in self.initial(var_formats).items()}
        made: set[Pair] = set()
        for node, step in zip(g.nodes, steps, strict=True):
            for (x, dst), src in step.converted.items():
                if (x, dst) not in made:
                    made.add((x, dst))
                    out = f"{x}@{dst}"
                    graph.nodes.append(Node(f"TransData_{out}", "TransData", [x], [out],
                                            {"src_format": src, "dst_format": dst}))
                    graph.types[out] = graph.types[x]
                    formats[out] = dst
            inputs = [r if isinstance(r, str) else f"{r[0]}@{r[1]}" for r in step.reads]
            graph.nodes.append(Node(node.name, node.op_type, inputs, list(node.outputs), node.attrs, node.domain))
            formats.update({x: s[0] for x, s in step.after.items()})
            formats.update({o: f for o, f in zip(node.outputs, step.outs, strict=True) if o})
            if step.plan:
                graph.native.append(node.name)
        graph.formats = formats
        for out in graph.outputs:
            wanted = output_format(out, var_formats, self.natural, assign)
            if out in self.producer and not same_layout(formats[out], wanted):
                convert_output(graph, out, wanted)
        return graph

    # -- what-ifs for format assignment --------------------------------------------------------------

    def transdata_bytes(self, var_formats: dict[str, str]) -> int:
        """TransData bytes ``build(var_formats)`` would read, replaying only the nodes that change (see the
        module docstring)."""
        # only the given variables start differently: building every source's state would make a bundle-wide
        # what-if per variable quadratic in the number of variables
        override = {v: (f, False) for v, f in var_formats.items()
                    if v in self.base_initial and (f, False) != self.base_initial[v]}
        start = ChainMap(override, self.base_initial)
        replayed = self._replay(dict(override))
        counts: dict[Conversion, int] = {}  # conversions whose number of readers changed
        for i, step in replayed.items():
            for conv, delta in [*((c, -1) for c in _conversions(self.base[i])), *((c, 1) for c in _conversions(step))]:
                counts[conv] = counts.get(conv, self.base_counts.get(conv, 0)) + delta
        total = self.base_pair_bytes
        made: dict[Pair, int] = {}  # how many of the conversions of each (value, format) pair exist
        for (x, dst, src), count in counts.items():
            before = self.base_counts.get((x, dst, src), 0) > 0
            if before != (count > 0):
                total += self._nbytes(x, src) * (1 if count > 0 else -1)
                made[x, dst] = made.get((x, dst), 0) + (1 if count > 0 else -1)

        def exists(pair: Pair) -> bool:
            return self.base_made.get(pair, 0) + made.get(pair, 0) > 0

        # outputs whose closing TransData can differ from the baseline's: made by a replayed node, writing a
        # given variable, or whose converted pair appeared or vanished; the others cost what they cost before
        touched = {o for i in replayed for o in self.graph.nodes[i].outputs} | set(var_formats) | {x for x, _ in made}
        total += self.base_output_bytes
        for out in touched & self.output_counts.keys():
            if out not in self.producer:
                continue  # a graph input passed through: the runtime converts it when it writes (formats.insert)
            fmt = self._final_format(out, replayed, start)
            wanted = output_format(out, var_formats, self.natural)
            now = self._nbytes(out, fmt) if not same_layout(fmt, wanted) and not exists((out, wanted)) else 0
            total += (now - self.base_output_cost(out)) * self.output_counts[out]
        return total

    @cached_property
    def output_counts(self) -> dict[str, int]:
        """How often each graph output is listed (each listing is written)."""
        return dict(Counter(self.graph.outputs))

    def base_output_cost(self, out: str) -> int:
        """The bytes the baseline's TransData writing output ``out`` reads (0 when none is needed)."""
        if out not in self.producer:
            return 0
        i, k = self.producer[out]
        fmt, wanted = self.base[i].outs[k], self.natural[out]
        if same_layout(fmt, wanted) or self.base_made.get((out, wanted), 0) > 0:
            return 0
        return self._nbytes(out, fmt)

    @cached_property
    def base_output_bytes(self) -> int:
        return sum(self.base_output_cost(o) * n for o, n in self.output_counts.items())

    def _replay(self, override: dict[str, State]) -> dict[int, Step]:
        """Re-run, in topological order, the nodes that see a state other than the baseline's; ``override``
        holds the values whose state differs (it is updated as differences appear and vanish)."""
        queue = sorted({r for v in override for r in self.readers.get(v, [])})
        replayed: dict[int, Step] = {}
        while queue:
            i = heapq.heappop(queue)
            if i in replayed:
                continue
            base, inputs = self.base[i], self.graph.nodes[i].inputs

            def state(x: str, base: Step = base, inputs: list[str] = inputs) -> State:
                return override[x] if x in override else base.seen[inputs.index(x)]

            step = replayed[i] = self.step(i, state)
            for o, new, old in zip(self.graph.nodes[i].outputs, step.outs, base.outs, strict=True):
                if o and new != old:
                    override[o] = (new, False)
                    for r in self.readers.get(o, []):
                        heapq.heappush(queue, r)
            for x, after in step.after.items():
                if after == base.after[x]:
                    override.pop(x, None)  # from here on the weight is as in the baseline
                    continue
                override[x] = after
                for r in self.readers.get(x, []):
                    if r > i:
                        heapq.heappush(queue, r)
        return replayed

    def _final_format(self, value: str, replayed: dict[int, Step], start: Mapping[str, State]) -> str:
        """The format ``value`` ends in: its producer's, else its last reader's decision, else its start."""
        if value in self.producer:
            i, k = self.producer[value]
            return replayed.get(i, self.base[i]).outs[k]
        readers = self.readers.get(value)
        if readers and value in self.weights:
            return replayed.get(readers[-1], self.base[readers[-1]]).after[value][0]
        return start[value][0]

    def _nbytes(self, value: str, fmt: str) -> int:
        t = self.graph.types[value]
        return math.prod(storage_shape(fmt, t.shape)) * dtype_from_name(t.dtype).itemsize


def _conversions(step: Step) -> list[Conversion]:
    return [(x, dst, src) for (x, dst), src in step.converted.items()]


def output_format(out: str, var_formats: dict[str, str], natural: dict[str, str],
                  assign: Mapping[str, str] | None = None) -> str:
    """The format a graph output must end in: the stored format of the variable it writes (its own name, or
    the one ``assign`` maps it to), else the standard layout."""
    return var_formats.get((assign or {}).get(out, out), natural[out])


def convert_output(graph: Graph, out: str, dst: str) -> None:
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
