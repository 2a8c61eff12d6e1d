"""Quantization kernels: Quantize/DequantizeLinear (per tensor, per axis, blocked), DynamicQuantizeLinear,
QLinearMatMul, QLinearConv, MatMulInteger, ConvInteger.

Quantize/DequantizeLinear take every ONNX quantized type: int8/uint8/int16/uint16, the ml_dtypes integers
int4/uint4/int2/uint2 (rounded, offset and clamped like the others), float8 E4M3FN/E4M3FNUZ/E5M2/E5M2FNUZ
(no zero point offset; ``saturate`` clamps, as in Cast) and float4 E2M1 (the zero point is added before
the rounding cast, which saturates by itself), as onnx's reference defines them."""

from __future__ import annotations

import numpy as np

from ..dtypes import EXTENDED
from . import _lowp
from ._registry import KERNELS, Attrs, Inputs, KernelError, Tiling, arg, kernel, need, norm_axis, onnx_dtype, wide


def _broadcast_param(value: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    """Scale / zero point made broadcastable to ``shape``: scalar, per-axis vector or blocked (repeated)."""
    if value.size == 1 and not block:
        return value.reshape(())
    axis = norm_axis(axis, len(shape))
    if not block:
        if value.ndim != 1 or value.size != shape[axis]:
            raise KernelError(f"a per-axis scale/zero point needs {shape[axis]} entries, got {value.shape}")
        dims = [1] * len(shape)
        dims[axis] = value.size
        return value.reshape(dims)
    if block < 0 or value.ndim != len(shape):
        raise KernelError(f"blocked quantization: block_size={block}, scale {value.shape} vs input {shape}")
    full = np.repeat(value, block, axis=axis).take(np.arange(shape[axis]), axis=axis)
    if full.shape != tuple(shape):
        raise KernelError(f"blocked scale {value.shape} with block_size={block} does not cover input {shape}")
    return full


FLOAT4 = EXTENDED["float4_e2m1fn"]
FLOAT_QUANT_TYPES = frozenset({*_lowp.FLOAT8_SATURATING, FLOAT4})


def _quant_type(attrs: Attrs, zero_point: np.ndarray | None) -> np.dtype:
    if zero_point is not None:
        dtype = zero_point.dtype
    elif int(attrs.get("output_dtype", 0)):
        dtype = onnx_dtype(attrs["output_dtype"], "output_dtype")
    else:
        dtype = np.dtype(np.uint8)
    integer = _lowp.is_integer(dtype) and dtype.itemsize <= 2
    if not integer and dtype not in FLOAT_QUANT_TYPES:
        raise KernelError(f"quantized type {dtype} is not supported (int8, uint8, int16, uint16, int4, uint4, "
                          f"int2, uint2, float8 e4m3fn/e4m3fnuz/e5m2/e5m2fnuz, float4 e2m1)")
    return dtype


def quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | int, dtype: np.dtype) -> np.ndarray:
    """saturate(round_half_even(x / scale) + zero_point) in the (integer) quantized type."""
    with np.errstate(all="ignore"):
        q = np.rint(x / scale) + zero
    lo, hi = _lowp.int_range(dtype)
    return _lowp.astype(np.clip(q, lo, hi), dtype)


def quantize_float(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, dtype: np.dtype,
                   saturate: bool) -> np.ndarray:
    """x / scale rounded into a float8 type (zero point not applied) or float4 (zero point added first)."""
    with np.errstate(all="ignore"):
        y = x / scale
        if dtype == FLOAT4 and zero is not None:
            y = y + _lowp.astype(zero, np.dtype(np.float32))
    return _lowp.convert(y, dtype, saturate)


