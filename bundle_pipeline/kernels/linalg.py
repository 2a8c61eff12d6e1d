"""MatMul and Gemm, optionally computed in output blocks of tile_m x tile_n (same numbers either way); Einsum, Det."""

from __future__ import annotations

import numpy as np

from ..dtypes import EXTENDED
from ._registry import Attrs, Inputs, KernelError, Tiling, arg, broadcast_shape, kernel, need, wide

BFLOAT16 = EXTENDED["bfloat16"]


def _tile_sizes(tiling: Tiling, m: int, n: int) -> tuple[int, int]:
    """(tile_m, tile_n) clipped to the output; a missing or non-positive entry means 'whole axis'."""
    tm = int((tiling or {}).get("tile_m", 0) or m)
    tn = int((tiling or {}).get("tile_n", 0) or n)
    if tm < 0 or tn < 0:
        raise KernelError(f"tiling tile_m={tm} / tile_n={tn} must be positive")
    return max(min(tm, m), 1), max(min(tn, n), 1)


def blocked_matmul(a: np.ndarray, b: np.ndarray, tiling: Tiling) -> np.ndarray:
    """a @ b for a (..., M, K), b (..., K, N), computed block by block when tiling is given."""
    if a.shape[-1] != b.shape[-2]:
        raise KernelError(f"MatMul: inner dimensions differ: {a.shape} @ {b.shape}")
    batch = broadcast_shape(a.shape[:-2], b.shape[:-2])
    m, n = a.shape[-2], b.shape[-1]
    tm, tn = _tile_sizes(tiling, m, n)
    if tm >= m and tn >= n:
        return np.matmul(a, b)
    out = np.empty((*batch, m, n), dtype=np.result_type(a, b))
    for i in range(0, m, tm):
        for j in range(0, n, tn):
            # Each block reads only its rows of a and columns of b: workspace is tile-sized.
            np.matmul(a[..., i : i + tm, :], b[..., :, j : j + tn], out=out[..., i : i + tm, j : j + tn])
    return out


@kernel("MatMul")
def _matmul(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    a, b = need(inputs, 0, "A"), need(inputs, 1, "B")
    if a.ndim == 0 or b.ndim == 0:
        raise KernelError("MatMul: scalar operands are not allowed")
    # numpy matmul 1-D promotion rules are ONNX's; apply them explicitly so blocks stay 2-D.
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    y = blocked_matmul(wide(a2), wide(b2), tiling)
    if b.ndim == 1:
        y = y[..., 0]
    if a.ndim == 1:
        y = y[..., 0, :] if b.ndim > 1 else y[..., 0]
    return [np.asarray(y).astype(a.dtype, copy=False)]


@kernel("Gemm")
def _gemm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    a, b, c = need(inputs, 0, "A"), need(inputs, 1, "B"), arg(inputs, 2)
    if a.ndim != 2 or b.ndim != 2:
        raise KernelError(f"Gemm: A and B must be 2-D, got {a.shape} and {b.shape}")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    a2 = a.T if int(attrs.get("transA", 0)) else a
    b2 = b.T if int(attrs.get("transB", 0)) else b
    y = blocked_matmul(wide(a2), wide(b2), tiling)
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=y.dtype)
    if c is not None and beta != 0.0:
        c = np.asarray(c)
        if broadcast_shape(c.shape, y.shape) != y.shape:
            raise KernelError(f"Gemm: C shape {c.shape} does not broadcast to {y.shape}")
        cw = wide(c).astype(y.dtype, copy=False)
        y = y + (cw if beta == 1.0 else cw * np.asarray(beta, dtype=y.dtype))
    return [np.asarray(y).astype(a.dtype, copy=False)]


def _wide16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype == BFLOAT16 else wide(x)


@kernel("Einsum")
def _einsum(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    xs = [np.asarray(x) for x in inputs if x is not None]
    equation = str(attrs.get("equation", "")).replace(" ", "")
    if not xs or not equation:
        raise KernelError("Einsum needs inputs and attribute 'equation'")
    try:
        # einsum has no bfloat16 loops: accumulate it in float32 and round once (as onnx's test data does)
        y = np.einsum(equation, *[_wide16(x) for x in xs], optimize=len(xs) > 2)
    except ValueError as err:
        raise KernelError(f"Einsum equation {equation!r}: {err}") from None
    return [np.asarray(y).astype(xs[0].dtype, copy=False)]


@kernel("Det")
def _det(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise KernelError(f"Det needs square matrices in the last two axes, got {x.shape}")
    return [np.asarray(np.linalg.det(wide(x))).astype(x.dtype)]
