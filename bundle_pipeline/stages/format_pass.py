"""Format insertion over one graph: every value's format, TransData where a reader wants another, what-ifs.

Per node the target's kernel table says which formats each input position takes and what comes out; a
native kernel is used when ``targets.npu.supports`` accepts the call, else the node runs the portable kernel
on standard layouts. Where a value is in another format than its reader wants, a TransData converts it,
except for weights: the first reader decides a constant's stored format (``formats.weights`` converts the
bytes), later readers convert it like any value.

``FormatPass`` parses a structure once and keeps:

- the native-plan decision of each node, memoised per (node, input formats): a plan depends on nothing else
  (and on the formats only through the one an elementwise kernel picks: ``NodeFacts``);
- one recorded *baseline* pass (no variable formats given) with what each node saw and did.

``build_json(var_formats)`` returns the formatted structure (the per-graph ``formats`` stage), copying nodes
from the parsed JSON; when the baseline has run already (``formats.cost`` ran it in this process), only the
nodes the variable formats change are replayed (as below), else the whole pass runs once.
``transdata_bytes(var_formats)`` answers what format assignment asks for every candidate format of
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
from functools import cached_property
from typing import NamedTuple

from ..dtypes import dtype_from_name, is_extended
from ..ir.graph import Graph, Node, TensorType
from ..layouts import STANDARD, storage_shape
from ..targets import KernelFormats, Target

# Nodes of the passes kept per process (FormatPass.shared), least recently used dropped first. A bound in nodes,
# not passes: a bundle of 512 small graphs keeps all of them (a bound of 256 passes rebuilt 432 of 514 when
# format assignment had visited every graph before their ``formats`` tasks ran), a bundle of huge graphs fewer.
SHARED_NODES = 1 << 17
_SHARED: OrderedDict[tuple[str, str], FormatPass] = OrderedDict()
_shared_nodes = 0
_SHARED_LOCK = threading.Lock()
Plan = tuple[list[str | None], str] | None  # (input formats, output format) of a native call, else None
State = tuple[str, bool]  # (format, foldable): a value's format and whether a reader may still fold it
Pair = tuple[str, str]  # (value, destination format): one TransData
Conversion = tuple[str, str, str]  # (value, destination format, source format): its bytes depend on all three
_UNKNOWN = object()  # a plan not worked out yet (None is a plan: "not native")


def natural_format(rank: int, target: Target) -> str:
    """The standard layout users feed and read: NCHW for 4-D tensors where the target has it, else ND."""
    return "NCHW" if rank == 4 and "NCHW" in target.formats else "ND"


def same_layout(a: str, b: str) -> bool:
    return a == b or (a in STANDARD and b in STANDARD)


def native_plan(node: Node, graph: Graph, target: Target, formats: dict[str, str]) -> Plan:
    """(input formats, output format) when the target runs this node natively, else None."""
    facts = node_facts(node, graph, target)
    return None if facts is None else facts.plan(tuple(formats.get(i, "ND") if i else None for i in node.inputs))


class NodeFacts:
    """What a node's native plan depends on besides its inputs' formats: worked out once per node. A plan
    depends on the formats only through the one an elementwise kernel picks (other kernels take fixed
    formats), so ``supports`` is asked once per such choice."""

    __slots__ = ("_plans", "big", "kernel", "node", "opset", "out_shape", "shapes", "values")

    def __init__(self, node: Node, opset: int, kernel: KernelFormats, shapes: tuple, big: tuple,
                 out_shape: tuple[int, ...], values: tuple):
        self.node, self.opset, self.kernel = node, opset, kernel
        self.shapes = shapes  # each input's shape (None: omitted)
        self.big = big  # each input: present and of more than one element (a scalar broadcasts as ND)
        self.out_shape = out_shape
        self.values = values  # each input's const value, if it has one (Reduce* axes...)
        self._plans: dict[str | None, Plan] = {}  # the elementwise kernel's format (None: fixed formats) -> plan

    def plan(self, in_fmts: tuple[str | None, ...]) -> Plan:
        """The plan given each input's format (None for an omitted one)."""
        chosen = None
        if self.kernel.same_format:
            chosen = next((f for f, big in zip(in_fmts, self.big, strict=True) if big and f not in STANDARD), None)
            if chosen is None:
                return None  # standard operands: the portable kernel is as good
        found = self._plans.get(chosen, _UNKNOWN)
        if found is _UNKNOWN:
            found = self._plans[chosen] = self._decide(chosen)
        return found

    def _decide(self, chosen: str | None) -> Plan:
        from ..targets.npu import supports

        node, kernel = self.node, self.kernel
        if chosen is not None:
            in_formats = [None if not i else chosen if big else "ND"
                          for i, big in zip(node.inputs, self.big, strict=True)]
            out = chosen
        else:
            in_formats = [kernel.accepted(p)[0] if i else None for p, i in enumerate(node.inputs)]
            out = kernel.output
        if not supports(node.op_type, node.attrs, self.opset, in_formats, self.shapes, out, self.out_shape,
                        self.values):
            return None
        return in_formats, out


