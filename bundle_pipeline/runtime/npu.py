"""npu kernel library: kernels that compute on Ascend-style formatted data, tile by tile.

Contract (``run_npu_kernel``): inputs are physical arrays in ``in_formats`` (see ``runtime.formats``)
holding logical tensors of ``in_shapes``; the result is the physical array in ``out_format`` for the
logical ``out_shape``. Numbers equal the cpu kernel (``runtime.kernels.run_kernel``) on the standard
layouts up to float summation order.

- **Padding invariant**: padding lanes are zero after every kernel. Inputs are assumed to satisfy it
  (kernels compute on whole fractals, and zero lanes contribute nothing to sums and products), and
  every result is re-zeroed before it is returned, because some ops map 0 to non-zero (Sigmoid(0) =
  0.5, Exp, Div 0/0) or see padding through reductions over padded rows (Softmax).
- **Cube ops** (MatMul, Gemm, Conv) are a blocked GEMM over (tile_m | tile_hw, tile_n, tile_k) from
  ``tiling`` (elements, multiples of 16; absent = whole axis): for each output tile, products of
  (tile_m x tile_k) A-tiles and (tile_k x tile_n) B-tiles accumulate in an L0C-like buffer in
  float32 (fp16 inputs accumulate in fp32, as the cube unit does; float64 stays float64, integers
  accumulate in int64 and wrap to the output type), then the epilogue (alpha, bias, cast) runs on
  the output tile, as the vector unit does from UB. Any valid tiling gives the same numbers up to
  summation order (exactly the same for data whose sums are exact).
- **Reductions over a padded axis** ignore the padding: ReduceMean divides by the real C, ReduceMax
  masks padding lanes with the lowest value, Softmax masks padded N lanes with -inf.
- **What each native op takes**: MatMul A, B in FRACTAL_NZ (rank >= 2, batch axes broadcast; a 1-D
  operand stays ND and runs on the cpu kernel). Gemm A, B in FRACTAL_NZ with alpha/beta/transA/transB
  (a transposed operand is the same fractals read transposed, no copy); C either ND of any shape that
  broadcasts to [M, N] (scalar, [N], [1, N], [M, 1], [M, N]) or FRACTAL_NZ of shape [M, N]. Conv X in
  NC1HWC0, W in FRACTAL_Z, optional B in ND [O]; 2-D, group 1, any strides/pads/dilations/auto_pad.
  MaxPool (output Y only), AveragePool, GlobalAveragePool/GlobalMaxPool and BatchNormalization
  (inference; scale/B/mean/var in ND [C]) on 4-D NC1HWC0. ReduceSum/ReduceMean/ReduceMax of a 4-D
  NC1HWC0 tensor over any axes (C included), result in NC1HWC0/NCHW (keepdims) or ND. Softmax and
  LogSoftmax over the last axis of FRACTAL_NZ. Elementwise ops (``ELEMENTWISE_OPS``) on operands in
  one format: NC1HWC0 operands may broadcast over N, H, W (not C), FRACTAL_NZ operands over batch
  axes, FRACTAL_Z operands not at all; one-element ND operands broadcast as scalars.
- **Fallback**: ``NPU_FORMAT_OPS`` lists the ops with a native implementation and the formats each
  input position accepts; ``supports(...)`` says whether one call is native (e.g. Conv needs
  group == 1 and 2-D, BatchNormalization inference mode, Reduce* axes known). Everything else the
  caller converts to the standard layout (``formats.transdata``) and runs with the cpu kernels.
  ``run_npu_kernel`` raises ``KernelError`` for a call it does not support.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..formats import (
    C0,
    FORMATS,
    STANDARD,
    FormatError,
    accepts,
    c_contiguous,
    from_format,
    storage_shape,
    to_format,
    zero_padding,
)
from ..kernels import run_kernel
from ..kernels._registry import KernelError, norm_axes, norm_axis, wide
from ..kernels._windows import window_geometry, windows
from ..kernels.tensor import axes_from

__all__ = ["ELEMENTWISE_OPS", "NPU_FORMAT_OPS", "Call", "KernelError", "NativeOp", "run_npu_kernel", "supports"]


@dataclass(frozen=True)
class Call:
    """One kernel invocation: the physical inputs and everything the format/tiling pass decided."""

    op_type: str
    inputs: list[np.ndarray | None]
    attrs: dict
    opset: int
    in_formats: list[str | None]
    out_format: str
    in_shapes: list[tuple[int, ...] | None]
    out_shape: tuple[int, ...]
    tiling: dict | None


@dataclass(frozen=True)
class NativeOp:
    """A native formatted kernel: accepted formats per input position (the last entry repeats for
    further inputs), formats it can produce, a validity check on the signature, and the kernel."""

    inputs: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    check: Callable[[Call], None]  # raises KernelError when this call has no native implementation
    run: Callable[[Call], np.ndarray]
    same_format: bool = False  # elementwise: the formatted operands and the output share one format

    def input_formats(self, i: int) -> tuple[str, ...]:
        return self.inputs[min(i, len(self.inputs) - 1)]


# ---- helpers ----


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulator of the cube unit for an input dtype: fp16/fp32 -> fp32; f64 stays; ints -> int64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.dtype(np.float64) if dtype.itemsize > 4 else np.dtype(np.float32)
    return np.dtype(np.int64)


def _family(fmt: str | None) -> str | None:
    """ND and NCHW are the same bytes: compare formats by family."""
    return "ND" if fmt in STANDARD else fmt


def _lowest(dtype: np.dtype) -> float | int:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _tile(tiling: dict | None, key: str, whole: int) -> int:
    """Tile size in elements from the tiling data: a positive multiple of 16, or the whole axis."""
    value = int((tiling or {}).get(key, 0) or 0)
    if value == 0:
        return max(C0, -(-whole // C0) * C0)
    if value < 0 or value % C0:
        raise KernelError(f"tiling {key}={value} must be a positive multiple of {C0}")
    return value


def _channel_vector(v: np.ndarray, c: int, dtype: np.dtype) -> np.ndarray:
    """Per-channel ND [C] parameter as (1, C1, 1, 1, C0), zero on padding lanes."""
    v = np.asarray(v).reshape(-1)
    if v.size != c:
        raise KernelError(f"per-channel parameter of {v.size} values for {c} channels")
    padded = np.zeros(-(-c // C0) * C0, dtype=dtype)
    padded[:c] = v
    return padded.reshape(1, padded.size // C0, 1, 1, C0)


# ---- fractal <-> dense tiles ----


def _swap_fractals(x: np.ndarray) -> np.ndarray:
    """The fractal grid of the transposed matrix, as a view: [.., a1, b1, a0, b0] -> [.., b1, a1, b0, a0]."""
    return x.swapaxes(-4, -3).swapaxes(-2, -1)


def _dense(grid: np.ndarray) -> np.ndarray:
    """A FRACTAL_NZ grid [..., C1, R1, 16, 16] as the dense (padded) matrix [..., R1*16, C1*16]."""
    *batch, c1, r1, _, _ = grid.shape
    b = len(batch)
    return grid.transpose(*range(b), b + 1, b + 2, b, b + 3).reshape(*batch, r1 * C0, c1 * C0)


def _grid(dense: np.ndarray) -> np.ndarray:
    """A dense matrix [..., R, C] (multiples of 16) as its FRACTAL_NZ grid [..., C1, R1, 16, 16]."""
    *batch, r, c = dense.shape
    b = len(batch)
    tiles = dense.reshape(*batch, r // C0, C0, c // C0, C0)
    return tiles.transpose(*range(b), b + 2, b, b + 1, b + 3)


TileFn = Callable[[slice, slice], np.ndarray]


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


def _matmul_dims(call: Call) -> tuple[int, int, int, bool, bool]:
    """(M, N, K, transA, transB) of a MatMul/Gemm call, validating the logical shapes."""
    a, b = call.in_shapes[0], call.in_shapes[1]
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        raise KernelError(f"{call.op_type}: FRACTAL_NZ needs matrices (rank >= 2), got {a} and {b}")
    gemm = call.op_type == "Gemm"
    ta, tb = gemm and bool(call.attrs.get("transA", 0)), gemm and bool(call.attrs.get("transB", 0))
    if gemm and (len(a) != 2 or len(b) != 2):
        raise KernelError(f"Gemm: A and B must be 2-D, got {a} and {b}")
    m, k = (a[-1], a[-2]) if ta else (a[-2], a[-1])
    kb, n = (b[-1], b[-2]) if tb else (b[-2], b[-1])
    if k != kb:
        raise KernelError(f"{call.op_type}: inner dimensions differ: {a} and {b}")
    try:
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    except ValueError:
        raise KernelError(f"{call.op_type}: batch dims of {a} and {b} do not broadcast") from None
    if tuple(call.out_shape) != (*batch, m, n):
        raise KernelError(f"{call.op_type}: output shape {call.out_shape} is not {(*batch, m, n)}")
    return m, n, k, ta, tb


def _check_matmul(call: Call) -> None:
    m, n, _k, _ta, _tb = _matmul_dims(call)
    c = call.in_shapes[2] if len(call.in_shapes) > 2 else None
    if call.op_type != "Gemm" or c is None:
        return
    if _family(call.in_formats[2]) == "FRACTAL_NZ" and tuple(c) != (m, n):
        raise KernelError(f"Gemm: C in FRACTAL_NZ must have the output shape {(m, n)}, got {c}")
    try:
        ok = np.broadcast_shapes(tuple(c), (m, n)) == (m, n)
    except ValueError:
        ok = False
    if not ok:
        raise KernelError(f"Gemm: C shape {c} does not broadcast to {(m, n)}")


def _gemm_bias(call: Call, m: int, n: int, acc: np.dtype) -> np.ndarray | None:
    """beta * C as a dense zero-padded (M1*16, N1*16) matrix; None when there is nothing to add."""
    c = call.inputs[2] if len(call.inputs) > 2 else None
    beta = float(call.attrs.get("beta", 1.0))
    if call.op_type != "Gemm" or c is None or beta == 0.0:
        return None
    if _family(call.in_formats[2]) == "FRACTAL_NZ":
        dense = _dense(np.asarray(c)).astype(acc)
    else:
        dense = np.zeros((-(-m // C0) * C0, -(-n // C0) * C0), dtype=acc)
        dense[:m, :n] = np.broadcast_to(wide(np.asarray(c)).astype(acc), (m, n))
    return dense * np.asarray(beta, dtype=acc) if beta != 1.0 else dense


def _run_matmul(call: Call) -> np.ndarray:
    m, n, k, ta, tb = _matmul_dims(call)
    a_grid = _swap_fractals(call.inputs[0]) if ta else call.inputs[0]  # [.., K1, M1, m0, k0]
    b_grid = _swap_fractals(call.inputs[1]) if tb else call.inputs[1]  # [.., N1, K1, k0, n0]
    out_dtype = call.inputs[0].dtype
    acc = _acc_dtype(out_dtype)
    alpha = float(call.attrs.get("alpha", 1.0)) if call.op_type == "Gemm" else 1.0
    bias = _gemm_bias(call, m, n, acc)
    out = np.zeros(storage_shape("FRACTAL_NZ", call.out_shape), dtype=out_dtype)
    mp, np_, kp = (-(-d // C0) * C0 for d in (m, n, k))
    tiles = (_tile(call.tiling, "tile_m", mp), _tile(call.tiling, "tile_n", np_), _tile(call.tiling, "tile_k", kp))

    # The fractal grids unpacked once into dense zero-padded matrices (what the L1 -> L0 fractal loads
    # do tile by tile), so tiles are views and the simulation costs about the GEMM itself.
    a_dense = _dense(a_grid).astype(acc, copy=False)  # [.., Mp, Kp]
    b_dense = _dense(b_grid).astype(acc, copy=False)  # [.., Kp, Np]

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
        out[..., _fractal_slice(cols), _fractal_slice(rows), :, :] = _grid(tile.astype(out_dtype))

    _tiled_gemm(mp, np_, kp, tiles, a_tile, b_tile, store, acc)
    return out


# ---- Conv: NC1HWC0 x FRACTAL_Z -> NC1HWC0 ----


def _conv_geometry(call: Call) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel_shape, strides, dilations, pads_begin) of a native Conv, validating the signature."""
    x, w = call.in_shapes[0], call.in_shapes[1]
    if x is None or w is None or len(x) != 4 or len(w) != 4:
        raise KernelError(f"Conv: native NC1HWC0 conv is 2-D only, got X {x} and W {w}")
    if int(call.attrs.get("group", 1)) != 1:
        raise KernelError("Conv: native NC1HWC0 conv needs group == 1 (grouped/depthwise run on the cpu kernel)")
    if w[1] != x[1]:
        raise KernelError(f"Conv: W {w} does not match the {x[1]} input channels of X {x}")
    ks = list(w[2:])
    if "kernel_shape" in call.attrs and [int(v) for v in call.attrs["kernel_shape"]] != ks:
        raise KernelError(f"Conv: attribute kernel_shape does not match W {w}")
    strides, dil, begin, _end, out = window_geometry(list(x[2:]), ks, call.attrs)
    if tuple(call.out_shape) != (x[0], w[0], *out):
        raise KernelError(f"Conv: output shape {call.out_shape} is not {(x[0], w[0], *out)}")
    bias = call.in_shapes[2] if len(call.in_shapes) > 2 else None
    if bias is not None and tuple(bias) != (w[0],):
        raise KernelError(f"Conv: bias shape {bias} is not ({w[0]},)")
    return ks, strides, dil, begin


