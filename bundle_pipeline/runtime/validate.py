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

from ..dtypes import EXTENDED, dtype_from_name
from ..errors import BundleCorrupt, ParamInvalid, RuntimeFailure
from ..ir.graph import UNKNOWN_DTYPE, split_container, tensor_dtype
from ..kernels import KNOWN_OPSETS, SUPPORTED_OPS, supports_op
from .control import BODY_ATTRS, CONTROL_OPS, KERNEL_GRAPH_ATTRS
from .npu import NATIVE_KERNELS
from .storage import PACKED_ARRAY

FORMAT_VERSIONS = (1, 2)  # 2: small constants share constants/packed at an offset
# numeric and bool types, with the ml_dtypes ones (bfloat16, float8*, float4, int4, int2, ...); never
# object (strings come only from the caller as feeds) nor anything else np.dtype would parse
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                    "uint32", "uint64", "bool", *EXTENDED})
EXECUTOR_OPS = frozenset({"TransData"}) | CONTROL_OPS
ROLES = ("init", "update", "infer")
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
                      max_alloc_bytes: int | None = None) -> None:
    """Raise BUNDLE_CORRUPT naming the first problem. ``stored_bytes`` (what the bundle really stores) bounds
    the constants and, through ``alloc_budget``, what loading may allocate (RUNTIME_ERROR when it needs more);
    None checks structure only."""
    try:
        need = _check(manifest)
        if stored_bytes is None:
            _packed_sizes(manifest["constants"])
            return
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


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _check(m: object) -> dict[str, int]:
    """Check the structure; return the bytes loading allocates: constants, variables, arenas (+ inline)."""
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
    names: set[str] = set()
    for g in graphs:
        _need(isinstance(g, dict), "a graph entry is not a mapping")
        name = g.get("name")
        _need(isinstance(name, str) and name not in names, f"graph name {name!r} is missing, not a string or repeated")
        names.add(name)
        try:
            planned += _graph(g, variables, constants)
        except _Bad as bad:
            raise _Bad(f"graph {name!r}: {bad}") from None
    return {"constants": const_bytes, "variables": var_bytes, "arenas": planned}


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


def _graph(g: dict, variables: dict[str, dict], constants: dict[str, dict]) -> int:
    """Check one graph; return the bytes its executor allocates (arena + inline constants)."""
    _need(g.get("role") in ROLES, f"bad role {_short(g.get('role'))}")
    _need(isinstance(g.get("options", {}), dict), "'options' is not a mapping")
    bindings = g.get("bindings", {})
    _need(isinstance(bindings, dict), "'bindings' is not a mapping")
    for w, cid in bindings.items():
        _need(isinstance(cid, str) and cid in constants, f"weight {w!r} is bound to a missing constant {_short(cid)}")
    p = g.get("program")
    _need(isinstance(p, dict), "no program")
    _need(isinstance(p.get("graph"), str), "the program has no graph name")
    _need(type(p.get("opset")) is int, "the program has no opset")
    _known_opset("", p["opset"])
    arena = p.get("arena_bytes")
    _need(type(arena) is int and arena >= 0, f"bad arena_bytes {_short(arena)}")
    values = p.get("values")
    _need(isinstance(values, dict), "the program has no value plans")
    feeds = p.get("feeds")
    _need(isinstance(feeds, list), "the program has no feed list")
    for f in feeds:
        _need(isinstance(f, dict) and isinstance(f.get("name"), str), "a feed has no name")
        if isinstance(f.get("dtype"), str) and split_container(f["dtype"]):  # a sequence/optional: sized per run
            _value_dtype(f["dtype"], f"feed {f['name']!r}")
            _need(f.get("shape") == [-1], f"feed {f['name']!r} ({f['dtype']}) has a bad shape {_short(f.get('shape'))}")
            continue
        _shape(f.get("shape"), f"feed {f['name']!r}")
        # string inputs (numpy object arrays) come from the caller at run time, never from the bundle
        _need(f.get("dtype") == "object" or f.get("dtype") in DTYPES,
              f"feed {f['name']!r} has an unsupported dtype {_short(f.get('dtype'))}")
    consts = p.get("consts")
    _need(isinstance(consts, dict), "the program has no consts mapping")
    inline = sum(_encoded_tensor(t, f"const {name!r}") for name, t in consts.items())
    reads = _strings(p.get("reads"), "reads")
    missing = [r for r in reads if r not in variables]
    _need(not missing, f"it reads an unknown variable {_short(missing[:1])}")
    weights = _strings(p.get("weights"), "weights")
    unbound = [w for w in weights if w not in bindings]
    _need(not unbound, f"weight {_short(unbound[:1])} has no bound constant")
    _need(isinstance(p.get("formats", {}), dict), "'formats' is not a mapping")
    defined = {f["name"] for f in feeds} | set(consts) | set(bindings) | set(reads)
    steps = p.get("steps")
    _need(isinstance(steps, list), "the program has no step list")
    _unique_control_names(steps)
    opsets = _opsets(p)
    for step in steps:
        inline += _step(step, defined, values, arena, opsets)
    outputs = p.get("outputs")
    _need(isinstance(outputs, list), "the program has no output list")
    written: set[str] = set()
    for out in outputs:
        _need(isinstance(out, dict) and isinstance(out.get("name"), str), "an output has no name")
        _need(out["name"] in defined, f"output {out['name']!r} is not produced")
        if out.get("variable"):
            _output_write(out, variables, g["role"], written)
    return arena + inline


