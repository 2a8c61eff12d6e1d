"""Reject a malformed bundle manifest before anything runs: programs are data, checked against the kernel table.

The manifest is untrusted input (a bundle may come from anywhere): every field the loader and the
executor read is type-checked here, every name it refers to must exist, every planned buffer must fit
its arena, and the memory a load would allocate (constants + variables + arenas + inline constants) must
stay within a budget: ``max(ALLOC_FLOOR_BYTES, ALLOC_PER_STORED_BYTE x the bytes the bundle really stores)``
(the manifest and its constants' files, measured by ``storage.py``, never sizes a zip header claims), or
the caller's ``max_alloc_bytes``, or ``$BUNDLE_PIPELINE_MAX_ALLOC_BYTES``. Nothing is allocated before the
check passes: a bundle that needs more is a ``RUNTIME_ERROR`` saying how much it needs and how to allow it
(it may be a valid bundle with a huge declared input), never a huge allocation; constants claiming more
bytes than the bundle stores are ``BUNDLE_CORRUPT``. Sizes are computed with Python integers (no int64
overflow). Program opsets must be versions the kernel library knows (``KNOWN_OPSETS``): an unknown one is
never run as if it were another. Nothing in a bundle is ever unpickled or executed: dtypes are checked
against a list of plain numeric types (never ``object``), constants are raw little-endian bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Mapping

from ..dtypes import EXTENDED, dtype_from_name
from ..errors import BundleCorrupt, ParamInvalid, RuntimeFailure
from ..kernels import KNOWN_OPSETS, SUPPORTED_OPS, supports_op
from ..program import (
    CONTROL_OPS,
    FORMAT_VERSIONS,
    ROLES,
    TRANSDATA,
    UNKNOWN_DTYPE,
    Body,
    ControlStep,
    KernelStep,
    Output,
    Plan,
    Program,
    Step,
    decode_program,
    split_container,
    tensor_dtype,
)
from .npu import NATIVE_KERNELS
from .storage import PACKED_ARRAY

# numeric and bool types, with the ml_dtypes ones (bfloat16, float8*, float4, int4, int2, ...); never
# object (strings come only from the caller as feeds) nor anything else np.dtype would parse
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                    "uint32", "uint64", "bool", *EXTENDED})
EXECUTOR_OPS = frozenset({TRANSDATA}) | CONTROL_OPS
MAX_RANK = 32
ALLOC_FLOOR_BYTES = 1 << 30  # any bundle may plan this much memory, however little it stores
ALLOC_PER_STORED_BYTE = 64  # ... or this many times the bytes it stores (activations dwarf small weights)
ALLOC_ENV = "BUNDLE_PIPELINE_MAX_ALLOC_BYTES"
# Constant ids become array paths inside the bundle: one or more plain path segments, no "..".
_SEGMENT = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.:+@~-]*")  # ids from dedupe: name~n, name@FORMAT


class _Bad(Exception):
    """The first problem found; becomes the BUNDLE_CORRUPT message."""


def alloc_budget(stored_bytes: int, max_alloc_bytes: int | None = None) -> int:
    """Bytes a bundle storing ``stored_bytes`` may make the loader allocate: the caller's ``max_alloc_bytes``,
    else ``$BUNDLE_PIPELINE_MAX_ALLOC_BYTES``, else ``max(ALLOC_FLOOR_BYTES, ALLOC_PER_STORED_BYTE x stored)``."""
    if max_alloc_bytes is not None:
        return max_alloc_bytes
    override = os.environ.get(ALLOC_ENV)
    if override:
        try:
            return int(override)
        except ValueError:
            raise ParamInvalid(f"${ALLOC_ENV}={override!r} is not a number of bytes", ALLOC_ENV) from None
    return max(ALLOC_FLOOR_BYTES, ALLOC_PER_STORED_BYTE * stored_bytes)


def validate_manifest(manifest: dict, path: str, stored_bytes: int | None = None,
                      max_alloc_bytes: int | None = None) -> dict[str, Program]:
    """Raise BUNDLE_CORRUPT naming the first problem; return each graph's decoded program (decoded once, here).
    ``stored_bytes`` (what the bundle really stores) bounds the constants and, through ``alloc_budget``, what
    loading may allocate (RUNTIME_ERROR when it needs more); None checks structure only."""
    try:
        need, programs = _check(manifest, path)
        if stored_bytes is None:
            _packed_sizes(manifest["constants"])
            return programs
        _need(need["constants"] <= stored_bytes, f"the constants claim {need['constants']} bytes but the bundle "
                                                 f"stores only {stored_bytes}")
        _packed_sizes(manifest["constants"])
    except _Bad as bad:
        raise BundleCorrupt(f"malformed bundle: {bad}", path) from None
    budget, total = alloc_budget(stored_bytes, max_alloc_bytes), sum(need.values())
    if total > budget:
        parts = ", ".join(f"{k} {_size(v)}" for k, v in need.items() if v)
        raise RuntimeFailure(f"loading this bundle needs {_size(total)} of memory ({parts}), more than the "
                             f"{_size(budget)} allowed for a bundle of {_size(stored_bytes)}; if you mean it, pass "
                             f"load_bundle(max_alloc_bytes=...) / exec --max-memory, or set ${ALLOC_ENV}", path)
    return programs


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _check(m: object, path: str) -> tuple[dict[str, int], dict[str, Program]]:
    """Check the structure; return the bytes loading allocates (constants, variables, arenas + inline) and the
    programs by graph name."""
    if not isinstance(m, dict):
        raise _Bad("the manifest is not a mapping")
    for key in ("format_version", "graphs", "variables", "constants", "target"):
        if key not in m:
            raise _Bad(f"the manifest has no {key!r} (is this a bundle-pipeline bundle?)")
    if type(m["format_version"]) is not int or m["format_version"] not in FORMAT_VERSIONS:
        raise _Bad(f"format_version {m['format_version']!r} is not supported (supported: {FORMAT_VERSIONS})")
    _need(isinstance(m["target"], str), "'target' is not a string")
    constants = _constants(m["constants"])
    const_bytes = sum(_nbytes(c.get("storage", c["shape"]), c["dtype"]) for c in constants.values())
    variables = _variables(m["variables"], constants)
    graphs = m["graphs"]
    _need(isinstance(graphs, list), "'graphs' is not a list")
    var_bytes = sum(_nbytes(v.get("storage", v["shape"]), v["dtype"]) for v in variables.values())
    planned = 0
    programs: dict[str, Program] = {}
    for g in graphs:
        _need(isinstance(g, dict), "a graph entry is not a mapping")
        name = g.get("name")
        _need(isinstance(name, str) and name not in programs,
              f"graph name {name!r} is missing, not a string or repeated")
        try:
            allocated, programs[name] = _graph(g, variables, constants, path)
        except _Bad as bad:
            raise _Bad(f"graph {name!r}: {bad}") from None
        planned += allocated
    return {"constants": const_bytes, "variables": var_bytes, "arenas": planned}, programs


def _need(ok: bool, problem: str) -> None:
    if not ok:
        raise _Bad(problem)


def _shape(value: object, what: str) -> list[int]:
    _need(isinstance(value, list) and len(value) <= MAX_RANK
          and all(type(d) is int and d >= 0 for d in value), f"{what} has a bad shape {_short(value)}")
    return value  # type: ignore[return-value]


def _dtype(value: object, what: str) -> str:
    _need(isinstance(value, str) and value in DTYPES, f"{what} has an unsupported dtype {_short(value)}")
    return value  # type: ignore[return-value]


def _value_dtype(value: object, what: str) -> str:
    """A feed's, output's or body value's type: a tensor dtype, or a sequence/optional (``seq(float32)``,
    ``optional(seq(int64))``) of one, of strings or of an untyped element. Containers are built by kernels or
    fed by the caller, never read from the bundle's bytes (no arena plan, constant or variable has one)."""
    if isinstance(value, str) and split_container(value):
        elem = tensor_dtype(value)
        _need(elem in DTYPES or elem in ("object", UNKNOWN_DTYPE), f"{what} has an unsupported dtype {_short(value)}")
        return value
    return _dtype(value, what)