def _check_conv(call: Call) -> None:
    _conv_geometry(call)


def _run_conv(call: Call) -> np.ndarray:
    ks, strides, dil, begin = _conv_geometry(call)
    n, o, oh, ow = call.out_shape
    x5, wz = call.inputs[0], call.inputs[1]
    acc = _acc_dtype(x5.dtype)
    # Windows over the spatial axes of (N, C1, C0, H, W); then one im2col row per output position,
    # ordered (C1, KH, KW, C0) like the rows of FRACTAL_Z, so a K tile is a run of 16-lane blocks.
    win = windows(np.moveaxis(x5, 4, 2), begin, [oh, ow], strides, dil, ks, 0)  # (N, C1, C0, OH, OW, KH, KW)
    rows_view = win.transpose(0, 3, 4, 1, 5, 6, 2)  # (N, OH, OW, C1, KH, KW, C0)
    w_grid = _swap_fractals(wz)  # [O1, C1*KH*KW, k0, n0]: the B operand's fractal grid
    positions, k_blocks = oh * ow, wz.shape[0]
    bias = call.inputs[2] if len(call.inputs) > 2 else None
    bias_row = None if bias is None else _channel_vector(wide(bias), o, acc).reshape(-1)
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

    w_dense = _dense(w_grid).astype(acc, copy=False)  # [K, O1*16], unpacked once as for MatMul's B

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