def _output_write(out: dict, variables: dict[str, dict], role: str, written: set[str]) -> None:
    """An output that writes a variable (its own name, or ``writes``): a known variable of the output's type,
    written by an init/update graph, at most once per run."""
    target = out.get("writes", out["name"])
    _need(isinstance(target, str) and target in variables, f"output {out['name']!r} writes an unknown variable "
                                                           f"{_short(target)}")
    _need(role != "infer", f"output {out['name']!r} writes variable {target!r} from an infer graph")
    _need(target not in written, f"two outputs write variable {target!r}")
    written.add(target)
    var = variables[target]
    _need(out.get("shape") == var["shape"] and out.get("dtype") == var["dtype"],
          f"output {out['name']!r} is {_short(out.get('dtype'))}{_short(out.get('shape'))} but writes variable "
          f"{target!r} of {var['dtype']}{var['shape']}")


def _opsets(p: dict) -> dict[str, int]:
    """A program's opset version of each non-default domain its steps use (``opsets``; absent: none)."""
    opsets = p.get("opsets", {})
    _need(isinstance(opsets, dict) and all(isinstance(d, str) and d and type(v) is int for d, v in opsets.items()),
          "'opsets' is not a mapping of domain to version")
    for domain, version in opsets.items():
        if domain in KNOWN_OPSETS:
            _known_opset(domain, version)
    return opsets


def _known_opset(domain: str, version: int) -> None:
    low, high = KNOWN_OPSETS[domain]
    _need(low <= version <= high, f"it uses opset {version} of domain {domain or 'ai.onnx'!r}; the kernel library "
                                  f"implements versions {low} to {high}")


def _step(step: object, defined: set[str], values: dict, arena: int, opsets: dict[str, int]) -> int:
    _need(isinstance(step, dict), "a step is not a mapping")
    node = step.get("node")  # type: ignore[union-attr]
    op = step.get("op")  # type: ignore[union-attr]
    _need(isinstance(node, str) and isinstance(op, str), "a step has no node name or op")
    if "domain" in step:  # type: ignore[operator]  # an op of another domain: it must exist there, at a version
        domain = step["domain"]  # type: ignore[index]
        _need(isinstance(domain, str) and domain in opsets and not step.get("native") and supports_op(op, domain),  # type: ignore[union-attr]
              f"node {node!r} uses op {_short(op)} of domain {_short(domain)}, which the kernel library does not "
              f"have or the program gives no version of")
    else:
        _need(op in SUPPORTED_OPS or op in EXECUTOR_OPS,
              f"node {node!r} uses op {_short(op)}, which the kernel library does not have")
    if step.get("native"):  # type: ignore[union-attr]
        _need(op in NATIVE_KERNELS, f"node {node!r} asks for a native {op!r} kernel, which the runtime does not have")
    inputs = step.get("inputs")  # type: ignore[union-attr]
    outputs = step.get("outputs")  # type: ignore[union-attr]
    _need(isinstance(inputs, list) and all(isinstance(i, str) for i in inputs)
          and isinstance(outputs, list) and all(isinstance(o, str) for o in outputs),
          f"node {node!r} has bad input or output lists")
    undefined = [i for i in inputs if i and i not in defined]
    _need(not undefined, f"node {node!r} reads undefined value {_short(undefined[:1])}")
    attrs = step.get("attrs", {})  # type: ignore[union-attr]
    _need(isinstance(attrs, dict), f"node {node!r} has bad attributes")
    inline = sum(_encoded_tensor(a["tensor"], f"node {node!r} attribute {k!r}")
                 for k, a in attrs.items() if isinstance(a, dict) and "tensor" in a)
    for key in ("tiling", "layout"):
        _need(step.get(key) is None or isinstance(step[key], dict), f"node {node!r} has a bad {key}")  # type: ignore
    inline += _bodies(step, node, op)  # type: ignore[arg-type]
    for out in filter(None, outputs):
        plan = values.get(out)  # none: sized at run time, the executor keeps the kernel's own array
        _need(plan is None or (isinstance(plan, dict) and _plan_fits(plan, arena)),
              f"value {out!r} has no valid buffer in the arena")
        defined.add(out)
    return inline


