"""Shape and data-movement kernels: Reshape, Slice, Split, Concat, Pad, Tile, Constant, Range, Upsample, ...
(gathers, scatters and index masks are in ``indexing``)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ._registry import (
    Attrs,
    Inputs,
    KernelError,
    Tiling,
    arg,
    broadcast_shape,
    choice,
    int_list,
    kernel,
    need,
    norm_axes,
    norm_axis,
    scalar,
)


def axes_from(inputs: Inputs, attrs: Attrs, opset: int, input_since: int, index: int = 1) -> list[int] | None:
    """Axes of Squeeze/Unsqueeze/Reduce*: an input from ``input_since`` on, an attribute before."""
    if opset >= input_since:
        a = arg(inputs, index)
        # An empty axes tensor means "not given" for these ops.
        return int_list(a) if a is not None and np.asarray(a).size else None
    # An empty axes attribute also means "all axes" (as onnxruntime reads it).
    return int_list(attrs["axes"]) if "axes" in attrs and len(attrs["axes"]) else None


@kernel("Identity")
def _identity(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = arg(inputs, 0)
    return [x if x is None or isinstance(x, list) else np.asarray(x)]  # sequences and empty optionals pass through


@kernel("Dropout")
def _dropout(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "data")
    ratio_in, train_in = arg(inputs, 1), arg(inputs, 2)
    ratio = float(scalar(ratio_in)) if ratio_in is not None else float(attrs.get("ratio", 0.5))
    training = bool(scalar(train_in)) if train_in is not None else False
    if not 0.0 <= ratio < 1.0:
        raise KernelError(f"Dropout ratio={ratio} must be in [0, 1)")
    if not training or ratio == 0.0:
        # Inference: identity, and a mask of ones when the caller wants it.
        return [x, np.ones(x.shape, dtype=bool)]
    rng = np.random.default_rng(attrs.get("seed"))
    mask = rng.random(x.shape) >= ratio
    return [(x * mask / (1.0 - ratio)).astype(x.dtype), mask]


@kernel("Reshape")
def _reshape(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, shape = need(inputs, 0, "data"), int_list(need(inputs, 1, "shape"))
    allowzero = int(attrs.get("allowzero", 0)) if opset >= 14 else 0
    if allowzero and 0 in shape and -1 in shape:
        raise KernelError("Reshape: allowzero=1 with both 0 and -1 in shape")
    out = []
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= x.ndim:
                raise KernelError(f"Reshape: shape[{i}]=0 copies a dimension the input lacks")
            d = x.shape[i]
        elif d < -1:
            raise KernelError(f"Reshape: invalid shape entry {d}")
        out.append(d)
    if out.count(-1) > 1:
        raise KernelError("Reshape: more than one -1 in shape")
    known = math.prod(d for d in out if d != -1)
    if -1 in out:
        if known == 0 or x.size % known:
            raise KernelError(f"Reshape: cannot infer -1 reshaping {x.shape} to {shape}")
        out[out.index(-1)] = x.size // known
    if math.prod(out) != x.size:
        raise KernelError(f"Reshape: cannot reshape {x.shape} to {shape}")
    return [x.reshape(out)]


@kernel("Flatten")
def _flatten(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    axis = int(attrs.get("axis", 1))
    if not -x.ndim <= axis <= x.ndim:
        raise KernelError(f"attribute axis={axis} out of range for rank {x.ndim}")
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@kernel("Expand")
def _expand(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, shape = need(inputs, 0, "input"), int_list(need(inputs, 1, "shape"))
    return [np.broadcast_to(x, broadcast_shape(x.shape, shape))]


@kernel("Concat")
def _concat(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    xs = [np.asarray(x) for x in inputs if x is not None]
    if not xs or "axis" not in attrs:
        raise KernelError("Concat needs inputs and attribute 'axis'")
    axis = norm_axis(int(attrs["axis"]), xs[0].ndim)
    for x in xs[1:]:
        if x.ndim != xs[0].ndim or any(
            a != b for i, (a, b) in enumerate(zip(x.shape, xs[0].shape, strict=True)) if i != axis
        ):
            raise KernelError(f"Concat: shapes {[x.shape for x in xs]} differ off axis {axis}")
    return [np.concatenate(xs, axis=axis)]


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping (differs from python for negative steps) -> a python slice."""
    if step == 0:
        raise KernelError("Slice: steps must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end == -1 else end, step)


@kernel("Slice")
def _slice(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "data")
    if opset >= 10:
        starts, ends = int_list(need(inputs, 1, "starts")), int_list(need(inputs, 2, "ends"))
        axes_in, steps_in = arg(inputs, 3), arg(inputs, 4)
        axes = int_list(axes_in) if axes_in is not None else list(range(len(starts)))
        steps = int_list(steps_in) if steps_in is not None else [1] * len(starts)
    else:
        starts, ends = int_list(attrs["starts"]), int_list(attrs["ends"])
        axes = int_list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise KernelError("Slice: starts/ends/axes/steps lengths differ")
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(norm_axes(axes, x.ndim), starts, ends, steps, strict=True):
        index[a] = _slice_bounds(s, e, st, x.shape[a])
    return [x[tuple(index)]]


@kernel("Split")
def _split(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    axis = norm_axis(int(attrs.get("axis", 0)), x.ndim)
    dim = x.shape[axis]
    split_in = arg(inputs, 1) if opset >= 13 else attrs.get("split")
    if split_in is not None and np.asarray(split_in).size:
        sizes = int_list(split_in)
        if sum(sizes) != dim or min(sizes) < 0:
            raise KernelError(f"Split: split={sizes} does not sum to dimension {dim}")
    elif "num_outputs" in attrs:
        # opset 18 attribute; for older opsets callers pass the node's output count under this key.
        n = int(attrs["num_outputs"])
        if n < 1:
            raise KernelError(f"attribute num_outputs={n} must be >= 1")
        if opset >= 18:
            chunk = -(-dim // n)  # ceil: the last chunk may be smaller
            sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
        elif dim % n:
            raise KernelError(f"Split: dimension {dim} not divisible into {n} outputs")
        else:
            sizes = [dim // n] * n
    else:
        raise KernelError("Split: give 'split' or num_outputs (the node's output count)")
    offsets = np.cumsum([0, *sizes])
    return [x[(slice(None),) * axis + (slice(int(lo), int(hi)),)] for lo, hi in itertools.pairwise(offsets)]


@kernel("Squeeze")
def _squeeze(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "data")
    axes = axes_from(inputs, attrs, opset, 13)
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = norm_axes(axes, x.ndim)
    if any(x.shape[a] != 1 for a in axes):
        raise KernelError(f"Squeeze: axes {axes} of shape {x.shape} are not all 1")
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


@kernel("Unsqueeze")
def _unsqueeze(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "data")
    axes = axes_from(inputs, attrs, opset, 13)
    if axes is None:
        raise KernelError("Unsqueeze: axes are required")
    rank = x.ndim + len(axes)
    axes = sorted(norm_axes(axes, rank))
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [x.reshape(shape)]


@kernel("Transpose")
def _transpose(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "data")
    perm = int_list(attrs["perm"]) if "perm" in attrs else list(range(x.ndim))[::-1]
    if sorted(perm) != list(range(x.ndim)):
        raise KernelError(f"attribute perm={perm} is not a permutation of rank {x.ndim}")
    return [np.transpose(x, perm)]


@kernel("Shape")
def _shape(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "data")
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    # start/end (opset 15) clamp like python slices.
    dims = x.shape[start : None if end is None else int(end)]
    return [np.array(dims, dtype=np.int64)]


@kernel("Size")
def _size(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    return [np.array(need(inputs, 0, "data").size, dtype=np.int64)]



@kernel("Pad")
def _pad(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "data")
    modes = ("constant", "reflect", "edge", "wrap") if opset >= 19 else ("constant", "reflect", "edge")
    mode = choice(attrs, "mode", "constant", modes)
    if opset >= 11:
        pads = int_list(need(inputs, 1, "pads"))
        cval = arg(inputs, 2)
        value = scalar(cval) if cval is not None and np.asarray(cval).size else 0
        axes_in = arg(inputs, 3) if opset >= 18 else None
        axes = norm_axes(int_list(axes_in), x.ndim) if axes_in is not None else list(range(x.ndim))
    else:
        pads, value, axes = int_list(attrs["pads"]), attrs.get("value", 0.0), list(range(x.ndim))
    if len(pads) != 2 * len(axes):
        raise KernelError(f"Pad: pads has {len(pads)} entries, expected {2 * len(axes)}")
    before, after = [0] * x.ndim, [0] * x.ndim
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]
    # Negative pads crop first; then numpy pads the rest.
    crop = tuple(
        slice(max(-b, 0), x.shape[k] - max(-e, 0)) for k, (b, e) in enumerate(zip(before, after, strict=True))
    )
    x_c = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(before, after, strict=True)]
    if mode == "constant":
        return [np.pad(x_c, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))]
    if x_c.size == 0 and any(w != (0, 0) for w in width):
        raise KernelError(f"Pad: mode {mode!r} cannot pad an empty tensor")
    return [np.pad(x_c, width, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode])]


@kernel("Constant")
def _constant(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    if "value" in attrs:
        return [np.asarray(attrs["value"])]
    if "value_float" in attrs:
        return [np.array(attrs["value_float"], dtype=np.float32)]
    if "value_floats" in attrs:
        return [np.array(attrs["value_floats"], dtype=np.float32).reshape(-1)]
    if "value_int" in attrs:
        return [np.array(attrs["value_int"], dtype=np.int64)]
    if "value_ints" in attrs:
        return [np.array(attrs["value_ints"], dtype=np.int64).reshape(-1)]
    if "value_string" in attrs:
        return [np.array(attrs["value_string"], dtype=object)]
    if "value_strings" in attrs:
        return [np.array(list(attrs["value_strings"]), dtype=object).reshape(-1)]
    raise KernelError("Constant: no supported value attribute (sparse_value is not supported)")


@kernel("ConstantOfShape")
def _constant_of_shape(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    shape = int_list(need(inputs, 0, "input"))
    if any(d < 0 for d in shape):
        raise KernelError(f"ConstantOfShape: negative dimension in {shape}")
    value = np.asarray(attrs.get("value", np.zeros(1, np.float32)))
    if value.size != 1:
        raise KernelError("attribute value of ConstantOfShape must have one element")
    return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


@kernel("Range")
def _range(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    start, limit, delta = (need(inputs, i, n) for i, n in enumerate(("start", "limit", "delta")))
    dtype = start.dtype
    s, lim, d = scalar(start), scalar(limit), scalar(delta)
    if d == 0:
        raise KernelError("Range: delta must not be 0")
    n = max(math.ceil((lim - s) / d), 0)
    return [(np.asarray(s, dtype) + np.arange(n, dtype=dtype) * np.asarray(d, dtype)).astype(dtype)]


@kernel("Tile")
def _tile(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, reps = need(inputs, 0, "input"), int_list(need(inputs, 1, "repeats"))
    if len(reps) != x.ndim or min(reps, default=0) < 0:
        raise KernelError(f"Tile: repeats {reps} must be {x.ndim} non-negative values")
    return [np.tile(x, reps)]


@kernel("DepthToSpace")
def _depth_to_space(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    b = int(attrs.get("blocksize", 0))
    mode = choice(attrs, "mode", "DCR", ("DCR", "CRD"))
    if x.ndim != 4 or b < 1 or x.shape[1] % (b * b):
        raise KernelError(f"DepthToSpace: blocksize={b} incompatible with input {x.shape}")
    n, c, h, w = x.shape
    oc = c // (b * b)
    if mode == "DCR":
        y = x.reshape(n, b, b, oc, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, oc, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, oc, h * b, w * b)]


@kernel("SpaceToDepth")
def _space_to_depth(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    b = int(attrs.get("blocksize", 0))
    if x.ndim != 4 or b < 1 or x.shape[2] % b or x.shape[3] % b:
        raise KernelError(f"SpaceToDepth: blocksize={b} incompatible with input {x.shape}")
    mode = choice(attrs, "mode", "DCR", ("DCR", "CRD"))
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // b, b, w // b, b)
    # Inverse of DepthToSpace: DCR puts the block offset before the channel, CRD after it.
    y = blocks.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else blocks.transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]



@kernel("CenterCropPad")
def _center_crop_pad(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, shape = need(inputs, 0, "input_data"), int_list(need(inputs, 1, "shape"))
    axes = norm_axes(int_list(attrs["axes"]), x.ndim) if "axes" in attrs else list(range(x.ndim))
    if len(shape) != len(axes):
        raise KernelError(f"CenterCropPad: shape {shape} does not match axes {axes}")
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    out_shape = list(x.shape)
    for a, size in zip(axes, shape, strict=True):
        dim = x.shape[a]
        out_shape[a] = size
        lo = abs(dim - size) // 2  # the odd element goes to the end
        if size < dim:
            src[a] = slice(lo, lo + size)
        elif size > dim:
            dst[a] = slice(lo, lo + dim)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return [out]



@kernel("Upsample")
def _upsample(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    scales_in = arg(inputs, 1)
    scales = [float(s) for s in np.asarray(scales_in if scales_in is not None else attrs.get("scales", [])).reshape(-1)]
    mode = choice(attrs, "mode", "nearest", ("nearest", "linear"))
    if len(scales) != x.ndim or mode != "nearest":
        raise KernelError(f"Upsample: needs {x.ndim} scales; only mode 'nearest' is supported, got {mode!r}")
    y = x
    for a, s in enumerate(scales):
        n = math.floor(x.shape[a] * s)
        src = np.minimum(np.floor(np.arange(n) / s).astype(np.int64), x.shape[a] - 1)
        y = np.take(y, src, axis=a)
    return [y]