# ---- pooling and BatchNormalization in NC1HWC0 ----


def _pool_geometry(call: Call) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
    """(kernel_shape, strides, dilations, begin, end, out) of a 2-D pool, validating the signature."""
    x = call.in_shapes[0]
    if x is None or len(x) != 4:
        raise KernelError(f"{call.op_type}: native NC1HWC0 pooling is 2-D only, got {x}")
    if "kernel_shape" not in call.attrs:
        raise KernelError(f"{call.op_type}: attribute kernel_shape is required")
    ks = [int(v) for v in call.attrs["kernel_shape"]]
    if len(ks) != 2:
        raise KernelError(f"{call.op_type}: kernel_shape {ks} is not 2-D")
    dilated = any(int(d) != 1 for d in call.attrs.get("dilations", [1, 1]))
    if call.op_type == "AveragePool" and call.opset < 19 and dilated:
        raise KernelError("attribute dilations of AveragePool needs opset >= 19")
    strides, dil, begin, end, out = window_geometry(list(x[2:]), ks, call.attrs, bool(call.attrs.get("ceil_mode", 0)))
    if tuple(call.out_shape) != (x[0], x[1], *out):
        raise KernelError(f"{call.op_type}: output shape {call.out_shape} is not {(x[0], x[1], *out)}")
    return ks, strides, dil, begin, end, out


