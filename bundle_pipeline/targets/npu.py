"""What the npu target runs natively: the formats each native kernel takes and the conditions on one call.

The build side (``stages/format_pass.py``) asks ``supports(...)`` whether a node runs natively; the runtime
(``runtime/npu``) checks the same call with ``check_call`` before it runs the kernel, so the two cannot
disagree. Both sides import this module; it holds no kernel arithmetic.

- **What each native op takes**: MatMul A, B in FRACTAL_NZ (rank >= 2, batch axes broadcast; a 1-D
  operand stays ND and runs on the cpu kernel). Gemm A, B in FRACTAL_NZ with alpha/beta/transA/transB
  (a transposed operand is the same fractals read transposed, no copy); C either ND of any shape that
  broadcasts to [M, N] (scalar, [N], [1, N], [M, 1], [M, N]) or FRACTAL_NZ of shape [M, N]. Conv X in
  NC1HWC0, W in FRACTAL_Z, optional B in ND [O]; 2-D, group 1, any strides/pads/dilations/auto_pad.
  MaxPool (output Y only), AveragePool, GlobalAveragePool/GlobalMaxPool and BatchNormalization
  (inference; scale/B/mean/var in ND [C]) on 4-D NC1HWC0. ReduceSum/ReduceMean/ReduceMax of a 4-D
  NC1HWC0 tensor over any axes (C included), result in NC1HWC0/NCHW (keepdims) or ND. Softmax and
  LogSoftmax over the last axis of FRACTAL_NZ. Elementwise ops (``ELEMENTWISE_OPS``) on operands in
  one format: NC1HWC0 operands may broadcast over N, H, W (not C), FRACTAL_NZ operands over batch
  axes, FRACTAL_Z operands not at all; one-element ND operands broadcast as scalars.
- **Fallback**: ``NPU_FORMAT_OPS`` lists the ops with a native implementation and the formats each
  input position accepts; ``supports(...)`` says whether one call is native (e.g. Conv needs
  group == 1 and 2-D, BatchNormalization inference mode, Reduce* axes known). Everything else the
  caller converts to the standard layout (``formats.transdata``) and runs with the cpu kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..kernels._registry import KernelError, norm_axes, norm_axis
from ..kernels._windows import window_geometry
from ..kernels.tensor import axes_from
from ..layouts import FORMATS, STANDARD, FormatError, accepts

__all__ = ["ELEMENTWISE_OPS", "NPU_FORMAT_OPS", "Call", "KernelError", "NativeOp", "check_call", "supports"]


@dataclass(frozen=True)
class Call:
    """One kernel invocation: the physical inputs and everything the format/tiling pass decided."""

    op_type: str
    inputs: list[np.ndarray | None]
    attrs: dict
    opset: int
    in_formats: list[str | None]
    out_format: str
    in_shapes: list[tuple[int, ...] | None]
    out_shape: tuple[int, ...]
    tiling: dict | None


@dataclass(frozen=True)
class NativeOp:
    """A native formatted kernel's signature: accepted formats per input position (the last entry repeats for
    further inputs), formats it can produce, and a validity check on one call."""

    inputs: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    check: Callable[[Call], None]  # raises KernelError when this call has no native implementation
    same_format: bool = False  # elementwise: the formatted operands and the output share one format

    def input_formats(self, i: int) -> tuple[str, ...]:
        return self.inputs[min(i, len(self.inputs) - 1)]


def broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The numpy broadcast of ``shapes``, or None when they do not broadcast (``np.broadcast_shapes`` without
    its arrays: this runs for every node the format pass weighs)."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes], strict=True):
        sized = {d for d in dims if d != 1}
        if len(sized) > 1 or any(d < 0 for d in sized):
            return None
        out.append(sized.pop() if sized else 1)
    return tuple(out)


def family(fmt: str | None) -> str | None:
    """ND and NCHW are the same bytes: compare formats by family."""
    return "ND" if fmt in STANDARD else fmt


# ---- MatMul / Gemm in FRACTAL_NZ ----


def matmul_dims(call: Call) -> tuple[int, int, int, bool, bool]:
    """(M, N, K, transA, transB) of a MatMul/Gemm call, validating the logical shapes."""
    a, b = call.in_shapes[0], call.in_shapes[1]
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        raise KernelError(f"{call.op_type}: FRACTAL_NZ needs matrices (rank >= 2), got {a} and {b}")
    gemm = call.op_type == "Gemm"
    ta, tb = gemm and bool(call.attrs.get("transA", 0)), gemm and bool(call.attrs.get("transB", 0))
    if gemm and (len(a) != 2 or len(b) != 2):
        raise KernelError(f"Gemm: A and B must be 2-D, got {a} and {b}")
    m, k = (a[-1], a[-2]) if ta else (a[-2], a[-1])
    kb, n = (b[-1], b[-2]) if tb else (b[-2], b[-1])
    if k != kb:
        raise KernelError(f"{call.op_type}: inner dimensions differ: {a} and {b}")
    batch = broadcast(tuple(a[:-2]), tuple(b[:-2]))
    if batch is None:
        raise KernelError(f"{call.op_type}: batch dims of {a} and {b} do not broadcast")
    if tuple(call.out_shape) != (*batch, m, n):
        raise KernelError(f"{call.op_type}: output shape {call.out_shape} is not {(*batch, m, n)}")
    return m, n, k, ta, tb


def _check_matmul(call: Call) -> None:
    m, n, _k, _ta, _tb = matmul_dims(call)
    c = call.in_shapes[2] if len(call.in_shapes) > 2 else None
    if call.op_type != "Gemm" or c is None:
        return
    if family(call.in_formats[2]) == "FRACTAL_NZ" and tuple(c) != (m, n):
        raise KernelError(f"Gemm: C in FRACTAL_NZ must have the output shape {(m, n)}, got {c}")
    if broadcast(tuple(c), (m, n)) != (m, n):
        raise KernelError(f"Gemm: C shape {c} does not broadcast to {(m, n)}")


# ---- Conv, pooling and BatchNormalization in NC1HWC0 ----


def conv_geometry(call: Call) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel_shape, strides, dilations, pads_begin) of a native Conv, validating the signature."""
    x, w = call.in_shapes[0], call.in_shapes[1]
    if x is None or w is None or len(x) != 4 or len(w) != 4:
        raise KernelError(f"Conv: native NC1HWC0 conv is 2-D only, got X {x} and W {w}")
    if int(call.attrs.get("group", 1)) != 1:
        raise KernelError("Conv: native NC1HWC0 conv needs group == 1 (grouped/depthwise run on the cpu kernel)")
    if w[1] != x[1]:
        raise KernelError(f"Conv: W {w} does not match the {x[1]} input channels of X {x}")
    ks = list(w[2:])
    if "kernel_shape" in call.attrs and [int(v) for v in call.attrs["kernel_shape"]] != ks:
        raise KernelError(f"Conv: attribute kernel_shape does not match W {w}")
    strides, dil, begin, _end, out = window_geometry(list(x[2:]), ks, call.attrs)
    if tuple(call.out_shape) != (x[0], w[0], *out):
        raise KernelError(f"Conv: output shape {call.out_shape} is not {(x[0], w[0], *out)}")
    bias = call.in_shapes[2] if len(call.in_shapes) > 2 else None
    if bias is not None and tuple(bias) != (w[0],):
        raise KernelError(f"Conv: bias shape {bias} is not ({w[0]},)")
    return ks, strides, dil, begin


