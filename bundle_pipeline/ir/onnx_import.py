"""ONNX -> IR: load (with external data), check, fix input shapes, fold shape arithmetic, split weights.

The result of ``import_model`` is the IR ``Graph`` (structure) and a dict of weight arrays. Integer
tensors of at most ``CONST_MAX_ELEMENTS`` elements steer shapes (Reshape targets, Slice bounds, ...) and
are inlined as consts; every other initializer or ``Constant`` output is a weight.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from ..dtypes import dtype_name
from ..errors import BundleIOError, GraphInvalid, OptionInvalid, UnsupportedOp
from ..files import TooLarge, describe_error, read_regular
from .external import ExternalRef, external_path
from .fold import (
    CONST_DTYPES,
    CONST_MAX_ELEMENTS,
    MAX_FOLD_PASSES,
    constant_value,
    fold_constants,
    is_const_array,
    is_static,
)
from .graph import Graph, Node, TensorType
from .node_attrs import node_attrs, tensor_array
from .scopes import bodies, body_reads, uniquify_body_names
from .subgraphs import CONTROL_OPS, Scope, convert_control, has_bodies, op_domain, used_opsets, value_type

MAX_MODEL_BYTES = (2 << 30) - 1  # protobuf's limit: a larger .onnx file cannot be a model, whatever it holds


def load_model(source: str | bytes | os.PathLike, where: str) -> tuple[onnx.ModelProto, Path | None]:
    """Parse ONNX bytes or a file; external data stays on disk (see ``detach_weights``)."""
    try:
        if isinstance(source, bytes):
            model, base = onnx.load_model_from_string(source), None
        else:
            path = Path(source)  # read as a regular file: a FIFO or a device is refused, never waited on
            model, base = onnx.load_model_from_string(read_regular(path, MAX_MODEL_BYTES)), path.parent
    except FileNotFoundError as err:
        raise BundleIOError(f"file not found: {err.filename or source}", where) from None
    except TooLarge as err:
        raise GraphInvalid(f"not a valid ONNX model: {describe_error(err)} (protobuf; larger weights belong in "
                           f"external data)", where) from None
    except (DecodeError, ValueError, RuntimeError) as err:
        raise GraphInvalid(f"not a valid ONNX model (truncated or not ONNX): {err}", where) from None
    except OSError as err:
        raise BundleIOError(f"cannot read model: {describe_error(err)}", where) from None
    if not model.graph.node and not model.graph.output:
        raise GraphInvalid("not a valid ONNX model: it has no nodes and no outputs", where)
    return model, base


Detached = dict[str, "np.ndarray | ExternalRef"]


def detach_weights(model: onnx.ModelProto, base: Path | None, where: str) -> Detached:
    """Take large initializers out of the proto, leaving typed graph inputs in their place.

    Shape inference and checking then copy kilobytes instead of the weights (onnx serialises the
    whole model for each), and external data is never read here: it becomes an ``ExternalRef``.
    Small tensors stay (folding and data propagation read their values); small external ones are
    loaded now.
    """
    graph = model.graph
    inputs = {i.name for i in graph.input}
    detached: Detached = {}
    keep = []
    for t in graph.initializer:
        external = t.data_location == onnx.TensorProto.EXTERNAL
        if math.prod(t.dims) <= CONST_MAX_ELEMENTS:
            if external:
                inline_external(t, base, where)
            keep.append(t)
            continue
        detached[t.name] = _external_ref(t, base, where) if external else tensor_array(t)
        if t.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return detached


def _external_info(t: onnx.TensorProto, base: Path | None, where: str) -> tuple[Path, int, int]:
    info = {e.key: e.value for e in t.external_data}
    if base is None:
        raise GraphInvalid(f"tensor {t.name!r} uses external data, which needs the model as a file path", where)
    path = external_path(base, info.get("location", ""), t.name, where)
    try:
        return path, int(info.get("offset", 0)), int(info.get("length", 0))
    except ValueError:
        raise GraphInvalid(f"tensor {t.name!r}: external data offset/length are not integers", where) from None


def _external_ref(t: onnx.TensorProto, base: Path | None, where: str) -> ExternalRef:
    path, offset, length = _external_info(t, base, where)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).name
    return ExternalRef(str(path), offset, length, dtype, tuple(int(d) for d in t.dims))


def inline_external(t: onnx.TensorProto, base: Path | None, where: str) -> None:
    """Inline a small external tensor: exactly its bytes, read from the checked file."""
    t.raw_data = bytes(_external_ref(t, base, where).read_raw())
    t.data_location = onnx.TensorProto.DEFAULT
    del t.external_data[:]


def check_model(model: onnx.ModelProto, where: str) -> None:
    check_opsets(model, where)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise GraphInvalid(f"onnx.checker: {first}", where) from None


@cache
def warm_up() -> None:
    """Load onnx's operator schemas (its checker does on first use, ~15-20 ms) while the compiler loads, not in
    the first parse task: one tiny model is checked, once a process (setup may load the steps twice)."""
    x, y = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1]), helper.make_tensor_value_info(
        "y", onnx.TensorProto.FLOAT, [1])
    onnx.checker.check_model(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "warm",
                                                                 [x], [y])))


def check_opsets(model: onnx.ModelProto, where: str) -> None:
    """Every imported version of a domain the kernel library implements must be one it knows: ops of opset 99
    are not run as if they were opset 28's. (Unknown domains are refused where a node uses one.)"""
    from ..kernels import KNOWN_OPSETS

    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in KNOWN_OPSETS:
            low, high = KNOWN_OPSETS[domain]
            if not low <= imp.version <= high:
                raise UnsupportedOp(f"the model imports opset {imp.version} of domain {imp.domain or 'ai.onnx'!r}; "
                                    f"this tool implements versions {low} to {high} and does not guess", where)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 21


