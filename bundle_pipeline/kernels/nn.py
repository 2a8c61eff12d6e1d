"""Convolution, pooling and normalisation kernels (1-D/2-D/3-D, NCHW-style layouts)."""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._registry import (
    Attrs,
    Inputs,
    Kernel,
    KernelError,
    Tiling,
    arg,
    choice,
    int_list,
    kernel,
    need,
    norm_axes,
    norm_axis,
    onnx_dtype,
    wide,
)

_AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _spatial_attr(attrs: Attrs, name: str, nd: int, default: int) -> list[int]:
    value = int_list(attrs[name]) if name in attrs else [default] * nd
    if len(value) != nd:
        raise KernelError(f"attribute {name}={value} must have {nd} entries")
    return value


def _same_pads(total: int, upper: bool) -> tuple[int, int]:
    """Split total padding; SAME_UPPER puts the extra one at the end, SAME_LOWER at the start."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def window_geometry(
    in_shape: list[int], kernel_shape: list[int], attrs: Attrs, ceil_mode: bool = False
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(strides, dilations, pads_begin, pads_end, out_shape) of a sliding-window op (Conv, pools)."""
    nd = len(in_shape)
    strides = _spatial_attr(attrs, "strides", nd, 1)
    dilations = _spatial_attr(attrs, "dilations", nd, 1)
    if min(strides + dilations, default=1) < 1 or min(kernel_shape, default=1) < 1:
        raise KernelError("strides, dilations and kernel_shape must be positive")
    auto_pad = choice(attrs, "auto_pad", "NOTSET", _AUTO_PAD)
    ext = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    begin, end, out = [0] * nd, [0] * nd, [0] * nd
    if auto_pad == "NOTSET":
        pads = _spatial_attr(attrs, "pads", 2 * nd, 0)
        begin, end = pads[:nd], pads[nd:]
        for i in range(nd):
            span = in_shape[i] + begin[i] + end[i] - ext[i]
            out[i] = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
            # ceil_mode: the last window must start inside the input or its left padding.
            if ceil_mode and (out[i] - 1) * strides[i] >= in_shape[i] + begin[i]:
                out[i] -= 1
    elif auto_pad == "VALID":
        out = [(n - e) // s + 1 for n, e, s in zip(in_shape, ext, strides, strict=True)]
    else:
        for i in range(nd):
            out[i] = -(-in_shape[i] // strides[i])
            total = max((out[i] - 1) * strides[i] + ext[i] - in_shape[i], 0)
            begin[i], end[i] = _same_pads(total, auto_pad == "SAME_UPPER")
    if min(out, default=1) < 1:
        raise KernelError(f"kernel {kernel_shape} does not fit input {in_shape} with the given pads")
    return strides, dilations, begin, end, out


def _pad_to_windows(
    x: np.ndarray, begin: list[int], out: list[int], strides: list[int], ext: list[int], value: float
) -> np.ndarray:
    """Pad/crop spatial dims so exactly the windows of ``out`` fit: start ``begin``, end as needed."""
    nd = len(begin)
    widths = [(0, 0)] * (x.ndim - nd)
    crop = [slice(None)] * x.ndim
    for i in range(nd):
        need_len = (out[i] - 1) * strides[i] + ext[i]
        tail = need_len - x.shape[x.ndim - nd + i] - begin[i]
        widths.append((begin[i], max(tail, 0)))
        if tail < 0:
            crop[x.ndim - nd + i] = slice(0, x.shape[x.ndim - nd + i] + tail)
    x = x[tuple(crop)]
    if any(w != (0, 0) for w in widths):
        x = np.pad(x, widths, mode="constant", constant_values=value)
    return x


def windows(
    x: np.ndarray,
    begin: list[int],
    out: list[int],
    strides: list[int],
    dilations: list[int],
    kernel_shape: list[int],
    value: float,
) -> np.ndarray:
    """View of shape (*x.shape[:-nd], *out, *kernel_shape): every window, strided and dilated."""
    nd = len(begin)
    ext = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    xp = _pad_to_windows(x, begin, out, strides, ext, value)
    axes = tuple(range(x.ndim - nd, x.ndim))
    view = sliding_window_view(xp, ext, axis=axes)
    index = (Ellipsis, *[slice(None, None, s) for s in strides], *[slice(None, None, d) for d in dilations])
    return view[index]


# ---- Conv ----


def _conv_weights(attrs: Attrs, w: np.ndarray, nd: int) -> list[int]:
    ks = int_list(attrs["kernel_shape"]) if "kernel_shape" in attrs else list(w.shape[2:])
    if ks != list(w.shape[2:]) or len(ks) != nd:
        raise KernelError(f"attribute kernel_shape={ks} does not match weights {w.shape}")
    return ks


@kernel("Conv")
def _conv(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, w, b = need(inputs, 0, "X"), need(inputs, 1, "W"), arg(inputs, 2)
    if x.ndim < 3 or w.ndim != x.ndim:
        raise KernelError(f"Conv: X {x.shape} and W {w.shape} must be N-D with matching rank >= 3")
    nd = x.ndim - 2
    group = int(attrs.get("group", 1))
    n, c = x.shape[:2]
    m = w.shape[0]
    if group < 1 or c % group or m % group or w.shape[1] != c // group:
        raise KernelError(f"Conv: attribute group={group} incompatible with X {x.shape} and W {w.shape}")
    ks = _conv_weights(attrs, w, nd)
    strides, dil, begin, _end, out = window_geometry(list(x.shape[2:]), ks, attrs)
    xf, wf = wide(x), wide(w).astype(wide(x).dtype, copy=False)
    win = windows(xf, begin, out, strides, dil, ks, 0.0)  # (N, C, *out, *ks)
    # Channels next to the kernel axes, so one output position's patch (Cg, *ks) is one im2col row.
    rows = np.moveaxis(win, 1, 1 + nd)  # view (N, *out, C, *ks)
    cg, mg, kk, p = c // group, m // group, math.prod(ks), math.prod(out)
    # Weights as (G, Cg*K, Mg): one im2col row times this gives Mg outputs of its group.
    wmat = wf.reshape(group, mg, cg * kk).transpose(0, 2, 1)
    tile = int((tiling or {}).get("tile_hw", 0) or 0)
    if tile <= 0:
        # Whole im2col at once (one copy), for every image and group: (N, G, P, Cg*K) @ (G, Cg*K, Mg).
        # A tile >= P still loops per image and group below: that bounds the workspace to one image.
        cols = rows.reshape(n, p, group, cg * kk).transpose(0, 2, 1, 3)
        y = np.matmul(cols, wmat).transpose(0, 1, 3, 2).reshape(n, m, p)
    else:
        y = np.empty((n, m, p), dtype=xf.dtype)
        for start in range(0, p, tile):
            pos = np.arange(start, min(start + tile, p))
            coords = np.unravel_index(pos, out)
            for i, g in itertools.product(range(n), range(group)):
                # Gather this chunk's rows only: a contiguous (tile, Cg, *ks) workspace, reshaped for free.
                patch = rows[(i, *coords, slice(g * cg, (g + 1) * cg))]
                cols = patch.reshape(len(pos), cg * kk)
                y[i, g * mg : (g + 1) * mg, start : start + len(pos)] = (cols @ wmat[g]).T
    if b is not None:
        y = y + wide(b).astype(y.dtype, copy=False).reshape(1, m, 1)
    return [y.reshape(n, m, *out).astype(x.dtype, copy=False)]


@kernel("ConvTranspose")
def _conv_transpose(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    # Tiling is ignored: the col2im scatter works on the whole input (documented in run_kernel).
    x, w, b = need(inputs, 0, "X"), need(inputs, 1, "W"), arg(inputs, 2)
    if x.ndim < 3 or w.ndim != x.ndim:
        raise KernelError(f"ConvTranspose: X {x.shape} and W {w.shape} must have matching rank >= 3")
    nd = x.ndim - 2
    group = int(attrs.get("group", 1))
    n, c = x.shape[:2]
    if group < 1 or c % group or w.shape[0] != c:
        raise KernelError(
            f"ConvTranspose: attribute group={group} incompatible with X {x.shape}, W {w.shape}"
        )
    cg, mg = c // group, w.shape[1]
    m = mg * group
    ks = _conv_weights(attrs, w, nd)
    in_shape = list(x.shape[2:])
    strides = _spatial_attr(attrs, "strides", nd, 1)
    dil = _spatial_attr(attrs, "dilations", nd, 1)
    out_pad = _spatial_attr(attrs, "output_padding", nd, 0)
    auto_pad = choice(attrs, "auto_pad", "NOTSET", _AUTO_PAD)
    full = [
        s * (i - 1) + op + (k - 1) * d + 1
        for s, i, op, k, d in zip(strides, in_shape, out_pad, ks, dil, strict=True)
    ]
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Pads are derived from the requested output shape (spec: explicit pads are then ignored).
        out = (
            int_list(attrs["output_shape"])
            if "output_shape" in attrs
            else [i * s for i, s in zip(in_shape, strides, strict=True)]
        )
        out = out[-nd:]
        begin = [_same_pads(f - o, auto_pad == "SAME_UPPER")[0] for f, o in zip(full, out, strict=True)]
    elif auto_pad == "VALID":
        out, begin = full, [0] * nd
    else:
        pads = _spatial_attr(attrs, "pads", 2 * nd, 0)
        begin = pads[:nd]
        out = [f - pb - pe for f, pb, pe in zip(full, pads[:nd], pads[nd:], strict=True)]
    if min(out, default=1) < 1:
        raise KernelError(f"ConvTranspose: output shape {out} is empty")
    xf = wide(x)
    wf = wide(w).astype(xf.dtype, copy=False)
    p_in, kk = math.prod(in_shape), math.prod(ks)
    # cols[n, g, p, mg, k]: each input pixel's contribution to a kernel-sized output patch.
    xm = xf.reshape(n, group, cg, p_in).transpose(0, 1, 3, 2)
    cols = np.matmul(xm, wf.reshape(group, cg, mg * kk)).reshape(n, group, *in_shape, mg, *ks)
    # Scatter-add (col2im) into a buffer shifted so negative begin pads stay in range.
    shift = [max(-pb, 0) for pb in begin]
    size = [max(f, pb + o) + s for f, pb, o, s in zip(full, begin, out, shift, strict=True)]
    buf = np.zeros((n, group, mg, *size), dtype=xf.dtype)
    moved = np.moveaxis(cols, 2 + nd, 2)  # (N, G, Mg, *in, *ks)
    for koff in itertools.product(*[range(k) for k in ks]):
        dst = tuple(
            slice(sh + j * d, sh + j * d + (i - 1) * s + 1, s)
            for sh, j, d, i, s in zip(shift, koff, dil, in_shape, strides, strict=True)
        )
        buf[(Ellipsis, *dst)] += moved[(Ellipsis, *koff)]
    crop = tuple(slice(sh + pb, sh + pb + o) for sh, pb, o in zip(shift, begin, out, strict=True))
    y = buf[(Ellipsis, *crop)].reshape(n, m, *out)
    if b is not None:
        y = y + wide(b).astype(y.dtype, copy=False).reshape(1, m, *([1] * nd))
    return [y.astype(x.dtype, copy=False)]


# ---- pooling ----


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


# ---- normalisation ----


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(v).reshape(-1, *([1] * (ndim - 2)))


@kernel("BatchNormalization")
def _batch_norm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    scale, bias, mean, var = (need(inputs, i, nm) for i, nm in enumerate(("scale", "B", "mean", "var"), 1))
    eps = float(attrs.get("epsilon", 1e-5))
    momentum = float(attrs.get("momentum", 0.9))
    training = opset >= 14 and bool(attrs.get("training_mode", 0))
    xf = wide(x).astype(np.float32) if x.dtype == np.float16 else x
    ct = xf.dtype
    axes = (0, *range(2, x.ndim))
    if training:
        # Batch statistics normalise; running stats blend in with momentum (population variance).
        b_mean, b_var = xf.mean(axis=axes), xf.var(axis=axes)
        use_mean, use_var = b_mean, b_var
    else:
        use_mean, use_var = wide(mean).astype(ct), wide(var).astype(ct)
    s, bb = wide(scale).astype(ct), wide(bias).astype(ct)
    inv = s / np.sqrt(use_var + np.asarray(eps, ct))
    y = (xf - _per_channel(use_mean, x.ndim)) * _per_channel(inv, x.ndim) + _per_channel(bb, x.ndim)
    y = y.astype(x.dtype, copy=False)
    if not training:
        return [y]
    run_mean = (mean * momentum + b_mean * (1 - momentum)).astype(mean.dtype)
    run_var = (var * momentum + b_var * (1 - momentum)).astype(var.dtype)
    return [y, run_mean, run_var]


@kernel("LayerNormalization")
def _layer_norm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, scale, bias = need(inputs, 0, "X"), need(inputs, 1, "Scale"), arg(inputs, 2)
    axis = norm_axis(int(attrs.get("axis", -1)), x.ndim)
    eps = float(attrs.get("epsilon", 1e-5))
    # stash_type is the precision of stage one (mean/variance) and the type of Mean/InvStdDev.
    stash = onnx_dtype(int(attrs.get("stash_type", 1)), "stash_type")
    if stash.kind != "f":
        raise KernelError(f"attribute stash_type={attrs.get('stash_type')} must be a float type")
    xs = x.astype(stash, copy=False)
    axes = tuple(range(axis, x.ndim))
    mean = xs.mean(axis=axes, keepdims=True)
    diff = xs - mean
    inv_std = 1.0 / np.sqrt((diff * diff).mean(axis=axes, keepdims=True) + np.asarray(eps, stash))
    norm = (diff * inv_std).astype(wide(x).dtype, copy=False)
    y = norm * wide(scale).astype(norm.dtype, copy=False)
    if bias is not None:
        y = y + wide(bias).astype(norm.dtype, copy=False)
    return [y.astype(x.dtype, copy=False), mean.astype(stash), inv_std.astype(stash)]


@kernel("InstanceNormalization")
def _instance_norm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, scale, bias = need(inputs, 0, "input"), need(inputs, 1, "scale"), need(inputs, 2, "B")
    eps = float(attrs.get("epsilon", 1e-5))
    xf = wide(x)
    axes = tuple(range(2, x.ndim))
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mean) / np.sqrt(var + eps) * _per_channel(wide(scale), x.ndim) + _per_channel(
        wide(bias), x.ndim
    )
    return [y.astype(x.dtype, copy=False)]


@kernel("GroupNormalization")
def _group_norm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, scale, bias = need(inputs, 0, "X"), need(inputs, 1, "scale"), need(inputs, 2, "bias")
    groups = int(attrs.get("num_groups", 0))
    eps = float(attrs.get("epsilon", 1e-5))
    if x.ndim < 2 or groups < 1 or x.shape[1] % groups:
        raise KernelError(f"GroupNormalization: num_groups={groups} does not divide the channels of {x.shape}")
    n, c = x.shape[:2]
    # Opset 18 scales per group, opset 21 per channel; statistics in stash_type (float32 by default).
    per = c if opset >= 21 else groups
    if scale.size != per or bias.size != per:
        raise KernelError(f"GroupNormalization: scale/bias need {per} entries at opset {opset}")
    stash = onnx_dtype(int(attrs.get("stash_type", 1)), "stash_type") if opset >= 21 else wide(x).dtype
    xg = x.astype(stash).reshape(n, groups, -1)
    mean = xg.mean(axis=-1, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=-1, keepdims=True)
    norm = ((xg - mean) / np.sqrt(var + np.asarray(eps, stash))).reshape(x.shape)
    if per == groups:
        norm = norm.reshape(n, groups, -1)
        y = norm * scale.astype(stash).reshape(1, groups, 1) + bias.astype(stash).reshape(1, groups, 1)
    else:
        y = norm * _per_channel(scale.astype(stash), x.ndim) + _per_channel(bias.astype(stash), x.ndim)
    return [y.reshape(x.shape).astype(x.dtype)]


@kernel("RMSNormalization")
def _rms_norm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, scale = need(inputs, 0, "X"), need(inputs, 1, "scale")
    axis = norm_axis(int(attrs.get("axis", -1)), x.ndim)
    eps = float(attrs.get("epsilon", 1e-5))
    stash = onnx_dtype(int(attrs.get("stash_type", 1)), "stash_type")
    xs = x.astype(stash)
    ms = np.mean(xs * xs, axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = xs / np.sqrt(ms + np.asarray(eps, stash)) * scale.astype(stash)
    return [y.astype(x.dtype)]


@kernel("MeanVarianceNormalization")
def _mvn(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    axes = tuple(norm_axes(int_list(attrs.get("axes", [0, 2, 3])), x.ndim))
    xf = wide(x)
    mean = xf.mean(axis=axes, keepdims=True)
    # The function body's formula: sqrt(E[x^2] - E[x]^2) + 1e-9.
    std = np.sqrt(np.maximum((xf * xf).mean(axis=axes, keepdims=True) - mean * mean, 0))
    return [((xf - mean) / (std + 1e-9)).astype(x.dtype)]


@kernel("LpNormalization")
def _lp_norm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    axis = norm_axis(int(attrs.get("axis", -1)), x.ndim)
    p = int(attrs.get("p", 2))
    if p not in (1, 2):
        raise KernelError(f"attribute p={p} must be 1 or 2")
    xf = wide(x)
    norm = np.sum(np.abs(xf), axis=axis, keepdims=True) if p == 1 else np.sqrt(
        np.sum(xf * xf, axis=axis, keepdims=True))
    with np.errstate(all="ignore"):
        y = np.where(norm == 0, 0, xf / norm)  # a zero vector stays zero
    return [y.astype(x.dtype)]


@kernel("LpPool")
def _lp_pool(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    p = float(attrs.get("p", 2))
    ks, strides, dil, begin, out_end = _pool_setup(x, attrs)
    nd = len(ks)
    win = windows(np.abs(wide(x)) ** p, begin, out_end[:nd], strides, dil, ks, 0.0)  # pads add nothing
    return [(win.sum(axis=tuple(range(-nd, 0))) ** (1.0 / p)).astype(x.dtype)]


@kernel("LRN")
def _lrn(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    size = int(attrs.get("size", 0))
    if x.ndim < 3 or size < 1:
        raise KernelError(f"LRN: size={size} must be >= 1 and the input N-D (rank >= 3), got {x.shape}")
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    xf = wide(x)
    sq = np.moveaxis(xf * xf, 1, -1)
    # Channel window [c - floor((size-1)/2), c + ceil((size-1)/2)], clipped to the channels.
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(sq, [(0, 0)] * (sq.ndim - 1) + [(lo, hi)])
    total = sliding_window_view(padded, size, axis=-1).sum(axis=-1)
    y = xf / (bias + alpha / size * np.moveaxis(total, -1, 1)) ** beta
    return [y.astype(x.dtype)]


@kernel("MaxUnpool")
def _max_unpool(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, idx, out_in = need(inputs, 0, "X"), need(inputs, 1, "I"), arg(inputs, 2)
    if "kernel_shape" not in attrs or idx.shape != x.shape:
        raise KernelError("MaxUnpool needs kernel_shape and indices of X's shape")
    ks = int_list(attrs["kernel_shape"])
    nd = len(ks)
    strides = _spatial_attr(attrs, "strides", nd, 1)
    pads = _spatial_attr(attrs, "pads", 2 * nd, 0)
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


@kernel("Col2Im")
def _col2im(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, image, block = need(inputs, 0, "input"), int_list(need(inputs, 1, "image_shape")), int_list(
        need(inputs, 2, "block_shape"))
    nd = len(image)
    if len(block) != nd or x.ndim != 3 or x.shape[1] % math.prod(block):
        raise KernelError(f"Col2Im: input {x.shape}, image_shape {image}, block_shape {block} do not fit")
    dil = _spatial_attr(attrs, "dilations", nd, 1)
    pads = _spatial_attr(attrs, "pads", 2 * nd, 0)
    strides = _spatial_attr(attrs, "strides", nd, 1)
    blocks = [(i + pb + pe - d * (k - 1) - 1) // s + 1 for i, pb, pe, d, k, s in
              zip(image, pads[:nd], pads[nd:], dil, block, strides, strict=True)]
    if math.prod(blocks) != x.shape[2]:
        raise KernelError(f"Col2Im: {x.shape[2]} columns, expected {blocks} sliding blocks")
    n, c = x.shape[0], x.shape[1] // math.prod(block)
    cols = x.reshape(n, c, *block, *blocks)
    buf = np.zeros((n, c, *[i + pb + pe for i, pb, pe in zip(image, pads[:nd], pads[nd:], strict=True)]),
                   dtype=x.dtype)
    for koff in itertools.product(*[range(k) for k in block]):
        dst = tuple(slice(j * d, j * d + (b - 1) * s + 1, s) for j, d, b, s in zip(koff, dil, blocks, strides,
                                                                                  strict=True))
        buf[(Ellipsis, *dst)] += cols[(slice(None), slice(None), *koff)]
    crop = tuple(slice(pb, pb + i) for pb, i in zip(pads[:nd], image, strict=True))
    return [buf[(Ellipsis, *crop)]]
