"""Sliding-window geometry shared by convolution and pooling (and the npu kernels' native checks):
strides, dilations, pads and auto_pad to output sizes, and strided window views."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._registry import Attrs, KernelError, choice, int_list

AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def spatial_attr(attrs: Attrs, name: str, nd: int, default: int) -> list[int]:
    value = int_list(attrs[name]) if name in attrs else [default] * nd
    if len(value) != nd:
        raise KernelError(f"attribute {name}={value} must have {nd} entries")
    return value


def same_pads(total: int, upper: bool) -> tuple[int, int]:
    """Split total padding; SAME_UPPER puts the extra one at the end, SAME_LOWER at the start."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def window_geometry(
    in_shape: list[int], kernel_shape: list[int], attrs: Attrs, ceil_mode: bool = False
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(strides, dilations, pads_begin, pads_end, out_shape) of a sliding-window op (Conv, pools)."""
    nd = len(in_shape)
    strides = spatial_attr(attrs, "strides", nd, 1)
    dilations = spatial_attr(attrs, "dilations", nd, 1)
    if min(strides + dilations, default=1) < 1 or min(kernel_shape, default=1) < 1:
        raise KernelError("strides, dilations and kernel_shape must be positive")
    auto_pad = choice(attrs, "auto_pad", "NOTSET", AUTO_PAD)
    ext = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    begin, end, out = [0] * nd, [0] * nd, [0] * nd
    if auto_pad == "NOTSET":
        pads = spatial_attr(attrs, "pads", 2 * nd, 0)
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
            begin[i], end[i] = same_pads(total, auto_pad == "SAME_UPPER")
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