def _check_conv(call: Call) -> None:
    conv_geometry(call)


def pool_geometry(call: Call) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
    """(kernel_shape, strides, dilations, begin, end, out) of a 2-D pool, validating the signature."""
    x = call.in_shapes[0]
    if x is None or len(x) != 4:
        raise KernelError(f"{call.op_type}: native NC1HWC0 pooling is 2-D only, got {x}")
    if "kernel_shape" not in call.attrs:
        raise KernelError(f"{call.op_type}: attribute kernel_shape is required")
    ks = [int(v) for v in call.attrs["kernel_shape"]]
    if len(ks) != 2:
        raise KernelError(f"{call.op_type}: kernel_shape {ks} is not 2-D")
    dilated = any(int(d) != 1 for d in call.attrs.get("dilations", [1, 1]))
    if call.op_type == "AveragePool" and call.opset < 19 and dilated:
        raise KernelError("attribute dilations of AveragePool needs opset >= 19")
    strides, dil, begin, end, out = window_geometry(list(x[2:]), ks, call.attrs, bool(call.attrs.get("ceil_mode", 0)))
    if tuple(call.out_shape) != (x[0], x[1], *out):
        raise KernelError(f"{call.op_type}: output shape {call.out_shape} is not {(x[0], x[1], *out)}")
    return ks, strides, dil, begin, end, out


def _check_pool(call: Call) -> None:
    pool_geometry(call)


def _check_global(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) != 4 or tuple(call.out_shape) != (x[0], x[1], 1, 1):
        raise KernelError(f"{call.op_type}: needs a 4-D input and output (N, C, 1, 1), got {x} -> {call.out_shape}")


