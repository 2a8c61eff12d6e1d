"""A compiled cpu program as an ONNX model ONNX Runtime can run (``runtime/ort_executor.py`` runs it).

The model is built at load from the program the validator has checked, so both executors run exactly the same
compiled graph (options already applied by codegen: ``input_format``'s leading Transpose, ``out_nodes``'
pruning, the precision marks) and bundles of every format version get it. Every variable and every bundle
constant is a named graph *input*, never an initializer: the executor binds them to the bundle's own arrays
(one copy, shared by every graph; an update writes them in place and the next run sees the new values). Only
the program's inline consts (small tensors that steer shapes) are initializers, so ORT still knows them.

Precision marks become Cast nodes that round as the reference executor does (``executor.call_kernel``):
``"fp16"`` (cube ops) rounds the first two float32 inputs through float16; ``"fp16_round"`` (force_fp16 on a
vector op) rounds every float32 input and every output. A program ORT cannot run as such (Loop, Scan and other
graph attributes, formats other than the standard layouts, the approximate kernels of ``op_select_implmode``,
sequences, strings and ml_dtypes at its edges, steps where ORT departs from the spec: ``ort_departures.py``)
gets a reason instead of a model, and runs on the reference executor. If keeps its
bodies as ONNX subgraphs (the closed bodies of ``ir/subgraphs.py`` opened again: captured values are read by
name from the enclosing graph).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..program import UNKNOWN_DTYPE as UNKNOWN
from ..program import (
    Body,
    ControlStep,
    KernelStep,
    Program,
    Step,
    TransDataStep,
    Value,
    decode_attr,
    decode_tensor,
    split_container,
)
from .ort_departures import departs_from_spec

# control flow whose closed bodies become ONNX subgraphs again. Loop and Scan stay on the reference: on the
# node suite ORT returned their scan outputs with another shape than the spec (Range's expanded Loop, Scan-9
# over scalars) from these bodies
BODY_OPS = frozenset({"If"})
ROW_MAJOR = frozenset({"ND", "NCHW", "NHWC", "NCDHW"})  # formats whose bytes are the plain row-major array
# dtypes ORT binds from numpy at a graph's edge (feeds, outputs, variables, constants); strings and the
# ml_dtypes types (bfloat16, float8*, int4, ...) it does not, so such graphs stay on the reference
BINDABLE = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                      "float32", "float64"})


class Unsupported(Exception):
    """Why a program stays on the reference executor (one line, for ``inspect`` and errors)."""


def program_model(program: Program, inputs: Mapping[str, tuple[list[int], str]]):
    """The ``onnx.ModelProto`` of ``program``; ``inputs``: shape and dtype of every variable and bundle constant
    it reads (graph inputs besides the feeds). Raises ``Unsupported`` with the reason when ORT cannot run it."""
    import onnx
    from onnx import helper

    unsupported_reason(program)
    for name, (_, dtype) in inputs.items():
        if dtype not in BINDABLE:
            raise Unsupported(f"{name!r} is {dtype}, which ORT does not bind from numpy")
    types = value_types(program, inputs)
    for step in program.steps:
        why = departs_from_spec(step, types)
        if why:
            raise Unsupported(f"node {step.node!r} ({step.op}): {why}")
    nodes = []
    for step in program.steps:
        nodes.extend(_step_nodes(step, types, program.opset))
    # With control flow, feeds and outputs keep their rank but not their sizes: ORT infers shapes in both
    # branches of an If, and a branch that cannot run on these feeds (silero-vad's 8 kHz path on a 16 kHz
    # frame) is refused on static shapes; the original model's symbolic dims are what ORT checks it with.
    # The feeds are still checked against their static shapes before every run (``check_feeds``).
    loose = any(_bodies(step) for step in program.steps)
    graph_inputs = [_value_info(f.name, f.shape, f.dtype, loose) for f in program.feeds]
    graph_inputs += [_value_info(name, *inputs[name]) for name in [*program.reads, *program.weights]]
    consts = [onnx.numpy_helper.from_array(decode_tensor(v), k) for k, v in program.consts.items()]
    outputs = [_value_info(o.name, o.shape, o.dtype, loose) for o in program.outputs]
    graph = helper.make_graph(nodes, program.graph, graph_inputs, outputs, consts)
    opsets = [helper.make_opsetid("", int(program.opset))]
    opsets += [helper.make_opsetid(d, int(v)) for d, v in program.opsets.items()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                             producer_name="bundle-pipeline")


def _bodies(step: Step) -> Mapping[str, Body]:
    return step.bodies if isinstance(step, (KernelStep, ControlStep)) else {}


def unsupported_reason(program: Program | Body) -> None:
    """Raise ``Unsupported`` for what this translation does not express (checked before anything is built);
    control-flow bodies are checked like programs (their formal inputs and outputs are the enclosing step's)."""
    for step in program.steps:
        for body in _bodies(step).values():
            unsupported_reason(body)
    if isinstance(program, Program) and any(fmt not in ROW_MAJOR for fmt in program.formats.values()):
        raise Unsupported("values in stored formats (npu layouts) ORT does not have")
    for step in program.steps:
        if _bodies(step) and step.op not in BODY_OPS:
            raise Unsupported(f"node {step.node!r} ({step.op}) has graph attributes ORT does not take")
        if isinstance(step, KernelStep) and step.native:
            raise Unsupported(f"node {step.node!r} ({step.op}) is an npu-native kernel")
        if isinstance(step, KernelStep) and step.impl is not None:
            raise Unsupported(f"node {step.node!r} ({step.op}) uses the approximate kernel of "
                              f"op_select_implmode={step.impl}")
        if isinstance(step, TransDataStep) and not {step.src_format, step.dst_format} <= ROW_MAJOR:
            raise Unsupported(f"node {step.node!r} converts to a stored format")
    if isinstance(program, Body):
        return
    for value in [*program.feeds, *program.outputs]:
        if split_container(value.dtype):
            raise Unsupported(f"{value.name!r} is a {value.dtype} (sequence/optional) value")
        if value.dtype not in BINDABLE:
            raise Unsupported(f"{value.name!r} is {value.dtype}, which ORT does not bind from numpy")


def value_types(program: Program | Body, inputs: Mapping[str, tuple[list[int], str]],
                feeds: Sequence[Value] = ()) -> dict[str, str]:
    """The dtype of every value whose type the program records (feeds, reads, consts, planned values, outputs;
    a body's formal inputs are passed as ``feeds``)."""
    types = {name: dtype for name, (_, dtype) in inputs.items()}
    types.update({f.name: f.dtype for f in (program.feeds if isinstance(program, Program) else feeds)})
    types.update({k: v["dtype"] for k, v in program.consts.items()})
    types.update({k: v.dtype for k, v in program.values.items()})
    if isinstance(program, Program):
        types.update({o.name: o.dtype for o in program.outputs})
    return types


def _step_nodes(step: Step, types: Mapping[str, str], opset: int | None) -> list:
    """One step as ONNX nodes: the op itself, with Casts around it for its precision mark."""
    from onnx import helper

    op, domain = step.op, step.domain
    if _bodies(step):
        return [_control_node(step, types, opset)]
    if isinstance(step, TransDataStep):  # between row-major formats: moves no byte
        return [helper.make_node("Identity", list(step.inputs[:1]), list(step.outputs[:1]), name=step.node)]
    inputs, outputs, casts_before, casts_after = list(step.inputs), list(step.outputs), [], []
    precision = getattr(step, "precision", None)
    if precision in ("fp16", "fp16_round"):
        rounded = range(2) if precision == "fp16" else range(len(inputs))
        for i in rounded:
            if i < len(inputs) and inputs[i] and _float32(inputs[i], types, step):
                casts_before += _round_fp16(inputs[i], f"{inputs[i]}@fp16/{step.node}/{i}", step.node)
                inputs[i] = casts_before[-1].output[0]
    if precision == "fp16_round":
        for i, out in enumerate(outputs):
            if out:
                outputs[i] = f"{out}@exact/{step.node}"
                casts_after += _round_fp16(outputs[i], out, step.node)
    elif precision not in (None, "fp16"):
        raise Unsupported(f"node {step.node!r} has precision {precision!r}")
    node = helper.make_node(op, inputs, outputs, name=step.node, domain=domain or None)
    node.attribute.extend(_attributes(step.op, step.attrs, domain, opset))
    return [*casts_before, node, *casts_after]


def _control_node(step: Step, types: Mapping[str, str], opset: int | None):
    """If/Loop/Scan with its closed bodies opened again: the ``captures`` last inputs of the node (and of each
    body) are outer values the ONNX body reads by name, as ir/subgraphs.py found them."""
    from onnx import helper

    captures = int(decode_attr(step.attrs.get("captures", 0)))
    own = list(step.inputs[:len(step.inputs) - captures])
    node = helper.make_node(step.op, own, list(step.outputs), name=step.node)
    plain = {k: v for k, v in step.attrs.items() if k != "captures"}
    node.attribute.extend(_attributes(step.op, plain, "", opset))
    for attr, body in sorted(_bodies(step).items()):
        node.attribute.append(helper.make_attribute(attr, _body_graph(body, captures, types, opset)))
    return node


def _body_graph(body: Body, captures: int, outer: Mapping[str, str], opset: int | None):
    import onnx
    from onnx import helper

    formal = body.inputs[:len(body.inputs) - captures]  # the captured rest is read by name from the outer graph
    types = {**outer, **value_types(body, {}, formal)}
    nodes = [n for step in body.steps for n in _step_nodes(step, types, body.opset or opset)]
    outputs, passed = [], {i.name for i in body.inputs}
    for out in body.outputs:
        name = out.name
        if name in passed:  # ORT wants a body output made inside the body: an input passed through gets an Identity
            name = f"{name}@out"
            nodes.append(helper.make_node("Identity", [out.name], [name], name=f"{body.graph}/{name}"))
        outputs.append(_body_value_info(name, out))
    consts = [onnx.numpy_helper.from_array(decode_tensor(v), k) for k, v in body.consts.items()]
    return helper.make_graph(nodes, body.graph, [_body_value_info(i.name, i) for i in formal], outputs, consts)


def _body_value_info(name: str, value: Value):
    """A body's formal input or output; what inference left unknown is left for ORT to infer (a body value
    sized at run time may not even have the rank its ``[-1]`` shows)."""
    from onnx import helper

    if value.dtype in (UNKNOWN, "object") or split_container(value.dtype):
        return helper.make_empty_tensor_value_info(name)
    if any(d < 0 for d in value.shape):
        return helper.make_tensor_value_info(name, onnx_dtype(value.dtype), None)
    return _value_info(name, value.shape, value.dtype)


def _float32(name: str, types: Mapping[str, str], step: Step) -> bool:
    if name not in types:
        raise Unsupported(f"node {step.node!r} rounds input {name!r}, whose type is known only at run time")
    return types[name] == "float32"


def _round_fp16(src: str, dst: str, node: str) -> list:
    """``dst = float32(float16(src))``: round to the nearest float16, as numpy's astype does."""
    from onnx import TensorProto, helper

    half = f"{dst}@half"
    return [helper.make_node("Cast", [src], [half], name=f"{node}/round/{half}", to=TensorProto.FLOAT16),
            helper.make_node("Cast", [half], [dst], name=f"{node}/round/{dst}", to=TensorProto.FLOAT)]


def _attributes(op: str, attrs: Mapping[str, object], domain: str, opset: int | None) -> list:
    """The step's attributes with the ONNX types the op's schema declares (JSON cannot tell an empty list of
    floats from one of ints, nor ``1.0`` written as ``1``)."""
    import onnx
    from onnx import helper

    declared = {}
    try:
        schema = onnx.defs.get_schema(op, int(opset or 1), domain)
        declared = {name: attr.type for name, attr in schema.attributes.items()}
    except onnx.defs.SchemaError:
        pass  # an op onnx does not know: ORT decides at session creation
    out = []
    for name, encoded in sorted(attrs.items()):
        kind = declared.get(name)
        out.append(helper.make_attribute(name, _typed_attr(decode_attr(encoded), kind), attr_type=kind))
    return out


def _typed_attr(value, kind):
    """``value`` converted to what ``helper.make_attribute`` makes an attribute of type ``kind`` from."""
    from onnx import AttributeProto as A
    from onnx import numpy_helper

    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if kind == A.FLOAT:
        return float(value)
    if kind == A.INT:
        return int(value)
    if kind == A.FLOATS:
        return [float(v) for v in value]
    if kind == A.INTS:
        return [int(v) for v in value]
    if kind == A.STRINGS and not value:
        return []
    return value


def _value_info(name: str, shape: Sequence[int], dtype: str, symbolic: bool = False):
    from onnx import helper

    dims = [f"{name}:{i}" if symbolic else d if d >= 0 else None for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, onnx_dtype(dtype), dims)


def onnx_dtype(name: str) -> int:
    """The TensorProto element type of a dtype name (numpy or ml_dtypes, as the IR writes them)."""
    from onnx import helper

    if name == "object":
        return helper.TensorProto.STRING
    from ..dtypes import dtype_from_name

    try:
        return helper.np_dtype_to_tensor_dtype(dtype_from_name(name))
    except (KeyError, ValueError, TypeError):
        raise Unsupported(f"dtype {name} has no ONNX tensor type here") from None
