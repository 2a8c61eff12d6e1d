"""Static shapes the project vouches for: onnx's shape inference where it is right, the kernels where it is not.

``infer`` runs onnx's strict shape inference with data propagation: fast, and right for almost every model.
Its result stands unless

- it fails where the reference runtime does not: onnx 1.23 propagates small float tensors as if they were
  shapes and then cannot broadcast them ("Invalid rank for Add broadcasting: (160) vs (475)" in the onnx-asr
  resamplers, "(2) vs (200)" in its kaldi front-end), or one wrong shape makes a later node fail; or
- it disagrees with the kernels on an op of ``VERIFIED_OPS``, checked by running that node's kernel (STFT:
  onnx reads an absent ``onesided`` as 0, the spec and onnxruntime as 1, so a mel front-end's spectrogram
  gets ``n_fft`` bins instead of ``n_fft / 2 + 1`` and its filterbank MatMul "fails").

Then ``propagate`` sizes the top graph itself, node by node: onnx's lenient result is kept for a node whose
inputs all have the types onnx assumed (what onnx got right costs nothing more); any other node is sized by
running its kernel (``run_kernel``, the runtime's own semantics) on zero-filled inputs of the known shapes,
with the real values of constants and of what is computed from constants and static shapes only (the
shape arithmetic folding also does). So a disagreement is settled by what running the graph produces.
Where an op's output shape depends on a value known only at run time (``ir/steering.py``: a Range limit
computed from a feed, NonZero, ...), the output keeps onnx's run-time dims (-1, sized by the kernel when
the graph runs); an output neither can size is an error naming the node, the output and the input it needs.

Control-flow bodies keep onnx's (lenient) types: a body cannot run on its own (``spell_out_defaults`` writes out
the STFT default onnx misreads there), and the runtime sizes a body value onnx left untyped when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import GraphInvalid
from .scopes import bodies, body_reads
from .steering import steering_inputs
from .subgraphs import op_domain

VERIFIED_OPS = frozenset({"STFT"})  # ops whose onnx inference is checked against their kernel on every parse
KNOWN_MAX_ELEMENTS = 1 << 16  # values computed at compile time are kept up to this size (shape arithmetic)
# what a kernel may raise on zero-filled data it would not see at run time (a KernelError is a ValueError)
EVAL_ERRORS = (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError, FloatingPointError,
               NotImplementedError, MemoryError)
EVAL_MAX_BYTES = 1 << 30  # a node whose zero-filled inputs would exceed this is not run at build time
INFERENCE_ERRORS = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError)
_TENSOR = helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)


def infer(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """The model with every top-level value typed: onnx's strict inference if it succeeds and agrees with the
    kernels on ``VERIFIED_OPS``, else ``propagate``."""
    return infer_strict(model, where)[0]


def infer_strict(model: onnx.ModelProto, where: str) -> tuple[onnx.ModelProto, bool]:
    """``infer``, and whether onnx's strict result stood (then inferring the result again, unchanged, gives
    the same types: the importer need not re-infer a graph folding left as it was)."""
    for node in model.graph.node:
        for body in bodies(node):
            spell_out_defaults(body)
    try:
        inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except INFERENCE_ERRORS as err:
        return propagate(model, where, first_line(err)), False
    why = disagreement(inferred)
    if why is None:
        return inferred, True
    return propagate(model, where, why), False


def spell_out_defaults(graph: onnx.GraphProto) -> None:
    """Inside bodies, which cannot be run on their own to check onnx, write out the attribute defaults onnx's
    inference misreads (STFT ``onesided``: 1 by the spec and onnxruntime, 0 by onnx 1.23's inference), so its
    types agree with what the kernels compute; the kernels read the same default, so semantics are unchanged."""
    for node in graph.node:
        if node.op_type == "STFT" and not op_domain(node) and all(a.name != "onesided" for a in node.attribute):
            node.attribute.append(helper.make_attribute("onesided", 1))
        for body in bodies(node):
            spell_out_defaults(body)


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def disagreement(inferred: onnx.ModelProto) -> str | None:
    """How onnx's inferred types differ from running the kernels of ``VERIFIED_OPS`` nodes, or None."""
    graph = inferred.graph
    if not any(n.op_type in VERIFIED_OPS and not op_domain(n) for n in graph.node):
        return None
    state = _State.of(inferred, hints=declared_types(graph))
    state.types = {**state.hints, **state.types}  # onnx's types stand, but for the node being checked
    for node in graph.node:
        if node.op_type in VERIFIED_OPS and not op_domain(node):
            ran = state.evaluate(node)
            for out, tp in (ran or {}).items():
                onnx_type = state.hints.get(out)
                if onnx_type is not None and not same_type(onnx_type, tp):
                    return (f"node {node.name!r} ({node.op_type}): onnx infers {show(onnx_type)} for {out!r}, "
                            f"its kernel gives {show(tp)}")
        state.fold(node)
    return None


def propagate(model: onnx.ModelProto, where: str, why: str) -> onnx.ModelProto:
    """Type every top-level value the way running the graph would (see the module docstring); ``why`` says
    why onnx's strict result was not taken (it goes into the error if a value stays untyped)."""
    lenient = _lenient(model, where, why)
    graph = lenient.graph
    state = _State.of(lenient, hints=declared_types(graph))
    for node in graph.node:
        state.type_node(node)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in graph.node:
        for out in node.output:
            if out and out in read and out not in state.types:
                raise GraphInvalid(f"shape inference failed: node {node.name or node.op_type!r} ({node.op_type}): "
                                   f"the shape of {out!r} is unknown: {state.untyped.get(out, 'no rule sizes it')} "
                                   f"(onnx: {why})", where)
    _write_types(graph, state.types)
    return lenient


def _lenient(model: onnx.ModelProto, where: str, why: str) -> onnx.ModelProto:
    """onnx's best effort: every value it can type, bodies included. Lenient inference still checks element
    types, and a type error is the model's (an int64 added to a float32), never a shape bug of onnx's."""
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)
    except INFERENCE_ERRORS:
        raise GraphInvalid(f"shape inference failed: {why}", where) from None