def _check_pool(call: Call) -> None:
    _pool_geometry(call)


def _window_counts(in_len: int, out_len: int, stride: int, dil: int, k: int, begin: int, end: int,
                   include_pad: bool) -> np.ndarray:
    """Per-output count of window taps inside the input (or inside input + pads when include_pad)."""
    pos = np.arange(out_len)[:, None] * stride + np.arange(k)[None, :] * dil - begin
    lo, hi = (-begin, in_len + end) if include_pad else (0, in_len)
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def _run_pool(call: Call) -> np.ndarray:
    ks, strides, dil, begin, end, out = _pool_geometry(call)
    x5 = call.inputs[0]
    spatial = np.moveaxis(x5, 4, 2)  # (N, C1, C0, H, W): windows slide over the last two axes
    if call.op_type == "MaxPool":
        win = windows(spatial, begin, out, strides, dil, ks, _lowest(x5.dtype))
        y = win.max(axis=(-2, -1))
    else:
        win = windows(wide(spatial), begin, out, strides, dil, ks, 0.0)
        include = bool(call.attrs.get("count_include_pad", 0))
        h, w = call.in_shapes[0][2:]
        ch = _window_counts(h, out[0], strides[0], dil[0], ks[0], begin[0], end[0], include)
        cw = _window_counts(w, out[1], strides[1], dil[1], ks[1], begin[1], end[1], include)
        count = np.maximum(np.multiply.outer(ch, cw), 1)
        y = win.sum(axis=(-2, -1)) / count.astype(win.dtype)
    return c_contiguous(np.moveaxis(y, 2, 4)).astype(x5.dtype, copy=False)


