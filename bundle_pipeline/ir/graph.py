"""The graph IR every stage after parse works on: structure only, weight values live elsewhere.

A ``Graph`` is a topologically ordered list of ``Node``s over named values. Every value has a static
``TensorType``. A value is exactly one of: a graph input (a feed, or a variable the graph reads), a
weight (an initializer or ``Constant`` whose bytes live in the weight table, referenced by name), a
const (a small integer tensor that steers shapes, inlined here because it is structure), or the
output of exactly one node. ``formats`` records each value's storage format (ND when absent);
``native`` names the nodes the target runs natively on formatted data (the rest run the portable
kernels on standard layouts).

A node's ``domain`` is "" for the default ONNX domain, else its op's domain (``ai.onnx.ml``, ...), whose
opset version the graph records in ``domain_opsets``. Both are serialised only when set, so graphs of
default-domain ops serialise (and hash) exactly as before domains existed.

The IR serialises to canonical JSON (``to_json``/``from_json``) so its hash is a content hash.
``lint()`` returns every broken invariant with a hint on how to fix it, like ``torch.fx.Graph.lint``.

Control flow (If, Loop, Scan, SequenceMap) keeps its bodies as ``Graph`` attributes. Bodies are closed: every outer
value a body reads (ONNX's implicit outer-scope capture) is an explicit input of the control node, after
its ONNX inputs, and a formal input of the body under the same name; the node's ``captures`` attribute
counts them. So liveness, format selection and dedupe see every read without looking inside bodies. A
body has no weights of its own (import hoists them to the top graph, which passes them in).

A value whose shape depends on data (NonZero, a Loop's scan output, ...) has ``-1`` for the dims only the
run time knows (``TensorType.dynamic``); it is allocated by its kernel instead of planned in the arena.
Feeds, weights and variables are always static.

ONNX sequences and optionals are values too, typed by ``dtype`` strings that wrap the element type:
``seq(float32)``, ``optional(float32)``, ``optional(seq(int64))`` (``container_dtype``); their shape is
``(-1,)`` and they are always ``dynamic``. At run time a sequence is a Python list of arrays and an empty
optional is None. They are never weights, consts or variables; feeds and graph outputs may be containers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..dtypes import dtype_from_name

# the program-encoding helpers live in the program layer (the runtime reads them there); the IR spells
# values and inline tensors the same way
from ..program import (  # noqa: F401  (re-exported for ir modules)
    CONTAINERS,
    CONTROL_OPS,
    UNKNOWN_DTYPE,
    container_dtype,
    decode_attr,
    decode_tensor,
    encode_tensor,
    split_container,
    tensor_dtype,
)

if TYPE_CHECKING:  # numpy loads with the first tensor: planning a build handles no arrays
    import numpy as np

IR_VERSION = 1
# ops that make or read sequences/optionals (never folded at compile time: their values are not tensors)
SEQUENCE_OPS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceAt", "SequenceErase",
                          "SequenceLength", "SplitToSequence", "ConcatFromSequence", "SequenceMap", "Optional",
                          "OptionalHasElement", "OptionalGetElement"})
@dataclass(frozen=True)
class TensorType:
    """A value's static type. Immutable, so what is derived from it is computed once per instance
    (``cached_property`` writes the instance's ``__dict__``, which a frozen dataclass allows), and ``of`` /
    ``from_json`` hand out one shared instance per (shape, dtype): a build decodes the same few types tens of
    thousands of times (every stage after parse decodes the structure)."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, int64, bool, ... or an ml_dtypes name (bfloat16, int4, ...)

    @staticmethod
    def of(shape: tuple[int, ...], dtype: str) -> TensorType:
        """The shared instance of this type (``shape`` a tuple of ints)."""
        key = (shape, dtype)
        found = _INTERNED.get(key)
        if found is None:
            if len(_INTERNED) >= _INTERN_MAX:  # a long-lived worker must not grow without bound
                _INTERNED.clear()
            found = _INTERNED[key] = TensorType(shape, dtype)
        return found

    @cached_property
    def dynamic(self) -> bool:
        """Some dim is only known at run time (``-1``), a string tensor (Python objects, which no arena
        holds) or a sequence/optional: the value is allocated by its kernel, not planned."""
        return (any(d < 0 for d in self.shape) or self.dtype in (UNKNOWN_DTYPE, "object")  # object: strings
                or self.container)

    @cached_property
    def container(self) -> bool:
        """A sequence or optional value (dtype ``seq(...)`` / ``optional(...)``), not a tensor."""
        return split_container(self.dtype) is not None

    @cached_property
    def itemsize(self) -> int:
        """Bytes per element (TypeError for a container or an unknown dtype, which have none)."""
        return dtype_from_name(self.dtype).itemsize

    @cached_property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> TensorType:
        return TensorType.of(tuple(d["shape"]), d["dtype"])  # JSON we wrote: ints and a string already


_INTERNED: dict[tuple[tuple[int, ...], str], TensorType] = {}
_INTERN_MAX = 1 << 16


@dataclass
class Node:
    name: str
    op_type: str
    inputs: list[str]  # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""  # the op's domain: "" is the default ONNX domain (ai.onnx), else e.g. "ai.onnx.ml"

    def bodies(self) -> dict[str, Graph]:
        """The subgraph attributes (If: then_branch/else_branch, Loop/Scan: body) by attribute name."""
        return {k: v for k, v in self.attrs.items() if isinstance(v, Graph)} if self.attrs else {}

    def to_json(self) -> dict:
        out = {"name": self.name, "op": self.op_type, "inputs": self.inputs, "outputs": self.outputs,
               "attrs": {k: encode_attr(v) for k, v in sorted(self.attrs.items())} if self.attrs else {}}
        if self.domain:  # absent for the default domain
            out["domain"] = self.domain
        return out

    @staticmethod
    def from_json(d: dict) -> Node:
        attrs = d["attrs"]
        return Node(d["name"], d["op"], list(d["inputs"]), list(d["outputs"]),
                    {k: decode_attr(v, Graph.from_json) if type(v) is dict else v for k, v in attrs.items()}
                    if attrs else {}, str(d.get("domain", "")))


@dataclass
class Graph:
    name: str
    opset: int
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    types: dict[str, TensorType]
    weights: list[str] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    native: list[str] = field(default_factory=list)  # nodes the target runs natively on formatted data
    domain_opsets: dict[str, int] = field(default_factory=dict)  # opset version of each other domain its nodes use

    def walk(self) -> Iterator[tuple[Graph, Node]]:
        """Every node with the graph that holds it, bodies of control-flow nodes included (depth first)."""
        for node in self.nodes:
            yield self, node
            for body in node.bodies().values():
                yield from body.walk()

    def format_of(self, value: str) -> str:
        return self.formats.get(value, "ND")

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def to_json(self) -> dict:
        return {
            "ir_version": IR_VERSION, "name": self.name, "opset": self.opset,
            "inputs": self.inputs, "outputs": self.outputs,
            "nodes": [n.to_json() for n in self.nodes],
            "types": {k: t.to_json() for k, t in sorted(self.types.items())},
            "weights": sorted(self.weights),
            "consts": {k: encode_tensor(v) for k, v in sorted(self.consts.items())},
            "formats": dict(sorted(self.formats.items())),
            "native": sorted(self.native),
            **({"domain_opsets": dict(sorted(self.domain_opsets.items()))} if self.domain_opsets else {}),
        }

    @staticmethod
    def from_json(d: dict) -> Graph:
        return Graph(
            name=d["name"], opset=int(d["opset"]), inputs=list(d["inputs"]), outputs=list(d["outputs"]),
            nodes=[Node.from_json(n) for n in d["nodes"]],
            types={k: TensorType.from_json(t) for k, t in d["types"].items()},
            weights=list(d["weights"]),
            consts={k: decode_tensor(v) for k, v in d["consts"].items()},
            formats=dict(d.get("formats", {})),
            native=list(d.get("native", [])),
            domain_opsets={k: int(v) for k, v in d.get("domain_opsets", {}).items()},
        )

    def lint(self) -> list[str]:
        """Every broken invariant, each with how to fix it; empty when the graph is well formed."""
        errors: list[str] = []
        defined: set[str] = set()
        for kind, names in (("input", self.inputs), ("weight", self.weights), ("const", list(self.consts))):
            for name in names:
                if name in defined:
                    errors.append(f"{kind} {name!r} is defined twice; rename one of them")
                defined.add(name)
        for node in self.nodes:
            for name in node.inputs:
                if name and name not in defined:
                    errors.append(f"node {node.name!r} ({node.op_type}) reads {name!r} before it is defined; "
                                  f"order nodes topologically or add it as an input/weight")
            for name in filter(None, node.outputs):  # "" marks an omitted optional output
                if name in defined:
                    errors.append(f"node {node.name!r} redefines {name!r}; values are SSA, rename the output")
                defined.add(name)
        errors += [f"graph output {o!r} is never defined; produce it with a node" for o in self.outputs
                   if o not in defined]
        errors += [f"value {v!r} has no type; run shape inference or set input_shape" for v in sorted(defined)
                   if v and v not in self.types]
        errors += [f"{kind} {name!r} is a {self.types[name].dtype}; sequences and optionals cannot be stored, "
                   f"build them with nodes (SequenceConstruct, Optional, ...)"
                   for kind, names in (("weight", self.weights), ("const", list(self.consts)))
                   for name in names if name in self.types and self.types[name].container]
        for node in self.nodes:
            for attr, body in node.bodies().items():
                errors += [f"in {attr} of node {node.name!r}: {e}" for e in body.lint()]
        return errors


_PLAIN = (int, float, str, list, bool)  # attribute values that are their own JSON (most of them)


def encode_attr(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Graph):
        return {"graph": value.to_json()}
    import numpy as np  # only a tensor attribute needs it, and then numpy is loaded already

    if isinstance(value, np.ndarray):
        return {"tensor": encode_tensor(value)}
    return value