MODELLED_TYPES = 65536  # types whose _modelled answer a process keeps
_MODELLED: dict[TensorType, bool] = {}  # a bundle's graphs share few types: each checked once a process


def _modelled(t: TensorType) -> bool:
    """Static (not sized at run time: the portable kernel on standard layouts) and not bfloat16/float8/int4...
    (the native kernels model numpy types; the portable ones run these)."""
    found = _MODELLED.get(t)
    if found is None:
        if len(_MODELLED) >= MODELLED_TYPES:
            _MODELLED.clear()
        found = _MODELLED[t] = not t.dynamic and not is_extended(t.dtype)
    return found


def node_facts(node: Node, graph: Graph, target: Target) -> NodeFacts | None:
    """The node's ``NodeFacts``, or None when it never runs natively whatever its inputs' formats."""
    if node.domain:
        return None  # ops of other domains (ai.onnx.ml, ...) have portable kernels only
    kernel = target.kernel(node.op_type)
    results = [o for o in node.outputs if o]
    if not kernel.native or len(results) != 1 or results[0] != node.outputs[0]:
        return None  # native kernels produce exactly one result (e.g. MaxPool without Indices)
    types = graph.types
    for v in [*node.inputs, node.outputs[0]]:
        if v and not _modelled(types[v]):
            return None  # sized at run time, or a type the native kernels do not model
    shapes = tuple([types[i].shape if i else None for i in node.inputs])
    big = tuple([bool(i) and math.prod(s) > 1 for i, s in zip(node.inputs, shapes, strict=True)])
    values = tuple([graph.consts.get(i) if i else None for i in node.inputs])
    return NodeFacts(node, graph.opset, kernel, shapes, big, types[node.outputs[0]].shape, values)