def _check_batch_norm(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) != 4 or tuple(call.out_shape) != tuple(x):
        raise KernelError(f"BatchNormalization: native NC1HWC0 needs a 4-D input, got {x}")
    if call.opset >= 14 and int(call.attrs.get("training_mode", 0)):
        raise KernelError("BatchNormalization: training mode runs on the cpu kernel")
    params = call.in_shapes[1:5]
    if len(params) != 4 or any(p is None or math.prod(p) != x[1] for p in params):
        raise KernelError(f"BatchNormalization: scale, B, mean, var must have {x[1]} values, got {params}")


# ---- reductions over NC1HWC0, Softmax over the last axis of FRACTAL_NZ ----

_REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}


def reduce_axes(call: Call) -> list[int] | None:
    """Normalised logical axes (None = identity by noop_with_empty_axes)."""
    since = _REDUCE_AXES_INPUT_SINCE[call.op_type]
    axes_given = call.opset >= since and len(call.in_shapes) > 1 and call.in_shapes[1] is not None
    if axes_given and (len(call.inputs) < 2 or call.inputs[1] is None):
        raise KernelError(f"{call.op_type}: axes input value is not known")
    axes = axes_from(call.inputs, call.attrs, call.opset, since)
    if axes is None:
        if call.opset >= since and int(call.attrs.get("noop_with_empty_axes", 0)):
            return None
        return [0, 1, 2, 3]
    return sorted(norm_axes(axes, 4))


def reduced_shape(shape: tuple[int, ...], axes: list[int] | None, keepdims: bool) -> tuple[int, ...]:
    if axes is None:
        return tuple(shape)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _check_reduce(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) != 4:
        raise KernelError(f"{call.op_type}: native NC1HWC0 reduction needs a 4-D input, got {x}")
    axes = reduce_axes(call)
    expected = reduced_shape(tuple(x), axes, bool(call.attrs.get("keepdims", 1)))
    if tuple(call.out_shape) != expected:
        raise KernelError(f"{call.op_type}: output shape {call.out_shape} is not {expected}")


def _softmax_axis_ok(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) < 2 or tuple(call.out_shape) != tuple(x):
        raise KernelError(f"{call.op_type}: FRACTAL_NZ softmax needs a matrix, got {x}")
    axis = norm_axis(int(call.attrs.get("axis", -1 if call.opset >= 13 else 1)), len(x))
    # Before opset 13 the input is flattened to 2-D at axis: the same as the last axis only when axis is last.
    if axis != len(x) - 1:
        raise KernelError(f"{call.op_type}: native FRACTAL_NZ softmax is over the last axis only, got axis {axis}")


# ---- elementwise ops on matching formats ----

ELEMENTWISE_OPS = (
    "Abs", "Neg", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Gelu", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus", "Softsign", "Mish", "Floor", "Ceil", "Sign", "Sin",
    "Cos", "Clip", "Cast", "Identity",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
)


def is_scalar(fmt: str | None, shape: tuple[int, ...] | None, out_shape: tuple[int, ...]) -> bool:
    """A one-element standard-layout operand (Clip bounds, x * 2): it broadcasts over any physical layout."""
    if shape is None or family(fmt) != "ND" or math.prod(shape) != 1:
        return False
    return len(shape) <= len(out_shape)


def _broadcasts_physically(fmt: str, shape: tuple[int, ...], out: tuple[int, ...]) -> bool:
    """Whether numpy broadcasting of the physical arrays equals the logical broadcast in ``fmt``."""
    if broadcast(tuple(shape), tuple(out)) != tuple(out):
        return False
    if fmt == "ND":
        return True
    if len(shape) != len(out):
        return False
    if fmt == "NC1HWC0":
        return shape[1] == out[1]  # the C axis is split into C1 x C0: it cannot broadcast
    if fmt == "FRACTAL_NZ":
        return tuple(shape[-2:]) == tuple(out[-2:])  # M and N are split; batch axes broadcast
    return tuple(shape) == tuple(out)


def _check_elementwise(call: Call) -> None:
    fmt = family(call.out_format)
    for i, (f, s) in enumerate(zip(call.in_formats, call.in_shapes, strict=False)):
        if s is None or is_scalar(f, s, call.out_shape):
            continue
        if family(f) != fmt:
            raise KernelError(f"{call.op_type}: input {i} in {f} does not match the output format {call.out_format}")
        if not _broadcasts_physically(fmt, tuple(s), tuple(call.out_shape)):
            raise KernelError(f"{call.op_type}: input {i} of shape {s} does not broadcast in {fmt} to {call.out_shape}")


# ---- the table and the entry points ----

