"""Normalisation kernels: Batch/Layer/Instance/Group/RMS normalisation, MeanVarianceNormalization,
LpNormalization and LRN."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._registry import (
    Attrs,
    Inputs,
    KernelError,
    Tiling,
    arg,
    int_list,
    kernel,
    need,
    norm_axes,
    norm_axis,
    onnx_dtype,
    wide,
)


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


