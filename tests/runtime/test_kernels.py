"""run_kernel vs onnx.reference.ReferenceEvaluator / onnxruntime on one-node models, across opsets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from kernel_oracle import one_node_model, reference

from bundle_pipeline.kernels import SUPPORTED_OPS, KernelError, run_kernel

RNG = np.random.default_rng(1234)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def f16(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float16)


def pos32(*shape: int) -> np.ndarray:
    return (RNG.random(shape) + 0.1).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def ints(lo: int, hi: int, *shape: int, dtype: type = np.int64) -> np.ndarray:
    return RNG.integers(lo, hi, shape).astype(dtype)


def tolerances(dtype: np.dtype) -> tuple[float, float]:
    return (1e-3, 1e-3) if dtype == np.float16 else (1e-5, 1e-6)


def check(
    op: str,
    inputs: list,
    attrs: dict | None = None,
    opset: int = 17,
    n_out: int = 1,
    engine: str = "onnx",
    extra: dict | None = None,
    tol: tuple[float, float] | None = None,
) -> list:
    """Assert run_kernel == the reference engine on the first n_out outputs (dtype, shape, values)."""
    attrs = attrs or {}
    snapshot = [None if x is None else x.copy() for x in inputs]
    got = run_kernel(op, inputs, {**attrs, **(extra or {})}, opset)[:n_out]
    assert len(got) == n_out
    for before, after in zip(snapshot, inputs, strict=True):
        if before is not None:
            np.testing.assert_array_equal(before, after)  # inputs are never mutated
    model = one_node_model(op, inputs, attrs, opset, [g.dtype for g in got])
    want = reference(model, inputs, engine)
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        assert g.dtype == w.dtype, f"dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"shape {g.shape} != {w.shape}"
        if g.dtype.kind in "fc":
            rtol, atol = tol or tolerances(g.dtype)
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, w)
    return got


def case(name: str, op: str, inputs: list, attrs: dict | None = None, opset: int = 17, **kw) -> object:
    return pytest.param(op, inputs, attrs or {}, opset, kw, id=name)


# ---------------------------------------------------------------- elementwise

A, B = f32(2, 3, 4), f32(3, 1)
IA, IB = ints(-20, 20, 3, 4), ints(1, 7, 4) * np.array([1, -1, 1, -1])
ELEMENTWISE = (
    [case(f"{op}-bcast", op, [A, B]) for op in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater")]
    + [case(f"{op}-int64", op, [IA, IB], opset=13) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min")]
    + [case(f"{op}-fp16", op, [f16(3, 4), f16(4)]) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min")]
    + [
        case(f"{op}-bool", op, [ints(0, 2, 3, 4).astype(bool), ints(0, 2, 4).astype(bool)])
        for op in ("And", "Or", "Xor")
    ]
    + [
        case("GreaterOrEqual", "GreaterOrEqual", [IA, IB], opset=16),
        case("LessOrEqual", "LessOrEqual", [A, B], opset=16),
        case("Pow-float", "Pow", [pos32(3, 4), f32(4)], opset=15),
        case("Pow-int-base-float-exp", "Pow", [ints(0, 5, 3, 4), pos32(4)], opset=15),
        case("Pow-fp16", "Pow", [np.abs(f16(3, 4)) + np.float16(0.5), f16(4)], opset=15),
        case("Mod-int", "Mod", [IA, IB], opset=13),
        case("Mod-int-fmod", "Mod", [IA, IB], {"fmod": 1}, opset=13),
        case("Mod-float-fmod", "Mod", [A, B], {"fmod": 1}, opset=13),
        case("Max-variadic", "Max", [f32(3, 1), f32(4), f32(1, 4)]),
        case("Min-variadic", "Min", [f32(3, 1), f32(4), f32(1, 4)]),
        case("Where", "Where", [ints(0, 2, 3, 4).astype(bool), f32(4), f32(3, 1)]),
        case("Where-int", "Where", [ints(0, 2, 4).astype(bool), IA, IB]),
        case("Not", "Not", [ints(0, 2, 5).astype(bool)]),
        case("PRelu", "PRelu", [f32(2, 3, 4), f32(3, 1)]),
        case("PRelu-fp16", "PRelu", [f16(2, 3, 4), f16(4)]),
    ]
)
for _op in ("Sqrt", "Reciprocal", "Log"):
    ELEMENTWISE += [case(_op, _op, [pos32(3, 5)]), case(f"{_op}-fp16", _op, [pos32(3, 5).astype(np.float16)])]
for _op in (
    "Exp",
    "Tanh",
    "Sigmoid",
    "Relu",
    "Erf",
    "Abs",
    "Neg",
    "Floor",
    "Ceil",
    "Sin",
    "Cos",
    "Sign",
    "Softplus",
    "Softsign",
    "Mish",
    "HardSwish",
    "Elu",
    "Selu",
    "LeakyRelu",
    "HardSigmoid",
):
    _opset = 18 if _op == "Mish" else 17
    ELEMENTWISE += [
        case(_op, _op, [f32(3, 7) * 3], opset=_opset),
        case(f"{_op}-fp16", _op, [f16(3, 7)], opset=_opset),
    ]
ELEMENTWISE += [
    case("Abs-int", "Abs", [IA]),
    case("Relu-int", "Relu", [IA], opset=14),
    case("Erf-wide", "Erf", [np.linspace(-6, 6, 241, dtype=np.float32)]),
    case("Erf-float64", "Erf", [np.linspace(-7, 7, 281)]),
    case("LeakyRelu-alpha", "LeakyRelu", [f32(10)], {"alpha": 0.3}),
    case("HardSigmoid-ab", "HardSigmoid", [f32(10) * 4], {"alpha": 0.3, "beta": 0.4}),
    case("Elu-alpha", "Elu", [f32(10)], {"alpha": 0.7}),
    case("Selu-ab", "Selu", [f32(10)], {"alpha": 1.5, "gamma": 2.0}),
    case("Gelu-none", "Gelu", [f32(4, 9) * 3], opset=20),
    case("Gelu-tanh", "Gelu", [f32(4, 9) * 3], {"approximate": "tanh"}, opset=20),
    case("Gelu-fp16", "Gelu", [f16(4, 9)], opset=20),
    case("Clip-11-both", "Clip", [f32(3, 4), np.float32(-0.5), np.float32(0.5)], opset=11),
    case("Clip-11-min-only", "Clip", [f32(3, 4), np.float32(-0.5)], opset=11),
    case("Clip-13-max-only", "Clip", [f32(3, 4), None, np.float32(0.2)], opset=13),
    case("Clip-13-none", "Clip", [f32(3, 4)], opset=13),
    case("Clip-13-int", "Clip", [IA, np.int64(-3), np.int64(5)], opset=13),
    case("Clip-min-gt-max", "Clip", [f32(3, 4), np.float32(1), np.float32(0)], opset=13),
    case("Clip-fp16", "Clip", [f16(3, 4), np.float16(-0.5), np.float16(0.5)], opset=13),
    case("Cast-f32-i32", "Cast", [f32(3, 4) * 10], {"to": onnx.TensorProto.INT32}),
    case("Cast-f32-f16", "Cast", [f32(3, 4)], {"to": onnx.TensorProto.FLOAT16}),
    case("Cast-i64-bool", "Cast", [IA], {"to": onnx.TensorProto.BOOL}),
    case("Cast-bool-f32", "Cast", [IA > 0], {"to": onnx.TensorProto.FLOAT}),
    case("Cast-f16-f64", "Cast", [f16(5)], {"to": onnx.TensorProto.DOUBLE}),
    case("Cast-19-saturate", "Cast", [f32(5)], {"to": onnx.TensorProto.FLOAT16, "saturate": 0}, opset=19),
    case("Cast-u8", "Cast", [ints(0, 255, 6).astype(np.float32)], {"to": onnx.TensorProto.UINT8}, opset=21),
    case("CastLike", "CastLike", [f32(3, 4) * 5, np.zeros(1, np.int32)], opset=15),
    case("CastLike-f16", "CastLike", [f32(3, 4), np.zeros(1, np.float16)], opset=19),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), ELEMENTWISE)
def test_elementwise(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


def test_integer_div_truncates_toward_zero() -> None:
    a, b = i64(7, -7, 7, -7, 0), i64(2, 2, -2, -2, 3)
    np.testing.assert_array_equal(run_kernel("Div", [a, b], {}, 13)[0], i64(3, -3, -3, 3, 0))
    np.testing.assert_array_equal(run_kernel("Mod", [a, b], {}, 13)[0], i64(1, 1, -1, -1, 0))
    np.testing.assert_array_equal(run_kernel("Mod", [a, b], {"fmod": 1}, 13)[0], i64(1, -1, 1, -1, 0))


def test_dtypes_follow_onnx() -> None:
    x = f32(2, 3)
    assert run_kernel("Shape", [x], {}, 13)[0].dtype == np.int64
    assert run_kernel("Size", [x], {}, 13)[0].dtype == np.int64
    assert run_kernel("Equal", [x, x], {}, 13)[0].dtype == np.bool_
    assert run_kernel("ArgMax", [x], {}, 13)[0].dtype == np.int64
    assert run_kernel("Pow", [i64(2, 3), np.array([2.0, 0.5], np.float32)], {}, 15)[0].dtype == np.int64


# ---------------------------------------------------------------- MatMul / Gemm / tiling

LINALG = [
    case("MatMul-2d", "MatMul", [f32(3, 4), f32(4, 5)]),
    case("MatMul-1d-2d", "MatMul", [f32(4), f32(4, 5)]),
    case("MatMul-2d-1d", "MatMul", [f32(3, 4), f32(4)]),
    case("MatMul-1d-1d", "MatMul", [f32(4), f32(4)]),
    case("MatMul-batched-bcast", "MatMul", [f32(2, 1, 3, 4), f32(5, 4, 6)]),
    case("MatMul-1d-batched", "MatMul", [f32(4), f32(2, 4, 3)]),
    case("MatMul-fp16", "MatMul", [f16(2, 3, 8), f16(8, 5)], tol=(2e-3, 2e-3)),
    case("MatMul-int64", "MatMul", [ints(-5, 5, 3, 4), ints(-5, 5, 4, 2)]),
    case("Gemm-plain", "Gemm", [f32(3, 4), f32(4, 5)], opset=11),
    case("Gemm-transA-transB", "Gemm", [f32(4, 3), f32(5, 4), f32(3, 5)], {"transA": 1, "transB": 1}),
    case("Gemm-alpha-beta-vecC", "Gemm", [f32(3, 4), f32(4, 5), f32(5)], {"alpha": 0.5, "beta": 2.0}),
    case("Gemm-colC", "Gemm", [f32(3, 4), f32(4, 5), f32(3, 1)], {"beta": -1.0}, opset=13),
    case("Gemm-scalarC", "Gemm", [f32(3, 4), f32(4, 5), np.float32(1.5).reshape(())]),
    case("Gemm-beta0", "Gemm", [f32(3, 4), f32(4, 5), f32(3, 5)], {"beta": 0.0}),
    case("Gemm-fp16", "Gemm", [f16(3, 4), f16(4, 5), f16(5)], {"transB": 0}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), LINALG)
def test_linalg(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


@pytest.mark.parametrize(("tm", "tn"), [(1, 1), (5, 7), (16, 16), (36, 28), (1000, 3), (2, 0)])
def test_matmul_gemm_tiling_matches_untiled(tm: int, tn: int) -> None:
    tiling = {"tile_m": tm, "tile_n": tn}
    a, b = f32(3, 37, 50), f32(50, 29)
    base = run_kernel("MatMul", [a, b], {}, 17)[0]
    np.testing.assert_allclose(run_kernel("MatMul", [a, b], {}, 17, tiling)[0], base, rtol=1e-5, atol=1e-5)
    a1 = f32(50)
    base1 = run_kernel("MatMul", [a1, b], {}, 17)[0]
    np.testing.assert_allclose(run_kernel("MatMul", [a1, b], {}, 17, tiling)[0], base1, rtol=1e-5, atol=1e-5)
    ga, gb, gc = f32(50, 37), f32(29, 50), f32(29)
    attrs = {"transA": 1, "transB": 1, "alpha": 0.7, "beta": 0.3}
    gbase = run_kernel("Gemm", [ga, gb, gc], attrs, 13)[0]
    np.testing.assert_allclose(
        run_kernel("Gemm", [ga, gb, gc], attrs, 13, tiling)[0], gbase, rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------- Conv / ConvTranspose

X4, W4 = f32(2, 4, 9, 8), f32(6, 4, 3, 3)
CONV = [
    case("1d", "Conv", [f32(2, 3, 11), f32(5, 3, 3), f32(5)], {"pads": [1, 2]}),
    case("2d-bias-pads-strides", "Conv", [X4, W4, f32(6)], {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    case("2d-dilations", "Conv", [X4, W4], {"dilations": [2, 1], "pads": [1, 1, 1, 1]}, opset=11),
    case("2d-group", "Conv", [X4, f32(6, 2, 3, 2)], {"group": 2, "kernel_shape": [3, 2]}),
    case("2d-depthwise", "Conv", [X4, f32(8, 1, 3, 3), f32(8)], {"group": 4, "pads": [1, 1, 1, 1]}),
    case("2d-same-upper", "Conv", [X4, W4], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    case("2d-same-lower", "Conv", [X4, f32(6, 4, 4, 4)], {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    case("2d-valid", "Conv", [X4, W4], {"auto_pad": "VALID", "strides": [2, 2]}, opset=21),
    case("2d-1x1", "Conv", [X4, f32(3, 4, 1, 1)]),
    case(
        "3d",
        "Conv",
        [f32(1, 2, 5, 6, 4), f32(3, 2, 2, 3, 2), f32(3)],
        {"pads": [1, 0, 1, 0, 1, 1], "strides": [1, 2, 1]},
    ),
    case(
        "2d-fp16",
        "Conv",
        [f16(1, 3, 7, 7), f16(4, 3, 3, 3), f16(4)],
        {"pads": [1, 1, 1, 1]},
        tol=(3e-3, 3e-3),
    ),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), CONV)
def test_conv(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


@pytest.mark.parametrize("tile", [1, 5, 7, 13, 29, 10_000])
@pytest.mark.parametrize(
    ("shape", "wshape", "attrs"),
    [
        ((2, 6, 13, 11), (8, 3, 3, 3), {"group": 2, "pads": [1, 1, 1, 1], "strides": [1, 2]}),
        ((1, 4, 9, 8), (4, 1, 3, 3), {"group": 4, "dilations": [2, 2], "auto_pad": "SAME_UPPER"}),
        ((2, 3, 17), (4, 3, 5), {"pads": [2, 2]}),
        ((1, 2, 5, 6, 4), (3, 2, 2, 3, 2), {"pads": [1, 0, 1, 0, 1, 1]}),
    ],
)
def test_conv_tiling_matches_untiled(tile: int, shape: tuple, wshape: tuple, attrs: dict) -> None:
    x, w, b = f32(*shape), f32(*wshape), f32(wshape[0])
    base = run_kernel("Conv", [x, w, b], attrs, 17)[0]
    tiled = run_kernel("Conv", [x, w, b], attrs, 17, {"tile_hw": tile})[0]
    assert tiled.shape == base.shape and tiled.dtype == base.dtype
    np.testing.assert_allclose(tiled, base, rtol=1e-5, atol=1e-5)


XT = f32(2, 4, 5, 4)
CONV_T = [
    case("1d", "ConvTranspose", [f32(1, 3, 6), f32(3, 2, 3), f32(2)], {"strides": [2]}),
    case(
        "2d-strides-pads",
        "ConvTranspose",
        [XT, f32(4, 3, 3, 3), f32(3)],
        {"strides": [2, 3], "pads": [1, 0, 1, 2]},
    ),
    case(
        "2d-output-padding",
        "ConvTranspose",
        [XT, f32(4, 3, 3, 3)],
        {"strides": [3, 2], "output_padding": [1, 1]},
    ),
    case(
        "2d-output-shape",
        "ConvTranspose",
        [XT, f32(4, 3, 3, 3)],
        {"strides": [3, 2], "output_shape": [16, 10]},
    ),
    case("2d-dilations", "ConvTranspose", [XT, f32(4, 2, 2, 3)], {"dilations": [2, 2]}, opset=11),
    case(
        "2d-group",
        "ConvTranspose",
        [XT, f32(4, 3, 3, 3), f32(6)],
        {"group": 2, "strides": [2, 2]},
        engine="ort",
    ),
    case(
        "2d-same-upper", "ConvTranspose", [XT, f32(4, 3, 3, 3)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}
    ),
    case(
        "2d-same-lower", "ConvTranspose", [XT, f32(4, 3, 4, 4)], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}
    ),
    case(
        "3d",
        "ConvTranspose",
        [f32(1, 2, 3, 4, 3), f32(2, 2, 2, 3, 2)],
        {"strides": [2, 1, 2], "pads": [0, 1, 0, 0, 1, 1]},
    ),
    case(
        "2d-fp16", "ConvTranspose", [f16(1, 2, 4, 4), f16(2, 3, 3, 3)], {"strides": [2, 2]}, tol=(3e-3, 3e-3)
    ),
    case(
        "2d-output-shape-odd-total-pad",
        "ConvTranspose",
        [f32(1, 2, 5, 4), f32(2, 3, 3, 3)],
        {"strides": [2, 2], "output_shape": [10, 9]},
        engine="ort",
    ),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), CONV_T)
def test_conv_transpose(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


# ---------------------------------------------------------------- pooling and normalisation

XP = f32(2, 3, 9, 8)
POOL = [
    case("max-basic", "MaxPool", [XP], {"kernel_shape": [3, 3]}, engine="ort", n_out=2),
    case(
        "max-strides-pads",
        "MaxPool",
        [XP],
        {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]},
        engine="ort",
        n_out=2,
    ),
    case(
        "max-dilations",
        "MaxPool",
        [XP],
        {"kernel_shape": [2, 2], "dilations": [2, 3]},
        opset=12,
        engine="ort",
        n_out=2,
    ),
    case(
        "max-ceil",
        "MaxPool",
        [XP],
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
        engine="ort",
        n_out=2,
    ),
    case(
        "max-same-upper",
        "MaxPool",
        [XP],
        {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        engine="ort",
        n_out=2,
    ),
    case(
        "max-same-lower",
        "MaxPool",
        [XP],
        {"kernel_shape": [2, 3], "auto_pad": "SAME_LOWER"},
        engine="ort",
        n_out=2,
    ),
    case(
        "max-valid",
        "MaxPool",
        [XP],
        {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "VALID"},
        engine="ort",
    ),
    case(
        "max-storage-order",
        "MaxPool",
        [XP],
        {"kernel_shape": [2, 2], "storage_order": 1},
        engine="ort",
        n_out=2,
    ),
    case("max-1d", "MaxPool", [f32(2, 3, 10)], {"kernel_shape": [3], "strides": [2]}, engine="ort", n_out=2),
    case(
        "max-3d",
        "MaxPool",
        [f32(1, 2, 5, 4, 6)],
        {"kernel_shape": [2, 2, 3], "pads": [1, 0, 1, 0, 1, 1]},
        engine="ort",
        n_out=2,
    ),
    case(
        "max-uint8",
        "MaxPool",
        [ints(0, 255, 1, 2, 5, 5, dtype=np.uint8)],
        {"kernel_shape": [2, 2]},
        opset=12,
        engine="ort",
    ),
    case(
        "max-fp16", "MaxPool", [f16(1, 2, 6, 6)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, engine="ort"
    ),
    case("avg-basic", "AveragePool", [XP], {"kernel_shape": [3, 3]}),
    case(
        "avg-pads-exclude",
        "AveragePool",
        [XP],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
    ),
    case(
        "avg-pads-include",
        "AveragePool",
        [XP],
        {"kernel_shape": [3, 3], "pads": [1, 2, 1, 0], "count_include_pad": 1},
    ),
    case(
        "avg-ceil",
        "AveragePool",
        [XP],
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
        engine="ort",
    ),
    case(
        "avg-ceil-include",
        "AveragePool",
        [XP],
        {
            "kernel_shape": [2, 3],
            "strides": [2, 2],
            "ceil_mode": 1,
            "pads": [1, 1, 1, 1],
            "count_include_pad": 1,
        },
        engine="ort",
    ),
    case(
        "avg-same-upper",
        "AveragePool",
        [XP],
        {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    ),
    case("avg-same-lower", "AveragePool", [XP], {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"}),
    case(
        "avg-valid",
        "AveragePool",
        [XP],
        {"kernel_shape": [3, 3], "auto_pad": "VALID", "strides": [2, 1]},
        opset=11,
    ),
    case(
        "avg-dilations-19",
        "AveragePool",
        [XP],
        {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 0, 1]},
        opset=19,
        engine="ort",
    ),
    case("avg-1d", "AveragePool", [f32(2, 3, 10)], {"kernel_shape": [4], "strides": [3]}),
    case(
        "avg-3d", "AveragePool", [f32(1, 2, 5, 4, 6)], {"kernel_shape": [2, 2, 3], "pads": [1, 0, 1, 0, 1, 1]}
    ),
    case("avg-fp16", "AveragePool", [f16(1, 2, 6, 6)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    case("gap", "GlobalAveragePool", [XP]),
    case("gmp", "GlobalMaxPool", [f32(2, 3, 4, 5, 2)], engine="ort"),
    case("gap-fp16", "GlobalAveragePool", [f16(2, 3, 4, 5)]),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), POOL)
def test_pool(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


C3 = 3
BN_PARAMS = [f32(C3), f32(C3), f32(C3), pos32(C3)]
NORM = [
    case(
        "bn-11",
        "BatchNormalization",
        [f32(2, C3, 4, 5), *BN_PARAMS],
        {"epsilon": 1e-3},
        opset=11,
        engine="ort",
    ),  # the reference treats opset-9..13 BatchNormalization as training
    case("bn-15-2d", "BatchNormalization", [f32(4, C3), *BN_PARAMS], opset=15),
    case(
        "bn-15-fp16",
        "BatchNormalization",
        [f16(2, C3, 4), *[p.astype(np.float16) for p in BN_PARAMS]],
        opset=15,
    ),
    case("bn-15-fp16-f32-params", "BatchNormalization", [f16(2, C3, 4), *BN_PARAMS], opset=15),
    case(
        "bn-14-training",
        "BatchNormalization",
        [f32(2, C3, 4, 5), *BN_PARAMS],
        {"training_mode": 1, "momentum": 0.8},
        opset=14,
        n_out=3,
    ),
    case("ln-last", "LayerNormalization", [f32(2, 3, 8), f32(8), f32(8)], n_out=3),
    case("ln-axis1", "LayerNormalization", [f32(2, 3, 8), f32(3, 8)], {"axis": 1, "epsilon": 1e-3}, n_out=3),
    case("ln-neg-axis", "LayerNormalization", [f32(2, 3, 4, 5), f32(4, 5), f32(5)], {"axis": -2}, n_out=3),
    case("ln-fp16", "LayerNormalization", [f16(2, 8), f16(8), f16(8)], n_out=3, engine="ort"),
    case("instnorm", "InstanceNormalization", [f32(2, 3, 4, 5), f32(3), f32(3)], {"epsilon": 1e-3}),
    case("instnorm-fp16", "InstanceNormalization", [f16(2, 3, 6), f16(3), f16(3)]),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), NORM)
def test_norm(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


# ---------------------------------------------------------------- reductions, softmax, topk, cumsum

XR = f32(3, 4, 5)
REDUCE = []
for _op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"):
    REDUCE += [
        case(f"{_op}-11-attr", _op, [XR], {"axes": [0, 2], "keepdims": 0}, opset=11),
        case(f"{_op}-11-all", _op, [XR], opset=11),
        case(f"{_op}-18-input", _op, [XR, i64(-1)], opset=18),
        case(f"{_op}-18-empty-axes", _op, [XR, np.zeros(0, np.int64)], {"keepdims": 0}, opset=18),
        case(f"{_op}-18-noop", _op, [XR, np.zeros(0, np.int64)], {"noop_with_empty_axes": 1}, opset=18),
        case(f"{_op}-18-fp16", _op, [f16(3, 4), i64(1)], opset=18),
        case(f"{_op}-int", _op, [ints(-3, 4, 3, 4)], {"axes": [1]}, opset=13 if _op != "ReduceSum" else 11),
    ]
REDUCE += [case("Softmax-11-neg-axis", "Softmax", [XR], {"axis": -2}, opset=11, engine="ort")]
REDUCE += [
    case("ReduceSum-13-input", "ReduceSum", [XR, i64(0, -1)], {"keepdims": 0}, opset=13),
    case("ReduceSum-13-noop", "ReduceSum", [XR], {"noop_with_empty_axes": 1}, opset=13),
    case("ReduceMax-empty", "ReduceMax", [np.zeros((2, 0, 3), np.float32), i64(1)], opset=18),
    case("ReduceMin-20-bool", "ReduceMin", [ints(0, 2, 3, 4).astype(bool), i64(1)], opset=20),
    case("ArgMax", "ArgMax", [XR], {"axis": 1}),
    case(
        "ArgMax-last-keep0",
        "ArgMax",
        [ints(0, 3, 4, 5).astype(np.float32)],
        {"axis": -1, "keepdims": 0, "select_last_index": 1},
    ),
    case("ArgMin-last", "ArgMin", [ints(0, 3, 4, 5)], {"axis": 0, "select_last_index": 1}),
    case("ArgMin-11", "ArgMin", [XR], {"keepdims": 0}, opset=11),
    case("Softmax-11-axis1", "Softmax", [XR], {"axis": 1}, opset=11, engine="ort"),
    case("Softmax-11-default", "Softmax", [XR], opset=11, engine="ort"),
    case("Softmax-13-axis1", "Softmax", [XR], {"axis": 1}, opset=13),
    case("Softmax-13-default", "Softmax", [XR], opset=13),
    case("Softmax-fp16", "Softmax", [f16(3, 9)], opset=13),
    case("LogSoftmax-11-axis1", "LogSoftmax", [XR], {"axis": 1}, opset=11, engine="ort"),
    case("LogSoftmax-13", "LogSoftmax", [XR * 20], {"axis": 0}, opset=13),
    case("TopK", "TopK", [XR, i64(3)], n_out=2),
    case(
        "TopK-smallest-axis0",
        "TopK",
        [ints(0, 4, 5, 4).astype(np.float32), i64(2)],
        {"largest": 0, "axis": 0},
        n_out=2,
    ),
    case("TopK-ties-int", "TopK", [ints(0, 3, 3, 8), i64(4)], n_out=2, opset=11),
    case("TopK-uint8", "TopK", [ints(0, 3, 3, 8, dtype=np.uint8), i64(4)], n_out=2, opset=11),
    case("CumSum", "CumSum", [XR, np.array(1, np.int32)]),
    case("CumSum-excl-rev", "CumSum", [XR, np.array(-1)], {"exclusive": 1, "reverse": 1}, opset=11),
    case("CumSum-int", "CumSum", [ints(-5, 5, 4, 3), np.array(0)], {"exclusive": 1}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), REDUCE)
def test_reduce(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


# ---------------------------------------------------------------- shape / data movement

XS = f32(2, 3, 4)
TENSOR = [
    case("Reshape", "Reshape", [XS, i64(0, -1)]),
    case(
        "Reshape-allowzero", "Reshape", [np.zeros((0, 3), np.float32), i64(3, 0)], {"allowzero": 1}, opset=14
    ),
    case("Reshape-11", "Reshape", [XS, i64(4, 0, -1)], opset=11),
    case("Flatten", "Flatten", [XS], {"axis": 2}),
    case("Flatten-neg", "Flatten", [XS], {"axis": -1}, opset=11),
    case("Flatten-0", "Flatten", [XS], {"axis": 0}),
    case("Expand", "Expand", [f32(3, 1), i64(2, 1, 4)]),
    case("Expand-smaller-shape", "Expand", [f32(2, 3, 1), i64(3, 1)]),
    case("Concat", "Concat", [f32(2, 1, 4), f32(2, 3, 4), f32(2, 0, 4)], {"axis": -2}),
    case("Slice", "Slice", [XS, i64(0, 1), i64(2, -1), i64(0, 2)]),
    case("Slice-steps", "Slice", [XS, i64(-1, 3), i64(-100, 0), i64(1, 2), i64(-1, -2)]),
    case("Slice-clamp", "Slice", [XS, i64(-100), i64(1000)]),
    case("Slice-neg-step-big-start", "Slice", [XS, i64(100), i64(-100), i64(-1), i64(-3)], opset=11),
    case("Split-11-attr", "Split", [XS], {"axis": 2, "split": [1, 3]}, opset=11, n_out=2),
    case("Split-11-equal", "Split", [XS], {"axis": 2}, opset=11, n_out=2, extra={"num_outputs": 2}),
    case("Split-13-input", "Split", [XS, i64(2, 1)], {"axis": 1}, opset=13, n_out=2),
    case("Split-18-num-outputs", "Split", [f32(2, 7)], {"axis": 1, "num_outputs": 3}, opset=18, n_out=3),
    case("Split-18-input", "Split", [f32(2, 7), i64(3, 4)], {"axis": -1}, opset=18, n_out=2),
    case("Squeeze-11", "Squeeze", [f32(1, 3, 1, 2)], {"axes": [0, -2]}, opset=11),
    case("Squeeze-13", "Squeeze", [f32(1, 3, 1, 2), i64(2)], opset=13),
    case("Squeeze-13-all", "Squeeze", [f32(1, 3, 1, 2)], opset=13),
    case("Unsqueeze-11", "Unsqueeze", [XS], {"axes": [0, -1]}, opset=11),
    case("Unsqueeze-13", "Unsqueeze", [XS, i64(1, 4)], opset=13),
    case("Transpose", "Transpose", [XS], {"perm": [2, 0, 1]}),
    case("Transpose-default", "Transpose", [XS]),
    case("Shape", "Shape", [XS], opset=13),
    case("Shape-15-start-end", "Shape", [XS], {"start": 1, "end": -1}, opset=15),
    case("Shape-15-clamped", "Shape", [XS], {"start": -10, "end": 10}, opset=15),
    case("Size", "Size", [XS]),
    case("Gather", "Gather", [XS, i64(-1, 0, 1)], {"axis": 1}),
    case("Gather-2d-idx", "Gather", [XS, np.array([[0, -1], [1, 2]], np.int32)], {"axis": 2}),
    case("Gather-scalar-idx", "Gather", [XS, np.array(-2, np.int64)]),
    case("GatherElements", "GatherElements", [XS, ints(-4, 4, 2, 3, 2)], {"axis": 2}),
    case("GatherElements-smaller", "GatherElements", [XS, ints(0, 2, 1, 2, 4)], {"axis": 0}, engine="ort"),
    case("Pad-11-constant", "Pad", [XS, i64(0, 1, 2, 1, 0, 3), np.float32(1.5)], opset=11),
    case("Pad-11-reflect", "Pad", [XS, i64(0, 2, 1, 0, 1, 3)], {"mode": "reflect"}, opset=11),
    case("Pad-13-edge", "Pad", [XS, i64(1, 0, 2, 0, 2, 1)], {"mode": "edge"}, opset=13),
    case("Pad-negative", "Pad", [XS, i64(0, -1, 1, 0, 0, -2)], opset=13, engine="ort"),
    case("Pad-18-axes", "Pad", [XS, i64(1, 2, 3, 0), np.float32(-1), i64(0, -1)], opset=18),
    case("Pad-19-wrap", "Pad", [XS, i64(0, 2, 1, 0, 1, 3)], {"mode": "wrap"}, opset=19),
    case("Pad-int", "Pad", [ints(0, 9, 3, 3), i64(1, 1, 1, 1), np.int64(7)], opset=13),
    case("Constant-tensor", "Constant", [], {"value": f32(2, 3)}),
    case("Constant-floats", "Constant", [], {"value_floats": [1.0, 2.5]}),
    case("Constant-int", "Constant", [], {"value_int": 3}),
    case("Constant-ints", "Constant", [], {"value_ints": [3, 4]}),
    case("Constant-float", "Constant", [], {"value_float": 0.5}),
    case("ConstantOfShape", "ConstantOfShape", [i64(2, 3)], {"value": np.array([7], np.int32)}),
    case("ConstantOfShape-default", "ConstantOfShape", [i64(4)]),
    case("Identity", "Identity", [XS]),
    case("Dropout-12", "Dropout", [XS, np.float32(0.3)], opset=12, n_out=2),
    case("Dropout-13-ratio-only", "Dropout", [XS], opset=13, n_out=2),
    case("Dropout-11", "Dropout", [XS], {"ratio": 0.2}, opset=11),
    case("Dropout-train-zero", "Dropout", [XS, np.float32(0.0), np.array(True)], opset=13, n_out=2),
    case("Range-int", "Range", [np.int64(10), np.int64(-3), np.int64(-3)]),
    case("Range-float", "Range", [np.float32(0.5), np.float32(3.2), np.float32(0.7)]),
    case("Range-empty", "Range", [np.int32(5), np.int32(1), np.int32(2)]),
    case("Tile", "Tile", [XS, i64(2, 1, 3)]),
    case("DepthToSpace-DCR", "DepthToSpace", [f32(1, 8, 2, 3)], {"blocksize": 2}),
    case("DepthToSpace-CRD", "DepthToSpace", [f32(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}),
    case("SpaceToDepth", "SpaceToDepth", [f32(1, 2, 4, 6)], {"blocksize": 2}),
    case("NonZero", "NonZero", [ints(0, 2, 3, 4).astype(np.float32)]),
    case("NonZero-bool", "NonZero", [ints(0, 2, 5).astype(bool)]),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), TENSOR)
def test_tensor(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **kw)


def test_empty_axes_attribute_reduces_everything() -> None:
    y = run_kernel("ReduceMean", [XS], {"axes": [], "keepdims": 0}, 11)[0]
    np.testing.assert_allclose(y, XS.mean(), rtol=1e-6)


def test_dropout_mask_of_ones_in_inference() -> None:
    x = f32(3, 4)
    y, mask = run_kernel("Dropout", [x, np.float32(0.5)], {}, 13)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all()


def test_split_before_18_needs_output_count() -> None:
    with pytest.raises(KernelError, match="num_outputs"):
        run_kernel("Split", [XS], {"axis": 1}, 13)


# ---------------------------------------------------------------- Resize

XZ = f32(1, 2, 4, 5)
RESIZE = []
for _coord in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
    for _mode in ("nearest", "linear", "cubic"):
        RESIZE.append(
            case(
                f"{_mode}-{_coord}-up",
                "Resize",
                [XZ, None, np.array([1, 1, 1.7, 2.2], np.float32)],
                {"mode": _mode, "coordinate_transformation_mode": _coord},
                opset=13,
            )
        )
        RESIZE.append(
            case(
                f"{_mode}-{_coord}-down-sizes",
                "Resize",
                [XZ, None, None, i64(1, 2, 3, 2)],
                {"mode": _mode, "coordinate_transformation_mode": _coord},
                opset=13,
            )
        )
for _nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
    RESIZE.append(
        case(
            f"nearest-{_nm}",
            "Resize",
            [XZ, None, np.array([1, 1, 2.5, 1.5], np.float32)],
            {"mode": "nearest", "nearest_mode": _nm, "coordinate_transformation_mode": "asymmetric"},
        )
    )
RESIZE += [
    case(
        "11-scales-roi-empty",
        "Resize",
        [XZ, np.zeros(0, np.float32), np.array([1, 1, 2, 2], np.float32)],
        {"mode": "linear"},
        opset=11,
    ),
    case(
        "11-sizes",
        "Resize",
        [XZ, np.zeros(0, np.float32), np.zeros(0, np.float32), i64(1, 2, 7, 3)],
        {"mode": "cubic"},
        opset=11,
    ),
    case(
        "11-tf-crop",
        "Resize",
        [
            XZ,
            np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], np.float32),
            np.zeros(0, np.float32),
            i64(1, 2, 5, 6),
        ],
        {
            "mode": "linear",
            "coordinate_transformation_mode": "tf_crop_and_resize",
            "extrapolation_value": 9.0,
        },
        opset=11,
    ),
    case(
        "13-tf-crop-nearest",
        "Resize",
        [XZ, np.array([0, 0, 0.1, -0.2, 1, 1, 1.2, 0.8], np.float32), None, i64(1, 2, 6, 4)],
        {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize"},
        opset=13,
    ),
    case(
        "cubic-a-exclude",
        "Resize",
        [XZ, None, np.array([1, 1, 1.6, 0.6], np.float32)],
        {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
    ),
    case(
        "18-antialias-linear",
        "Resize",
        [f32(1, 1, 12, 13), None, np.array([1, 1, 0.4, 0.6], np.float32)],
        {"mode": "linear", "antialias": 1},
        opset=18,
    ),
    case(
        "18-antialias-cubic",
        "Resize",
        [f32(1, 1, 12, 13), None, None, i64(1, 1, 5, 4)],
        {"mode": "cubic", "antialias": 1},
        opset=18,
    ),
    case(
        "18-axes-scales",
        "Resize",
        [XZ, None, np.array([2.0, 0.5], np.float32)],
        {"mode": "linear", "axes": [3, 2]},
        opset=18,
    ),
    case(
        "18-axes-sizes-not-larger",
        "Resize",
        [XZ, None, None, i64(7, 8)],
        {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"},
        opset=18,
    ),
    case(
        "18-not-smaller",
        "Resize",
        [XZ, None, None, i64(1, 2, 7, 8)],
        {"mode": "nearest", "keep_aspect_ratio_policy": "not_smaller"},
        opset=18,
    ),
    case(
        "19-half-pixel-symmetric",
        "Resize",
        [XZ, None, np.array([1, 1, 1.7, 2.3], np.float32)],
        {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
        opset=19,
    ),
    case(
        "21-nearest-uint8",
        "Resize",
        [ints(0, 255, 1, 1, 3, 4, dtype=np.uint8), None, np.array([1, 1, 2, 2], np.float32)],
        {"mode": "nearest"},
        opset=21,
    ),
    case(
        "21-linear-uint8",
        "Resize",
        [ints(0, 255, 1, 1, 3, 4, dtype=np.uint8), None, np.array([1, 1, 1.5, 2], np.float32)],
        {"mode": "linear"},
        opset=21,
    ),
    case(
        "fp16-linear",
        "Resize",
        [f16(1, 2, 4, 5), None, np.array([1, 1, 2, 2], np.float32)],
        {"mode": "linear"},
    ),
    case(
        "3d-input-linear",
        "Resize",
        [f32(2, 3, 4), None, np.array([1, 2.0, 0.75], np.float32)],
        {"mode": "linear"},
    ),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), RESIZE)
def test_resize(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    # The reference evaluates cubic weights in float32 (cubic_coeff_a arrives as np.float32): allow ~1e-6.
    tol = (1e-5, 5e-6) if attrs.get("mode") == "cubic" else None
    check(op, inputs, attrs, opset, **{"tol": tol, **kw})


def test_resize_tf_half_pixel_for_nn_opset11() -> None:
    x = f32(1, 1, 3, 4)
    y = run_kernel(
        "Resize",
        [x, None, np.array([1, 1, 2, 2], np.float32)],
        {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"},
        11,
    )[0]
    model = one_node_model(
        "Resize",
        [x, np.zeros(0, np.float32), np.array([1, 1, 2, 2], np.float32)],
        {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"},
        11,
        [np.dtype(np.float32)],
    )
    want = reference(model, [x, np.zeros(0, np.float32), np.array([1, 1, 2, 2], np.float32)], "ort")[0]
    np.testing.assert_array_equal(y, want)


# ---------------------------------------------------------------- LSTM (onnxruntime has every attribute)

SEQ, BATCH, INP, HID = 5, 3, 4, 6


def lstm_inputs(
    dirs: int,
    *,
    bias: bool = True,
    lens: bool = False,
    init: bool = False,
    peep: bool = False,
    layout: int = 0,
) -> list:
    x = f32(SEQ, BATCH, INP) if layout == 0 else f32(BATCH, SEQ, INP)
    w, r = f32(dirs, 4 * HID, INP) * 0.5, f32(dirs, 4 * HID, HID) * 0.5
    b = f32(dirs, 8 * HID) * 0.3 if bias else None
    sl = np.array([5, 2, 4], np.int32) if lens else None
    state_shape = (dirs, BATCH, HID) if layout == 0 else (BATCH, dirs, HID)
    h0 = f32(*state_shape) if init else None
    c0 = f32(*state_shape) if init else None
    p = f32(dirs, 3 * HID) * 0.3 if peep else None
    return [x, w, r, b, sl, h0, c0, p]


LSTM = [
    case("forward", "LSTM", lstm_inputs(1), {"hidden_size": HID}, opset=14, n_out=3, engine="ort"),
    case(
        "forward-onnx-ref",
        "LSTM",
        lstm_inputs(1, init=True, peep=True),
        {"hidden_size": HID},
        opset=14,
        n_out=3,
    ),
    case(
        "reverse",
        "LSTM",
        lstm_inputs(1, init=True),
        {"hidden_size": HID, "direction": "reverse"},
        opset=14,
        n_out=3,
        engine="ort",
    ),
    case(
        "bidirectional",
        "LSTM",
        lstm_inputs(2, peep=True),
        {"hidden_size": HID, "direction": "bidirectional"},
        opset=14,
        n_out=3,
        engine="ort",
    ),
    case(
        "seq-lens-bidi",
        "LSTM",
        lstm_inputs(2, lens=True, init=True),
        {"hidden_size": HID, "direction": "bidirectional"},
        opset=14,
        n_out=3,
        engine="ort",
    ),
    case(
        "seq-lens-reverse",
        "LSTM",
        lstm_inputs(1, lens=True),
        {"hidden_size": HID, "direction": "reverse"},
        opset=14,
        n_out=3,
        engine="ort",
    ),
    case(
        "clip-input-forget",
        "LSTM",
        lstm_inputs(1, peep=True),
        {"hidden_size": HID, "clip": 0.5, "input_forget": 1},
        opset=14,
        n_out=3,
        engine="ort",
    ),
    case(
        "activations",
        "LSTM",
        lstm_inputs(1),
        {
            "hidden_size": HID,
            "activations": ["HardSigmoid", "LeakyRelu", "Tanh"],
            "activation_alpha": [0.3, 0.05],
            "activation_beta": [0.4],
        },
        opset=14,
        n_out=3,
        engine="ort",
    ),
    case(
        "no-bias-11",
        "LSTM",
        lstm_inputs(1, bias=False),
        {"hidden_size": HID},
        opset=11,
        n_out=3,
        engine="ort",
    ),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "kw"), LSTM)
def test_lstm(op: str, inputs: list, attrs: dict, opset: int, kw: dict) -> None:
    check(op, inputs, attrs, opset, **{"tol": (1e-4, 1e-5), **kw})


def test_lstm_layout1_is_batch_major_layout0() -> None:
    # onnxruntime rejects layout=1, so check it against layout 0 on transposed tensors.
    x, w, r, b, sl, h0, c0, p = lstm_inputs(2, lens=True, init=True, peep=True, layout=1)
    attrs = {"hidden_size": HID, "direction": "bidirectional"}
    y1, yh1, yc1 = run_kernel("LSTM", [x, w, r, b, sl, h0, c0, p], {**attrs, "layout": 1}, 14)
    t = (1, 0, 2)
    y0, yh0, yc0 = run_kernel(
        "LSTM", [x.transpose(t), w, r, b, sl, h0.transpose(t), c0.transpose(t), p], attrs, 14
    )
    np.testing.assert_allclose(y1, y0.transpose(2, 0, 1, 3), rtol=1e-6)
    np.testing.assert_allclose(yh1, yh0.transpose(t), rtol=1e-6)
    np.testing.assert_allclose(yc1, yc0.transpose(t), rtol=1e-6)
    assert y1.shape == (BATCH, SEQ, 2, HID)


# ---------------------------------------------------------------- errors and contract


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "match"),
    [
        ("Conv", [X4, W4], {"auto_pad": "SAME_MIDDLE"}, "auto_pad"),
        ("MaxPool", [XP], {"kernel_shape": [2, 2], "auto_pad": "bogus"}, "auto_pad"),
        ("Resize", [XZ, None, np.array([1, 1, 2, 2], np.float32)], {"mode": "bilinear"}, "mode"),
        (
            "Resize",
            [XZ, None, np.array([1, 1, 2, 2], np.float32)],
            {"coordinate_transformation_mode": "weird"},
            "coordinate_transformation_mode",
        ),
        ("Pad", [XS, i64(0, 0, 0, 0, 0, 0)], {"mode": "mirror"}, "mode"),
        ("Gelu", [XS], {"approximate": "fast"}, "approximate"),
        ("LSTM", lstm_inputs(1), {"hidden_size": HID, "direction": "sideways"}, "direction"),
        ("Add", [f32(2, 3), f32(4)], {}, "broadcast"),
        ("Conv", [X4, f32(6, 3, 3, 3)], {}, "group"),
        ("Reshape", [XS, i64(5, -1)], {}, "Reshape"),
        ("Gather", [XS, i64(7)], {}, "out of range"),
        ("Cast", [XS], {"to": 27}, "to"),  # FLOAT6E2M3: no numpy (nor ml_dtypes conversion) support
        ("DepthToSpace", [f32(1, 8, 2, 3)], {"blocksize": 2, "mode": "XYZ"}, "mode"),
    ],
)
def test_kernel_error_on_bad_attribute_or_inputs(op: str, inputs: list, attrs: dict, match: str) -> None:
    with pytest.raises(KernelError, match=match):
        run_kernel(op, inputs, attrs, 18)


def test_unknown_op_and_error_type() -> None:
    with pytest.raises(KernelError, match="no kernel for op Frobnicate"):
        run_kernel("Frobnicate", [], {}, 17)
    assert issubclass(KernelError, ValueError)


def test_supported_ops_cover_the_brief() -> None:
    wanted = {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Exp",
        "Log",
        "Tanh",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Relu",
        "LeakyRelu",
        "Clip",
        "Erf",
        "Gelu",
        "Max",
        "Min",
        "Equal",
        "Less",
        "Greater",
        "Not",
        "Where",
        "Cast",
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "LayerNormalization",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "Softmax",
        "Reshape",
        "Flatten",
        "Expand",
        "Concat",
        "Slice",
        "Split",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Shape",
        "Size",
        "Gather",
        "Pad",
        "Resize",
        "Constant",
        "ConstantOfShape",
        "Identity",
        "Dropout",
        "LSTM",
        "Abs",
        "Neg",
        "Floor",
        "Ceil",
        "Sin",
        "Cos",
        "Sign",
        "Range",
        "Tile",
        "And",
        "Or",
        "Xor",
        "GreaterOrEqual",
        "LessOrEqual",
        "Mod",
        "ReduceMin",
        "ReduceProd",
        "ArgMax",
        "ArgMin",
        "CastLike",
        "Softplus",
        "Elu",
        "Selu",
        "PRelu",
        "Mish",
        "Softsign",
        "LogSoftmax",
        "InstanceNormalization",
        "DepthToSpace",
        "SpaceToDepth",
        "GatherElements",
        "TopK",
        "CumSum",
        "NonZero",
    }
    assert wanted <= SUPPORTED_OPS
    assert isinstance(SUPPORTED_OPS, frozenset)


def test_trailing_optional_inputs_may_be_absent_or_none() -> None:
    x = f32(2, 3)
    a = run_kernel("Clip", [x], {}, 13)[0]
    b = run_kernel("Clip", [x, None, None], {}, 13)[0]
    np.testing.assert_array_equal(a, b)
    y = run_kernel("Gemm", [x, f32(3, 4), None], {}, 13)[0]
    assert y.shape == (2, 4)
