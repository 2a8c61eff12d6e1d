"""The typed program a bundle stores per graph, and its one encoder (typed -> the JSON dict bundles hold).

A ``Program`` is a graph compiled to data: feeds, variable reads, weights, inline consts, outputs, one arena
plan per value and the ``steps`` that run in order. A step is one of three kinds:

- ``KernelStep``: a kernel call (portable, or ``native`` on formatted data with its ``layout``), maybe with a
  ``precision`` mode (``fp16``: cube inputs rounded to fp16; ``fp16_round``: fp16 in and out) or an
  implementation mode (``impl: high_performance``: the approximate kernel of an op in ``APPROX_OPS``), and for
  a kernel with graph attributes (``KERNEL_GRAPH_ATTRS``) its ``bodies``;
- ``TransDataStep``: a format conversion (``attrs`` src_format/dst_format, ``layout`` the logical shapes);
- ``ControlStep``: If / Loop / Scan / SequenceMap with its ``bodies`` (``BODY_ATTRS``), each a ``Body``: a
  program of its own with formal inputs and its own arena.

``encode`` writes exactly the JSON codegen has always written (the bundle bytes must not move): optional
fields are omitted when unset, except ``tiling``, which every step carries (null when untiled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..layouts import STANDARD
from .constants import (  # noqa: F401  (the schema's own vocabulary, re-exported with it)
    APPROX_OPS,
    BODY_ATTRS,
    CONTROL_OPS,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    IMPLS,
    KERNEL_GRAPH_ATTRS,
    PRECISIONS,
    ROLES,
    TRANSDATA,
)

__all__ = ["APPROX_OPS", "BODY_ATTRS", "CONTROL_OPS", "FORMAT_VERSION", "FORMAT_VERSIONS", "IMPLS",
           "KERNEL_GRAPH_ATTRS", "PRECISIONS", "ROLES", "STANDARD", "Body", "ControlStep", "Feed", "KernelStep",
           "Layout", "Output", "Plan", "Program", "Step", "TransDataStep", "Value", "encode"]



@dataclass(frozen=True)
class Value:
    """A named, typed value: a body input or output (``shape`` has -1 for dims the run time decides)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a numpy/ml_dtypes name, "object" (strings), a container (seq(...)) or UNKNOWN_DTYPE

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Feed(Value):
    layout: str | None = None  # "NHWC" when input_format changed the declared layout

    def to_json(self) -> dict:
        return {**super().to_json(), **({"layout": self.layout} if self.layout is not None else {})}


@dataclass(frozen=True)
class Output(Value):
    variable: bool = False  # the run writes a variable: ``writes``, else the one of the output's name
    writes: str | None = None

    @property
    def target(self) -> str:
        """The variable this output writes (when ``variable``)."""
        return self.writes if self.writes is not None else self.name

    def to_json(self) -> dict:
        return {**super().to_json(), "variable": self.variable,
                **({"writes": self.writes} if self.writes is not None else {})}


@dataclass(frozen=True)
class Plan:
    """Where a value lives in its program's arena; ``format``/``storage`` when not a standard layout."""

    shape: tuple[int, ...]
    dtype: str
    offset: int
    format: str | None = None
    storage: tuple[int, ...] | None = None

    @property
    def stored(self) -> tuple[int, ...]:
        """The physical shape of the bytes in the arena."""
        return self.storage if self.storage is not None else self.shape

    def to_json(self) -> dict:
        out = {"shape": list(self.shape), "dtype": self.dtype, "offset": self.offset}
        if self.format is not None:
            out["format"] = self.format
        if self.storage is not None:
            out["storage"] = list(self.storage)
        return out


@dataclass(frozen=True)
class Layout:
    """What a formatted kernel or a TransData needs besides the arrays: operand formats and logical shapes."""

    in_formats: tuple[str | None, ...]
    in_shapes: tuple[tuple[int, ...] | None, ...]  # None for an omitted input; () is a real (scalar) shape
    out_format: str
    out_shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"in_formats": list(self.in_formats),
                "in_shapes": [None if s is None else list(s) for s in self.in_shapes],
                "out_format": self.out_format, "out_shape": list(self.out_shape)}


@dataclass(frozen=True, kw_only=True)
class Step:
    """What every kind of step has. ``attrs`` are the node's attributes as JSON (tensors as
    ``{"tensor": ...}``); ``inputs``/``outputs`` use "" for an omitted optional value."""

    node: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    domain: str = ""  # "" is the default ONNX domain
    tiling: Mapping[str, Any] | None = None

    def _common(self) -> dict:
        out = {"node": self.node, "op": self.op, "inputs": list(self.inputs), "outputs": list(self.outputs),
               "attrs": dict(self.attrs), "tiling": self.tiling}
        if self.domain:
            out["domain"] = self.domain
        return out