def _bodies(step: dict, node: str, op: str) -> int:
    """A control-flow step's bodies: exactly the ones its op has, each a well-formed program."""
    bodies = step.get("bodies")
    graph_attrs = KERNEL_GRAPH_ATTRS.get((step.get("domain", ""), op))
    if graph_attrs is not None and bodies is not None:  # a kernel's optional graph attributes
        _need(isinstance(bodies, dict) and bodies and set(bodies) <= set(graph_attrs),
              f"node {node!r} ({op}) takes graph attributes {', '.join(graph_attrs)} only")
    elif op not in CONTROL_OPS or step.get("domain"):
        _need(bodies is None, f"node {node!r} ({op}) has bodies, which only {', '.join(sorted(CONTROL_OPS))} have")
        return 0
    else:
        _need(isinstance(bodies, dict) and sorted(bodies) == list(BODY_ATTRS[op]),
              f"node {node!r} ({op}) needs bodies {', '.join(BODY_ATTRS[op])}")
    total = 0
    for attr, body in bodies.items():  # type: ignore[union-attr]
        try:
            total += _body(body)
        except _Bad as bad:
            raise _Bad(f"in {attr} of node {node!r}: {bad}") from None
    _arity(step, node, op, bodies)  # type: ignore[arg-type]
    return total


def _arity(step: dict, node: str, op: str, bodies: dict) -> None:
    """Each body takes and returns what the control step hands it and expects back (runtime/control.py)."""
    captures = step.get("attrs", {}).get("captures", 0)
    n_in, n_out = len(step["inputs"]), len(step["outputs"])
    _need(type(captures) is int and 0 <= captures <= n_in, f"node {node!r} has a bad captures count")
    explicit = n_in - captures
    for attr, body in bodies.items():
        b_in, b_out = len(body["inputs"]), len(body["outputs"])
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


def _unique_control_names(steps: list) -> None:
    """The executor finds a step's bodies by its node name."""
    names = [s.get("node") for s in steps if isinstance(s, dict) and "bodies" in s]
    _need(len(names) == len(set(map(str, names))), "two steps with bodies share a node name")


def _body(p: object) -> int:
    """Check one body program; return the bytes its executor allocates."""
    _need(isinstance(p, dict), "the body is not a mapping")
    arena = p.get("arena_bytes")  # type: ignore[union-attr]
    _need(type(arena) is int and arena >= 0, f"bad arena_bytes {_short(arena)}")
    values = p.get("values")  # type: ignore[union-attr]
    _need(isinstance(values, dict), "the body has no value plans")
    _need(type(p.get("opset")) is int, "the body has no opset")  # type: ignore[union-attr]
    _known_opset("", p["opset"])  # type: ignore[index]
    typed = []
    for key in ("inputs", "outputs"):
        entries = p.get(key)  # type: ignore[union-attr]
        _need(isinstance(entries, list), f"the body has no {key} list")
        for e in entries:
            _need(isinstance(e, dict) and isinstance(e.get("name"), str), f"a body {key[:-1]} has no name")
            _need(isinstance(e.get("shape"), list) and all(type(d) is int and d >= -1 for d in e["shape"]),
                  f"body {key[:-1]} {e['name']!r} has a bad shape")
            if e.get("dtype") != UNKNOWN_DTYPE:  # untyped: a branch that cannot run on these shapes
                _value_dtype(e.get("dtype"), f"body {key[:-1]} {e['name']!r}")
        typed.append(entries)
    consts = p.get("consts")  # type: ignore[union-attr]
    _need(isinstance(consts, dict), "the body has no consts mapping")
    inline = sum(_encoded_tensor(t, f"const {name!r}") for name, t in consts.items())
    defined = {i["name"] for i in typed[0]} | set(consts)
    steps = p.get("steps")  # type: ignore[union-attr]
    _need(isinstance(steps, list), "the body has no step list")
    _unique_control_names(steps)
    opsets = _opsets(p)  # type: ignore[arg-type]
    for step in steps:
        inline += _step(step, defined, values, arena, opsets)
    missing = [o["name"] for o in typed[1] if o["name"] not in defined]
    _need(not missing, f"body output {_short(missing[:1])} is not produced")
    return arena + inline


def _plan_fits(plan: dict, arena: int) -> bool:
    try:
        shape = _shape(plan.get("shape"), "value")
        stored = _shape(plan["storage"], "value") if "storage" in plan else shape
        nbytes = _nbytes(stored, _dtype(plan.get("dtype"), "value"))
    except _Bad:
        return False
    offset = plan.get("offset")
    return type(offset) is int and offset >= 0 and offset + nbytes <= arena


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
