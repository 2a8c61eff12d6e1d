"""npu tiling search: chosen tilings fit and are optimal under the documented model; every valid tiling computes
the same numbers."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle_pipeline.formats import from_format, to_format
from bundle_pipeline.kernels import run_kernel
from bundle_pipeline.runtime.npu import run_npu_kernel
from bundle_pipeline.stages.tiling_search import (
    Buffers,
    TilingError,
    candidate_count,
    conv_problem,
    fits_conv,
    fits_matmul,
    matmul_problem,
    search,
    search_conv,
    search_many,
    search_matmul,
    valid_tilings_conv,
    valid_tilings_matmul,
)

SMALL = Buffers(l1=24 << 10, l0a=4 << 10, l0b=8 << 10, l0c=16 << 10, ub=8 << 10)  # makes many tilings not fit
BUFFERS = st.sampled_from([Buffers(), SMALL])
BYTES = st.sampled_from([2, 4])
FEW = settings(max_examples=15, deadline=None)


def _pad(x: int) -> int:
    return max(1, math.ceil(x / 16)) * 16


def _reference(tm: int, tn: int, tk: int, m: int, n: int, k: int, batch: int, ib: int, ob: int,
               b: Buffers) -> dict | None:
    """The fit rules and cost model exactly as the module docstring states them, one tiling at a time."""
    mp, np_, kp, acc = _pad(m), _pad(n), _pad(k), max(4, ib)
    k_l1 = min(b.l1 // (2 * (tm + tn) * ib) // tk * tk, math.ceil(kp / tk) * tk)
    fits = (2 * tm * tk * ib <= b.l0a and 2 * tk * tn * ib <= b.l0b and 2 * tm * tn * acc <= b.l0c
            and 2 * tm * tn * ob <= b.ub and k_l1 >= tk and tm <= mp and tn <= np_ and tk <= kp)
    if not fits:
        return None
    mt, nt, kt = math.ceil(mp / tm), math.ceil(np_ / tn), math.ceil(kp / tk)
    cube = (mp // 16) * (np_ // 16) * (kp // 16) * batch
    moved = batch * (mp * kp * ib * nt + kp * np_ * ib * mt + mp * np_ * ob)
    overhead = batch * (32 * mt * nt * kt + 200 * mt * nt * math.ceil(kp / k_l1))
    memory = math.ceil(moved / 64)
    return {"k_l1": k_l1, "cube": cube, "memory": memory, "overhead": overhead, "bytes": moved,
            "total": cube + memory + overhead}


def _brute_force(m: int, n: int, k: int, batch: int, ib: int, ob: int, b: Buffers) -> dict[tuple, dict]:
    grid = [(tm, tn, tk) for tm in range(16, _pad(m) + 1, 16) for tn in range(16, _pad(n) + 1, 16)
            for tk in range(16, _pad(k) + 1, 16)]
    found = {t: _reference(*t, m, n, k, batch, ib, ob, b) for t in grid}
    return {t: c for t, c in found.items() if c is not None}


def _check_search(best: dict, valid: list[dict], reference: dict[tuple, dict], keys: tuple[str, str, str]) -> None:
    tiles = [tuple(t[key] for key in keys) for t in valid]
    assert set(tiles) == set(reference), "valid tilings are exactly those the documented rules admit"
    for t, tiling in zip(tiles, valid, strict=True):
        assert tiling["k_l1"] == reference[t]["k_l1"]
        assert tiling["cost"] == {name: reference[t][name] for name in ("cube", "memory", "overhead", "total", "bytes")}
    chosen = tuple(best[key] for key in keys)
    assert chosen in reference
    lowest = min(c["total"] for c in reference.values())
    assert best["cost"]["total"] == lowest, "no valid tiling is cheaper"
    assert chosen == min(t for t, c in reference.items() if c["total"] == lowest), "ties: smallest tiles"


@FEW
@given(m=st.integers(1, 200), n=st.integers(1, 200), k=st.integers(1, 200), ib=BYTES, ob=BYTES, buffers=BUFFERS)
def test_matmul_search_is_the_documented_argmin(m: int, n: int, k: int, ib: int, ob: int, buffers: Buffers) -> None:
    best = search_matmul(m, n, k, ib, ob, buffers)
    assert fits_matmul(best, m, n, k, ib, ob, buffers)
    _check_search(best, valid_tilings_matmul(m, n, k, ib, ob, buffers), _brute_force(m, n, k, 1, ib, ob, buffers),
                  ("tile_m", "tile_n", "tile_k"))
    assert search_matmul(m, n, k, ib, ob, buffers) == best  # deterministic


@FEW
@given(n=st.integers(1, 3), c=st.integers(1, 40), o=st.integers(1, 70), kh=st.integers(1, 3), kw=st.integers(1, 3),
       oh=st.integers(1, 12), ow=st.integers(1, 12), ib=BYTES, ob=BYTES, buffers=BUFFERS)
def test_conv_search_is_the_documented_argmin(n: int, c: int, o: int, kh: int, kw: int, oh: int, ow: int, ib: int,
                                              ob: int, buffers: Buffers) -> None:
    args = (n, c, oh + kh - 1, ow + kw - 1, o, kh, kw, oh, ow, ib, ob, buffers)
    best = search_conv(*args)
    assert fits_conv(best, *args)
    reference = _brute_force(oh * ow, o, _pad(c) * kh * kw, n, ib, ob, buffers)
    _check_search(best, valid_tilings_conv(*args), reference, ("tile_hw", "tile_n", "tile_k"))


def test_fits_rejects_what_the_search_never_proposes() -> None:
    assert fits_matmul({"tile_m": 16, "tile_n": 16, "tile_k": 16}, 1, 1, 1, 4, 4)
    assert not fits_matmul({"tile_m": 24, "tile_n": 16, "tile_k": 16}, 64, 64, 64, 4, 4)  # not a multiple of 16
    assert not fits_matmul({"tile_m": 32, "tile_n": 16, "tile_k": 16}, 16, 64, 64, 4, 4)  # beyond the extent
    assert not fits_matmul({"tile_m": 512, "tile_n": 16, "tile_k": 64}, 1024, 64, 64, 4, 4)  # L0A: 2*512*64*4 > 64K
    assert not fits_matmul({"tile_m": 16, "tile_n": 16}, 64, 64, 64, 4, 4)  # tile_k missing
    assert not fits_conv({"tile_hw": 16, "tile_n": 32, "tile_k": 16}, 1, 3, 5, 5, 16, 3, 3, 3, 3, 4, 4)


def test_search_prefers_reuse_on_big_problems_and_fails_clearly() -> None:
    best = search_matmul(1024, 1024, 1024, 2, 2)
    assert best["tile_m"] * best["tile_n"] >= 128 * 128  # re-reads dominate small tiles
    assert best["cost"]["total"] < valid_tilings_matmul(1024, 1024, 1024, 2, 2)[0]["cost"]["total"]
    with pytest.raises(TilingError, match="no tiling"):
        search_matmul(64, 64, 64, 4, 4, Buffers(l0a=1024))
    assert valid_tilings_matmul(64, 64, 64, 4, 4, Buffers(l0a=1024)) == []


def test_buffers_from_the_target() -> None:
    raw = yaml.safe_load(resources.files("bundle_pipeline.targets").joinpath("npu.yaml").read_text())
    assert Buffers.from_target(raw["buffers"]) == Buffers()
    assert Buffers.from_target({"l1": 2048, "workspace_bytes": 1}) == Buffers(l1=2048)


# ---- many kernels in one evaluation: the same choices as one at a time ----

TINY = Buffers(l0a=1024)  # 4-byte inputs fit no tiling; 2-byte ones only 16-wide tiles
MATMULS = st.builds(matmul_problem, st.integers(1, 120), st.integers(1, 120), st.integers(1, 120), BYTES, BYTES)
CONVS = st.builds(conv_problem, st.integers(1, 3), st.integers(1, 40), st.integers(1, 70), st.integers(1, 3),
                  st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), BYTES, BYTES)


def _one_by_one(problems: list, buffers: Buffers) -> list[dict] | str:
    """``search`` of each problem, or the message of the first TilingError."""
    try:
        return [search(p, buffers) for p in problems]
    except TilingError as err:
        return str(err)


def _many(problems: list, buffers: Buffers) -> list[dict] | str:
    try:
        return search_many(problems, buffers)
    except TilingError as err:
        return str(err)


@settings(max_examples=40, deadline=None)
@given(problems=st.lists(st.one_of(MATMULS, CONVS), max_size=12), buffers=st.sampled_from([Buffers(), SMALL, TINY]))
def test_search_many_chooses_what_search_does_one_by_one(problems: list, buffers: Buffers) -> None:
    assert _many(problems, buffers) == _one_by_one(problems, buffers)


def test_search_many_over_the_shapes_of_a_layer_stack() -> None:
    # rows 1+k and widths 16..56 as in bench/speed.py's 40-layer graphs, fp16 and fp32, and convs, in one call
    matmuls = [(m, n, k, ib, ob) for m in range(1, 41, 3) for n in range(16, 57, 4) for k in (8, 16, 40, 56)
               for ib, ob in ((2, 2), (4, 4), (2, 4))]
    convs = [(n, c, c + 5, c + 5, o, kh, kh, c + 6 - kh, c + 6 - kh, ib, ib) for n in (1, 2) for c in (1, 3, 16, 20)
             for o in (8, 33) for kh in (1, 3) for ib in (2, 4)]
    problems = [matmul_problem(*a) for a in matmuls] + [conv_problem(*a[:2], *a[4:]) for a in convs]
    expected = [search_matmul(*a) for a in matmuls] + [search_conv(*a) for a in convs]
    assert search_many(problems, Buffers()) == expected
    assert search_many(problems[::-1] + problems[:5], Buffers()) == expected[::-1] + expected[:5]  # any order, repeats
    assert search_many([], Buffers()) == []


def test_candidate_count_is_the_size_of_the_searched_grid() -> None:
    assert candidate_count(matmul_problem(1, 16, 16, 2, 2)) == 1
    assert candidate_count(matmul_problem(40, 56, 56, 2, 2)) == 3 * 4 * 4  # padded to 48 x 64 x 64
    # a tile dim is capped by what its buffers can hold: 64 KiB L0A / (2 x 16 fp16 lanes) = 1024
    assert candidate_count(matmul_problem(4096, 4096, 4096, 2, 2)) == 64 ** 3
    assert candidate_count(matmul_problem(64, 64, 64, 4, 4), TINY) == 0


# ---- any valid tiling gives the same numbers ----


def _sample(tilings: list[dict], best: dict, seed: int, cap: int = 16) -> list[dict]:
    """Every tiling when there are few; else a random sample of ``cap`` plus the chosen one."""
    if len(tilings) <= cap:
        return tilings
    picks = np.random.default_rng(seed).choice(len(tilings), size=cap, replace=False)
    return [best, *(tilings[i] for i in sorted(picks))]


def _integers(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    # Small integers: every partial sum is exact in the fp32 accumulator, so any summation order
    # (any tile_k) must give bit-identical results.
    return rng.integers(-3, 4, size=shape).astype(dtype)


@FEW
@given(m=st.integers(1, 50), n=st.integers(1, 50), k=st.integers(1, 70), batch=st.sampled_from([(), (2,)]),
       dtype=st.sampled_from([np.float32, np.float16]), buffers=BUFFERS, seed=st.integers(0, 2**16))
def test_every_valid_matmul_tiling_gives_the_same_numbers(m: int, n: int, k: int, batch: tuple, dtype: type,
                                                          buffers: Buffers, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _integers(rng, (*batch, m, k), dtype), _integers(rng, (k, n), dtype)
    ref = run_kernel("MatMul", [a, b], {}, 17)[0]
    size = np.dtype(dtype).itemsize
    tilings = valid_tilings_matmul(m, n, k, size, size, buffers)
    best = search_matmul(m, n, k, size, size, buffers)
    pa, pb = to_format(a, "FRACTAL_NZ"), to_format(b, "FRACTAL_NZ")
    for tiling in _sample(tilings, best, seed):
        y = run_npu_kernel("MatMul", [pa, pb], {}, 17, ["FRACTAL_NZ"] * 2, "FRACTAL_NZ", [a.shape, b.shape],
                           ref.shape, tiling)
        np.testing.assert_array_equal(from_format(y, "FRACTAL_NZ", ref.shape), ref, err_msg=str(tiling))


@FEW
@given(n=st.integers(1, 2), c=st.integers(1, 20), o=st.integers(1, 40), hw=st.integers(4, 9), kh=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 1), buffers=BUFFERS, seed=st.integers(0, 2**16))
def test_every_valid_conv_tiling_gives_the_same_numbers(n: int, c: int, o: int, hw: int, kh: int, stride: int,
                                                        pad: int, buffers: Buffers, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, w = _integers(rng, (n, c, hw, hw), np.float32), _integers(rng, (o, c, kh, kh), np.float32)
    bias = _integers(rng, (o,), np.float32)
    attrs = {"strides": [stride, stride], "pads": [pad] * 4}
    ref = run_kernel("Conv", [x, w, bias], attrs, 17)[0]
    _n, _o, oh, ow = ref.shape
    args = (n, c, hw, hw, o, kh, kh, oh, ow, 4, 4, buffers)
    tilings, best = valid_tilings_conv(*args), search_conv(*args)
    phys = [to_format(x, "NC1HWC0"), to_format(w, "FRACTAL_Z"), bias]
    for tiling in _sample(tilings, best, seed):
        y = run_npu_kernel("Conv", phys, attrs, 17, ["NC1HWC0", "FRACTAL_Z", "ND"], "NC1HWC0",
                           [x.shape, w.shape, bias.shape], ref.shape, tiling)
        np.testing.assert_array_equal(from_format(y, "NC1HWC0", ref.shape), ref, err_msg=str(tiling))


@pytest.mark.slow
def test_every_tiling_of_a_random_float_gemm_agrees_within_rounding() -> None:
    # Random floats: tilings differ only in the order of the K summation (fp32 accumulation).
    rng = np.random.default_rng(7)
    m, n, k = 40, 50, 300
    a, b = rng.standard_normal((k, m)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    c = rng.standard_normal((n,)).astype(np.float32)
    attrs = {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}
    ref = run_kernel("Gemm", [a, b, c], attrs, 17)[0]
    phys = [to_format(a, "FRACTAL_NZ"), to_format(b, "FRACTAL_NZ"), c]
    tilings = valid_tilings_matmul(m, n, k, 4, 4, SMALL)
    assert len(tilings) >= 5
    for tiling in tilings:
        y = run_npu_kernel("Gemm", phys, attrs, 17, ["FRACTAL_NZ", "FRACTAL_NZ", "ND"], "FRACTAL_NZ",
                           [a.shape, b.shape, c.shape], ref.shape, tiling)
        np.testing.assert_allclose(from_format(y, "FRACTAL_NZ", ref.shape), ref, rtol=1e-5, atol=1e-4)
