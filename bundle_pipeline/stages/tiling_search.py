"""tiling search for the npu target: tile shapes that fit the on-chip buffers, minimising a cost model.

A cube kernel (MatMul/Gemm, and Conv as an im2col GEMM) is a blocked GEMM of an (M x K) A matrix and
a (K x N) B matrix, looped over output tiles (tile_m x tile_n) and K steps (tile_k); all tile dims are
multiples of 16 (one fractal edge). For Conv, M is the output positions OH*OW of one image (tile_hw),
K = C1*16*KH*KW (input channels padded to 16, times the kernel window), N = O; images are the batch.

**Fit rules** (bytes; double buffering, so every staging buffer holds two tiles; acc = max(4, in_bytes)
because the cube accumulates fp16 in fp32):

- L0A: 2 * tile_m * tile_k * in_bytes <= l0a          (A tiles feeding the cube)
- L0B: 2 * tile_k * tile_n * in_bytes <= l0b          (B tiles)
- L0C: 2 * tile_m * tile_n * acc <= l0c               (accumulators of the output tile)
- UB:  2 * tile_m * tile_n * out_bytes <= ub          (epilogue: alpha/bias/activation/cast by the vector unit)
- L1:  2 * (tile_m + tile_n) * k_l1 * in_bytes <= l1  (the A panel tile_m x k_l1 and B panel k_l1 x tile_n
  staged from global memory; k_l1 is the deepest multiple of tile_k that fits, at most K rounded up to
  tile_k, and must be >= tile_k)

**Cost model** (cycles; padded extents Mp, Np, Kp = M, N, K rounded up to 16; mt, nt, kt = tiles per
axis = ceil(Mp / tile_m) ...; every term times the batch):

- cube = (Mp/16) * (Np/16) * (Kp/16): one 16x16x16 fractal MAC per cycle; partial fractals cost a full
  cycle (the padding waste). Tail tiles are computed at their real size, so this term is the same for
  every tiling; it keeps totals comparable across shapes.
- memory = bytes / 64 B per cycle, bytes = A re-read once per column of output tiles
  (Mp * Kp * in_bytes * nt) + B re-read once per row of tiles (Kp * Np * in_bytes * mt) + the output
  written once (Mp * Np * out_bytes). For Conv the im2col rows count as A (an upper bound of what
  Load3D reads from the feature map). Bigger tiles mean fewer re-reads.
- overhead = 32 cycles per cube step (mt * nt * kt: issuing L0 loads and filling the pipeline) + 200
  cycles per L1 panel load (mt * nt * ceil(Kp / k_l1): DMA setup latency). Smaller tiles cost more steps.

``search_*`` returns the tiling of minimum total cost among ``valid_tilings_*`` (ties: the smallest
tile_m, then tile_n, then tile_k), with its k_l1 and cost breakdown. Any valid tiling computes the same
numbers (``runtime/npu`` kernels loop over the tiles), up to float summation order over K.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

FRACTAL = 16
BYTES_PER_CYCLE = 64  # global memory -> L1 bandwidth
STEP_CYCLES = 32  # per (m, n, k) cube step: L0 loads issue + pipeline fill not hidden by double buffering
PANEL_CYCLES = 200  # per GM -> L1 panel load (A and B panels of one K panel): DMA setup latency


class TilingError(ValueError):
    """No tiling of a kernel fits the target's buffers."""


@dataclass(frozen=True)
class Buffers:
    """On-chip buffer sizes in bytes (the npu target's defaults)."""

    l1: int = 1 << 20
    l0a: int = 64 << 10
    l0b: int = 64 << 10
    l0c: int = 256 << 10
    ub: int = 256 << 10

    @classmethod
    def from_target(cls, buffers: dict) -> Buffers:
        """Read the l1/l0a/l0b/l0c/ub entries of a target's ``buffers`` (others, e.g. workspace_bytes, ignored)."""
        return cls(**{f.name: int(buffers[f.name]) for f in fields(cls) if f.name in buffers})


@dataclass(frozen=True)
class _Gemm:
    """A GEMM problem in the cost model's terms: padded extents, batch and element sizes."""

    m: int
    n: int
    k: int
    batch: int
    in_bytes: int
    out_bytes: int

    @property
    def acc_bytes(self) -> int:
        return max(4, self.in_bytes)