def declared_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """Types the graph states for its top-level values (inputs, value_info, outputs), typed or not."""
    out: dict[str, onnx.TypeProto] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.WhichOneof("value") is not None and _has_elem(info.type):
            out[info.name] = info.type
    return out


def _has_elem(tp: onnx.TypeProto) -> bool:
    return tp.WhichOneof("value") != "tensor_type" or tp.tensor_type.elem_type != onnx.TensorProto.UNDEFINED


def static_shape(tp: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """The dims of a tensor type whose every dim is known, else None."""
    if tp is None or tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return None
    dims = tp.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def same_type(a: onnx.TypeProto, b: onnx.TypeProto) -> bool:
    """Same element type and the same dims (unknown dims equal only unknown dims)."""
    if a.WhichOneof("value") != "tensor_type" or b.WhichOneof("value") != "tensor_type":
        return a.SerializeToString() == b.SerializeToString()
    return _signature(a) == _signature(b)


def _signature(tp: onnx.TypeProto) -> tuple:
    tt = tp.tensor_type
    dims = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
            if tt.HasField("shape") else None)
    return tt.elem_type, dims


def show(tp: onnx.TypeProto) -> str:
    elem, dims = _signature(tp) if tp.WhichOneof("value") == "tensor_type" else (None, None)
    name = helper.tensor_dtype_to_np_dtype(elem).name if elem else tp.WhichOneof("value")
    return f"{name}{list('?' if d is None else d for d in dims) if dims is not None else '[?]'}"


def tensor_type(value: np.ndarray) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(_elem_type(value.dtype), list(value.shape))


def _elem_type(dtype: np.dtype) -> int:
    if dtype == np.dtype(object):
        return onnx.TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(dtype)


def _dynamic(tp: onnx.TypeProto) -> onnx.TypeProto:
    """The same rank and element type with every dim unknown: sized by the kernel at run time."""
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return tp
    return helper.make_tensor_type_proto(tp.tensor_type.elem_type, [None] * len(tp.tensor_type.shape.dim))


