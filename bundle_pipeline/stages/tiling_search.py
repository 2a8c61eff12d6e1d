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
tile_m, then tile_n, then tile_k), with its k_l1 and cost breakdown. ``search_many`` makes the same choice
for many kernels (``matmul_problem``/``conv_problem``) in one vectorised evaluation: a graph's small kernels
have a few dozen candidates each, where numpy's per-call overhead, not the arithmetic, is the cost.
Any valid tiling computes the same numbers (``runtime/npu`` kernels loop over the tiles), up to float
summation order over K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

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


class Problem(NamedTuple):
    """One kernel's search: a GEMM in the cost model's terms (padded extents, batch, element sizes) and the
    names of its tile dims (matmul: tile_m/n/k; conv: tile_hw/n/k). Hashable: equal problems, equal tilings."""

    names: tuple[str, str, str]
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


def _problem(names: tuple[str, str, str], m: int, n: int, k: int, batch: int, in_bytes: int,
             out_bytes: int) -> Problem:
    return Problem(names, _pad16(m), _pad16(n), _pad16(k), max(1, int(batch)), int(in_bytes), int(out_bytes))


def _caps(g: Problem, b: Buffers) -> tuple[int, int, int]:
    """Per axis, the largest tile the fit rules could admit, in bytes of two 16-wide strips (pruning only)."""
    row = 2 * FRACTAL * g.in_bytes  # bytes of two 16-wide strips: a tile dim can't exceed buffer / row
    return (min(g.m, min(b.l0a, b.l0c * g.in_bytes // g.acc_bytes) // row), min(g.n, b.l0b // row),
            min(g.k, min(b.l0a, b.l0b) // row))


def candidate_count(problem: Problem, buffers: Buffers = Buffers()) -> int:
    """How many (tile_m, tile_n, tile_k) the search evaluates: its cost grows with this."""
    cm, cn, ck = _caps(problem, buffers)
    return (max(cm, 0) // FRACTAL) * (max(cn, 0) // FRACTAL) * (max(ck, 0) // FRACTAL)


def _candidates(cap: int) -> np.ndarray:
    """Multiples of 16 up to a cap (the padded extent or what the fit rules allow, see ``_caps``)."""
    return np.arange(FRACTAL, cap + 1, FRACTAL, dtype=np.int64)


def _evaluate(g: Problem | _Columns, b: Buffers, tm: np.ndarray, tn: np.ndarray,
              tk: np.ndarray) -> dict[str, np.ndarray]:
    """Fit mask, k_l1 and cost terms for arrays of candidate tilings (vectorised over candidates). The
    problem's fields are numbers (one problem) or arrays aligned with the candidates (``search_many``)."""
    acc_bytes = np.maximum(4, g.in_bytes)
    fits = ((2 * tm * tk * g.in_bytes <= b.l0a) & (2 * tk * tn * g.in_bytes <= b.l0b)
            & (2 * tm * tn * acc_bytes <= b.l0c) & (2 * tm * tn * g.out_bytes <= b.ub))
    # The deepest K panel (a multiple of tile_k, no deeper than K needs) whose A and B panels fit L1.
    k_whole = -(-g.k // tk) * tk
    k_l1 = np.minimum(b.l1 // (2 * (tm + tn) * g.in_bytes) // tk * tk, k_whole)
    fits &= k_l1 >= tk
    mt, nt, kt = -(-g.m // tm), -(-g.n // tn), -(-g.k // tk)
    panels = mt * nt * -(-g.k // np.maximum(k_l1, 1))
    cube = np.zeros_like(tm) + (g.m // FRACTAL) * (g.n // FRACTAL) * (g.k // FRACTAL) * g.batch
    moved = g.batch * (g.m * g.k * g.in_bytes * nt + g.k * g.n * g.in_bytes * mt + g.m * g.n * g.out_bytes)
    memory = -(-moved // BYTES_PER_CYCLE)
    overhead = g.batch * (STEP_CYCLES * mt * nt * kt + PANEL_CYCLES * panels)
    return {"fits": fits, "k_l1": k_l1, "cube": cube, "memory": memory, "bytes": moved, "overhead": overhead,
            "total": cube + memory + overhead}


def _space(g: Problem, b: Buffers) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Every fitting (tile_m, tile_n, tile_k), in lexicographic order, with its evaluation."""
    cm, cn, ck = (_candidates(cap) for cap in _caps(g, b))
    tm, tn, tk = (a.reshape(-1) for a in np.meshgrid(cm, cn, ck, indexing="ij"))
    ev = _evaluate(g, b, tm, tn, tk)
    keep = ev["fits"]
    return tm[keep], tn[keep], tk[keep], {name: v[keep] for name, v in ev.items()}


_COST = ("cube", "memory", "overhead", "total", "bytes")


def _tiling(names: tuple[str, str, str], tm: int, tn: int, tk: int, ev: dict[str, np.ndarray], i: int) -> dict:
    cost = {name: int(ev[name][i]) for name in _COST}
    return {names[0]: int(tm), names[1]: int(tn), names[2]: int(tk), "k_l1": int(ev["k_l1"][i]), "cost": cost}


def _all(g: Problem, b: Buffers) -> list[dict]:
    tm, tn, tk, ev = _space(g, b)
    return [_tiling(g.names, tm[i], tn[i], tk[i], ev, i) for i in range(len(tm))]


def _no_tiling(g: Problem, b: Buffers) -> TilingError:
    return TilingError(f"no tiling of a {g.m}x{g.n}x{g.k} GEMM ({g.in_bytes}-byte inputs) fits buffers {b}")


def search(problem: Problem, buffers: Buffers = Buffers()) -> dict:
    """The cheapest fitting tiling of one problem (``search_matmul``/``search_conv`` by their problem)."""
    tm, tn, tk, ev = _space(problem, buffers)
    if not len(tm):
        raise _no_tiling(problem, buffers)
    i = int(np.lexsort((tk, tn, tm, ev["total"]))[0])  # min cost, then the smallest tiles
    return _tiling(problem.names, tm[i], tn[i], tk[i], ev, i)


class _Columns(NamedTuple):
    """Problem fields as arrays, one entry per candidate of ``search_many`` (what ``_evaluate`` reads)."""

    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    batch: np.ndarray
    in_bytes: np.ndarray
    out_bytes: np.ndarray


def search_many(problems: Sequence[Problem], buffers: Buffers = Buffers()) -> list[dict]:
    """``search`` of each problem, all candidates of all problems in one evaluation; TilingError names the
    first problem with no fitting tiling. Each problem's candidates are its own (tile_m, tile_n, tile_k)
    grid in lexicographic order, so a segmented argmin with the same tie-break picks what ``search`` does."""
    if not problems:
        return []
    counts = np.array([[cap // FRACTAL for cap in _caps(g, buffers)] for g in problems], dtype=np.int64)
    counts = np.maximum(counts, 0)
    cm, cn, ck = counts.T
    sizes = cm * cn * ck
    seg = np.repeat(np.arange(len(problems)), sizes)  # which problem each candidate belongs to
    local = np.arange(len(seg)) - (np.cumsum(sizes) - sizes)[seg]  # its index in that problem's grid
    per_m, per_k = (cn * ck)[seg], ck[seg]
    tm = (local // per_m + 1) * FRACTAL
    tn = (local // per_k % cn[seg] + 1) * FRACTAL
    tk = (local % per_k + 1) * FRACTAL
    fields = np.array([(g.m, g.n, g.k, g.batch, g.in_bytes, g.out_bytes) for g in problems], dtype=np.int64)
    ev = _evaluate(_Columns(*fields[seg].T), buffers, tm, tn, tk)
    keep = np.flatnonzero(ev["fits"])
    seg, tm, tn, tk = seg[keep], tm[keep], tn[keep], tk[keep]
    order = np.lexsort((tk, tn, tm, ev["total"][keep], seg))  # per problem: min cost, then the smallest tiles
    ranked = seg[order]
    starts = np.ones(len(ranked), dtype=bool)  # where each problem's run of candidates begins: its best
    starts[1:] = ranked[1:] != ranked[:-1]
    first = order[starts]
    found = seg[first].tolist()
    if len(found) < len(problems):
        raise _no_tiling(problems[min(set(range(len(problems))) - set(found))], buffers)
    picked = keep[first]
    columns = [a[first].tolist() for a in (tm, tn, tk)] + [ev[name][picked].tolist() for name in ("k_l1", *_COST)]
    return [_row(g.names, row) for g, row in zip(problems, zip(*columns, strict=True), strict=True)]


def _row(names: tuple[str, str, str], row: tuple[int, ...]) -> dict:
    tm, tn, tk, k_l1, *cost = row
    return {names[0]: tm, names[1]: tn, names[2]: tk, "k_l1": k_l1, "cost": dict(zip(_COST, cost, strict=True))}


def _fits(g: Problem, b: Buffers, tiles: tuple[int, int, int]) -> bool:
    if any(int(t) <= 0 or int(t) % FRACTAL for t in tiles):
        return False
    tm, tn, tk = (np.array([int(t)], dtype=np.int64) for t in tiles)
    if tm[0] > g.m or tn[0] > g.n or tk[0] > g.k:
        return False  # a tile beyond the padded extent is never a search candidate
    return bool(_evaluate(g, b, tm, tn, tk)["fits"][0])


# ---- MatMul / Gemm ----

_MATMUL_KEYS = ("tile_m", "tile_n", "tile_k")


def matmul_problem(m: int, n: int, k: int, in_bytes: int, out_bytes: int) -> Problem:
    """The search problem of an (m x k) @ (k x n) GEMM."""
    return _problem(_MATMUL_KEYS, m, n, k, 1, in_bytes, out_bytes)


def search_matmul(m: int, n: int, k: int, in_bytes: int, out_bytes: int, buffers: Buffers = Buffers()) -> dict:
    """The cheapest fitting tiling of an (m x k) @ (k x n) GEMM: {"tile_m", "tile_n", "tile_k", "k_l1", "cost"}."""
    return search(matmul_problem(m, n, k, in_bytes, out_bytes), buffers)


def valid_tilings_matmul(m: int, n: int, k: int, in_bytes: int, out_bytes: int,
                         buffers: Buffers = Buffers()) -> list[dict]:
    """Every fitting tiling of the GEMM with its cost, tile dims in lexicographic order."""
    return _all(matmul_problem(m, n, k, in_bytes, out_bytes), buffers)


def fits_matmul(tiling: dict, m: int, n: int, k: int, in_bytes: int, out_bytes: int,
                buffers: Buffers = Buffers()) -> bool:
    """Whether a tiling is one of the valid tilings of this GEMM (multiples of 16, within extents, fits)."""
    tiles = tuple(int(tiling.get(key, 0)) for key in _MATMUL_KEYS)
    return _fits(matmul_problem(m, n, k, in_bytes, out_bytes), buffers, tiles)


# ---- Conv (im2col GEMM per image) ----

_CONV_KEYS = ("tile_hw", "tile_n", "tile_k")


def conv_problem(n: int, c: int, o: int, kh: int, kw: int, oh: int, ow: int, in_bytes: int,
                 out_bytes: int) -> Problem:
    """The search problem of a group-1 2-D conv (the input size does not enter the model)."""
    # K runs over (C1, KH, KW) blocks of 16 lanes, as the rows of FRACTAL_Z do.
    return _problem(_CONV_KEYS, oh * ow, o, _pad16(c) * kh * kw, n, in_bytes, out_bytes)


def search_conv(n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, oh: int, ow: int, in_bytes: int,
                out_bytes: int, buffers: Buffers = Buffers()) -> dict:
    """The cheapest fitting tiling of a group-1 2-D conv: {"tile_hw", "tile_n", "tile_k", "k_l1", "cost"}.

    h and w (the input size) do not enter the model, which counts the im2col rows of the output positions.
    """
    return search(conv_problem(n, c, o, kh, kw, oh, ow, in_bytes, out_bytes), buffers)


def valid_tilings_conv(n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, oh: int, ow: int, in_bytes: int,
                       out_bytes: int, buffers: Buffers = Buffers()) -> list[dict]:
    """Every fitting tiling of the conv with its cost, tile dims in lexicographic order."""
    return _all(conv_problem(n, c, o, kh, kw, oh, ow, in_bytes, out_bytes), buffers)


def fits_conv(tiling: dict, n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, oh: int, ow: int,
              in_bytes: int, out_bytes: int, buffers: Buffers = Buffers()) -> bool:
    """Whether a tiling is one of the valid tilings of this conv."""
    tiles = tuple(int(tiling.get(key, 0)) for key in _CONV_KEYS)
    return _fits(conv_problem(n, c, o, kh, kw, oh, ow, in_bytes, out_bytes), buffers, tiles)