def _pad16(x: int) -> int:
    return max(1, -(-int(x) // FRACTAL)) * FRACTAL


def _gemm(m: int, n: int, k: int, batch: int, in_bytes: int, out_bytes: int) -> _Gemm:
    return _Gemm(_pad16(m), _pad16(n), _pad16(k), max(1, int(batch)), int(in_bytes), int(out_bytes))


def _candidates(extent: int, cap: int) -> np.ndarray:
    """Multiples of 16 up to the padded extent and a cap implied by the fit rules (pruning only)."""
    return np.arange(FRACTAL, min(extent, cap) + 1, FRACTAL, dtype=np.int64)


def _evaluate(g: _Gemm, b: Buffers, tm: np.ndarray, tn: np.ndarray, tk: np.ndarray) -> dict[str, np.ndarray]:
    """Fit mask, k_l1 and cost terms for arrays of candidate tilings (vectorised over candidates)."""
    fits = ((2 * tm * tk * g.in_bytes <= b.l0a) & (2 * tk * tn * g.in_bytes <= b.l0b)
            & (2 * tm * tn * g.acc_bytes <= b.l0c) & (2 * tm * tn * g.out_bytes <= b.ub))
    # The deepest K panel (a multiple of tile_k, no deeper than K needs) whose A and B panels fit L1.
    k_whole = -(-g.k // tk) * tk
    k_l1 = np.minimum(b.l1 // (2 * (tm + tn) * g.in_bytes) // tk * tk, k_whole)
    fits &= k_l1 >= tk
    mt, nt, kt = -(-g.m // tm), -(-g.n // tn), -(-g.k // tk)
    panels = mt * nt * -(-g.k // np.maximum(k_l1, 1))
    cube = np.full(tm.shape, (g.m // FRACTAL) * (g.n // FRACTAL) * (g.k // FRACTAL) * g.batch, dtype=np.int64)
    moved = g.batch * (g.m * g.k * g.in_bytes * nt + g.k * g.n * g.in_bytes * mt + g.m * g.n * g.out_bytes)
    memory = -(-moved // BYTES_PER_CYCLE)
    overhead = g.batch * (STEP_CYCLES * mt * nt * kt + PANEL_CYCLES * panels)
    return {"fits": fits, "k_l1": k_l1, "cube": cube, "memory": memory, "bytes": moved, "overhead": overhead,
            "total": cube + memory + overhead}


def _space(g: _Gemm, b: Buffers) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Every fitting (tile_m, tile_n, tile_k), in lexicographic order, with its evaluation."""
    row = 2 * FRACTAL * g.in_bytes  # bytes of two 16-wide strips: a tile dim can't exceed buffer / row
    cm = _candidates(g.m, min(b.l0a, b.l0c * g.in_bytes // g.acc_bytes) // row)
    cn = _candidates(g.n, b.l0b // row)
    ck = _candidates(g.k, min(b.l0a, b.l0b) // row)
    tm, tn, tk = (a.reshape(-1) for a in np.meshgrid(cm, cn, ck, indexing="ij"))
    ev = _evaluate(g, b, tm, tn, tk)
    keep = ev["fits"]
    return tm[keep], tn[keep], tk[keep], {name: v[keep] for name, v in ev.items()}


def _tiling(names: tuple[str, str, str], tm: int, tn: int, tk: int, ev: dict[str, np.ndarray], i: int) -> dict:
    cost = {name: int(ev[name][i]) for name in ("cube", "memory", "overhead", "total", "bytes")}
    return {names[0]: int(tm), names[1]: int(tn), names[2]: int(tk), "k_l1": int(ev["k_l1"][i]), "cost": cost}


def _all(g: _Gemm, b: Buffers, names: tuple[str, str, str]) -> list[dict]:
    tm, tn, tk, ev = _space(g, b)
    return [_tiling(names, tm[i], tn[i], tk[i], ev, i) for i in range(len(tm))]


def _best(g: _Gemm, b: Buffers, names: tuple[str, str, str]) -> dict:
    tm, tn, tk, ev = _space(g, b)
    if not len(tm):
        raise TilingError(f"no tiling of a {g.m}x{g.n}x{g.k} GEMM ({g.in_bytes}-byte inputs) fits buffers {b}")
    i = int(np.lexsort((tk, tn, tm, ev["total"]))[0])  # min cost, then the smallest tiles
    return _tiling(names, tm[i], tn[i], tk[i], ev, i)


def _fits(g: _Gemm, b: Buffers, tiles: tuple[int, int, int]) -> bool:
    if any(int(t) <= 0 or int(t) % FRACTAL for t in tiles):
        return False
    tm, tn, tk = (np.array([int(t)], dtype=np.int64) for t in tiles)
    if tm[0] > g.m or tn[0] > g.n or tk[0] > g.k:
        return False  # a tile beyond the padded extent is never a search candidate
    return bool(_evaluate(g, b, tm, tn, tk)["fits"][0])


# ---- MatMul / Gemm ----

_MATMUL_KEYS = ("tile_m", "tile_n", "tile_k")


def search_matmul(m: int, n: int, k: int, in_bytes: int, out_bytes: int, buffers: Buffers = Buffers()) -> dict:
    """The cheapest fitting tiling of an (m x k) @ (k x n) GEMM: {"tile_m", "tile_n", "tile_k", "k_l1", "cost"}."""
    return _best(_gemm(m, n, k, 1, in_bytes, out_bytes), buffers, _MATMUL_KEYS)


def valid_tilings_matmul(m: int, n: int, k: int, in_bytes: int, out_bytes: int,
                         buffers: Buffers = Buffers()) -> list[dict]:
    """Every fitting tiling of the GEMM with its cost, tile dims in lexicographic order."""
    return _all(_gemm(m, n, k, 1, in_bytes, out_bytes), buffers, _MATMUL_KEYS)


def fits_matmul(tiling: dict, m: int, n: int, k: int, in_bytes: int, out_bytes: int,
                buffers: Buffers = Buffers()) -> bool:
    """Whether a tiling is one of the valid tilings of this GEMM (multiples of 16, within extents, fits)."""
    tiles = tuple(int(tiling.get(key, 0)) for key in _MATMUL_KEYS)
    return _fits(_gemm(m, n, k, 1, in_bytes, out_bytes), buffers, tiles)


# ---- Conv (im2col GEMM per image) ----

_CONV_KEYS = ("tile_hw", "tile_n", "tile_k")


def _conv_gemm(n: int, c: int, o: int, kh: int, kw: int, oh: int, ow: int, in_bytes: int, out_bytes: int) -> _Gemm:
    # K runs over (C1, KH, KW) blocks of 16 lanes, as the rows of FRACTAL_Z do.
    return _gemm(oh * ow, o, _pad16(c) * kh * kw, n, in_bytes, out_bytes)


def search_conv(n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, oh: int, ow: int, in_bytes: int,
                out_bytes: int, buffers: Buffers = Buffers()) -> dict:
    """The cheapest fitting tiling of a group-1 2-D conv: {"tile_hw", "tile_n", "tile_k", "k_l1", "cost"}.

    h and w (the input size) do not enter the model, which counts the im2col rows of the output positions.
    """
    return _best(_conv_gemm(n, c, o, kh, kw, oh, ow, in_bytes, out_bytes), buffers, _CONV_KEYS)


def valid_tilings_conv(n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, oh: int, ow: int, in_bytes: int,
                       out_bytes: int, buffers: Buffers = Buffers()) -> list[dict]:
    """Every fitting tiling of the conv with its cost, tile dims in lexicographic order."""
    return _all(_conv_gemm(n, c, o, kh, kw, oh, ow, in_bytes, out_bytes), buffers, _CONV_KEYS)


def fits_conv(tiling: dict, n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, oh: int, ow: int,
              in_bytes: int, out_bytes: int, buffers: Buffers = Buffers()) -> bool:
    """Whether a tiling is one of the valid tilings of this conv."""
    tiles = tuple(int(tiling.get(key, 0)) for key in _CONV_KEYS)
    return _fits(_conv_gemm(n, c, o, kh, kw, oh, ow, in_bytes, out_bytes), buffers, tiles)
