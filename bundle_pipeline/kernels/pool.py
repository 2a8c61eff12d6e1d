"""Pooling kernels: MaxPool (with Indices), AveragePool, LpPool, the global pools and MaxUnpool."""

from __future__ import annotations

import math

import numpy as np

from ._registry import Attrs, Inputs, Kernel, KernelError, Tiling, arg, int_list, kernel, need, wide
from ._windows import spatial_attr, window_geometry, windows


def _pool_setup(x: np.ndarray, attrs: Attrs) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    if x.ndim < 3:
        raise KernelError(f"pooling needs an N-D input of rank >= 3, got {x.shape}")
    if "kernel_shape" not in attrs:
        raise KernelError("attribute kernel_shape is required")
    ks = int_list(attrs["kernel_shape"])
    if len(ks) != x.ndim - 2:
        raise KernelError(f"attribute kernel_shape={ks} does not match input rank {x.ndim}")
    strides, dil, begin, end, out = window_geometry(
        list(x.shape[2:]), ks, attrs, bool(attrs.get("ceil_mode", 0))
    )
    return ks, strides, dil, begin, out + end  # end pads packed after out to keep one return shape


def _lowest(dtype: np.dtype) -> float | int:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


@kernel("MaxPool")
def _max_pool(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    ks, strides, dil, begin, out_end = _pool_setup(x, attrs)
    nd = len(ks)
    out = out_end[:nd]
    win = windows(x, begin, out, strides, dil, ks, _lowest(x.dtype))
    flat = win.reshape(*win.shape[: 2 + nd], math.prod(ks))
    k_idx = np.argmax(flat, axis=-1)  # first maximum in row-major window order, as the reference
    y = np.take_along_axis(flat, k_idx[..., None], axis=-1)[..., 0]
    # Indices: flat position in the whole input (N, C included); storage_order=1 is column-major spatially.
    kpos = np.unravel_index(k_idx, ks)
    grids = np.meshgrid(*[np.arange(o) for o in out], indexing="ij")
    coords = [grids[i] * strides[i] + kpos[i] * dil[i] - begin[i] for i in range(nd)]
    spatial = list(x.shape[2:])
    order = range(nd) if int(attrs.get("storage_order", 0)) else range(nd - 1, -1, -1)
    lin = np.zeros(k_idx.shape, dtype=np.int64)
    step = 1
    for i in order:
        lin += coords[i] * step
        step *= spatial[i]
    nc = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[0], x.shape[1], *([1] * nd))
    return [y.astype(x.dtype, copy=False), lin + nc * step]


def _window_counts(
    in_len: int, out_len: int, stride: int, dil: int, k: int, begin: int, end: int, include_pad: bool
) -> np.ndarray:
    """Per-output count of window taps inside the input (or inside input+pads when include_pad)."""
    pos = np.arange(out_len)[:, None] * stride + np.arange(k)[None, :] * dil - begin
    lo, hi = (-begin, in_len + end) if include_pad else (0, in_len)
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


@kernel("AveragePool")
def _average_pool(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    if opset < 19 and "dilations" in attrs and any(d != 1 for d in int_list(attrs["dilations"])):
        raise KernelError("attribute dilations of AveragePool needs opset >= 19")
    ks, strides, dil, begin, out_end = _pool_setup(x, attrs)
    nd = len(ks)
    out, end = out_end[:nd], out_end[nd:]
    xf = wide(x)
    win = windows(xf, begin, out, strides, dil, ks, 0.0)
    total = win.sum(axis=tuple(range(-nd, 0)))
    include = bool(attrs.get("count_include_pad", 0))
    # Windows are boxes, so the divisor is a product of per-axis counts.
    count = np.ones((), dtype=np.float64)
    for i in range(nd):
        cnt = _window_counts(x.shape[2 + i], out[i], strides[i], dil[i], ks[i], begin[i], end[i], include)
        count = np.multiply.outer(count, cnt)
    y = total / np.maximum(count, 1).astype(total.dtype)
    return [y.astype(x.dtype, copy=False)]


def _global(fn: str) -> Kernel:
    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        x = need(inputs, 0, "X")
        axes = tuple(range(2, x.ndim))
        y = (
            np.mean(wide(x), axis=axes, keepdims=True)
            if fn == "mean"
            else np.max(x, axis=axes, keepdims=True)
        )
        return [y.astype(x.dtype, copy=False)]

    return run


kernel("GlobalAveragePool")(_global("mean"))
kernel("GlobalMaxPool")(_global("max"))


@kernel("LpPool")
def _lp_pool(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    p = float(attrs.get("p", 2))
    ks, strides, dil, begin, out_end = _pool_setup(x, attrs)
    nd = len(ks)
    win = windows(np.abs(wide(x)) ** p, begin, out_end[:nd], strides, dil, ks, 0.0)  # pads add nothing
    return [(win.sum(axis=tuple(range(-nd, 0))) ** (1.0 / p)).astype(x.dtype)]


@kernel("MaxUnpool")
def _max_unpool(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, idx, out_in = need(inputs, 0, "X"), need(inputs, 1, "I"), arg(inputs, 2)
    if "kernel_shape" not in attrs or idx.shape != x.shape:
        raise KernelError("MaxUnpool needs kernel_shape and indices of X's shape")
    ks = int_list(attrs["kernel_shape"])
    nd = len(ks)
    strides = spatial_attr(attrs, "strides", nd, 1)
    pads = spatial_attr(attrs, "pads", 2 * nd, 0)
    inferred = [(i - 1) * s - (pb + pe) + k for i, s, pb, pe, k in
                zip(x.shape[2:], strides, pads[:nd], pads[nd:], ks, strict=True)]
    full = [*x.shape[:2], *inferred]
    y = np.zeros(math.prod(full), dtype=x.dtype)
    flat = idx.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= y.size):
        raise KernelError("MaxUnpool: indices out of range of the output")
    y[flat] = x.reshape(-1)  # indices address the flattened inferred shape (as onnx's tests and reference)
    y = y.reshape(full)
    if out_in is None:
        return [y]
    # A given output_shape (at least the inferred one) pads the inferred result at the end.
    shape = int_list(out_in)
    if len(shape) != x.ndim or any(o < f for o, f in zip(shape, full, strict=True)):
        raise KernelError(f"MaxUnpool: output_shape {shape} smaller than the inferred {full}")
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(0, f) for f in full)] = y
    return [out]