def domain_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """The model's opset version of each domain other than the default one (ai.onnx.ml, ...)."""
    return {imp.domain: int(imp.version) for imp in model.opset_import if imp.domain not in ("", "ai.onnx")}


def set_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, list[int]], where: str) -> None:
    """Apply the ``input_shape`` option: named graph inputs get these static dims."""
    inputs = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise OptionInvalid(f"input_shape names {name!r}, which is not a graph input "
                                f"(inputs: {', '.join(inputs)})", where)
        tensor_type = inputs[name].type.tensor_type
        rank = len(tensor_type.shape.dim)
        if tensor_type.HasField("shape") and rank != len(dims):
            raise OptionInvalid(f"input_shape for {name!r} has {len(dims)} dims, the input has rank {rank}", where)
        tensor_type.shape.Clear()
        for d in dims:
            tensor_type.shape.dim.add().dim_value = d


def prune_outputs(model: onnx.ModelProto, out_nodes: str, where: str) -> None:
    """Apply ``out_nodes``: ``node:index;tensor_name;...`` become the only graph outputs."""
    by_node = {n.name: n for n in model.graph.node}
    wanted: list[str] = []
    for item in filter(None, (p.strip() for p in out_nodes.split(";"))):
        node_name, sep, index = item.rpartition(":")
        if sep and node_name in by_node and index.isdigit():
            outs = by_node[node_name].output
            if int(index) >= len(outs):
                raise OptionInvalid(f"out_nodes: node {node_name!r} has {len(outs)} outputs, not {index}", where)
            wanted.append(outs[int(index)])
        elif item in {o for n in model.graph.node for o in n.output}:
            wanted.append(item)
        else:
            raise OptionInvalid(f"out_nodes: {item!r} names no node output; use node_name:index or a tensor name",
                                where)
    value_info = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    del model.graph.output[:]
    for name in wanted:
        info = value_info.get(name) or helper.make_empty_tensor_value_info(name)
        model.graph.output.append(info)
    _drop_dead_nodes(model)


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    live = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(model.graph.node):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(i for i in node.input if i)
            live.update(body_reads(node))  # outer values an If/Loop/Scan body reads by name
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))