class Step(NamedTuple):
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
        global _shared_nodes
        with _SHARED_LOCK:
            if memo_key not in _SHARED:  # another thread may have made it meanwhile
                _SHARED[memo_key] = made
                _shared_nodes += len(made.graph.nodes)
            while _shared_nodes > SHARED_NODES and len(_SHARED) > 1:
                _, dropped = _SHARED.popitem(last=False)
                _shared_nodes -= len(dropped.graph.nodes)
        return made

    def __init__(self, structure: dict | Graph, target: Target):
        self.graph = structure if isinstance(structure, Graph) else Graph.from_json(structure)
        self._source = None if isinstance(structure, Graph) else structure  # read only: shared by the cache
        self.target = target
        g = self.graph
        self.natural = {v: natural_format(len(t.shape), target) for v, t in g.types.items()}
        self.sources = [*g.inputs, *g.weights, *g.consts]  # the values no node produces
        self.weights = frozenset(g.weights)
        self.readers: dict[str, list[int]] = {}
        self._weights_read: list[tuple[str, ...]] = []  # per node: the weights it reads, each once
        for i, node in enumerate(g.nodes):
            read = tuple(dict.fromkeys(filter(None, node.inputs)))
            for name in read:
                self.readers.setdefault(name, []).append(i)
            self._weights_read.append(tuple(x for x in read if x in self.weights))
        # per node: the standard layout of each input and output (None where omitted): what a portable kernel takes
        self._natural_in = [[self.natural[x] if x else None for x in n.inputs] for n in g.nodes]
        self._natural_out = [tuple(self.natural[o] if o else None for o in n.outputs) for n in g.nodes]
        self.producer = {o: (i, k) for i, node in enumerate(g.nodes) for k, o in enumerate(node.outputs) if o}
        self._plans: dict[tuple, Plan] = {}
        self._node_facts: dict[int, NodeFacts | None] = {}
        self._sizes: dict[tuple[str, str], int] = {}
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
        return self._plan(i, tuple([formats(x) if x else None for x in self.graph.nodes[i].inputs]))

    def _plan(self, i: int, in_fmts: tuple[str | None, ...]) -> Plan:
        found = self._plans.get((i, in_fmts), _UNKNOWN)
        if found is _UNKNOWN:
            if i not in self._node_facts:
                self._node_facts[i] = node_facts(self.graph.nodes[i], self.graph, self.target)
            facts = self._node_facts[i]
            found = self._plans[i, in_fmts] = None if facts is None else facts.plan(in_fmts)
        return found

    def initial(self, var_formats: dict[str, str]) -> dict[str, State]:
        """The state of each graph input, weight and const before the first node."""
        return {v: (var_formats.get(v, self.natural[v]), v in self.weights and v not in var_formats)
                for v in self.sources}

    def step(self, i: int, state: Callable[[str], State]) -> Step:
        """Run node ``i`` against the states ``state(value)`` gives."""
        inputs = self.graph.nodes[i].inputs
        seen = tuple([state(x) if x else None for x in inputs])
        plan = self._plan(i, tuple([s[0] if s else None for s in seen]))
        wanted = plan[0] if plan else self._natural_in[i]
        now = dict(zip(inputs, seen, strict=True))  # the omitted input "" maps to None and is never looked up
        reads: list[str | Pair] = []
        converted: dict[Pair, str] = {}
        for x, dst in zip(inputs, wanted, strict=True):
            if not x:
                reads.append(x)  # an omitted optional input stays ""
                continue
            fmt, foldable = now[x]
            if fmt == dst or (fmt in STANDARD and dst in STANDARD):  # same_layout, inlined: the hot loop
                reads.append(x)
            elif foldable:  # the first reader decides a constant's stored format
                now[x] = (dst, False)
                reads.append(x)
            else:
                converted.setdefault((x, dst), fmt)
                reads.append((x, dst))
        after = {x: (now[x][0], False) for x in self._weights_read[i]}  # read once: no longer foldable
        outs = self._natural_out[i]
        if plan:
            outs = (plan[1], *outs[1:])
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

    def steps(self, var_formats: dict[str, str]) -> list[Step]:
        """What the pass does at each node with the variables in ``var_formats``. Once the baseline has run (format
        assignment ran it), only the nodes that see an input differently are replayed; else one full pass."""
        initial = self.initial(var_formats)
        if initial == self.base_initial:
            return self.base
        if "base" not in self.__dict__:
            return self._run(var_formats)
        replayed = self._replay({v: s for v, s in initial.items() if s != self.base_initial[v]})
        return [replayed.get(i, step) for i, step in enumerate(self.base)]

    @property
    def source(self) -> dict:
        """The structure as JSON (the cache's object, or the graph's encoding): ``build_json`` copies from it."""
        if self._source is None:
            self._source = self.graph.to_json()
        return self._source

    def build(self, var_formats: dict[str, str], assign: Mapping[str, str] | None = None) -> Graph:
        """The formatted graph (``build_json`` decoded)."""
        return Graph.from_json(self.build_json(var_formats, assign))

    def build_json(self, var_formats: dict[str, str], assign: Mapping[str, str] | None = None) -> dict:
        """The formatted structure: every value's format, TransData nodes, native node names; ``assign``: see
        ``formats.insert``. Built from the structure's JSON (nodes copied with their inputs renamed), so no node
        is decoded or encoded again."""
        source = self.source
        nodes: list[dict] = []
        types = dict(source["types"])
        formats = {v: s[0] for v, s in self.initial(var_formats).items()}
        native: list[str] = []
        made: set[Pair] = set()
        for node, step in zip(source["nodes"], self.steps(var_formats), strict=True):
            for (x, dst), src in step.converted.items():
                if (x, dst) not in made:
                    made.add((x, dst))
                    out = f"{x}@{dst}"
                    nodes.append(_transdata_json(f"TransData_{out}", x, out, src, dst))
                    types[out] = types[x]
                    formats[out] = dst
            inputs = [r if isinstance(r, str) else f"{r[0]}@{r[1]}" for r in step.reads]
            nodes.append({**node, "inputs": inputs, "outputs": list(node["outputs"])})
            formats.update({x: s[0] for x, s in step.after.items()})
            formats.update({o: f for o, f in zip(node["outputs"], step.outs, strict=True) if o})
            if step.plan:
                native.append(node["name"])
        for out in source["outputs"]:
            wanted = output_format(out, var_formats, self.natural, assign)
            if out in self.producer and not same_layout(formats[out], wanted):
                convert_output(nodes, types, formats, out, wanted)
        return {**source, "nodes": nodes, "types": dict(sorted(types.items())),
                "formats": dict(sorted(formats.items())), "native": sorted(native)}

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
            # where each input first appears (what inputs.index answers): a Sum of 51 inputs replayed for each of
            # its 50 variables made 255,000 list scans
            position = {x: k for k, x in reversed(list(enumerate(inputs)))}

            def state(x: str, base: Step = base, position: dict[str, int] = position) -> State:
                return override[x] if x in override else base.seen[position[x]]

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
        size = self._sizes.get((value, fmt))
        if size is None:
            t = self.graph.types[value]
            size = self._sizes[value, fmt] = math.prod(storage_shape(fmt, t.shape)) * dtype_from_name(t.dtype).itemsize
        return size


