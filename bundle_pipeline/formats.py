"""Storage formats of the npu target: exact layouts, zero padding, conversions both ways (TransData).

Layouts (C0 = N0 = M0 = 16; ``ceil(x/16)`` written x1; every physical array is C-contiguous row-major):

- ``ND``: any rank, the logical array as is. ``NCHW``: rank 4 only, the same bytes as ND, so a
  conversion between the two is the identity.
- ``NC1HWC0`` (feature maps): NCHW (N, C, H, W) -> (N, C1, H, W, C0); element [n, c, h, w] is at
  [n, c // 16, h, w, c % 16]. Rank 4 only (3-D and 5-D feature maps stay ND).
- ``FRACTAL_Z`` (conv weights): OIHW (O, I, KH, KW) -> (I1 * KH * KW, O1, 16, 16); element [o, i, kh, kw]
  is at [(i // 16) * KH * KW + kh * KW + kw, o // 16, o % 16, i % 16]. Rank 4 only. Each 16x16 fractal
  is one (N0 = output channels) x (C0 = input channels) block the cube unit reads in one go.
- ``FRACTAL_NZ`` (matrices): [..., M, N] -> [..., N1, M1, 16, 16]; element [..., m, n] is at
  [..., n // 16, m // 16, m % 16, n % 16]: column-major over 16x16 fractals ("N" order), each fractal
  row-major ("Z"). Rank >= 2; a vector is not representable (FormatError; callers keep it ND).

Lanes of the physical array that hold no logical element (C, O, I, M or N rounded up to 16) are
padding and are always zero: ``to_format`` writes zeros there and every npu kernel keeps them zero,
so a kernel may compute on whole fractals and reductions only need to care about the padded axis.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .layouts import C0, FORMATS, STANDARD, FormatError, accepts, c0_blocks, check_layout, storage_shape  # noqa: F401


def c_contiguous(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous array of the same shape (unlike np.ascontiguousarray, keeps 0-d arrays 0-d)."""
    x = np.asarray(x)
    return x if x.flags.c_contiguous else x.copy(order="C")


