"""Reductions and axis-wise kernels: Reduce*, ArgMax/ArgMin, Softmax, LogSoftmax, Hardmax, TopK, CumSum, CumProd."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._registry import (
    Attrs,
    Inputs,
    KernelError,
    Tiling,
    arg,
    kernel,
    need,
    norm_axes,
    norm_axis,
    scalar,
    wide,
)
from .tensor import axes_from

# op -> (numpy reduction, opset from which axes is an input rather than an attribute)
_REDUCE: dict[str, tuple[Callable[..., np.ndarray], int]] = {
    "ReduceSum": (np.sum, 13),
    "ReduceMean": (np.mean, 18),
    "ReduceMax": (np.max, 18),
    "ReduceMin": (np.min, 18),
    "ReduceProd": (np.prod, 18),
    "ReduceL1": (lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims), 18),
    "ReduceL2": (lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)), 18),
    "ReduceSumSquare": (lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims), 18),
    "ReduceLogSum": (lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)), 18),
    "ReduceLogSumExp": (lambda x, axis, keepdims: _log_sum_exp(x, axis, keepdims), 18),
}


def _log_sum_exp(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """log(sum(exp(x))) shifted by the max so large inputs do not overflow; -inf over an empty set."""
    if x.size == 0:
        return np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    y = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return y if keepdims else np.squeeze(y, axis=axis)


def _empty_identity(op: str, dtype: np.dtype) -> object:
    """Value of a reduction over an empty set: -inf/+inf (or the dtype's min/max) for Max/Min."""
    if op in ("ReduceMax", "ReduceMin"):
        big = op == "ReduceMin"
        if dtype == np.bool_:
            return big
        if dtype.kind == "f":
            return np.inf if big else -np.inf
        info = np.iinfo(dtype)
        return info.max if big else info.min
    return 1 if op == "ReduceProd" else 0


def _reduce_kernel(op: str) -> None:
    fn, axes_input_since = _REDUCE[op]

    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        x = need(inputs, 0, "data")
        keepdims = bool(attrs.get("keepdims", 1))
        axes = axes_from(inputs, attrs, opset, axes_input_since)
        if axes is None:
            # noop_with_empty_axes exists only where axes became an input.
            if opset >= axes_input_since and int(attrs.get("noop_with_empty_axes", 0)):
                return [x]
            axes = list(range(x.ndim))
        ax = tuple(norm_axes(axes, x.ndim))
        xc = wide(x)
        if op in ("ReduceSum", "ReduceProd", "ReduceL1", "ReduceSumSquare") and x.dtype.kind in "iub":
            xc = x  # integer sums wrap in the input type, as ONNX Runtime does
        kwargs: dict[str, object] = {}
        if op in ("ReduceMax", "ReduceMin") and x.size == 0:
            kwargs["initial"] = _empty_identity(op, x.dtype)
        with np.errstate(all="ignore"):
            y = fn(xc, axis=ax, keepdims=keepdims, **kwargs)
        return [np.asarray(y).astype(x.dtype, copy=False)]

    kernel(op)(run)


for _op in _REDUCE:
    _reduce_kernel(_op)


def _arg_kernel(fn: Callable[..., np.ndarray]) -> Callable[..., list[np.ndarray]]:
    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        x = need(inputs, 0, "data")
        axis = norm_axis(int(attrs.get("axis", 0)), x.ndim)
        keepdims = bool(attrs.get("keepdims", 1))
        if x.shape[axis] == 0:
            raise KernelError(f"ArgMax/ArgMin over empty axis {axis}")
        if int(attrs.get("select_last_index", 0)):
            # Search the flipped axis so ties resolve to the last occurrence.
            idx = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis, keepdims=keepdims)
        else:
            idx = fn(x, axis=axis, keepdims=keepdims)
        return [np.asarray(idx, dtype=np.int64)]

    return run


kernel("ArgMax")(_arg_kernel(np.argmax))
kernel("ArgMin")(_arg_kernel(np.argmin))


def _softmax_kernel(log: bool) -> Callable[..., list[np.ndarray]]:
    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        x = need(inputs, 0, "input")
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
        xf = wide(x)
        shape = xf.shape
        axis = norm_axis(axis, x.ndim)
        if opset < 13:
            # Before opset 13 the input is coerced to 2-D at axis and normalised over the second dim.
            xf = xf.reshape(math.prod(shape[:axis]), math.prod(shape[axis:]))
            axis = 1
        with np.errstate(all="ignore"):
            shifted = xf - np.max(xf, axis=axis, keepdims=True)
            e = np.exp(shifted)
            s = np.sum(e, axis=axis, keepdims=True)
            y = shifted - np.log(s) if log else e / s
        return [y.reshape(shape).astype(x.dtype, copy=False)]

    return run


kernel("Softmax")(_softmax_kernel(log=False))
kernel("LogSoftmax")(_softmax_kernel(log=True))


@kernel("TopK")
def _topk(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    k = int(scalar(need(inputs, 1, "K"))) if opset >= 10 else int(attrs["k"])
    axis = norm_axis(int(attrs.get("axis", -1)), x.ndim)
    n = x.shape[axis]
    if not 0 <= k <= n:
        raise KernelError(f"TopK: K={k} out of range for axis length {n}")
    if int(attrs.get("largest", 1)):
        # Stable ascending sort of the flipped axis, then reversed: descending values, and equal values
        # keep the lower original index first (works for unsigned types, unlike negation).
        order = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
        idx = n - 1 - np.flip(order, axis)
    else:
        idx = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(idx, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


def _cumulative(fn: Callable[..., np.ndarray], identity: int) -> Callable[..., list[np.ndarray]]:
    """CumSum / CumProd: axis is a scalar input; exclusive shifts in the identity, reverse runs backwards."""

    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        x = need(inputs, 0, "x")
        axis_in = arg(inputs, 1)
        if axis_in is None:
            raise KernelError("axis input is required")
        axis = norm_axis(int(scalar(axis_in)), x.ndim)
        xc = wide(x)
        reverse = bool(int(attrs.get("reverse", 0)))
        if reverse:
            xc = np.flip(xc, axis)
        y = fn(xc, axis=axis)
        if int(attrs.get("exclusive", 0)):
            # Shift by one along axis: y[i] combines the elements before i.
            first = np.full_like(np.take(y, [0], axis=axis), identity)
            y = np.concatenate([first, np.take(y, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
        if reverse:
            y = np.flip(y, axis)
        return [y.astype(x.dtype, copy=False)]

    return run


kernel("CumSum")(_cumulative(np.cumsum, 0))
kernel("CumProd")(_cumulative(np.cumprod, 1))


@kernel("Hardmax")
def _hardmax(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    axis = norm_axis(int(attrs.get("axis", -1 if opset >= 13 else 1)), x.ndim)
    shape = x.shape
    if opset < 13:
        x = x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:]))  # coerced to 2-D before opset 13
        axis = 1
    y = np.zeros_like(x)
    if x.size:
        np.put_along_axis(y, np.expand_dims(np.argmax(x, axis=axis), axis), 1, axis=axis)  # first max wins
    return [y.reshape(shape)]