@kernel("QuantizeLinear")
def _quantize_linear(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, scale, zp = need(inputs, 0, "x"), need(inputs, 1, "y_scale"), arg(inputs, 2)
    dtype = _quant_type(attrs, zp)
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    s = _broadcast_param(scale, x.shape, axis, block)
    zb = _broadcast_param(zp, x.shape, axis, block) if zp is not None else None
    if int(attrs.get("precision", 0)):
        compute = onnx_dtype(attrs["precision"], "precision")
        xq, sq = x.astype(compute), s.astype(compute)
    else:
        xq, sq = wide(x), wide(s)
    if dtype in FLOAT_QUANT_TYPES:
        return [quantize_float(xq, sq, zb, dtype, bool(int(attrs.get("saturate", 1))))]
    return [quantize(xq, sq, _lowp.astype(zb, np.dtype(np.int64)) if zb is not None else 0, dtype)]


@kernel("DequantizeLinear")
def _dequantize_linear(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, scale, zp = need(inputs, 0, "x"), need(inputs, 1, "x_scale"), arg(inputs, 2)
    if not _lowp.is_integer(x.dtype) and x.dtype not in FLOAT_QUANT_TYPES:
        raise KernelError(f"DequantizeLinear of {x.dtype} is not supported")
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    dx = _lowp.astype(x, np.dtype(np.float32))
    if zp is not None and zp.dtype != x.dtype:
        raise KernelError(f"zero point type {zp.dtype} differs from input type {x.dtype}")
    if zp is not None and _lowp.is_integer(x.dtype):
        dx = dx - _lowp.astype(_broadcast_param(zp, x.shape, axis, block), np.dtype(np.float32))
    elif zp is not None and x.dtype != FLOAT4 and np.any(zp.view(np.uint8)):  # float4's is ignored, as onnx's
        raise KernelError(f"a {x.dtype} zero point must be zero (float8 values carry no offset)")
    y = dx * _broadcast_param(scale, x.shape, axis, block)
    out = onnx_dtype(attrs["output_dtype"], "output_dtype") if int(attrs.get("output_dtype", 0)) else scale.dtype
    return [y.astype(out)]


@kernel("DynamicQuantizeLinear")
def _dynamic_quantize_linear(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "x").astype(np.float32)
    hi = np.float32(max(0.0, float(np.max(x)))) if x.size else np.float32(0)
    lo = np.float32(min(0.0, float(np.min(x)))) if x.size else np.float32(0)
    scale = np.float32(1.0 if hi == lo else hi - lo) / np.float32(255)
    zero = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    return [quantize(x, scale, zero, np.dtype(np.uint8)), np.array(scale, np.float32), np.array(zero, np.uint8)]


def _centered(x: np.ndarray, zp: np.ndarray | None, axis_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """x - zero_point in int64 (zero point per tensor, or per row/channel reshaped to ``axis_shape``)."""
    out = x.astype(np.int64)
    if zp is not None:
        z = zp.astype(np.int64)
        out = out - (z.reshape(axis_shape) if axis_shape is not None and z.size > 1 else z.reshape(-1)[0]
                     if z.size == 1 else z)
    return out


@kernel("MatMulInteger")
def _matmul_integer(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    a, b, azp, bzp = need(inputs, 0, "A"), need(inputs, 1, "B"), arg(inputs, 2), arg(inputs, 3)
    ac = _centered(a, azp, (-1, 1) if a.ndim >= 2 else None)  # a zero point vector is per row of A
    bc = _centered(b, bzp)  # a vector zero point of B is per column: broadcasts on the last axis
    return [np.matmul(ac, bc).astype(np.int32)]


@kernel("QLinearMatMul")
def _qlinear_matmul(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    a, a_s, azp, b, b_s, bzp, y_s, yzp = (need(inputs, i, n) for i, n in enumerate(
        ("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point")))
    acc = np.matmul(_centered(a, azp, (-1, 1)), _centered(b, bzp)).astype(np.float64)
    ratio = (a_s.astype(np.float64).reshape(-1, 1) if a_s.size > 1 else a_s.astype(np.float64).reshape(())) * (
        b_s.astype(np.float64)) / y_s.astype(np.float64)
    y = np.rint(acc * ratio.astype(np.float32)) + yzp.astype(np.float64)
    info = np.iinfo(yzp.dtype)
    return [np.clip(y, info.min, info.max).astype(yzp.dtype)]


def _int_conv(x: np.ndarray, w: np.ndarray, attrs: Attrs, opset: int) -> np.ndarray:
    """Exact integer convolution through the float64 Conv kernel (int8/uint8 products fit float64 exactly)."""
    y = KERNELS["Conv"]([x.astype(np.float64), w.astype(np.float64)], attrs, opset, None)[0]
    return np.rint(y).astype(np.int64)


@kernel("ConvInteger")
def _conv_integer(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, w, xzp, wzp = need(inputs, 0, "x"), need(inputs, 1, "w"), arg(inputs, 2), arg(inputs, 3)
    wshape = (-1, *([1] * (w.ndim - 1)))
    return [_int_conv(_centered(x, xzp), _centered(w, wzp, wshape), attrs, opset).astype(np.int32)]


@kernel("QLinearConv")
def _qlinear_conv(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, x_s, xzp, w, w_s, wzp, y_s, yzp = (need(inputs, i, n) for i, n in enumerate(
        ("x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point")))
    bias = arg(inputs, 8)
    wshape = (-1, *([1] * (w.ndim - 1)))
    acc = _int_conv(_centered(x, xzp), _centered(w, wzp, wshape), attrs, opset)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, -1, *([1] * (x.ndim - 2)))
    ws = w_s.astype(np.float64).reshape(1, -1, *([1] * (x.ndim - 2))) if w_s.size > 1 else w_s.astype(np.float64)
    y = np.rint(acc * (x_s.astype(np.float64) * ws / y_s.astype(np.float64))) + yzp.astype(np.float64)
    info = np.iinfo(yzp.dtype)
    return [np.clip(y, info.min, info.max).astype(yzp.dtype)]