@dataclass(frozen=True, kw_only=True)
class KernelStep(Step):
    precision: str | None = None  # one of PRECISIONS
    impl: str | None = None  # one of IMPLS
    native: bool = False  # the target's kernel on formatted data (``layout`` says the formats)
    layout: Layout | None = None
    bodies: Mapping[str, Body] = field(default_factory=dict)  # graph attributes (KERNEL_GRAPH_ATTRS)

    def to_json(self) -> dict:
        out = self._common()
        if self.bodies:
            out["bodies"] = _bodies_of(self.bodies)
        if self.native and self.layout:
            out["native"] = True
            out["layout"] = self.layout.to_json()
        if self.impl is not None:
            out["impl"] = self.impl
        if self.precision is not None:
            out["precision"] = self.precision
        return out


@dataclass(frozen=True, kw_only=True)
class TransDataStep(Step):
    layout: Layout

    @property
    def src_format(self) -> str:
        return self.attrs["src_format"]

    @property
    def dst_format(self) -> str:
        return self.attrs["dst_format"]

    def to_json(self) -> dict:
        out = self._common()
        out["native"] = False
        out["layout"] = self.layout.to_json()
        return out


@dataclass(frozen=True, kw_only=True)
class ControlStep(Step):
    bodies: Mapping[str, Body]
    # codegen marks a float32 control step under force_fp16 as it marks any vector op; the step itself runs
    # no arithmetic (its bodies' steps carry their own marks), so nothing reads it: kept for the bytes
    precision: str | None = None

    def to_json(self) -> dict:
        return {**self._common(), **_bodies_json(self.bodies),
                **({"precision": self.precision} if self.precision is not None else {})}


def _bodies_json(bodies: Mapping[str, Body]) -> dict:
    return {"bodies": _bodies_of(bodies)} if bodies else {}


def _bodies_of(bodies: Mapping[str, Body]) -> dict:
    return {attr: body.to_json() for attr, body in bodies.items()}


@dataclass(frozen=True, kw_only=True)
class _Code:
    """What a program and a body share: steps over values planned in an arena of their own."""

    graph: str
    opset: int
    opsets: Mapping[str, int]  # opset version of each other domain its steps use
    consts: Mapping[str, dict]  # inline tensors as encode_tensor writes them
    values: Mapping[str, Plan]
    steps: tuple[Step, ...]
    arena_bytes: int

    def _opsets_json(self) -> dict:
        return {"opsets": dict(self.opsets)} if self.opsets else {}


@dataclass(frozen=True, kw_only=True)
class Body(_Code):
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]

    def to_json(self) -> dict:
        return {"graph": self.graph, "opset": self.opset, **self._opsets_json(),
                "inputs": [v.to_json() for v in self.inputs], "consts": dict(self.consts),
                "outputs": [v.to_json() for v in self.outputs],
                "values": {k: p.to_json() for k, p in self.values.items()},
                "steps": [s.to_json() for s in self.steps], "arena_bytes": self.arena_bytes}


@dataclass(frozen=True, kw_only=True)
class Program(_Code):
    role: str
    feeds: tuple[Feed, ...]
    reads: tuple[str, ...]  # variables the graph reads
    weights: tuple[str, ...]  # weights bound to constants of the bundle
    outputs: tuple[Output, ...]
    reuse_memory: bool
    # {"on", "off"}: what inspect shows for the other setting; None in bundles of codegen before 2026-11-26
    arena_bytes_by_reuse: Mapping[str, int] | None
    formats: Mapping[str, str]  # value -> its storage format, for values not in a standard layout

    def to_json(self) -> dict:
        return {"graph": self.graph, "role": self.role, "opset": self.opset, **self._opsets_json(),
                "feeds": [f.to_json() for f in self.feeds], "reads": list(self.reads),
                "weights": list(self.weights), "consts": dict(self.consts),
                "outputs": [o.to_json() for o in self.outputs],
                "values": {k: p.to_json() for k, p in self.values.items()},
                "steps": [s.to_json() for s in self.steps], "arena_bytes": self.arena_bytes,
                "reuse_memory": self.reuse_memory, "formats": dict(self.formats),
                **({"arena_bytes_by_reuse": dict(self.arena_bytes_by_reuse)}
                   if self.arena_bytes_by_reuse is not None else {})}


def encode(program: Program) -> dict:
    """The JSON dict a bundle stores for ``program`` (the only encoder)."""
    return program.to_json()
