"""npu kernels on formatted data equal the cpu kernels on standard layouts, and keep padding lanes zero."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle_pipeline.formats import FORMATS, from_format, pad_mask, storage_shape, to_format
from bundle_pipeline.kernels import SUPPORTED_OPS, KernelError, run_kernel
from bundle_pipeline.runtime.npu import NATIVE_KERNELS, run_npu_kernel
from bundle_pipeline.targets.npu import ELEMENTWISE_OPS, NPU_FORMAT_OPS, supports

NZ, NC, FZ = "FRACTAL_NZ", "NC1HWC0", "FRACTAL_Z"
DIM = st.integers(1, 40)  # crosses 16 and 32, mostly not a multiple of 16
TILE = st.one_of(st.none(), st.sampled_from([16, 32, 48]))
FLOATS = st.sampled_from([np.float32, np.float16])
FEW = settings(max_examples=20, deadline=None)


def _data(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def _tiling(**tiles: int | None) -> dict:
    return {k: v for k, v in tiles.items() if v is not None}


def _check(op: str, inputs: list[np.ndarray | None], formats: list[str | None], out_format: str,
           attrs: dict | None = None, opset: int = 17, tiling: dict | None = None) -> np.ndarray:
    """Run op both ways; compare numbers (float32 rtol 1e-5; fp16 rtol 1e-3 vs cpu fp32 on the fp16-rounded
    inputs) and check the padding lanes of the npu result are exactly zero. Returns the npu result."""
    attrs = attrs or {}
    low = any(x is not None and x.dtype == np.float16 for x in inputs)
    ref_in = [None if x is None else (x.astype(np.float32) if x.dtype == np.float16 else x) for x in inputs]
    ref = run_kernel(op, ref_in, attrs, opset)[0]
    phys = [None if x is None else to_format(x, f) for x, f in zip(inputs, formats, strict=True)]
    shapes = [None if x is None else x.shape for x in inputs]
    y = run_npu_kernel(op, phys, attrs, opset, formats, out_format, shapes, ref.shape, tiling)
    assert y.shape == storage_shape(out_format, ref.shape)
    assert not np.any(y[pad_mask(out_format, ref.shape)]), "padding lanes must stay zero"
    back = from_format(y, out_format, ref.shape)
    if ref.dtype.kind != "f":
        np.testing.assert_array_equal(back, ref)
        return y
    rtol = 1e-3 if low else 1e-5
    finite = np.abs(ref[np.isfinite(ref)])
    atol = rtol * (float(finite.max()) if finite.size else 1.0)  # absolute slack for sums that cancel
    np.testing.assert_allclose(back.astype(np.float32), ref.astype(np.float32), rtol=rtol, atol=atol)
    return y


# ---- MatMul / Gemm in FRACTAL_NZ ----


@FEW
@given(m=DIM, n=DIM, k=DIM, batch=st.sampled_from([(), (2,), (2, 3)]), b_batch=st.booleans(), dtype=FLOATS,
       tm=TILE, tn=TILE, tk=TILE, seed=st.integers(0, 2**16))
def test_matmul_nz(m: int, n: int, k: int, batch: tuple, b_batch: bool, dtype: type, tm: int | None, tn: int | None,
                   tk: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = _data(rng, (*batch, m, k), dtype)
    b = _data(rng, (*(batch if b_batch else ()), k, n), dtype)  # B broadcast over A's batch when 2-D
    _check("MatMul", [a, b], [NZ, NZ], NZ, tiling=_tiling(tile_m=tm, tile_n=tn, tile_k=tk))


def test_matmul_int32_wraps_like_cpu() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-2**20, 2**20, size=(17, 33)).astype(np.int32)
    b = rng.integers(-2**20, 2**20, size=(33, 18)).astype(np.int32)
    _check("MatMul", [a, b], [NZ, NZ], NZ, tiling={"tile_m": 16, "tile_n": 16, "tile_k": 16})


C_SHAPES = st.sampled_from(["none", "scalar", "n", "1n", "m1", "mn", "mn_nz"])


@FEW
@given(m=DIM, n=DIM, k=DIM, ta=st.booleans(), tb=st.booleans(), alpha=st.sampled_from([1.0, 0.5]),
       beta=st.sampled_from([1.0, 2.0, 0.0]), c_kind=C_SHAPES, dtype=FLOATS, tm=TILE, tn=TILE, tk=TILE,
       seed=st.integers(0, 2**16))
def test_gemm_nz(m: int, n: int, k: int, ta: bool, tb: bool, alpha: float, beta: float, c_kind: str, dtype: type,
                 tm: int | None, tn: int | None, tk: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = _data(rng, (k, m) if ta else (m, k), dtype)
    b = _data(rng, (n, k) if tb else (k, n), dtype)
    c_shape = {"none": None, "scalar": (), "n": (n,), "1n": (1, n), "m1": (m, 1), "mn": (m, n), "mn_nz": (m, n)}
    c = None if c_kind == "none" else _data(rng, c_shape[c_kind], dtype)
    attrs = {"transA": int(ta), "transB": int(tb), "alpha": alpha, "beta": beta}
    _check("Gemm", [a, b, c], [NZ, NZ, NZ if c_kind == "mn_nz" else "ND"], NZ, attrs,
           tiling=_tiling(tile_m=tm, tile_n=tn, tile_k=tk))


# ---- Conv: NC1HWC0 x FRACTAL_Z ----


@FEW
@given(n=st.integers(1, 2), c=st.integers(1, 20), o=st.integers(1, 20),
       hw=st.tuples(st.integers(5, 9), st.integers(5, 9)),  # >= the dilated kernel extent
       ks=st.tuples(st.integers(1, 3), st.integers(1, 3)), strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       dil=st.tuples(st.integers(1, 2), st.integers(1, 2)), pads=st.tuples(*[st.integers(0, 1)] * 4),
       bias=st.booleans(), dtype=FLOATS, thw=TILE, tn=TILE, tk=TILE, seed=st.integers(0, 2**16))
def test_conv_5hd(n: int, c: int, o: int, hw: tuple, ks: tuple, strides: tuple, dil: tuple, pads: tuple, bias: bool,
                  dtype: type, thw: int | None, tn: int | None, tk: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, c, *hw), dtype)
    w = _data(rng, (o, c, *ks), dtype)
    b = _data(rng, (o,), dtype) if bias else None
    attrs = {"strides": list(strides), "dilations": list(dil), "pads": list(pads), "kernel_shape": list(ks)}
    _check("Conv", [x, w, b], [NC, FZ, "ND"], NC, attrs, tiling=_tiling(tile_hw=thw, tile_n=tn, tile_k=tk))


def test_conv_auto_pad_same() -> None:
    rng = np.random.default_rng(1)
    x, w = _data(rng, (1, 17, 7, 6)), _data(rng, (33, 17, 3, 3))
    for auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        _check("Conv", [x, w], [NC, FZ], NC, {"auto_pad": auto_pad, "strides": [2, 2]}, tiling={"tile_hw": 16})


# ---- pooling and BatchNormalization in NC1HWC0 ----


@FEW
@given(op=st.sampled_from(["MaxPool", "AveragePool"]), n=st.integers(1, 2), c=st.integers(1, 33),
       hw=st.tuples(st.integers(3, 8), st.integers(3, 8)), ks=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       strides=st.tuples(st.integers(1, 2), st.integers(1, 2)), pads=st.tuples(*[st.integers(0, 1)] * 4),
       ceil=st.booleans(), include_pad=st.booleans(), dtype=FLOATS, seed=st.integers(0, 2**16))
def test_pool_5hd(op: str, n: int, c: int, hw: tuple, ks: tuple, strides: tuple, pads: tuple, ceil: bool,
                  include_pad: bool, dtype: type, seed: int) -> None:
    pads = tuple(min(p, k - 1) for p, k in zip(pads, ks * 2, strict=True))  # ONNX: pads smaller than the kernel
    x = _data(np.random.default_rng(seed), (n, c, *hw), dtype)
    attrs = {"kernel_shape": list(ks), "strides": list(strides), "pads": list(pads), "ceil_mode": int(ceil)}
    if op == "AveragePool":
        attrs["count_include_pad"] = int(include_pad)
    _check(op, [x], [NC], NC, attrs)


def test_max_pool_dilated_and_negative() -> None:
    # All-negative data: a padding lane leaking into the max would show up as 0.
    x = -np.abs(_data(np.random.default_rng(2), (2, 19, 7, 7))) - 1
    _check("MaxPool", [x], [NC], NC, {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]})
    _check("AveragePool", [x], [NC], NC, {"kernel_shape": [3, 2], "dilations": [1, 2]}, opset=19)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_global_pool_5hd(op: str, dtype: type) -> None:
    x = _data(np.random.default_rng(3), (2, 21, 5, 4), dtype) - 3  # negative: padding must not win the max
    _check(op, [x], [NC], NC)


@FEW
@given(c=st.integers(1, 40), dtype=FLOATS, seed=st.integers(0, 2**16))
def test_batch_norm_5hd(c: int, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _data(rng, (2, c, 3, 4), dtype)
    scale, bias, mean = _data(rng, (c,), dtype), _data(rng, (c,), dtype), _data(rng, (c,), dtype)
    var = (rng.random(c) + 0.1).astype(dtype)
    _check("BatchNormalization", [x, scale, bias, mean, var], [NC, "ND", "ND", "ND", "ND"], NC, {"epsilon": 1e-3})


# ---- elementwise ops on matching formats ----

UNARY = [op for op in ELEMENTWISE_OPS if op not in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean",
                                                     "Where", "Clip", "Cast")]
ELEMENTWISE_SHAPES = {NC: (2, 17, 3, 2), NZ: (2, 17, 33), FZ: (17, 18, 3, 1), "ND": (5, 7), "NCHW": (2, 3, 4, 5)}


@pytest.mark.parametrize("fmt", [NC, NZ, FZ])
@pytest.mark.parametrize("op", UNARY)
def test_unary_any_format(op: str, fmt: str) -> None:
    x = _data(np.random.default_rng(4), ELEMENTWISE_SHAPES[fmt])
    if op in ("Log", "Sqrt"):
        x = np.abs(x) + 0.1
    _check(op, [x], [fmt], fmt)


@pytest.mark.parametrize("fmt", sorted(ELEMENTWISE_SHAPES))
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"])
def test_binary_same_format(op: str, fmt: str) -> None:
    rng = np.random.default_rng(5)
    shape = ELEMENTWISE_SHAPES[fmt]
    a, b = np.abs(_data(rng, shape)) + 0.5, _data(rng, shape)  # Pow: a positive base
    y = _check(op, [a, b], [fmt, fmt], fmt)
    if op == "Div" and fmt != "ND":
        assert np.isfinite(y).all()  # 0 / 0 on padding lanes re-zeroed


def test_elementwise_broadcast_scalar_where_clip_cast() -> None:
    rng = np.random.default_rng(6)
    x = _data(rng, (2, 17, 3, 2))
    _check("Add", [x, _data(rng, (1, 17, 1, 1))], [NC, NC], NC)  # per-channel: C is not broadcast
    _check("Mul", [x, np.array(2.5, np.float32)], [NC, "ND"], NC)  # a scalar rides along
    _check("Sub", [np.array([1.0], np.float32), x], ["ND", NC], NC)
    m = _data(rng, (3, 17, 20))
    _check("Add", [m, _data(rng, (1, 17, 20))], [NZ, NZ], NZ)  # batch broadcast
    _check("Where", [m > 0, m, -m], [NZ, NZ, NZ], NZ)
    _check("Clip", [x, np.array(-0.5, np.float32), np.array(0.5, np.float32)], [NC, "ND", "ND"], NC)
    _check("Cast", [x], [NC], NC, {"to": 6})  # float32 -> int32
    _check("HardSigmoid", [x], [NC], NC)  # maps 0 -> 0.5: padding must be re-zeroed


def test_elementwise_format_mismatch_is_not_native() -> None:
    shape = (2, 17, 3, 2)
    assert supports("Add", {}, 17, [NC, NC], [shape, shape], NC, shape)
    assert not supports("Add", {}, 17, [NC, "NCHW"], [shape, shape], NC, shape)
    assert not supports("Add", {}, 17, [NC, NC], [shape, (1, 1, 1, 1)], NC, shape)  # NC1HWC0 C broadcast
    assert supports("Add", {}, 17, [NC, "ND"], [shape, (1, 1, 1, 1)], NC, shape)  # ND scalar
    assert not supports("Add", {}, 17, [NZ, NZ], [(4, 5), (1, 5)], NZ, (4, 5))  # M is split into fractals


# ---- reductions over NC1HWC0, Softmax over FRACTAL_NZ ----

AXES = st.sampled_from([[1], [2, 3], [1, 2], [0, 1, 2, 3], [-3], [3]])


@FEW
@given(op=st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax"]), c=st.integers(1, 40), axes=AXES,
       keepdims=st.booleans(), opset=st.sampled_from([13, 18]), dtype=FLOATS, seed=st.integers(0, 2**16))
def test_reduce_5hd_ignores_padding(op: str, c: int, axes: list, keepdims: bool, opset: int, dtype: type,
                                    seed: int) -> None:
    x = _data(np.random.default_rng(seed), (2, c, 3, 2), dtype) - 2  # mostly negative: padding would win a max
    attrs: dict = {"keepdims": int(keepdims)}
    inputs, formats = [x], [NC]
    if opset >= (13 if op == "ReduceSum" else 18):
        inputs, formats = [x, np.array(axes, np.int64)], [NC, "ND"]
    else:
        attrs["axes"] = axes
    ref_rank = 4 if keepdims else 4 - len(axes)
    out_format = NC if ref_rank == 4 and keepdims else "ND"
    _check(op, inputs, formats, out_format, attrs, opset=opset)
    if keepdims:
        _check(op, inputs, formats, "NCHW", attrs, opset=opset)


def test_reduce_mean_divides_by_real_channels() -> None:
    x = np.ones((1, 17, 2, 2), np.float32)
    y = _check("ReduceMean", [x], [NC], NC, {"axes": [1]}, opset=13)
    assert from_format(y, NC, (1, 1, 2, 2)).ravel().tolist() == [1.0] * 4


@FEW
@given(op=st.sampled_from(["Softmax", "LogSoftmax"]), batch=st.sampled_from([(), (2,)]), m=DIM, n=DIM,
       opset=st.sampled_from([11, 13]), dtype=FLOATS, seed=st.integers(0, 2**16))
def test_softmax_nz_ignores_padding(op: str, batch: tuple, m: int, n: int, opset: int, dtype: type, seed: int) -> None:
    x = _data(np.random.default_rng(seed), (*batch, m, n), dtype) * 3
    attrs = {} if opset >= 13 else {"axis": len(batch) + 1}
    _check(op, [x], [NZ], NZ, attrs, opset=opset)


# ---- the table, fallbacks and errors ----


def test_target_table_matches_native_ops() -> None:
    raw = yaml.safe_load(resources.files("bundle_pipeline.targets").joinpath("npu.yaml").read_text())
    assert raw["formats"] == list(FORMATS)
    assert {k: raw["buffers"][k] for k in ("l1", "l0a", "l0b", "l0c", "ub")} == {
        "l1": 1 << 20, "l0a": 64 << 10, "l0b": 64 << 10, "l0c": 256 << 10, "ub": 256 << 10}
    table = {op: k for op, k in raw["kernels"].items() if op != "default"}
    assert set(table) == set(NPU_FORMAT_OPS)
    # what the target declares native (build side) is what the runtime has a kernel for
    assert set(NATIVE_KERNELS) == set(NPU_FORMAT_OPS)
    for op, entry in table.items():
        native = NPU_FORMAT_OPS[op]
        assert [tuple(i) for i in entry["inputs"]] == list(native.inputs), op
        assert entry.get("same_format", False) == native.same_format, op
        expected = ("SAME",) if native.same_format else native.outputs
        assert entry["outputs"] in expected, op
    assert set(ELEMENTWISE_OPS) <= SUPPORTED_OPS


def test_not_native_calls() -> None:
    x, w = (1, 4, 5, 5), (4, 2, 3, 3)
    assert not supports("Conv", {"group": 2}, 17, [NC, FZ], [x, w], NC, (1, 4, 3, 3))
    assert supports("Conv", {}, 17, [NC, FZ], [x, (4, 4, 3, 3)], NC, (1, 4, 3, 3))
    assert not supports("Conv", {}, 17, ["NCHW", FZ], [x, (4, 4, 3, 3)], NC, (1, 4, 3, 3))
    params = [(4,)] * 4
    assert not supports("BatchNormalization", {"training_mode": 1}, 15, [NC, *["ND"] * 4], [x, *params], NC, x)
    assert supports("BatchNormalization", {}, 15, [NC, *["ND"] * 4], [x, *params], NC, x)
    # Reduce axes from an input: native only when its value is known.
    assert not supports("ReduceSum", {}, 13, [NC, "ND"], [x, (1,)], NC, (1, 1, 5, 5))
    assert supports("ReduceSum", {}, 13, [NC, "ND"], [x, (1,)], NC, (1, 1, 5, 5), [None, np.array([1])])
    assert not supports("Softmax", {"axis": 0}, 13, [NZ], [(3, 4)], NZ, (3, 4))
    assert not supports("MatMul", {}, 13, ["ND", NZ], [(3,), (3, 4)], NZ, (4,))
    assert not supports("Resize", {}, 13, [NC], [x], NC, x)
    with pytest.raises(KernelError, match="no native npu kernel"):
        run_npu_kernel("Resize", [np.zeros(storage_shape(NC, x))], {}, 13, [NC], NC, [x], x, None)


def test_bad_tiling_and_physical_shape_are_errors() -> None:
    a = to_format(np.ones((20, 20), np.float32), NZ)
    with pytest.raises(KernelError, match="multiple of 16"):
        run_npu_kernel("MatMul", [a, a], {}, 13, [NZ, NZ], NZ, [(20, 20), (20, 20)], (20, 20), {"tile_m": 24})
    with pytest.raises(KernelError, match="physical shape"):
        run_npu_kernel("MatMul", [a, a], {}, 13, [NZ, NZ], NZ, [(20, 20), (20, 40)], (20, 40), None)
