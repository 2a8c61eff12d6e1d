"""Resize (opsets 11-21): nearest/linear/cubic, every coordinate transform, antialias, axes, policies."""

from __future__ import annotations

import math

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, choice, int_list, kernel, need, norm_axes

_COORD_MODES = (
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)


def _source_coords(
    mode: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Input coordinate of every output index, and (tf_crop_and_resize only) which ones extrapolate."""
    y = np.arange(out_len, dtype=np.float64)
    # Like the ONNX reference, the continuous output width scale*in_len drives the 'length 1' cases.
    width = scale * in_len
    if mode == "align_corners":
        return (np.zeros(out_len) if width == 1 else y * (in_len - 1) / (width - 1)), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale, None
    if mode == "pytorch_half_pixel":
        return (np.full(out_len, -0.5) if width == 1 else (y + 0.5) / scale - 0.5), None
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / width)
        return offset + (y + 0.5) / scale - 0.5, None
    start, end = roi if roi is not None else (0.0, 1.0)
    if width == 1:
        x = np.full(out_len, (end - start) * (in_len - 1) / 2)
    else:
        x = y * (end - start) * (in_len - 1) / (width - 1)
    x = x + start * (in_len - 1)
    return x, (x < 0) | (x > in_len - 1)


def _nearest_index(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        idx = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(x)
    else:
        idx = np.ceil(x)
    return idx.astype(np.int64)


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _weights(x: np.ndarray, in_len: int, scale: float, mode: str, attrs: Attrs) -> np.ndarray:
    """Dense (out_len, in_len) interpolation matrix for linear/cubic along one axis."""
    antialias = bool(attrs.get("antialias", 0))
    s = min(scale, 1.0) if antialias else 1.0
    support = 1.0 if mode == "linear" else 2.0
    # Taps: the 'left' pixel is floor(x), or x-1 when x is integral (ratio in (0, 1]), as the reference.
    left = np.floor(x)
    left = np.where(left == x, x - 1, left)
    ratio = x - left
    n = 2 - 2 * (math.floor(-support / s) + 1) if antialias else int(2 * support)
    offsets = np.arange(n) - n // 2 + 1
    dist = (offsets[None, :] - ratio[:, None]) * s
    if mode == "linear":
        w = np.clip(1.0 - np.abs(dist), 0.0, 1.0)
    else:
        w = _cubic(dist, float(attrs.get("cubic_coeff_a", -0.75)))
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    taps = left.astype(np.int64)[:, None] + offsets[None, :]
    if int(attrs.get("exclude_outside", 0)):
        w = np.where((taps < 0) | (taps >= in_len), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    # Taps outside the input read the edge pixel (edge padding == index clamping).
    mat = np.zeros((len(x), in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(len(x))[:, None], taps.shape)
    np.add.at(mat, (rows, np.clip(taps, 0, in_len - 1)), w)
    return mat


def _output_plan(
    x: np.ndarray, inputs: Inputs, attrs: Attrs, opset: int, axes: list[int]
) -> tuple[list[float], list[int]]:
    """Per listed axis: (scale, output length), from sizes (with the aspect policy) or scales."""
    scales_in, sizes_in = arg(inputs, 2), arg(inputs, 3)
    has_sizes = sizes_in is not None and np.asarray(sizes_in).size > 0
    has_scales = scales_in is not None and np.asarray(scales_in).size > 0
    if has_sizes == has_scales:
        raise KernelError("Resize: exactly one of scales and sizes must be given")
    in_lens = [x.shape[a] for a in axes]
    if has_scales:
        scales = [float(v) for v in np.asarray(scales_in).reshape(-1)]
        if len(scales) != len(axes) or min(scales) <= 0:
            raise KernelError(f"Resize: scales {scales} must be {len(axes)} positive values")
        return scales, [int(s * n) for s, n in zip(scales, in_lens, strict=True)]
    sizes = int_list(sizes_in)
    if len(sizes) != len(axes):
        raise KernelError(f"Resize: sizes {sizes} must have {len(axes)} entries")
    scales = [s / n for s, n in zip(sizes, in_lens, strict=True)]
    policy = choice(attrs, "keep_aspect_ratio_policy", "stretch", ("stretch", "not_larger", "not_smaller"))
    if opset >= 18 and policy != "stretch":
        common = min(scales) if policy == "not_larger" else max(scales)
        scales = [common] * len(axes)
        sizes = [int(common * n + 0.5) for n in in_lens]
    return scales, sizes


def _saturate(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(y), info.min, info.max).astype(dtype)
    return y.astype(dtype)


@kernel("Resize")
def _resize(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    mode = choice(attrs, "mode", "nearest", ("nearest", "linear", "cubic"))
    coord_modes = _COORD_MODES + (("half_pixel_symmetric",) if opset >= 19 else ())
    coord_modes += ("tf_half_pixel_for_nn",) if opset < 13 else ()
    coord = choice(attrs, "coordinate_transformation_mode", "half_pixel", coord_modes)
    nearest_mode = choice(
        attrs,
        "nearest_mode",
        "round_prefer_floor",
        ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"),
    )
    if mode == "nearest" and int(attrs.get("antialias", 0)):
        raise KernelError("attribute antialias=1 is not defined for mode 'nearest'")
    axes = (
        norm_axes(int_list(attrs["axes"]), x.ndim) if opset >= 18 and "axes" in attrs else list(range(x.ndim))
    )
    scales, sizes = _output_plan(x, inputs, attrs, opset, axes)
    roi_in = arg(inputs, 1)
    roi = None
    if coord == "tf_crop_and_resize" and roi_in is not None and np.asarray(roi_in).size:
        roi = [float(v) for v in np.asarray(roi_in).reshape(-1)]
        if len(roi) != 2 * len(axes):
            raise KernelError(f"Resize: roi must have {2 * len(axes)} entries, got {len(roi)}")
    extrapolation = float(attrs.get("extrapolation_value", 0.0))
    # Nearest only gathers (exact for any dtype); linear/cubic interpolate in float64 like the reference.
    y = x if mode == "nearest" else x.astype(np.float64)
    for k, (axis, scale, out_len) in enumerate(zip(axes, scales, sizes, strict=True)):
        in_len = y.shape[axis]
        axis_roi = (roi[k], roi[k + len(axes)]) if roi is not None else None
        trivial_roi = axis_roi is None or (math.isclose(axis_roi[0], 0.0) and math.isclose(axis_roi[1], 1.0))
        if math.isclose(scale, 1.0) and out_len == in_len and trivial_roi:
            continue
        if out_len == 0:
            shape = list(y.shape)
            shape[axis] = 0
            y = np.empty(shape, dtype=y.dtype)
            continue
        src, extrapolated = _source_coords(coord, out_len, in_len, scale, axis_roi)
        if mode == "nearest":
            idx = np.clip(_nearest_index(src, nearest_mode), 0, in_len - 1)
            y = np.take(y, idx, axis=axis)
        else:
            mat = _weights(src, in_len, scale, mode, attrs)
            y = np.moveaxis(np.moveaxis(y, axis, -1) @ mat.T, -1, axis)
        if extrapolated is not None and extrapolated.any():
            mask = extrapolated.reshape([-1 if a == axis else 1 for a in range(y.ndim)])
            y = np.where(mask, np.asarray(extrapolation).astype(y.dtype), y)
    return [_saturate(y, x.dtype) if y.dtype != x.dtype else y]