def _conversions(step: Step) -> list[Conversion]:
    return [(x, dst, src) for (x, dst), src in step.converted.items()]


def output_format(out: str, var_formats: dict[str, str], natural: dict[str, str],
                  assign: Mapping[str, str] | None = None) -> str:
    """The format a graph output must end in: the stored format of the variable it writes (its own name, or
    the one ``assign`` maps it to), else the standard layout."""
    return var_formats.get((assign or {}).get(out, out), natural[out])


def _transdata_json(name: str, x: str, out: str, src: str, dst: str) -> dict:
    return {"name": name, "op": "TransData", "inputs": [x], "outputs": [out],
            "attrs": {"dst_format": dst, "src_format": src}}


def convert_output(nodes: list[dict], types: dict, formats: dict[str, str], out: str, dst: str) -> None:
    """Rename the value computed for graph output ``out`` and make a TransData write ``out``: the one a reader
    already needed (``out@dst``), which then writes ``out`` itself, or else a new one at the end. ``nodes``
    (JSON, the pass's own copies), ``types`` and ``formats`` are changed in place."""
    pre = f"{out}@pre"
    reused = next((n for n in nodes if n["op"] == "TransData" and n["inputs"] == [out]
                   and n["attrs"]["dst_format"] == dst), None)
    for node in nodes:
        if out in node["inputs"]:
            node["inputs"] = [pre if i == out else i for i in node["inputs"]]
        if out in node["outputs"]:
            node["outputs"] = [pre if o == out else o for o in node["outputs"]]
    types[pre] = types[out]
    formats[pre] = formats[out]
    formats[out] = dst
    if reused is None:
        nodes.append(_transdata_json(f"TransData_{out}", pre, out, formats[pre], dst))
        return
    converted = reused["outputs"][0]
    reused["outputs"] = [out]
    for node in nodes:
        if converted in node["inputs"]:
            node["inputs"] = [out if i == converted else i for i in node["inputs"]]
    types.pop(converted, None)
    formats.pop(converted, None)
