"""Kernels that move data by index tensors or masks: Gather*, Scatter*, TensorScatter, NonZero, Compress,
OneHot, Trilu, EyeLike, ReverseSequence, Unique."""

from __future__ import annotations

import math

import numpy as np

from ._registry import (
    Attrs,
    Inputs,
    KernelError,
    Tiling,
    arg,
    choice,
    kernel,
    need,
    norm_axis,
    onnx_dtype,
    scalar,
)


def _fix_indices(idx: np.ndarray, dim: int, op: str) -> np.ndarray:
    idx = np.asarray(idx).astype(np.int64, copy=False)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise KernelError(f"{op}: indices out of range [-{dim}, {dim - 1}]")
    return np.where(idx < 0, idx + dim, idx)


@kernel("Gather")
def _gather(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, idx = need(inputs, 0, "data"), need(inputs, 1, "indices")
    axis = norm_axis(int(attrs.get("axis", 0)), x.ndim)
    return [np.take(x, _fix_indices(idx, x.shape[axis], "Gather"), axis=axis)]


@kernel("GatherElements")
def _gather_elements(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, idx = need(inputs, 0, "data"), need(inputs, 1, "indices")
    if idx.ndim != x.ndim:
        raise KernelError("GatherElements: data and indices ranks differ")
    axis = norm_axis(int(attrs.get("axis", 0)), x.ndim)
    idx = _fix_indices(idx, x.shape[axis], "GatherElements")
    # Off-axis, indices may be shorter than data: index the leading part of data.
    if any(i > d for k, (i, d) in enumerate(zip(idx.shape, x.shape, strict=True)) if k != axis):
        raise KernelError("GatherElements: indices larger than data off the gather axis")
    sub = x[tuple(slice(None) if k == axis else slice(0, s) for k, s in enumerate(idx.shape))]
    return [np.take_along_axis(sub, idx, axis=axis)]


@kernel("NonZero")
def _nonzero(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    return [np.array(np.nonzero(np.atleast_1d(x)), dtype=np.int64).reshape(max(x.ndim, 1), -1)]


# ---- scatter / gather by index tensors ----

_SCATTER_REDUCE = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(out: np.ndarray, index: tuple, updates: np.ndarray, reduction: str) -> np.ndarray:
    """out[index] = updates, or combined with ``reduction`` (duplicates accumulate, as ufunc.at does)."""
    fn = _SCATTER_REDUCE[reduction]
    if fn is None:
        out[index] = updates
    else:
        fn.at(out, index, updates)
    return out


def _reduction(attrs: Attrs, opset: int, since_min_max: int) -> str:
    allowed = ("none", "add", "mul", "max", "min") if opset >= since_min_max else ("none", "add", "mul")
    return choice(attrs, "reduction", "none", allowed)


@kernel("ScatterND")
def _scatter_nd(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, idx, upd = need(inputs, 0, "data"), need(inputs, 1, "indices"), need(inputs, 2, "updates")
    k = idx.shape[-1] if idx.ndim else 0
    if idx.ndim < 1 or k > x.ndim or upd.shape != idx.shape[:-1] + x.shape[k:]:
        raise KernelError(f"ScatterND: indices {idx.shape} / updates {upd.shape} do not fit data {x.shape}")
    cols = tuple(_fix_indices(idx[..., j], x.shape[j], "ScatterND") for j in range(k))
    return [_scatter(x.copy(), cols, upd.astype(x.dtype, copy=False), _reduction(attrs, opset, 18))]


def _scatter_elements_kernel(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, idx, upd = need(inputs, 0, "data"), need(inputs, 1, "indices"), need(inputs, 2, "updates")
    if idx.ndim != x.ndim or idx.shape != upd.shape:
        raise KernelError(f"ScatterElements: indices {idx.shape} and updates {upd.shape} must match, rank of data")
    axis = norm_axis(int(attrs.get("axis", 0)), x.ndim)
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = _fix_indices(idx, x.shape[axis], "ScatterElements")
    return [_scatter(x.copy(), tuple(grid), upd.astype(x.dtype, copy=False), _reduction(attrs, opset, 18))]


kernel("ScatterElements", "Scatter")(_scatter_elements_kernel)


@kernel("GatherND")
def _gather_nd(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, idx = need(inputs, 0, "data"), need(inputs, 1, "indices")
    b = int(attrs.get("batch_dims", 0))
    if idx.ndim < 1 or b < 0 or b >= min(x.ndim, idx.ndim) or x.shape[:b] != idx.shape[:b]:
        raise KernelError(f"GatherND: batch_dims={b} incompatible with data {x.shape} and indices {idx.shape}")
    k = idx.shape[-1]
    if b + k > x.ndim:
        raise KernelError(f"GatherND: index depth {k} too large for data {x.shape} with batch_dims={b}")
    batch = math.prod(x.shape[:b])
    data = x.reshape(batch, *x.shape[b:])
    flat = idx.reshape(batch, -1, k)
    cols = tuple(_fix_indices(flat[..., j], x.shape[b + j], "GatherND") for j in range(k))
    out = data[(np.arange(batch)[:, None], *cols)]
    return [out.reshape(*idx.shape[:-1], *x.shape[b + k :])]


@kernel("TensorScatter")
def _tensor_scatter(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    cache, upd, write = need(inputs, 0, "past_cache"), need(inputs, 1, "update"), arg(inputs, 2)
    mode = choice(attrs, "mode", "linear", ("linear", "circular"))
    axis = norm_axis(int(attrs.get("axis", -2)), cache.ndim)
    if axis == 0 or upd.ndim != cache.ndim or any(
        u != c for i, (u, c) in enumerate(zip(upd.shape, cache.shape, strict=True)) if i != axis
    ) or upd.shape[axis] > cache.shape[axis]:
        raise KernelError(f"TensorScatter: update {upd.shape} does not fit cache {cache.shape} on axis {axis}")
    batch, length = cache.shape[0], cache.shape[axis]
    starts = np.zeros(batch, np.int64) if write is None else np.asarray(write, np.int64).reshape(batch)
    pos = starts[:, None] + np.arange(upd.shape[axis])[None, :]  # (batch, update length)
    if mode == "circular":
        pos = pos % length
    elif pos.size and (pos.min() < 0 or pos.max() >= length):
        raise KernelError("TensorScatter: write_indices + update length run past the cache")
    out = cache.copy()
    moved_out, moved_upd = np.moveaxis(out, axis, 1), np.moveaxis(upd, axis, 1)  # (batch, seq, ...)
    moved_out[np.arange(batch)[:, None], pos] = moved_upd
    return [out]


# ---- masks, one-hot, eye, triangles ----


@kernel("Trilu")
def _trilu(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, k_in = need(inputs, 0, "input"), arg(inputs, 1)
    if x.ndim < 2:
        raise KernelError(f"Trilu needs rank >= 2, got {x.shape}")
    k = int(scalar(k_in)) if k_in is not None else 0
    return [np.triu(x, k) if int(attrs.get("upper", 1)) else np.tril(x, k)]


@kernel("OneHot")
def _one_hot(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    idx, depth_in, values = need(inputs, 0, "indices"), need(inputs, 1, "depth"), need(inputs, 2, "values")
    depth = int(scalar(depth_in))
    if depth < 1 or values.size != 2:
        raise KernelError(f"OneHot: depth={depth} must be >= 1 and values must hold [off, on]")
    axis = int(attrs.get("axis", -1))
    rank = idx.ndim + 1
    if not -rank <= axis < rank:
        raise KernelError(f"attribute axis={axis} out of range for output rank {rank}")
    axis = axis + rank if axis < 0 else axis
    # Negative in-range indices wrap; out-of-range ones match no class (all off_value).
    where = np.asarray(idx).astype(np.int64)
    where = np.where(where < 0, where + depth, where)
    classes = np.arange(depth).reshape((1,) * axis + (depth,) + (1,) * (rank - axis - 1))
    hot = np.expand_dims(where, axis) == classes
    off, on = values.reshape(-1)
    return [np.where(hot, on, off).astype(values.dtype)]


@kernel("EyeLike")
def _eye_like(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    if x.ndim != 2:
        raise KernelError(f"EyeLike needs a 2-D input, got {x.shape}")
    dtype = onnx_dtype(attrs["dtype"], "dtype") if "dtype" in attrs else x.dtype
    return [np.eye(*x.shape, k=int(attrs.get("k", 0)), dtype=dtype)]


@kernel("Compress")
def _compress(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, cond = need(inputs, 0, "input"), need(inputs, 1, "condition").astype(bool).reshape(-1)
    if "axis" not in attrs:
        return [np.compress(cond, x.reshape(-1))]
    axis = norm_axis(int(attrs["axis"]), x.ndim)
    if cond.size > x.shape[axis]:
        raise KernelError(f"Compress: condition has {cond.size} entries, axis {axis} has {x.shape[axis]}")
    return [np.compress(cond, x, axis=axis)]


@kernel("ReverseSequence")
def _reverse_sequence(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, lens = need(inputs, 0, "input"), need(inputs, 1, "sequence_lens").astype(np.int64)
    batch_axis, time_axis = int(attrs.get("batch_axis", 1)), int(attrs.get("time_axis", 0))
    if x.ndim < 2 or {batch_axis, time_axis} != {0, 1} or lens.shape != (x.shape[batch_axis],):
        raise KernelError(f"ReverseSequence: axes {batch_axis}/{time_axis} or sequence_lens {lens.shape} "
                          f"do not fit input {x.shape}")
    if lens.size and (lens.min() < 0 or lens.max() > x.shape[time_axis]):
        raise KernelError(f"ReverseSequence: sequence_lens {lens.tolist()} out of range")
    xt = np.moveaxis(x, (time_axis, batch_axis), (0, 1))  # (time, batch, ...)
    t = np.arange(xt.shape[0])[:, None]
    src = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # reversed inside each length
    out = xt[src, np.arange(xt.shape[1])[None, :]]
    return [np.moveaxis(out, (0, 1), (time_axis, batch_axis))]



@kernel("Unique")
def _unique(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    axis = attrs.get("axis")
    if axis is None:
        y, first, inverse, counts = np.unique(x.reshape(-1), True, True, True)
        take_axis = 0
        flat = x.reshape(-1)
    else:
        take_axis = norm_axis(int(axis), x.ndim)
        y, first, inverse, counts = np.unique(x, True, True, True, axis=take_axis)
        flat = x
    inverse = inverse.reshape(-1)
    if not int(attrs.get("sorted", 1)):
        # Order of first occurrence: renumber the sorted uniques by where they first appear.
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, counts, inverse = first[order], counts[order], rank[inverse]
        y = np.take(flat, first, axis=take_axis)
    return [y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)]