def _nbytes(shape: list[int], dtype: str) -> int:
    return math.prod(shape) * dtype_from_name(dtype).itemsize  # Python ints: no overflow


def _strings(value: object, what: str) -> list[str]:
    _need(isinstance(value, list) and all(isinstance(x, str) for x in value), f"{what} is not a list of names")
    return value  # type: ignore[return-value]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _constants(raw: object) -> dict[str, dict]:
    _need(isinstance(raw, dict), "'constants' is not a mapping")
    for cid, c in raw.items():  # type: ignore[union-attr]
        what = f"constant {_short(cid)}"
        _need(isinstance(cid, str) and all(_SEGMENT.fullmatch(s) for s in cid.split("/")), f"{what}: bad id")
        _need(isinstance(c, dict), f"{what} is not a mapping")
        _shape(c.get("shape"), what)
        if "storage" in c:
            _shape(c["storage"], f"{what} storage")
        _dtype(c.get("dtype"), what)
        _need(isinstance(c.get("hash"), str), f"{what} has no hash")
        if c.get("array") == PACKED_ARRAY:  # format 2: bytes [offset, offset + nbytes) of the packed array
            offset, nbytes = c.get("offset"), c.get("nbytes")
            _need(type(offset) is int and offset >= 0 and offset % 64 == 0, f"{what} has a bad offset")
            _need(type(nbytes) is int and nbytes >= 0, f"{what} has a bad size")  # = its shape's: _packed_sizes
            continue
        _need(c.get("array") == f"constants/{cid}", f"{what} points at array {_short(c.get('array'))}")
    nested = next((c for c in raw if any("/".join(c.split("/")[:k]) in raw  # type: ignore[union-attr]
                                         for k in range(1, c.count("/") + 1))), None)
    _need(nested is None, f"constant {_short(nested)} lies inside another constant's array")
    return raw  # type: ignore[return-value]