def _check_global(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) != 4 or tuple(call.out_shape) != (x[0], x[1], 1, 1):
        raise KernelError(f"{call.op_type}: needs a 4-D input and output (N, C, 1, 1), got {x} -> {call.out_shape}")


def _run_global(call: Call) -> np.ndarray:
    x5 = call.inputs[0]
    if call.op_type == "GlobalMaxPool":
        y = x5.max(axis=(2, 3), keepdims=True)
    else:
        y = wide(x5).mean(axis=(2, 3), keepdims=True)
    return y.astype(x5.dtype, copy=False)


def _check_batch_norm(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) != 4 or tuple(call.out_shape) != tuple(x):
        raise KernelError(f"BatchNormalization: native NC1HWC0 needs a 4-D input, got {x}")
    if call.opset >= 14 and int(call.attrs.get("training_mode", 0)):
        raise KernelError("BatchNormalization: training mode runs on the cpu kernel")
    params = call.in_shapes[1:5]
    if len(params) != 4 or any(p is None or math.prod(p) != x[1] for p in params):
        raise KernelError(f"BatchNormalization: scale, B, mean, var must have {x[1]} values, got {params}")


def _run_batch_norm(call: Call) -> np.ndarray:
    x5 = call.inputs[0]
    c = call.in_shapes[0][1]
    ct = np.dtype(np.float32) if x5.dtype == np.float16 else x5.dtype
    scale, bias, mean, var = (_channel_vector(wide(v), c, ct) for v in call.inputs[1:5])
    # Padding lanes: scale 0 -> inv 0, so (0 - 0) * 0 + 0 keeps them zero (and they are re-zeroed anyway).
    inv = scale / np.sqrt(var + np.asarray(float(call.attrs.get("epsilon", 1e-5)), ct))
    with np.errstate(all="ignore"):
        y = (x5.astype(ct, copy=False) - mean) * inv + bias
    return y.astype(x5.dtype, copy=False)


# ---- reductions over NC1HWC0, Softmax over the last axis of FRACTAL_NZ ----

_REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}
_PHYSICAL_AXES = {0: (0,), 1: (1, 4), 2: (2,), 3: (3,)}  # logical NCHW axis -> NC1HWC0 axes


