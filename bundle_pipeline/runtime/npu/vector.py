"""The vector unit's kernels on formatted data: pooling, BatchNormalization and reductions on NC1HWC0, Softmax
over the last axis of FRACTAL_NZ, and elementwise ops on operands that share one format.

Reductions over a padded axis ignore the padding: ReduceMean divides by the real C, ReduceMax masks padding
lanes with the lowest value, Softmax masks padded N lanes with -inf. Signatures are checked by ``targets.npu``
first.
"""

from __future__ import annotations

import math

import numpy as np

from ...formats import C0, c_contiguous, channel_vector, from_format, storage_shape, to_format
from ...kernels import run_kernel
from ...kernels._registry import KernelError, wide
from ...kernels._windows import windows
from ...targets.npu import Call, family, is_scalar, pool_geometry, reduce_axes, reduced_shape

_PHYSICAL_AXES = {0: (0,), 1: (1, 4), 2: (2,), 3: (3,)}  # logical NCHW axis -> NC1HWC0 axes


def _lowest(dtype: np.dtype) -> float | int:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


# ---- pooling and BatchNormalization in NC1HWC0 ----


def _window_counts(in_len: int, out_len: int, stride: int, dil: int, k: int, begin: int, end: int,
                   include_pad: bool) -> np.ndarray:
    """Per-output count of window taps inside the input (or inside input + pads when include_pad)."""
    pos = np.arange(out_len)[:, None] * stride + np.arange(k)[None, :] * dil - begin
    lo, hi = (-begin, in_len + end) if include_pad else (0, in_len)
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def run_pool(call: Call) -> np.ndarray:
    ks, strides, dil, begin, end, out = pool_geometry(call)
    x5 = call.inputs[0]
    spatial = np.moveaxis(x5, 4, 2)  # (N, C1, C0, H, W): windows slide over the last two axes
    if call.op_type == "MaxPool":
        win = windows(spatial, begin, out, strides, dil, ks, _lowest(x5.dtype))
        y = win.max(axis=(-2, -1))
    else:
        win = windows(wide(spatial), begin, out, strides, dil, ks, 0.0)
        include = bool(call.attrs.get("count_include_pad", 0))
        h, w = call.in_shapes[0][2:]
        ch = _window_counts(h, out[0], strides[0], dil[0], ks[0], begin[0], end[0], include)
        cw = _window_counts(w, out[1], strides[1], dil[1], ks[1], begin[1], end[1], include)
        count = np.maximum(np.multiply.outer(ch, cw), 1)
        y = win.sum(axis=(-2, -1)) / count.astype(win.dtype)
    return c_contiguous(np.moveaxis(y, 2, 4)).astype(x5.dtype, copy=False)


def run_global(call: Call) -> np.ndarray:
    x5 = call.inputs[0]
    if call.op_type == "GlobalMaxPool":
        y = x5.max(axis=(2, 3), keepdims=True)
    else:
        y = wide(x5).mean(axis=(2, 3), keepdims=True)
    return y.astype(x5.dtype, copy=False)


def run_batch_norm(call: Call) -> np.ndarray:
    x5 = call.inputs[0]
    c = call.in_shapes[0][1]
    ct = np.dtype(np.float32) if x5.dtype == np.float16 else x5.dtype
    scale, bias, mean, var = (channel_vector(wide(v), c, ct) for v in call.inputs[1:5])
    # Padding lanes: scale 0 -> inv 0, so (0 - 0) * 0 + 0 keeps them zero (and they are re-zeroed anyway).
    inv = scale / np.sqrt(var + np.asarray(float(call.attrs.get("epsilon", 1e-5)), ct))
    with np.errstate(all="ignore"):
        y = (x5.astype(ct, copy=False) - mean) * inv + bias
    return y.astype(x5.dtype, copy=False)


# ---- reductions over NC1HWC0, Softmax over the last axis of FRACTAL_NZ ----


def _pad_lanes(shape: tuple[int, ...]) -> np.ndarray:
    """NC1HWC0 padding mask of a logical NCHW shape, broadcastable: (1, C1, 1, 1, C0)."""
    c = shape[1]
    lanes = np.arange(-(-c // C0) * C0) >= c
    return lanes.reshape(1, lanes.size // C0, 1, 1, C0)


def run_reduce(call: Call) -> np.ndarray:
    x5, shape = call.inputs[0], tuple(call.in_shapes[0])
    axes = reduce_axes(call)
    if axes is None:
        return to_format(from_format(x5, "NC1HWC0", shape), call.out_format)
    phys = tuple(a for ax in axes for a in _PHYSICAL_AXES[ax])
    count = math.prod(shape[a] for a in axes)  # real elements per output: padding lanes excluded
    with np.errstate(all="ignore"):
        if call.op_type == "ReduceMax":
            # Padding lanes are zero; hide them behind the lowest value when C is reduced.
            src = np.where(_pad_lanes(shape), _lowest(x5.dtype), x5) if 1 in axes else x5
            r = src.max(axis=phys, keepdims=True, initial=_lowest(x5.dtype))
        elif call.op_type == "ReduceSum":
            r = (x5 if x5.dtype.kind in "iub" else wide(x5)).sum(axis=phys, keepdims=True)
        else:
            total_dtype = np.float64 if x5.dtype.kind in "iub" else wide(x5).dtype
            r = x5.sum(axis=phys, keepdims=True, dtype=total_dtype) / np.asarray(max(count, 1), total_dtype)
    r = r.astype(x5.dtype, copy=False)
    keep_shape = reduced_shape(shape, axes, True)
    if 1 not in axes and call.out_format == "NC1HWC0" and tuple(call.out_shape) == keep_shape:
        return c_contiguous(r)  # C kept: the physical keepdims result is already NC1HWC0
    std = r.reshape(keep_shape) if 1 in axes else from_format(r, "NC1HWC0", keep_shape)
    return to_format(std.reshape(call.out_shape), call.out_format)


def run_softmax(call: Call) -> np.ndarray:
    x = call.inputs[0]
    if x.dtype.kind != "f":
        raise KernelError(f"{call.op_type}: float input expected, got {x.dtype}")
    n = call.in_shapes[0][-1]
    # N lanes n1*16 + n0 >= N are padding: -inf takes them out of the max and (exp -> 0) out of the sum.
    n_pad = (np.arange(x.shape[-4])[:, None] * C0 + np.arange(C0)[None, :]) >= n  # (N1, n0)
    mask = n_pad[:, None, None, :]  # broadcast over [..., N1, M1, m0, n0]
    axes = (-4, -1)
    with np.errstate(all="ignore"):
        xf = np.where(mask, -np.inf, wide(x))
        shifted = xf - xf.max(axis=axes, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=axes, keepdims=True)
        y = shifted - np.log(s) if call.op_type == "LogSoftmax" else e / s
    return y.astype(x.dtype, copy=False)


# ---- elementwise ops on matching formats ----


def run_elementwise(call: Call) -> np.ndarray:
    arrays = []
    for x, f, s in zip(call.inputs, call.in_formats, call.in_shapes, strict=False):
        if x is not None and is_scalar(f, s, call.out_shape) and family(call.out_format) != "ND":
            x = np.asarray(x).reshape(())  # broadcast as a scalar over the physical layout
        arrays.append(x)
    # The cpu kernel is layout-agnostic here: every lane is computed, padding is re-zeroed by the caller.
    y = run_kernel(call.op_type, arrays, call.attrs, call.opset)[0]
    expected = storage_shape(call.out_format, call.out_shape)
    if y.shape != expected:
        raise KernelError(f"{call.op_type}: physical result {y.shape} is not {expected}")
    return y