def _packed_sizes(constants: dict[str, dict]) -> None:
    """A constant in the packed array spans exactly the bytes of its (storage) shape."""
    for cid, c in constants.items():
        if c["array"] == PACKED_ARRAY:
            _need(c["nbytes"] == _nbytes(c.get("storage", c["shape"]), c["dtype"]),
                  f"constant {_short(cid)} has a bad size")


def _variables(raw: object, constants: dict[str, dict]) -> dict[str, dict]:
    _need(isinstance(raw, list), "'variables' is not a list")
    out: dict[str, dict] = {}
    for v in raw:  # type: ignore[union-attr]
        _need(isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] not in out,
              "a variable has no name, or a repeated one")
        what = f"variable {v['name']!r}"
        _shape(v.get("shape"), what)
        dtype = _dtype(v.get("dtype"), what)
        stored = _shape(v["storage"], f"{what} storage") if "storage" in v else v["shape"]
        _need(isinstance(v.get("format", "ND"), str), f"{what} has a bad format")
        _strings(v.get("readers", []), f"{what} readers")
        _strings(v.get("writers", []), f"{what} writers")
        initial = v.get("initial")
        if initial is not None:
            c = constants.get(initial) if isinstance(initial, str) else None
            _need(c is not None, f"{what} has a bad initial value reference {_short(initial)}")
            held = c.get("storage", c["shape"])  # both in the variable's stored format
            _need(c["dtype"] == dtype and held == stored,
                  f"{what}: its initial constant is {c['dtype']}{held}, the variable {dtype}{stored}")
        out[v["name"]] = v
    return out