def _pad_lanes(shape: tuple[int, ...]) -> np.ndarray:
    """NC1HWC0 padding mask of a logical NCHW shape, broadcastable: (1, C1, 1, 1, C0)."""
    c = shape[1]
    lanes = np.arange(-(-c // C0) * C0) >= c
    return lanes.reshape(1, lanes.size // C0, 1, 1, C0)


def _reduce_axes(call: Call) -> list[int] | None:
    """Normalised logical axes (None = identity by noop_with_empty_axes)."""
    since = _REDUCE_AXES_INPUT_SINCE[call.op_type]
    axes_given = call.opset >= since and len(call.in_shapes) > 1 and call.in_shapes[1] is not None
    if axes_given and (len(call.inputs) < 2 or call.inputs[1] is None):
        raise KernelError(f"{call.op_type}: axes input value is not known")
    axes = axes_from(call.inputs, call.attrs, call.opset, since)
    if axes is None:
        if call.opset >= since and int(call.attrs.get("noop_with_empty_axes", 0)):
            return None
        return [0, 1, 2, 3]
    return sorted(norm_axes(axes, 4))


def _reduced_shape(shape: tuple[int, ...], axes: list[int] | None, keepdims: bool) -> tuple[int, ...]:
    if axes is None:
        return tuple(shape)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _check_reduce(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) != 4:
        raise KernelError(f"{call.op_type}: native NC1HWC0 reduction needs a 4-D input, got {x}")
    axes = _reduce_axes(call)
    expected = _reduced_shape(tuple(x), axes, bool(call.attrs.get("keepdims", 1)))
    if tuple(call.out_shape) != expected:
        raise KernelError(f"{call.op_type}: output shape {call.out_shape} is not {expected}")


def _run_reduce(call: Call) -> np.ndarray:
    x5, shape = call.inputs[0], tuple(call.in_shapes[0])
    axes = _reduce_axes(call)
    if axes is None:
        return to_format(from_format(x5, "NC1HWC0", shape), call.out_format)
    phys = tuple(a for ax in axes for a in _PHYSICAL_AXES[ax])
    count = math.prod(shape[a] for a in axes)  # real elements per output: padding lanes excluded
    with np.errstate(all="ignore"):
        if call.op_type == "ReduceMax":
            # Padding lanes are zero; hide them behind the lowest value when C is reduced.
            src = np.where(_pad_lanes(shape), _lowest(x5.dtype), x5) if 1 in axes else x5
            r = src.max(axis=phys, keepdims=True, initial=_lowest(x5.dtype))
        elif call.op_type == "ReduceSum":
            r = (x5 if x5.dtype.kind in "iub" else wide(x5)).sum(axis=phys, keepdims=True)
        else:
            total_dtype = np.float64 if x5.dtype.kind in "iub" else wide(x5).dtype
            r = x5.sum(axis=phys, keepdims=True, dtype=total_dtype) / np.asarray(max(count, 1), total_dtype)
    r = r.astype(x5.dtype, copy=False)
    keep_shape = _reduced_shape(shape, axes, True)
    if 1 not in axes and call.out_format == "NC1HWC0" and tuple(call.out_shape) == keep_shape:
        return c_contiguous(r)  # C kept: the physical keepdims result is already NC1HWC0
    std = r.reshape(keep_shape) if 1 in axes else from_format(r, "NC1HWC0", keep_shape)
    return to_format(std.reshape(call.out_shape), call.out_format)


def _softmax_axis_ok(call: Call) -> None:
    x = call.in_shapes[0]
    if x is None or len(x) < 2 or tuple(call.out_shape) != tuple(x):
        raise KernelError(f"{call.op_type}: FRACTAL_NZ softmax needs a matrix, got {x}")
    axis = norm_axis(int(call.attrs.get("axis", -1 if call.opset >= 13 else 1)), len(x))
    # Before opset 13 the input is flattened to 2-D at axis: the same as the last axis only when axis is last.
    if axis != len(x) - 1:
        raise KernelError(f"{call.op_type}: native FRACTAL_NZ softmax is over the last axis only, got axis {axis}")


def _run_softmax(call: Call) -> np.ndarray:
    x = call.inputs[0]
    if x.dtype.kind != "f":
        raise KernelError(f"{call.op_type}: float input expected, got {x.dtype}")
    n = call.in_shapes[0][-1]
    # N lanes n1*16 + n0 >= N are padding: -inf takes them out of the max and (exp -> 0) out of the sum.
    n_pad = (np.arange(x.shape[-4])[:, None] * C0 + np.arange(C0)[None, :]) >= n  # (N1, n0)
    mask = n_pad[:, None, None, :]  # broadcast over [..., N1, M1, m0, n0]
    axes = (-4, -1)
    with np.errstate(all="ignore"):
        xf = np.where(mask, -np.inf, wide(x))
        shifted = xf - xf.max(axis=axes, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=axes, keepdims=True)
        y = shifted - np.log(s) if call.op_type == "LogSoftmax" else e / s
    return y.astype(x.dtype, copy=False)


# ---- elementwise ops on matching formats ----

ELEMENTWISE_OPS = (
    "Abs", "Neg", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Gelu", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus", "Softsign", "Mish", "Floor", "Ceil", "Sign", "Sin",
    "Cos", "Clip", "Cast", "Identity",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
)


def _is_scalar(fmt: str | None, shape: tuple[int, ...] | None, out_shape: tuple[int, ...]) -> bool:
    """A one-element standard-layout operand (Clip bounds, x * 2): it broadcasts over any physical layout."""
    if shape is None or _family(fmt) != "ND" or math.prod(shape) != 1:
        return False
    return len(shape) <= len(out_shape)


def _broadcasts_physically(fmt: str, shape: tuple[int, ...], out: tuple[int, ...]) -> bool:
    """Whether numpy broadcasting of the physical arrays equals the logical broadcast in ``fmt``."""
    try:
        if np.broadcast_shapes(tuple(shape), tuple(out)) != tuple(out):
            return False
    except ValueError:
        return False
    if fmt == "ND":
        return True
    if len(shape) != len(out):
        return False
    if fmt == "NC1HWC0":
        return shape[1] == out[1]  # the C axis is split into C1 x C0: it cannot broadcast
    if fmt == "FRACTAL_NZ":
        return tuple(shape[-2:]) == tuple(out[-2:])  # M and N are split; batch axes broadcast
    return tuple(shape) == tuple(out)


def _check_elementwise(call: Call) -> None:
    fmt = _family(call.out_format)
    for i, (f, s) in enumerate(zip(call.in_formats, call.in_shapes, strict=False)):
        if s is None or _is_scalar(f, s, call.out_shape):
            continue
        if _family(f) != fmt:
            raise KernelError(f"{call.op_type}: input {i} in {f} does not match the output format {call.out_format}")
        if not _broadcasts_physically(fmt, tuple(s), tuple(call.out_shape)):
            raise KernelError(f"{call.op_type}: input {i} of shape {s} does not broadcast in {fmt} to {call.out_shape}")


def _run_elementwise(call: Call) -> np.ndarray:
    arrays = []
    for x, f, s in zip(call.inputs, call.in_formats, call.in_shapes, strict=False):
        if x is not None and _is_scalar(f, s, call.out_shape) and _family(call.out_format) != "ND":
            x = np.asarray(x).reshape(())  # broadcast as a scalar over the physical layout
        arrays.append(x)
    # The cpu kernel is layout-agnostic here: every lane is computed, padding is re-zeroed by the caller.
    y = run_kernel(call.op_type, arrays, call.attrs, call.opset)[0]
    expected = storage_shape(call.out_format, call.out_shape)
    if y.shape != expected:
        raise KernelError(f"{call.op_type}: physical result {y.shape} is not {expected}")
    return y


# ---- the table and the entry points ----

_NZ, _5HD, _FZ = ("FRACTAL_NZ",), ("NC1HWC0",), ("FRACTAL_Z",)
_POOL = NativeOp((_5HD,), _5HD, _check_pool, _run_pool)
_GLOBAL = NativeOp((_5HD,), _5HD, _check_global, _run_global)
_REDUCE = NativeOp((_5HD, ("ND",)), ("NC1HWC0", "NCHW", "ND"), _check_reduce, _run_reduce)
_SOFTMAX = NativeOp((_NZ,), _NZ, _softmax_axis_ok, _run_softmax)
_ELEMENTWISE = NativeOp((FORMATS,), FORMATS, _check_elementwise, _run_elementwise, same_format=True)

NPU_FORMAT_OPS: dict[str, NativeOp] = {
    "MatMul": NativeOp((_NZ,), _NZ, _check_matmul, _run_matmul),
    "Gemm": NativeOp((_NZ, _NZ, ("ND", "FRACTAL_NZ")), _NZ, _check_matmul, _run_matmul),
    "Conv": NativeOp((_5HD, _FZ, ("ND",)), _5HD, _check_conv, _run_conv),
    "MaxPool": _POOL,  # output Y only: a caller that needs Indices runs the cpu kernel
    "AveragePool": _POOL,
    "GlobalAveragePool": _GLOBAL,
    "GlobalMaxPool": _GLOBAL,
    "BatchNormalization": NativeOp((_5HD, ("ND",)), _5HD, _check_batch_norm, _run_batch_norm),
    "ReduceSum": _REDUCE,
    "ReduceMean": _REDUCE,
    "ReduceMax": _REDUCE,
    "Softmax": _SOFTMAX,
    "LogSoftmax": _SOFTMAX,
    **dict.fromkeys(ELEMENTWISE_OPS, _ELEMENTWISE),
}


def _check_call(call: Call) -> NativeOp:
    """The native op for this call, after checking formats, shapes and the op's own conditions."""
    op = NPU_FORMAT_OPS.get(call.op_type)
    if op is None:
        raise KernelError(f"no native npu kernel for {call.op_type}")
    if len(call.in_formats) != len(call.in_shapes):
        raise KernelError(f"{call.op_type}: {len(call.in_formats)} formats for {len(call.in_shapes)} inputs")
    for i, (fmt, shape) in enumerate(zip(call.in_formats, call.in_shapes, strict=True)):
        if shape is None:
            continue
        if fmt not in op.input_formats(i) or not accepts(fmt, tuple(shape)):
            raise KernelError(f"{call.op_type}: input {i} of shape {tuple(shape)} in {fmt} is not accepted natively")
    if call.out_format not in op.outputs or not accepts(call.out_format, tuple(call.out_shape)):
        raise KernelError(f"{call.op_type}: cannot produce {call.out_format} for shape {tuple(call.out_shape)}")
    op.check(call)
    return op


def supports(op_type: str, attrs: dict, opset: int, in_formats: list[str | None], in_shapes: list[tuple | None],
             out_format: str, out_shape: tuple, inputs: list[np.ndarray | None] | None = None) -> bool:
    """Whether ``run_npu_kernel`` runs this call natively. ``inputs`` may carry the values of small
    constant inputs a decision depends on (Reduce* axes from opset 13/18); unknown values count as
    not native, so the caller falls back to the cpu kernel on the standard layout."""
    values = list(inputs) if inputs is not None else [None] * len(in_shapes)
    call = Call(op_type, values, dict(attrs), int(opset), list(in_formats), out_format,
                [None if s is None else tuple(s) for s in in_shapes], tuple(out_shape), None)
    try:
        _check_call(call)
    except (KernelError, FormatError):
        return False
    return True


def run_npu_kernel(op_type: str, inputs: list[np.ndarray | None], attrs: dict, opset: int,
                   in_formats: list[str | None], out_format: str, in_shapes: list[tuple | None],
                   out_shape: tuple, tiling: dict | None) -> np.ndarray:
    """Run one op natively on formatted data; return the physical result in ``out_format``.

    inputs: physical arrays (None for omitted optional inputs), each in ``in_formats[i]`` holding the
        logical ``in_shapes[i]``; in_formats/in_shapes have one entry per input position.
    tiling: ``{"tile_m", "tile_n", "tile_k"}`` for MatMul/Gemm, ``{"tile_hw", "tile_n", "tile_k"}`` for
        Conv (elements, multiples of 16; absent keys mean the whole axis); other keys are ignored.
    Raises KernelError when the call has no native implementation (see ``supports``) or is invalid.
    """
    count = max(len(inputs), len(in_formats), len(in_shapes))  # trailing omitted inputs may be left out
    arrays = [None if x is None else np.asarray(x) for x in inputs] + [None] * (count - len(inputs))
    shapes = [None if s is None else tuple(int(d) for d in s) for s in in_shapes] + [None] * (count - len(in_shapes))
    formats = list(in_formats) + [None] * (count - len(in_formats))
    call = Call(op_type, arrays, dict(attrs), int(opset), formats, out_format, shapes,
                tuple(int(d) for d in out_shape), tiling)
    op = _check_call(call)
    for i, (x, fmt, shape) in enumerate(zip(arrays, formats, shapes, strict=True)):
        if x is not None and (shape is None or x.shape != storage_shape(fmt, shape)):
            raise KernelError(f"{op_type}: input {i} has physical shape {x.shape}, not that of {shape} in {fmt}")
    y = op.run(call)
    # The invariant every consumer relies on: padding lanes are zero after every kernel.
    return zero_padding(c_contiguous(y), out_format, call.out_shape)