def _pad_axes(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the given axes up to a multiple of 16 (a zeroed array filled in: np.pad costs ~20x more on the
    small tensors a model has hundreds of)."""
    padded = list(x.shape)
    for a in axes:
        padded[a] = c0_blocks(x.shape[a]) * C0
    if padded == list(x.shape):
        return x
    out = np.zeros(padded, dtype=x.dtype)
    out[tuple(slice(0, d) for d in x.shape)] = x
    return out


def to_format(x: np.ndarray, fmt: str) -> np.ndarray:
    """Convert a tensor from the standard layout (ND/NCHW) into ``fmt``; a new contiguous array."""
    x = np.asarray(x)
    shape = check_layout(fmt, x.shape)
    if fmt in STANDARD:
        return c_contiguous(x)
    if fmt == "NC1HWC0":
        n, c, h, w = shape
        xp = _pad_axes(x, (1,))
        return c_contiguous(xp.reshape(n, c0_blocks(c), C0, h, w).transpose(0, 1, 3, 4, 2))
    if fmt == "FRACTAL_Z":
        _o, _i, kh, kw = shape
        wp = _pad_axes(x, (0, 1))
        o1, i1 = wp.shape[0] // C0, wp.shape[1] // C0
        # (O1, O0, I1, I0, KH, KW) -> (I1, KH, KW, O1, O0, I0)
        blocks = wp.reshape(o1, C0, i1, C0, kh, kw).transpose(2, 4, 5, 0, 1, 3)
        return c_contiguous(blocks).reshape(i1 * kh * kw, o1, C0, C0)
    b = x.ndim - 2
    xp = _pad_axes(x, (b, b + 1))
    m1, n1 = xp.shape[b] // C0, xp.shape[b + 1] // C0
    # (..., M1, M0, N1, N0) -> (..., N1, M1, M0, N0)
    tiles = xp.reshape(*x.shape[:b], m1, C0, n1, C0)
    batch = tuple(range(b))
    return c_contiguous(tiles.transpose(*batch, b + 2, b, b + 1, b + 3))


def from_format(y: np.ndarray, fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    """Convert a physical array in ``fmt`` back to the standard layout of logical ``shape``."""
    y = np.asarray(y)
    shape = check_layout(fmt, shape)
    expected = storage_shape(fmt, shape)
    if y.shape != expected:
        raise FormatError(f"{fmt} array of shape {y.shape} does not hold logical {shape} (needs {expected})")
    if fmt in STANDARD:
        return c_contiguous(y)
    if fmt == "NC1HWC0":
        n, c, h, w = shape
        full = y.transpose(0, 1, 4, 2, 3).reshape(n, y.shape[1] * C0, h, w)
        return c_contiguous(full[:, :c])
    if fmt == "FRACTAL_Z":
        o, i, kh, kw = shape
        i1, o1 = c0_blocks(i), c0_blocks(o)
        # (I1, KH, KW, O1, O0, I0) -> (O1, O0, I1, I0, KH, KW)
        full = y.reshape(i1, kh, kw, o1, C0, C0).transpose(3, 4, 0, 5, 1, 2).reshape(o1 * C0, i1 * C0, kh, kw)
        return c_contiguous(full[:o, :i])
    *batch, m, n = shape
    b = len(batch)
    n1, m1 = y.shape[b], y.shape[b + 1]
    axes = tuple(range(b))
    full = y.transpose(*axes, b + 1, b + 2, b, b + 3).reshape(*batch, m1 * C0, n1 * C0)
    return c_contiguous(full[..., :m, :n])


def transdata(x: np.ndarray, src: str, dst: str, shape: tuple[int, ...]) -> np.ndarray:
    """Convert a physical array from ``src`` to ``dst`` (via the standard layout) for logical ``shape``."""
    if src in STANDARD and dst in STANDARD:
        # Same bytes: only check that both formats can label this tensor.
        check_layout(dst, check_layout(src, shape))
        return from_format(x, src, shape)
    return to_format(from_format(x, src, shape), dst)


@cache
def _pad_mask(fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(~to_format(np.ones(shape, dtype=bool), fmt))  # 0-d stays an array
    mask.flags.writeable = False  # shared between callers through the cache
    return mask


def pad_mask(fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean array of the storage shape, True on padding lanes (read-only, cached per (fmt, shape))."""
    return _pad_mask(fmt, check_layout(fmt, shape))


def has_padding(fmt: str, shape: tuple[int, ...]) -> bool:
    """Whether ``fmt`` pads this tensor at all (cheap: no mask is built)."""
    return math.prod(storage_shape(fmt, shape)) != math.prod(check_layout(fmt, shape))


def zero_padding(y: np.ndarray, fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    """``y`` with its padding lanes set to zero (a new array when there is padding, else ``y`` itself)."""
    if not has_padding(fmt, shape):
        return y
    return np.where(pad_mask(fmt, shape), np.zeros((), dtype=y.dtype), y)


# ---- views the npu kernels compute on ----


def channel_vector(v: np.ndarray, c: int, dtype: np.dtype) -> np.ndarray:
    """A per-channel ND [C] parameter as (1, C1, 1, 1, C0): it broadcasts over an NC1HWC0 tensor, zero on padding
    lanes."""
    v = np.asarray(v).reshape(-1)
    if v.size != c:
        raise FormatError(f"per-channel parameter of {v.size} values for {c} channels")
    padded = np.zeros(c0_blocks(c) * C0, dtype=dtype)
    padded[:c] = v
    return padded.reshape(1, padded.size // C0, 1, 1, C0)


def transposed_fractals(x: np.ndarray) -> np.ndarray:
    """The fractal grid of the transposed matrix, as a view: [.., a1, b1, a0, b0] -> [.., b1, a1, b0, a0]."""
    return x.swapaxes(-4, -3).swapaxes(-2, -1)


def nz_dense(grid: np.ndarray) -> np.ndarray:
    """A FRACTAL_NZ grid [..., C1, R1, 16, 16] as the dense (padded) matrix [..., R1*16, C1*16]."""
    *batch, c1, r1, _, _ = grid.shape
    b = len(batch)
    return grid.transpose(*range(b), b + 1, b + 2, b, b + 3).reshape(*batch, r1 * C0, c1 * C0)


def nz_grid(dense: np.ndarray) -> np.ndarray:
    """A dense matrix [..., R, C] (multiples of 16) as its FRACTAL_NZ grid [..., C1, R1, 16, 16]."""
    *batch, r, c = dense.shape
    b = len(batch)
    tiles = dense.reshape(*batch, r // C0, C0, c // C0, C0)
    return tiles.transpose(*range(b), b + 2, b, b + 1, b + 3)