def _graph(g: dict, variables: dict[str, dict], constants: dict[str, dict], path: str) -> tuple[int, Program]:
    """Check one graph; return the bytes its executor allocates (arena + inline constants) and its program."""
    _need(g.get("role") in ROLES, f"bad role {_short(g.get('role'))}")
    _need(isinstance(g.get("options", {}), dict), "'options' is not a mapping")
    bindings = g.get("bindings", {})
    _need(isinstance(bindings, dict), "'bindings' is not a mapping")
    for w, cid in bindings.items():
        _need(isinstance(cid, str) and cid in constants, f"weight {w!r} is bound to a missing constant {_short(cid)}")
    p = decode_program(g.get("program"), g["name"], path)  # structure, kinds, modes: BUNDLE_CORRUPT itself
    _known_opset("", p.opset)
    for f in p.feeds:
        if split_container(f.dtype):  # a sequence/optional: sized per run
            _value_dtype(f.dtype, f"feed {f.name!r}")
            _need(f.shape == (-1,), f"feed {f.name!r} ({f.dtype}) has a bad shape {_short(list(f.shape))}")
            continue
        _shape(list(f.shape), f"feed {f.name!r}")
        # string inputs (numpy object arrays) come from the caller at run time, never from the bundle
        _need(f.dtype == "object" or f.dtype in DTYPES, f"feed {f.name!r} has an unsupported dtype {_short(f.dtype)}")
    inline = sum(_encoded_tensor(t, f"const {name!r}") for name, t in p.consts.items())
    missing = [r for r in p.reads if r not in variables]
    _need(not missing, f"it reads an unknown variable {_short(missing[:1])}")
    unbound = [w for w in p.weights if w not in bindings]
    _need(not unbound, f"weight {_short(unbound[:1])} has no bound constant")
    defined = {f.name for f in p.feeds} | set(p.consts) | set(bindings) | set(p.reads)
    _opsets(p.opsets)
    for step in p.steps:
        inline += _step(step, defined, p)
    written: set[str] = set()
    for out in p.outputs:
        _need(out.name in defined, f"output {out.name!r} is not produced")
        if out.variable:
            _output_write(out, variables, g["role"], written)
    return p.arena_bytes + inline, p


def _output_write(out: Output, variables: dict[str, dict], role: str, written: set[str]) -> None:
    """An output that writes a variable (its own name, or ``writes``): a known variable of the output's type,
    written by an init/update graph, at most once per run."""
    target = out.target
    _need(target in variables, f"output {out.name!r} writes an unknown variable {_short(target)}")
    _need(role != "infer", f"output {out.name!r} writes variable {target!r} from an infer graph")
    _need(target not in written, f"two outputs write variable {target!r}")
    written.add(target)
    var = variables[target]
    _need(list(out.shape) == var["shape"] and out.dtype == var["dtype"],
          f"output {out.name!r} is {out.dtype}{list(out.shape)} but writes variable {target!r} of "
          f"{var['dtype']}{var['shape']}")


def _opsets(opsets: Mapping[str, int]) -> None:
    """A program's or body's opsets of other domains: known versions where the kernel library knows the domain."""
    for domain, version in opsets.items():
        if domain in KNOWN_OPSETS:
            _known_opset(domain, version)


def _known_opset(domain: str, version: int) -> None:
    low, high = KNOWN_OPSETS[domain]
    _need(low <= version <= high, f"it uses opset {version} of domain {domain or 'ai.onnx'!r}; the kernel library "
                                  f"implements versions {low} to {high}")


def _step(step: Step, defined: set[str], code: Program | Body) -> int:
    """A step against the kernel table and the values before it: the op exists (natively, if asked), every
    input is defined, every planned output fits the arena."""
    node, op = step.node, step.op
    native = isinstance(step, KernelStep) and step.native
    if step.domain:  # an op of another domain: it must exist there, at a version
        _need(step.domain in code.opsets and not native and supports_op(op, step.domain),
              f"node {node!r} uses op {_short(op)} of domain {_short(step.domain)}, which the kernel library does "
              f"not have or the program gives no version of")
    else:
        _need(op in SUPPORTED_OPS or op in EXECUTOR_OPS,
              f"node {node!r} uses op {_short(op)}, which the kernel library does not have")
    if native:
        _need(op in NATIVE_KERNELS, f"node {node!r} asks for a native {op!r} kernel, which the runtime does not have")
    undefined = [i for i in step.inputs if i and i not in defined]
    _need(not undefined, f"node {node!r} reads undefined value {_short(undefined[:1])}")
    inline = sum(_encoded_tensor(a["tensor"], f"node {node!r} attribute {k!r}")
                 for k, a in step.attrs.items() if isinstance(a, dict) and "tensor" in a)
    inline += _bodies(step)
    for out in filter(None, step.outputs):
        plan = code.values.get(out)  # none: sized at run time, the executor keeps the kernel's own array
        _need(plan is None or _plan_fits(plan, code.arena_bytes), f"value {out!r} has no valid buffer in the arena")
        defined.add(out)
    return inline