@dataclass
class _State:
    """What propagation knows so far: our type of each value, the values known at compile time, onnx's
    types as hints, and why a value could not be typed."""

    types: dict[str, onnx.TypeProto]
    known: dict[str, np.ndarray]
    hints: dict[str, onnx.TypeProto]
    opsets: dict[str, int]
    untyped: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def of(model: onnx.ModelProto, hints: dict[str, onnx.TypeProto]) -> _State:
        graph = model.graph
        known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        types = {i.name: i.type for i in graph.input if _has_elem(i.type)}
        types.update({name: tensor_type(value) for name, value in known.items()})
        opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import}
        return _State(types, known, hints, opsets)

    def type_node(self, node: onnx.NodeProto) -> None:
        """Our types of ``node``'s outputs (and their values, when computable at compile time)."""
        if self.fold(node):
            return
        trusted = self._inputs_agree(node)
        if bodies(node) or self._has_containers(node):  # not run here: bodies and sequences keep onnx's types
            self._take_hints(node, trusted=trusted)
            return
        if trusted and node.op_type not in VERIFIED_OPS and self._hints_complete(node):
            self._take_hints(node, trusted=True)
            return
        self.types.update(self.evaluate(node) or {})
        self._take_hints(node, trusted=trusted)  # only outputs the kernel did not size

    def fold(self, node: onnx.NodeProto) -> bool:
        """Compute ``node``'s outputs when they are known at compile time (constants in, or the shape of a
        static value); True when it did."""
        if bodies(node) or node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike",
                                            "RandomUniformLike", "Multinomial", "Bernoulli"):
            return False
        if node.op_type in ("Shape", "Size") and not op_domain(node):
            shape = static_shape(self.types.get(node.input[0]))
            if shape is None:
                return False
            args: list = [np.zeros(shape, np.uint8)]  # only the shape is read
        elif all(i == "" or i in self.known for i in node.input):
            args = [self.known[i] if i else None for i in node.input]
        else:
            return False
        outs = self._run(node, args)
        if outs is None:
            return False
        for name, value in zip(node.output, outs, strict=False):
            if name and isinstance(value, np.ndarray):
                self.types[name] = tensor_type(value)
                if value.size <= KNOWN_MAX_ELEMENTS:
                    self.known[name] = value
        return all(not name or name in self.types for name in node.output)

    def evaluate(self, node: onnx.NodeProto) -> dict[str, onnx.TypeProto] | None:
        """Output types from running the kernel on zero-filled inputs (known values where known); None when
        the kernel cannot tell (an input of unknown shape, or a value-steering input known only at run time)."""
        for index, name in steering_inputs(node.op_type, list(node.input)):
            if name not in self.known:
                self._explain(node, f"it depends on the value of input {index} ({name!r}), which is only known "
                                    f"at run time")
                return None
        args = []
        for name in node.input:
            if not name or name in self.known:
                args.append(self.known.get(name))
                continue
            shape = static_shape(self.types.get(name))
            if shape is None:
                self._explain(node, f"input {name!r} has no static shape")
                return None
            dtype = helper.tensor_dtype_to_np_dtype(self.types[name].tensor_type.elem_type)
            if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > EVAL_MAX_BYTES:  # hostile or huge dims
                self._explain(node, f"input {name!r} {list(shape)} is too large to run at build time")
                return None
            args.append(np.zeros(shape, dtype))
        outs = self._run(node, args)
        if outs is None:
            return None
        return {name: tensor_type(v) for name, v in zip(node.output, outs, strict=False)
                if name and isinstance(v, np.ndarray)}

    def _run(self, node: onnx.NodeProto, args: list) -> list | None:
        from ..kernels import run_kernel  # the kernels define op semantics
        from .node_attrs import node_attrs

        domain = op_domain(node)
        try:
            with np.errstate(all="ignore"):
                return run_kernel(node.op_type, args, node_attrs(node), self.opsets.get(domain, 21), domain=domain)
        except EVAL_ERRORS as err:
            self._explain(node, f"its kernel cannot run on these shapes: {err}")
            return None

    def _inputs_agree(self, node: onnx.NodeProto) -> bool:
        """Every input (and every outer value its bodies read) has the type onnx assumed for it: onnx's
        outputs for this node are then its own."""
        outer = {name for name in body_reads(node) if name in self.types or name in self.hints}
        for name in {*filter(None, node.input), *outer}:
            ours, theirs = self.types.get(name), self.hints.get(name)
            if ours is None or theirs is None or not same_type(ours, theirs):
                return False
        return True

    def _has_containers(self, node: onnx.NodeProto) -> bool:
        """A sequence or optional among the inputs or outputs (by our types or onnx's)."""
        names = [*filter(None, node.input), *filter(None, node.output)]
        return any((self.types.get(n) or self.hints.get(n) or _TENSOR).WhichOneof("value") != "tensor_type"
                   for n in names)

    def _hints_complete(self, node: onnx.NodeProto) -> bool:
        """onnx typed every output: tensors with static shapes (sequences and optionals as they are)."""
        for name in filter(None, node.output):
            tp = self.hints.get(name)
            if tp is None or (tp.WhichOneof("value") == "tensor_type" and static_shape(tp) is None):
                return False
        return True

    def _take_hints(self, node: onnx.NodeProto, trusted: bool) -> None:
        """onnx's types for the outputs not typed yet; when the inputs differ from what onnx assumed, only rank
        and element type are kept (the dims are sized at run time)."""
        for name in filter(None, node.output):
            tp = self.hints.get(name)
            if tp is not None and name not in self.types:
                self.types[name] = tp if trusted else _dynamic(tp)

    def _explain(self, node: onnx.NodeProto, reason: str) -> None:
        for name in filter(None, node.output):
            self.untyped.setdefault(name, reason)


def _write_types(graph: onnx.GraphProto, types: dict[str, onnx.TypeProto]) -> None:
    """Replace the top graph's value_info and output types by ``types``."""
    inputs = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    outputs = {o.name: o for o in graph.output}
    del graph.value_info[:]
    for node in graph.node:
        for name in node.output:
            if not name or name not in types or name in inputs:
                continue
            if name in outputs:
                outputs[name].type.CopyFrom(types[name])
            else:
                graph.value_info.append(helper.make_value_info(name, types[name]))