_NZ, _5HD, _FZ = ("FRACTAL_NZ",), ("NC1HWC0",), ("FRACTAL_Z",)
_POOL = NativeOp((_5HD,), _5HD, _check_pool)
_GLOBAL = NativeOp((_5HD,), _5HD, _check_global)
_REDUCE = NativeOp((_5HD, ("ND",)), ("NC1HWC0", "NCHW", "ND"), _check_reduce)
_SOFTMAX = NativeOp((_NZ,), _NZ, _softmax_axis_ok)
_ELEMENTWISE = NativeOp((FORMATS,), FORMATS, _check_elementwise, same_format=True)

NPU_FORMAT_OPS: dict[str, NativeOp] = {
    "MatMul": NativeOp((_NZ,), _NZ, _check_matmul),
    "Gemm": NativeOp((_NZ, _NZ, ("ND", "FRACTAL_NZ")), _NZ, _check_matmul),
    "Conv": NativeOp((_5HD, _FZ, ("ND",)), _5HD, _check_conv),
    "MaxPool": _POOL,  # output Y only: a caller that needs Indices runs the cpu kernel
    "AveragePool": _POOL,
    "GlobalAveragePool": _GLOBAL,
    "GlobalMaxPool": _GLOBAL,
    "BatchNormalization": NativeOp((_5HD, ("ND",)), _5HD, _check_batch_norm),
    "ReduceSum": _REDUCE,
    "ReduceMean": _REDUCE,
    "ReduceMax": _REDUCE,
    "Softmax": _SOFTMAX,
    "LogSoftmax": _SOFTMAX,
    **dict.fromkeys(ELEMENTWISE_OPS, _ELEMENTWISE),
}


def check_call(call: Call) -> NativeOp:
    """The native op for this call, after checking formats, shapes and the op's own conditions.
    Raises KernelError (or FormatError for a format that cannot label a shape) when the call is not native."""
    op = NPU_FORMAT_OPS.get(call.op_type)
    if op is None:
        raise KernelError(f"no native npu kernel for {call.op_type}")
    if not _formats_fit(op, call.in_formats, call.in_shapes, call.out_format, call.out_shape):
        raise KernelError(_misfit(op, call))
    op.check(call)
    return op


def _formats_fit(op: NativeOp, in_formats: list[str | None], in_shapes: list, out_format: str,
                 out_shape: tuple) -> bool:
    """Whether each given input's format is one ``op`` takes at its position and can hold its shape, and the
    output's likewise (``check_call``'s first test; ``_misfit`` says which part fails)."""
    if len(in_formats) != len(in_shapes):
        return False
    for i, (fmt, shape) in enumerate(zip(in_formats, in_shapes, strict=True)):
        if shape is not None and (fmt not in op.input_formats(i) or not accepts(fmt, tuple(shape))):
            return False
    return out_format in op.outputs and accepts(out_format, tuple(out_shape))


def _misfit(op: NativeOp, call: Call) -> str:
    """Why ``_formats_fit`` rejects ``call``."""
    if len(call.in_formats) != len(call.in_shapes):
        return f"{call.op_type}: {len(call.in_formats)} formats for {len(call.in_shapes)} inputs"
    for i, (fmt, shape) in enumerate(zip(call.in_formats, call.in_shapes, strict=True)):
        if shape is not None and (fmt not in op.input_formats(i) or not accepts(fmt, tuple(shape))):
            return f"{call.op_type}: input {i} of shape {tuple(shape)} in {fmt} is not accepted natively"
    return f"{call.op_type}: cannot produce {call.out_format} for shape {tuple(call.out_shape)}"


def supports(op_type: str, attrs: dict, opset: int, in_formats: list[str | None], in_shapes: list[tuple | None],
             out_format: str, out_shape: tuple, inputs: list[np.ndarray | None] | None = None) -> bool:
    """Whether the npu runtime runs this call natively. ``inputs`` may carry the values of small
    constant inputs a decision depends on (Reduce* axes from opset 13/18); unknown values count as
    not native, so the caller falls back to the cpu kernel on the standard layout."""
    op = NPU_FORMAT_OPS.get(op_type)
    shapes = [None if s is None else tuple(s) for s in in_shapes]
    out_shape = tuple(out_shape)
    if op is None or not _formats_fit(op, in_formats, shapes, out_format, out_shape):
        return False  # what check_call rejects first, answered without building a call or an error message
    values = list(inputs) if inputs is not None else [None] * len(in_shapes)
    call = Call(op_type, values, dict(attrs), int(opset), list(in_formats), out_format, shapes, out_shape, None)
    try:
        op.check(call)
    except (KernelError, FormatError):
        return False
    return True
