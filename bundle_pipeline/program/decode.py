"""The one decoder of a stored program: JSON dict -> typed ``Program``, refusing anything malformed or unknown.

A bundle is untrusted input: every field the runtime reads is type-checked here, every closed set (role,
precision, implementation, step kind, bodies of a control op, keys of a step) is checked, and the first
problem becomes one ``BUNDLE_CORRUPT`` line naming the graph and the step. What needs the kernel table
(is the op implemented, at this opset, natively) or the rest of the manifest (variables, bindings, arena
bounds) is ``runtime/validate.py``'s, on the typed program this returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

from ..errors import BundleCorrupt
from .schema import (
    APPROX_OPS,
    BODY_ATTRS,
    CONTROL_OPS,
    IMPLS,
    KERNEL_GRAPH_ATTRS,
    PRECISIONS,
    ROLES,
    TRANSDATA,
    Body,
    ControlStep,
    Feed,
    KernelStep,
    Layout,
    Output,
    Plan,
    Program,
    Step,
    TransDataStep,
    Value,
)

T = TypeVar("T")
STEP_KEYS = frozenset({"node", "op", "inputs", "outputs", "attrs", "domain", "tiling", "bodies", "native", "layout",
                       "precision", "impl"})
MAX_BODY_DEPTH = 64  # bodies nest (an If in a Loop ...); a hostile bundle must not exhaust the stack


class ProgramError(Exception):
    """The first problem found, without its place; ``decode_program`` adds graph and step."""


class _Placed(ProgramError):
    """A problem already prefixed with its step (and body): outer steps pass it on unchanged."""


def decode_program(data: object, graph: str, where: str | None = None) -> Program:
    """The typed program of manifest graph ``graph``; BUNDLE_CORRUPT (at ``where``, the bundle) naming the
    graph, and the step, of the first malformed or unknown field."""
    try:
        return _program(data)
    except ProgramError as bad:
        raise BundleCorrupt(f"malformed bundle: graph {graph!r}: {bad}", where) from None
    except RecursionError:
        raise BundleCorrupt(f"malformed bundle: graph {graph!r}: its bodies nest too deep", where) from None


def _fail(problem: str) -> NoReturn:
    raise ProgramError(problem)


def _need(ok: bool, problem: str) -> None:
    if not ok:
        _fail(problem)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mapping(d: Mapping, key: str, what: str, required: bool = True) -> dict:
    if key not in d and not required:
        return {}
    value = d.get(key)
    _need(isinstance(value, dict), f"{what} has no {key!r} mapping" if key not in d else f"{what}: {key!r} is "
                                   f"not a mapping")
    return value  # type: ignore[return-value]


def _list(d: Mapping, key: str, what: str) -> list:
    value = d.get(key)
    _need(isinstance(value, list), f"{what} has no {key!r} list" if key not in d else f"{what}: {key!r} is not "
                                   f"a list")
    return value  # type: ignore[return-value]


def _typed(value: object, kind: type[T], what: str) -> T:
    # bool is an int subclass: an int field must not accept true/false, nor a str field a number
    _need(type(value) is kind, f"{what} is {_short(value)}, not {'an' if kind is int else 'a'} {kind.__name__}")
    return value  # type: ignore[return-value]


def _names(value: object, what: str) -> tuple[str, ...]:
    _need(isinstance(value, list) and all(type(x) is str for x in value), f"{what} is not a list of names")
    return tuple(value)  # type: ignore[arg-type]


def _shape(value: object, what: str) -> tuple[int, ...]:
    _need(isinstance(value, list) and all(type(d) is int and d >= -1 for d in value),
          f"{what} has a bad shape {_short(value)}")
    return tuple(value)  # type: ignore[arg-type]


def _opsets(d: Mapping) -> dict[str, int]:
    opsets = d.get("opsets", {})
    _need(isinstance(opsets, dict) and all(isinstance(k, str) and k and type(v) is int for k, v in opsets.items()),
          "'opsets' is not a mapping of domain to version")
    return opsets


def _entries(d: Mapping, key: str, what: str, make: Callable[[dict, str], T]) -> tuple[T, ...]:
    out = []
    for e in _list(d, key, what):
        _need(isinstance(e, dict) and type(e.get("name")) is str, f"{what}: an entry of {key!r} has no name")
        out.append(make(e, f"{key[:-1]} {e['name']!r}"))
    return tuple(out)


def _value(e: dict, what: str) -> Value:
    return Value(e["name"], _shape(e.get("shape"), what), _typed(e.get("dtype"), str, f"{what} dtype"))


def _feed(e: dict, what: str) -> Feed:
    layout = e.get("layout")
    _need(layout is None or type(layout) is str, f"{what} has a bad layout {_short(layout)}")
    return Feed(e["name"], _shape(e.get("shape"), what), _typed(e.get("dtype"), str, f"{what} dtype"), layout)


def _output(e: dict, what: str) -> Output:
    writes = e.get("writes")
    _need(writes is None or type(writes) is str, f"{what} writes {_short(writes)}, not a variable name")
    return Output(e["name"], _shape(e.get("shape"), what), _typed(e.get("dtype"), str, f"{what} dtype"),
                  _typed(e.get("variable", False), bool, f"{what} 'variable'"), writes)


def _plans(d: Mapping, what: str) -> dict[str, Plan]:
    plans = {}
    for name, p in _mapping(d, "values", what).items():
        ok = (isinstance(p, dict) and type(p.get("offset")) is int and type(p.get("dtype")) is str
              and (p.get("format") is None or type(p["format"]) is str))
        _need(ok, f"value {name!r} has no valid buffer in the arena")
        storage = _shape(p["storage"], f"value {name!r} storage") if "storage" in p else None
        plans[name] = Plan(_shape(p.get("shape"), f"value {name!r}"), p["dtype"], p["offset"], p.get("format"),
                           storage)
    return plans


def _common(d: Mapping, what: str, depth: int) -> dict[str, Any]:
    """The fields a program and a body share."""
    _need(depth <= MAX_BODY_DEPTH, "its bodies nest too deep")
    consts = _mapping(d, "consts", what)
    _need(all(isinstance(t, dict) for t in consts.values()), f"{what}: a const is not a tensor")
    steps = _list(d, "steps", what)
    names = [s.get("node") for s in steps if isinstance(s, dict) and "bodies" in s]
    _need(len(names) == len(set(map(str, names))), "two steps with bodies share a node name")  # bodies by node
    arena = d.get("arena_bytes")
    _need(type(arena) is int and arena >= 0, f"bad arena_bytes {_short(arena)}")
    return {"graph": _typed(d.get("graph"), str, f"{what}'s graph name"),
            "opset": _typed(d.get("opset"), int, f"{what}'s opset"), "opsets": _opsets(d), "consts": consts,
            "values": _plans(d, what), "steps": tuple(_step(s, i, depth) for i, s in enumerate(steps)),
            "arena_bytes": arena}


def _program(d: object) -> Program:
    _need(isinstance(d, dict), "no program")
    p: dict = d  # type: ignore[assignment]
    _need(p.get("role") in ROLES, f"the program has a bad role {_short(p.get('role'))}")
    by_reuse = p.get("arena_bytes_by_reuse")  # read by inspect only; older bundles lack it
    _need(by_reuse is None or (isinstance(by_reuse, dict) and sorted(by_reuse) == ["off", "on"]
                               and all(type(v) is int for v in by_reuse.values())),
          "'arena_bytes_by_reuse' is not {on, off} byte counts")
    formats = _mapping(p, "formats", "the program", required=False)
    _need(all(type(v) is str for v in formats.values()), "'formats' maps a value to a non-string")
    return Program(**_common(p, "the program", 0), role=p["role"],
                   feeds=_entries(p, "feeds", "the program", _feed),
                   reads=_names(p.get("reads"), "reads"), weights=_names(p.get("weights"), "weights"),
                   outputs=_entries(p, "outputs", "the program", _output),
                   reuse_memory=_typed(p.get("reuse_memory"), bool, "'reuse_memory'"),
                   arena_bytes_by_reuse=by_reuse, formats=formats)


def _body(d: object, depth: int) -> Body:
    _need(isinstance(d, dict), "the body is not a mapping")
    b: dict = d  # type: ignore[assignment]
    return Body(**_common(b, "the body", depth), inputs=_entries(b, "inputs", "the body", _value),
                outputs=_entries(b, "outputs", "the body", _value))


def _step(s: object, index: int, depth: int) -> Step:
    """One step; a problem names its node (and op), or its index when it has no node name."""
    _need(isinstance(s, dict), f"step {index} is not a mapping")
    d: dict = s  # type: ignore[assignment]
    node, op = d.get("node"), d.get("op")
    _need(type(node) is str, f"step {index} has no node name")
    _need(type(op) is str, f"node {node!r} (step {index}) has no op")
    try:
        return _typed_step(d, node, op, depth)  # type: ignore[arg-type]
    except _Placed:
        raise
    except ProgramError as bad:
        raise _Placed(f"node {node!r} ({op}): {bad}") from None


def _typed_step(d: dict, node: str, op: str, depth: int) -> Step:
    unknown = sorted(set(d) - STEP_KEYS)
    _need(not unknown, f"unknown field {_short(unknown[0]) if unknown else ''}")
    domain = _typed(d.get("domain", ""), str, "its domain")
    tiling = d.get("tiling")
    _need(tiling is None or isinstance(tiling, dict), "bad tiling")
    attrs = _mapping(d, "attrs", "the step")
    _need(all(isinstance(k, str) for k in attrs), "bad attributes")
    common = {"node": node, "op": op, "inputs": _names(d.get("inputs"), "its input list"),
              "outputs": _names(d.get("outputs"), "its output list"), "attrs": attrs, "domain": domain,
              "tiling": tiling}
    precision, impl = d.get("precision"), d.get("impl")
    _need(precision is None or precision in PRECISIONS,
          f"precision {_short(precision)} is not one the runtime has ({', '.join(PRECISIONS)})")
    _need(impl is None or impl in IMPLS, f"implementation {_short(impl)} is not one the runtime has "
                                         f"({', '.join(IMPLS)})")
    native = _typed(d.get("native", False), bool, "'native'")
    kind = _kind(op, domain)
    if kind is ControlStep:
        _need(impl is None and not native and "layout" not in d, "a control-flow step takes no impl, native or "
                                                                 "layout")
        return ControlStep(**common, bodies=_bodies(d, op, BODY_ATTRS[op], True, depth), precision=precision)
    if kind is TransDataStep:
        _need(impl is None and precision is None and not native and "bodies" not in d,
              "a TransData step takes no impl, precision, native kernel or bodies")
        _need(all(type(attrs.get(k)) is str for k in ("src_format", "dst_format")),
              "no src_format/dst_format attributes")
        return TransDataStep(**common, layout=_layout(d))
    _need(impl is None or (op in APPROX_OPS and not domain), f"implementation {impl!r} has no {op} kernel "
                                                             f"(it has {', '.join(sorted(APPROX_OPS))})")
    _need(native or "layout" not in d, "a layout without a native kernel")
    graph_attrs = KERNEL_GRAPH_ATTRS.get((domain, op))
    _need(graph_attrs is not None or "bodies" not in d,
          f"it has bodies, which only {', '.join(sorted(CONTROL_OPS))} have")
    bodies = _bodies(d, op, graph_attrs, False, depth) if "bodies" in d else {}
    return KernelStep(**common, precision=precision, impl=impl, native=native,
                      layout=_layout(d) if native else None, bodies=bodies)


def _kind(op: str, domain: str) -> type[Step]:
    """The kind of step an op makes: only the default domain has control flow and TransData."""
    if domain:
        return KernelStep
    return ControlStep if op in CONTROL_OPS else TransDataStep if op == TRANSDATA else KernelStep


def _bodies(d: dict, op: str, attrs: tuple[str, ...], exact: bool, depth: int) -> dict[str, Body]:
    bodies = d.get("bodies")
    if exact:
        _need(isinstance(bodies, dict) and sorted(bodies) == list(attrs), f"it needs bodies {', '.join(attrs)}")
    else:
        _need(isinstance(bodies, dict) and bodies and set(bodies) <= set(attrs),
              f"it takes graph attributes {', '.join(attrs)} only")
    out = {}
    for attr, body in bodies.items():  # type: ignore[union-attr]
        try:
            out[attr] = _body(body, depth + 1)
        except ProgramError as bad:
            raise _Placed(f"in {attr} of node {d['node']!r}: {bad}") from None
    return out


def _layout(d: dict) -> Layout:
    lay = d.get("layout")
    _need(isinstance(lay, dict), "no layout")
    formats, shapes = lay.get("in_formats"), lay.get("in_shapes")  # type: ignore[union-attr]
    _need(isinstance(formats, list) and all(f is None or type(f) is str for f in formats)
          and isinstance(shapes, list) and len(shapes) == len(formats) and type(lay.get("out_format")) is str,
          "bad layout")
    return Layout(tuple(formats), tuple(None if s is None else _shape(s, "a layout input") for s in shapes),
                  lay["out_format"], _shape(lay.get("out_shape"), "the layout output"))
