"""The cube unit's kernels: MatMul/Gemm on FRACTAL_NZ and Conv on NC1HWC0 x FRACTAL_Z, as a blocked GEMM.

Tiles are (tile_m | tile_hw, tile_n, tile_k) from ``tiling`` (elements, multiples of 16; absent = whole axis):
for each output tile, products of (tile_m x tile_k) A-tiles and (tile_k x tile_n) B-tiles accumulate in an
L0C-like buffer in float32 (fp16 inputs accumulate in fp32, as the cube unit does; float64 stays float64,
integers accumulate in int64 and wrap to the output type), then the epilogue (alpha, bias, cast) runs on the
output tile, as the vector unit does from UB. Any valid tiling gives the same numbers up to summation order
(exactly the same for data whose sums are exact). Signatures are checked by ``targets.npu`` first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...formats import C0, channel_vector, nz_dense, nz_grid, storage_shape, transposed_fractals
from ...kernels._registry import KernelError, wide
from ...kernels._windows import windows
from ...targets.npu import Call, conv_geometry, family, matmul_dims

TileFn = Callable[[slice, slice], np.ndarray]


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulator of the cube unit for an input dtype: fp16/fp32 -> fp32; f64 stays; ints -> int64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.dtype(np.float64) if dtype.itemsize > 4 else np.dtype(np.float32)
    return np.dtype(np.int64)


def _tile(tiling: dict | None, key: str, whole: int) -> int:
    """Tile size in elements from the tiling data: a positive multiple of 16, or the whole axis."""
    value = int((tiling or {}).get(key, 0) or 0)
    if value == 0:
        return max(C0, -(-whole // C0) * C0)
    if value < 0 or value % C0:
        raise KernelError(f"tiling {key}={value} must be a positive multiple of {C0}")
    return value


def _tiled_gemm(m: int, n: int, k: int, tiles: tuple[int, int, int], a_tile: TileFn, b_tile: TileFn,
                store: Callable[[slice, slice, np.ndarray], None], acc: np.dtype) -> None:
    """The cube loop: for each (tile_m x tile_n) output tile, accumulate A(rows, ks) @ B(ks, cols) over
    the K tiles in ``acc`` precision (the L0C buffer), then hand the tile to ``store`` (the epilogue)."""
    tm, tn, tk = tiles
    for i in range(0, m, tm):
        rows = slice(i, min(i + tm, m))
        for j in range(0, n, tn):
            cols = slice(j, min(j + tn, n))
            total = None
            for p in range(0, k, tk):
                part = slice(p, min(p + tk, k))
                prod = np.matmul(a_tile(rows, part).astype(acc, copy=False), b_tile(part, cols).astype(acc, copy=False))
                if total is None:
                    total = prod
                else:
                    total += prod
            store(rows, cols, total)


def _fractal_slice(s: slice) -> slice:
    return slice(s.start // C0, -(-s.stop // C0))


# ---- MatMul / Gemm in FRACTAL_NZ ----


def _gemm_bias(call: Call, m: int, n: int, acc: np.dtype) -> np.ndarray | None:
    """beta * C as a dense zero-padded (M1*16, N1*16) matrix; None when there is nothing to add."""
    c = call.inputs[2] if len(call.inputs) > 2 else None
    beta = float(call.attrs.get("beta", 1.0))
    if call.op_type != "Gemm" or c is None or beta == 0.0:
        return None
    if family(call.in_formats[2]) == "FRACTAL_NZ":
        dense = nz_dense(np.asarray(c)).astype(acc)
    else:
        dense = np.zeros((-(-m // C0) * C0, -(-n // C0) * C0), dtype=acc)
        dense[:m, :n] = np.broadcast_to(wide(np.asarray(c)).astype(acc), (m, n))
    return dense * np.asarray(beta, dtype=acc) if beta != 1.0 else dense


def run_matmul(call: Call) -> np.ndarray:
    m, n, k, ta, tb = matmul_dims(call)
    a_grid = transposed_fractals(call.inputs[0]) if ta else call.inputs[0]  # [.., K1, M1, m0, k0]
    b_grid = transposed_fractals(call.inputs[1]) if tb else call.inputs[1]  # [.., N1, K1, k0, n0]
    out_dtype = call.inputs[0].dtype
    acc = _acc_dtype(out_dtype)
    alpha = float(call.attrs.get("alpha", 1.0)) if call.op_type == "Gemm" else 1.0
    bias = _gemm_bias(call, m, n, acc)
    out = np.zeros(storage_shape("FRACTAL_NZ", call.out_shape), dtype=out_dtype)
    mp, np_, kp = (-(-d // C0) * C0 for d in (m, n, k))
    tiles = (_tile(call.tiling, "tile_m", mp), _tile(call.tiling, "tile_n", np_), _tile(call.tiling, "tile_k", kp))

    # The fractal grids unpacked once into dense zero-padded matrices (what the L1 -> L0 fractal loads
    # do tile by tile), so tiles are views and the simulation costs about the GEMM itself.
    a_dense = nz_dense(a_grid).astype(acc, copy=False)  # [.., Mp, Kp]
    b_dense = nz_dense(b_grid).astype(acc, copy=False)  # [.., Kp, Np]

    def a_tile(rows: slice, ks: slice) -> np.ndarray:
        return a_dense[..., rows, ks]

    def b_tile(ks: slice, cols: slice) -> np.ndarray:
        return b_dense[..., ks, cols]

    def store(rows: slice, cols: slice, tile: np.ndarray) -> None:
        # Epilogue on the output tile (vector unit): alpha, beta * C, cast, back to fractals.
        if alpha != 1.0:
            tile = tile * np.asarray(alpha, dtype=acc)
        if bias is not None:
            tile = tile + bias[rows, cols]
        out[..., _fractal_slice(cols), _fractal_slice(rows), :, :] = nz_grid(tile.astype(out_dtype))

    _tiled_gemm(mp, np_, kp, tiles, a_tile, b_tile, store, acc)
    return out


# ---- Conv: NC1HWC0 x FRACTAL_Z -> NC1HWC0 ----


def run_conv(call: Call) -> np.ndarray:
    ks, strides, dil, begin = conv_geometry(call)
    n, o, oh, ow = call.out_shape
    x5, wz = call.inputs[0], call.inputs[1]
    acc = _acc_dtype(x5.dtype)
    # Windows over the spatial axes of (N, C1, C0, H, W); then one im2col row per output position,
    # ordered (C1, KH, KW, C0) like the rows of FRACTAL_Z, so a K tile is a run of 16-lane blocks.
    win = windows(np.moveaxis(x5, 4, 2), begin, [oh, ow], strides, dil, ks, 0)  # (N, C1, C0, OH, OW, KH, KW)
    rows_view = win.transpose(0, 3, 4, 1, 5, 6, 2)  # (N, OH, OW, C1, KH, KW, C0)
    w_grid = transposed_fractals(wz)  # [O1, C1*KH*KW, k0, n0]: the B operand's fractal grid
    positions, k_blocks = oh * ow, wz.shape[0]
    bias = call.inputs[2] if len(call.inputs) > 2 else None
    bias_row = None if bias is None else channel_vector(wide(bias), o, acc).reshape(-1)
    out = np.zeros((n, wz.shape[1], positions, C0), dtype=x5.dtype)  # (N, O1, OH*OW, C0)
    tiles = (_tile(call.tiling, "tile_hw", positions), _tile(call.tiling, "tile_n", o),
             _tile(call.tiling, "tile_k", k_blocks * C0))

    def a_tile(rows: slice, ks_: slice) -> np.ndarray:
        # Gather exactly this tile of the im2col matrix: positions x (16-lane blocks of K).
        pos = np.arange(rows.start, rows.stop)
        blocks = np.arange(ks_.start // C0, ks_.stop // C0)
        c1, kh, kw = np.unravel_index(blocks, (k_blocks // (ks[0] * ks[1]), ks[0], ks[1]))
        ph, pw = pos // ow, pos % ow
        tile = rows_view[:, ph[:, None], pw[:, None], c1[None, :], kh[None, :], kw[None, :], :]
        return tile.reshape(n, len(pos), len(blocks) * C0)

    w_dense = nz_dense(w_grid).astype(acc, copy=False)  # [K, O1*16], unpacked once as for MatMul's B

    def b_tile(ks_: slice, cols: slice) -> np.ndarray:
        return w_dense[ks_, cols]

    def store(rows: slice, cols: slice, tile: np.ndarray) -> None:
        if bias_row is not None:
            tile = tile + bias_row[cols]
        width = (cols.stop - cols.start) // C0
        block = tile.astype(x5.dtype).reshape(n, rows.stop - rows.start, width, C0).transpose(0, 2, 1, 3)
        out[:, _fractal_slice(cols), rows, :] = block

    _tiled_gemm(positions, wz.shape[1] * C0, k_blocks * C0, tiles, a_tile, b_tile, store, acc)
    return out.reshape(n, wz.shape[1], oh, ow, C0)