def _bodies(step: Step) -> int:
    """A step's bodies (the decoder checked they are the ones its op has): each a well-formed program."""
    bodies = step.bodies if isinstance(step, ControlStep | KernelStep) else {}
    total = 0
    for attr, body in bodies.items():
        try:
            total += _body(body)
        except _Bad as bad:
            raise _Bad(f"in {attr} of node {step.node!r}: {bad}") from None
    if bodies:
        _arity(step, bodies)
    return total


def _arity(step: Step, bodies: Mapping[str, Body]) -> None:
    """Each body takes and returns what the control step hands it and expects back (runtime/control.py)."""
    node, op = step.node, step.op
    captures = step.attrs.get("captures", 0)
    n_in, n_out = len(step.inputs), len(step.outputs)
    _need(type(captures) is int and 0 <= captures <= n_in, f"node {node!r} has a bad captures count")
    explicit = n_in - captures
    for attr, body in bodies.items():
        b_in, b_out = len(body.inputs), len(body.outputs)
        if op == "If":
            ok = explicit == 1 and b_in == captures and b_out == n_out
        elif op == "Loop":  # body: (iteration, condition, carried..., captures...) -> (condition, carried..., scans...)
            carried = explicit - 2
            ok = carried >= 0 and b_in == 2 + carried + captures and b_out == 1 + n_out and b_out >= 1 + carried
        elif op == "Scan":  # Scan-8 takes sequence_lens first, which the body does not see
            ok = b_in - captures in (explicit, explicit - 1) and b_out == n_out
        elif op == "SequenceMap":
            ok = b_in == explicit + captures and b_out == n_out
        else:  # a kernel's graph attribute: tensor -> tensor
            ok = b_in == 1 + captures and b_out == 1
        _need(ok, f"node {node!r} ({op}): {attr} takes {b_in} inputs and returns {b_out} outputs, which does not "
                  f"fit a step with {n_in} inputs ({captures} captured) and {n_out} outputs")


def _body(b: Body) -> int:
    """Check one body program; return the bytes its executor allocates."""
    _known_opset("", b.opset)
    for key, entries in (("input", b.inputs), ("output", b.outputs)):
        for e in entries:
            if e.dtype != UNKNOWN_DTYPE:  # untyped: a branch that cannot run on these shapes
                _value_dtype(e.dtype, f"body {key} {e.name!r}")
    inline = sum(_encoded_tensor(t, f"const {name!r}") for name, t in b.consts.items())
    defined = {i.name for i in b.inputs} | set(b.consts)
    _opsets(b.opsets)
    for step in b.steps:
        inline += _step(step, defined, b)
    missing = [o.name for o in b.outputs if o.name not in defined]
    _need(not missing, f"body output {_short(missing[:1])} is not produced")
    return b.arena_bytes + inline


def _plan_fits(plan: Plan, arena: int) -> bool:
    try:
        _shape(list(plan.shape), "value")
        nbytes = _nbytes(_shape(list(plan.stored), "value"), _dtype(plan.dtype, "value"))
    except _Bad:
        return False
    return plan.offset >= 0 and plan.offset + nbytes <= arena


def _encoded_tensor(t: object, what: str) -> int:
    """Check an inline tensor ``{"dtype", "shape", "b64"}``: its bytes must be exactly its shape's. A string
    tensor (an attribute) is ``{"dtype": "object", "shape", "strings"}``: exactly its shape's count of strings."""
    _need(isinstance(t, dict), f"{what} is not a tensor")
    shape = _shape(t.get("shape"), what)  # type: ignore[union-attr]
    if t.get("dtype") == "object":  # type: ignore[union-attr]
        strings = t.get("strings")  # type: ignore[union-attr]
        _need(isinstance(strings, list) and all(isinstance(s, str) for s in strings)
              and len(strings) == math.prod(shape), f"{what} has a bad string list")
        return sum(len(s) for s in strings)
    dtype = _dtype(t.get("dtype"), what)  # type: ignore[union-attr]
    data = t.get("b64")  # type: ignore[union-attr]
    _need(isinstance(data, str), f"{what} has no data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(f"{what} has malformed data") from None
    _need(len(raw) == _nbytes(shape, dtype), f"{what} has {len(raw)} bytes, its shape needs {_nbytes(shape, dtype)}")
    return len(raw)