def infer_shapes(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Type every value: onnx's strict inference where it succeeds and agrees with the kernels, else the
    project's own propagation (``ir/shapes.py``). With control flow, a body branch that cannot run on these
    input shapes (silero-vad's 8 kHz branch fed a 16 kHz frame) stays partly untyped: its values are sized at
    run time, and it fails only if it is ever taken, as it does in onnxruntime."""
    return infer_strict(model, where)[0]


def infer_strict(model: onnx.ModelProto, where: str) -> tuple[onnx.ModelProto, bool]:
    """``infer_shapes``, and whether onnx's strict inference stood (``shapes.infer_strict``)."""
    from .shapes import infer_strict as infer

    return infer(model, where)


def to_ir(model: onnx.ModelProto, name: str, detached: Detached, where: str,
          outputs_write: bool = False) -> tuple[Graph, Detached]:
    """Build the IR graph and the weights (arrays or external refs) from a folded, shape-inferred model.
    ``outputs_write``: the graph writes variables (init/update), see ``_outputs_as_writes``."""
    g = model.graph
    types = _tensor_types(model, where)
    outputs = [o.name for o in g.output]
    initializers = {t.name: tensor_array(t) for t in g.initializer}
    consts = {k: v for k, v in initializers.items() if v.dtype in CONST_DTYPES and v.size <= CONST_MAX_ELEMENTS}
    weights: Detached = {k: v for k, v in initializers.items() if k not in consts}
    weights.update(detached)
    scope = Scope(weights, {**types, **_types_of(consts), **_types_of(weights)}, default_opset(model), where,
                  is_const_array, node_attrs, constant_value, lambda node, index: _check_supported(node, index, where),
                  domain_opsets=domain_opsets(model))
    nodes: list[Node] = []
    for index, node in enumerate(g.node):
        op_type, domain = node.op_type, op_domain(node)
        _check_op(op_type, domain, node, index, where)
        label = scope.label(node.name or f"{op_type}_{index}")
        if node.attribute and has_bodies(node):
            nodes.append(convert_control(node, label, scope))
            continue
        attrs = node_attrs(node)
        if op_type == "Constant" and not domain:
            _constant_to_tensor(node, attrs, consts, weights, where)
            scope.types.update(_types_of({node.output[0]: {**consts, **weights}[node.output[0]]}))
            continue
        nodes.append(Node(label, op_type, list(node.input), list(node.output), attrs, domain))
    written = (_outputs_as_writes(nodes, outputs, consts, weights, types, scope.label)
               if outputs_write else {})
    _drop_unused(nodes, outputs, consts, weights)
    _drop_dead_outputs(nodes, outputs, types)
    types.update(_types_of({**consts, **weights}))
    types.update(written)
    feeds = [i.name for i in g.input if i.name not in initializers and i.name not in detached]
    graph = Graph(name=name, opset=default_opset(model), inputs=feeds, outputs=outputs,
                  nodes=nodes, types=types, weights=sorted(weights), consts=consts,
                  domain_opsets=used_opsets(nodes, scope.domain_opsets))
    _check_static(graph, model, where)
    return graph, weights


def _outputs_as_writes(nodes: list[Node], outputs: list[str], consts: dict, weights: Detached,
                       types: dict[str, TensorType], label: Callable[[str], str]) -> dict[str, TensorType]:
    """In an init/update graph a graph output is a write, never a read (DESIGN section 2): an output that is
    an initializer, a ``Constant``'s value or a folded tensor keeps its name for the output, made by an Identity
    node, while the tensor itself moves to a fresh name (``W@const``) that the graph's nodes read instead, as
    ONNX means them to. So an init graph ``W = initializer`` writes the variable ``W`` and does not read it.
    (An infer graph's initializer ``W`` stays a read of the variable ``W``; outputting it too is an error that
    dedupe reports.) Returns the outputs' types."""
    taken = {*consts, *weights, *types, *(o for n in nodes for o in n.outputs)}
    written: dict[str, TensorType] = {}
    for name in dict.fromkeys(outputs):
        table = consts if name in consts else weights if name in weights else None
        if table is None:
            continue
        fresh = _fresh_name(f"{name}@const", taken)
        table[fresh] = table.pop(name)
        for node in nodes:
            node.inputs = [fresh if i == name else i for i in node.inputs]
        nodes.append(Node(label(f"{name}@write"), "Identity", [fresh], [name]))
        written[name] = _types_of({name: table[fresh]})[name]
    return written


def _fresh_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}~{n}"
    taken.add(candidate)
    return candidate


def _types_of(tensors: Mapping[str, np.ndarray | ExternalRef]) -> dict[str, TensorType]:
    return {k: TensorType.of(tuple(v.shape), dtype_name(np.dtype(v.dtype))) for k, v in tensors.items()}


def _drop_dead_outputs(nodes: list[Node], outputs: list[str], types: dict) -> None:
    """An output nobody reads and no graph output names, whose shape inference could not tell, is
    omitted (``""``): e.g. a Loop's final loop-carried value when only its scan output is used."""
    read = {i for n in nodes for i in n.inputs} | set(outputs)
    for node in nodes:
        if not all(o in read or o in types for o in node.outputs):
            node.outputs = [o if o in read or o in types else "" for o in node.outputs]


@cache
def _kernel_ops() -> tuple[frozenset, dict, Callable[[str, str], bool]]:
    from ..kernels import DOMAIN_OPS, SUPPORTED_OPS, supports_op  # once, not once a node

    return SUPPORTED_OPS | CONTROL_OPS, DOMAIN_OPS, supports_op


def _check_supported(node: onnx.NodeProto, index: int, where: str) -> None:
    _check_op(node.op_type, op_domain(node), node, index, where)


def _check_op(op_type: str, domain: str, node: onnx.NodeProto, index: int, where: str) -> None:
    default_ops, domain_ops, supports_op = _kernel_ops()
    if not domain and op_type in default_ops:
        return
    if domain and not supports_op(node.op_type, domain):
        why = (f"which the kernel library does not support in that domain (its {domain} ops: "
               f"{', '.join(sorted(domain_ops[domain]))})" if domain in domain_ops else
               f"a domain the kernel library does not support (other domains it supports: {', '.join(domain_ops)})")
        raise UnsupportedOp(f"node {node.name or index!r} ({node.op_type}) uses op domain {domain!r}, {why}", where)
    if not domain:
        raise UnsupportedOp(f"node {node.name or index!r} uses op {node.op_type}, which the kernel library does not "
                            f"support", where)


def _drop_unused(nodes: list[Node], outputs: list[str], consts: dict, weights: dict) -> None:
    """Tensors no node reads and no output names (e.g. after out_nodes pruning) are not stored."""
    used = {i for n in nodes for i in n.inputs} | set(outputs)
    for table in (consts, weights):
        for tensor in [t for t in table if t not in used]:
            del table[tensor]


def _constant_to_tensor(node: onnx.NodeProto, attrs: dict, consts: dict, weights: dict, where: str) -> None:
    value = constant_value(node)
    target = consts if is_const_array(value) else weights
    target[node.output[0]] = value


def _tensor_types(model: onnx.ModelProto, where: str) -> dict[str, TensorType]:
    """Types of the top graph's values: tensors, sequences and optionals (``subgraphs.value_type``); a value
    inference left untyped is skipped (``_check_static`` names it if a node produces it)."""
    types: dict[str, TensorType] = {}
    for infos in (model.graph.input, model.graph.value_info, model.graph.output):
        for info in infos:
            t = _value_type(info, where)
            if t is not None:
                types[info.name] = t
    return types


_NO_TYPE = object()
_TYPES_BY_BYTES: dict[bytes, object] = {}  # a TypeProto's bytes -> its IR type (or _NO_TYPE): models repeat types


def _value_type(info: onnx.ValueInfoProto, where: str) -> TensorType | None:
    """``value_type`` of a value info, remembered by the type's serialised bytes (a few dozen distinct types
    a model, thousands of values a build); a refused type raises every time (its message names the value)."""
    key = info.type.SerializeToString()
    found = _TYPES_BY_BYTES.get(key)
    if found is None:
        t = value_type(info.type, info.name, where)
        if len(_TYPES_BY_BYTES) >= 1 << 14:
            _TYPES_BY_BYTES.clear()
        found = _TYPES_BY_BYTES[key] = _NO_TYPE if t is None else t
    return None if found is _NO_TYPE else found


def _check_static(graph: Graph, model: onnx.ModelProto, where: str) -> None:
    for name in graph.inputs:
        known = graph.types.get(name)
        if known is None or (-1 in known.shape and not known.container):
            _refuse_dynamic_input(model, name, where)
    for node in graph.nodes:
        for out in node.outputs:
            if out and out not in graph.types:
                raise GraphInvalid(f"node {node.name!r} ({node.op_type}): could not infer the type of output "
                                   f"{out!r}; set input_shape so every shape is static", where)
    for name in graph.weights:
        if graph.types[name].dtype == "object":
            raise UnsupportedOp(f"constant {name!r} is a string tensor; string constants cannot be stored in a "
                                f"bundle (string inputs and computed strings are supported)", where)


def _refuse_dynamic_input(model: onnx.ModelProto, name: str, where: str) -> None:
    for info in model.graph.input:
        if info.name == name:
            dims = [str(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else d.dim_param or "?"
                    for d in info.type.tensor_type.shape.dim]
            raise GraphInvalid(f"input {info.name!r} has a dynamic shape [{','.join(dims)}]; set the build option "
                               f"input_shape, e.g. input_shape: \"{info.name}:"
                               f"{','.join(d if d.isdigit() else '1' for d in dims)}\"", where)
    raise AssertionError(f"{name!r} is not an input of the model")


def import_model(source: str | bytes | os.PathLike, name: str, input_shapes: Mapping[str, list[int]],
                 out_nodes: str, where: str, outputs_write: bool = False) -> tuple[Graph, Detached]:
    """The whole parse: load, detach weights, check, apply options, infer shapes, fold, re-infer, convert.
    (A graph without bodies that folding left unchanged and onnx typed strictly is not re-inferred: the types
    would come out the same, which ``tests/test_ir_import_fast_paths.py`` checks against the long way.)"""
    model, base = load_model(source, where)
    detached = detach_weights(model, base, where)
    check_model(model, where)
    flat = not any(node.attribute and has_bodies(node) for node in model.graph.node)  # no control flow
    if not flat:
        uniquify_body_names(model)  # sibling bodies may reuse names; the tables below are flat
    if input_shapes:
        set_input_shapes(model, input_shapes, where)
    _clear_inferred(model, flat)
    model, strict = infer_strict(model, where)
    if out_nodes:
        prune_outputs(model, out_nodes, where)
    for _ in range(MAX_FOLD_PASSES):  # each pass may inline Ifs whose condition it made known
        model, folded = fold_constants(model, default_opset(model), where)
        # an unchanged graph onnx typed strictly gets the same types again: not inferred twice (a graph with
        # bodies is, as onnx types a Loop body's values only on the second pass)
        if not folded.changed and strict and flat and not out_nodes:
            break
        _clear_inferred(model, flat and not folded.inlined)
        model, strict = infer_strict(model, where)
        if not folded.inlined:
            break
    return to_ir(model, name, detached, where, outputs_write)


def _clear_inferred(model: onnx.ModelProto, flat: bool = False) -> None:
    """Drop stale value_info so inference recomputes every intermediate shape from the inputs. ``flat``: no
    node has a body (then the nodes are not looked at)."""
    _clear_graph(model.graph, flat)


def _clear_graph(graph: onnx.GraphProto, flat: bool = False) -> None:
    del graph.value_info[:]
    for out in graph.output:
        tt = out.type.tensor_type
        if tt.HasField("shape") and not is_static(tt):
            tt.ClearField("shape")
    if flat:
        return
    for node in graph.node:
        for body in bodies(node):
            _clear_graph(body)
