"""Elementwise kernels: arithmetic, comparisons, logic, activations, Where, Cast."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import _lowp
from ._registry import (
    Attrs,
    Inputs,
    KernelError,
    Tiling,
    arg,
    broadcast_shape,
    choice,
    kernel,
    need,
    onnx_dtype,
    wide,
)

Unary = Callable[[np.ndarray, Attrs], np.ndarray]
Binary = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _unary(op: str, fn: Unary) -> None:
    """Register a one-input kernel whose result keeps the input dtype."""

    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        x = need(inputs, 0, "X")
        # Overflow/invalid warnings are expected (exp of large values, log of 0); ONNX wants inf/nan.
        with np.errstate(all="ignore"):
            y = fn(x, attrs)
        return [np.asarray(y).astype(x.dtype, copy=False)]

    kernel(op)(run)


def _binary(op: str, fn: Binary, out_dtype: np.dtype | None = None) -> None:
    """Register a broadcasting two-input kernel; result dtype = first input's unless ``out_dtype``."""

    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        a, b = need(inputs, 0, "A"), need(inputs, 1, "B")
        broadcast_shape(a.shape, b.shape)
        with np.errstate(all="ignore"):
            y = np.asarray(fn(a, b))
        return [y.astype(out_dtype or a.dtype, copy=False)]

    kernel(op)(run)


# ---- erf (numpy has none; scipy is not a dependency) ----

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _erf_series(x: np.ndarray, terms: int) -> np.ndarray:
    """Maclaurin series of erf, accurate for small |x| (float64)."""
    x2 = x * x
    term = x.copy()
    total = x.copy()
    for n in range(1, terms):
        term = term * (-x2) / n
        total += term / (2 * n + 1)
    return _TWO_OVER_SQRT_PI * total


def _erfc_cf(x: np.ndarray, terms: int = 60) -> np.ndarray:
    """erfc(x) for x >= 3 by its continued fraction, evaluated bottom-up (float64)."""
    frac = np.zeros_like(x)
    for k in range(terms, 0, -1):
        frac = (k / 2.0) / (x + frac)
    return np.exp(-x * x) / math.sqrt(math.pi) / (x + frac)


def _erfc_nr(z: np.ndarray) -> np.ndarray:
    """Numerical Recipes erfc for z >= 0: fractional error < 1.2e-7, plenty for float32."""
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (
        1.00002368
        + t
        * (
            0.37409196
            + t
            * (
                0.09678418
                + t
                * (
                    -0.18628806
                    + t
                    * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))
                )
            )
        )
    )
    return t * np.exp(-z * z + poly)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorised error function; float64 inputs get ~1e-14 accuracy, others ~1e-7 relative."""
    xd = np.asarray(x, dtype=np.float64)
    ax = np.abs(xd)
    out = np.empty_like(xd)
    precise = x.dtype == np.float64
    small = ax < (3.0 if precise else 0.5)
    # Small |x| uses the series so that erf(x) ~ 2x/sqrt(pi) keeps its relative accuracy near 0.
    out[small] = _erf_series(xd[small], 60 if precise else 12)
    big = ~small & ~np.isnan(xd)
    tail = _erfc_cf(ax[big]) if precise else _erfc_nr(ax[big])
    out[big] = np.sign(xd[big]) * (1.0 - tail)
    out[np.isnan(xd)] = np.nan
    return out


# ---- arithmetic ----


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        # ONNX integer Div truncates toward zero like C; numpy floor-divides.
        q = np.floor_divide(a, b)
        fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        return np.where(fix & (b != 0), q + 1, q)
    return np.divide(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # The result keeps the base dtype (opset 12+ allows a different exponent type).
    if a.dtype.kind in "iu":
        return np.power(a.astype(np.float64), b.astype(np.float64))
    return np.power(wide(a), b.astype(wide(a).dtype, copy=False))


@kernel("Mod")
def _mod(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    a, b = need(inputs, 0, "A"), need(inputs, 1, "B")
    broadcast_shape(a.shape, b.shape)
    fmod = int(attrs.get("fmod", 0))
    if fmod not in (0, 1):
        raise KernelError(f"attribute fmod={fmod} must be 0 or 1")
    with np.errstate(all="ignore"):
        # fmod=1: sign of the dividend (C fmod); fmod=0: sign of the divisor (python %).
        y = np.fmod(a, b) if fmod else np.mod(a, b)
    return [y.astype(a.dtype, copy=False)]


_binary("Add", np.add)
_binary("Sub", np.subtract)
_binary("Mul", np.multiply)
_binary("Div", _div)
_binary("Pow", _pow)
_binary("Equal", np.equal, np.dtype(bool))
_binary("Less", np.less, np.dtype(bool))
_binary("Greater", np.greater, np.dtype(bool))
_binary("LessOrEqual", np.less_equal, np.dtype(bool))
_binary("GreaterOrEqual", np.greater_equal, np.dtype(bool))
_binary("And", np.logical_and, np.dtype(bool))
_binary("Or", np.logical_or, np.dtype(bool))
_binary("Xor", np.logical_xor, np.dtype(bool))


def _variadic_kernel(fn: Binary, mean: bool = False) -> Callable[..., list[np.ndarray]]:
    def run(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
        xs = [np.asarray(x) for x in inputs if x is not None]
        if not xs:
            raise KernelError("variadic op needs at least one input")
        broadcast_shape(*[x.shape for x in xs])
        acc = xs[0]
        with np.errstate(all="ignore"):
            for x in xs[1:]:
                acc = fn(acc, x)
            if mean:
                acc = acc / len(xs)
        return [np.broadcast_to(acc, broadcast_shape(*[x.shape for x in xs])).astype(xs[0].dtype)]

    return run


kernel("Max")(_variadic_kernel(np.maximum))
kernel("Min")(_variadic_kernel(np.minimum))
kernel("Sum")(_variadic_kernel(np.add))
kernel("Mean")(_variadic_kernel(np.add, mean=True))


# ---- unary math ----

_unary("Sqrt", lambda x, a: np.sqrt(x))
_unary("Reciprocal", lambda x, a: np.reciprocal(x))
_unary("Exp", lambda x, a: np.exp(x))
_unary("Log", lambda x, a: np.log(x))
_unary("Tanh", lambda x, a: np.tanh(x))
_unary("Abs", lambda x, a: np.abs(x))
_unary("Neg", lambda x, a: np.negative(x))
_unary("Floor", lambda x, a: np.floor(x))
_unary("Ceil", lambda x, a: np.ceil(x))
_unary("Sin", lambda x, a: np.sin(x))
_unary("Cos", lambda x, a: np.cos(x))
_unary("Sign", lambda x, a: np.sign(x))
_unary("Erf", lambda x, a: erf(x))
_unary("Not", lambda x, a: np.logical_not(x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x)


def _clip_bound(inputs: Inputs, attrs: Attrs, i: int, name: str) -> np.ndarray | None:
    # opset >= 11 passes min/max as optional inputs; older models used attributes.
    v = arg(inputs, i)
    if v is not None:
        if np.asarray(v).size != 1:
            raise KernelError(f"Clip {name} must be a scalar")
        return np.asarray(v).reshape(())
    return np.asarray(attrs[name]) if name in attrs else None


@kernel("Clip")
def _clip(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    lo, hi = _clip_bound(inputs, attrs, 1, "min"), _clip_bound(inputs, attrs, 2, "max")
    y = x
    # max after min: when min > max every value becomes max, as the spec requires.
    if lo is not None:
        y = np.maximum(y, lo.astype(x.dtype))
    if hi is not None:
        y = np.minimum(y, hi.astype(x.dtype))
    return [np.asarray(y).astype(x.dtype, copy=False)]


def _gelu(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    approx = choice(attrs, "approximate", "none", ("none", "tanh"))
    xf = wide(x)
    if approx == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (xf + 0.044715 * xf**3)
        return 0.5 * xf * (1.0 + np.tanh(inner))
    return 0.5 * xf * (1.0 + erf(xf / math.sqrt(2.0)).astype(xf.dtype))


def _f(attrs: Attrs, name: str, default: float) -> float:
    return float(attrs.get(name, default))


_unary("Sigmoid", lambda x, a: sigmoid(x))
_unary("Relu", lambda x, a: np.maximum(x, np.zeros((), x.dtype)))
_unary("LeakyRelu", lambda x, a: np.where(x >= 0, x, x * _f(a, "alpha", 0.01)))
_unary(
    "HardSigmoid",
    lambda x, a: np.clip(_f(a, "alpha", 0.2) * wide(x) + _f(a, "beta", 0.5), 0.0, 1.0),
)
_unary("HardSwish", lambda x, a: wide(x) * np.clip(wide(x) / 6.0 + 0.5, 0.0, 1.0))
_unary("Elu", lambda x, a: np.where(x >= 0, x, _f(a, "alpha", 1.0) * np.expm1(x)))
_unary(
    "Selu",
    lambda x, a: (
        _f(a, "gamma", 1.05070102214813232421875)
        * np.where(x > 0, x, _f(a, "alpha", 1.67326319217681884765625) * np.expm1(x))
    ),
)
_unary("Softplus", lambda x, a: _softplus(x))
_unary("Softsign", lambda x, a: x / (1 + np.abs(x)))
_unary("Mish", lambda x, a: wide(x) * np.tanh(_softplus(wide(x))))
_unary("Gelu", _gelu)


@kernel("PRelu")
def _prelu(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, slope = need(inputs, 0, "X"), need(inputs, 1, "slope")
    if broadcast_shape(x.shape, slope.shape) != x.shape:
        raise KernelError(f"PRelu slope shape {slope.shape} does not broadcast to X {x.shape}")
    return [np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)]


@kernel("Where")
def _where(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    c, x, y = need(inputs, 0, "condition"), need(inputs, 1, "X"), need(inputs, 2, "Y")
    broadcast_shape(c.shape, x.shape, y.shape)
    return [np.where(c.astype(bool, copy=False), x, y).astype(x.dtype, copy=False)]


# ---- Cast ----


def cast_array(x: np.ndarray, dtype: np.dtype, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast; ``saturate`` concerns float8 targets, ``round_mode`` FLOAT8E8M0 (see ``_lowp``)."""
    if dtype.kind == "O":
        # numpy's shortest round-trip repr, as the ONNX reference renders numbers.
        return x.astype(str).astype(object)
    if x.dtype == object:
        # Strings parse as numbers ("INF", "-inf", "NaN" included); bools parse via float.
        parsed = np.array([float(v) for v in x.reshape(-1)], dtype=np.float64).reshape(x.shape)
        return cast_array(parsed, dtype, saturate, round_mode)
    try:
        return _lowp.convert(x, dtype, saturate, round_mode)
    except ValueError as err:
        raise KernelError(str(err)) from None


def _cast_attrs(attrs: Attrs) -> tuple[bool, str]:
    """saturate (default 1) and round_mode (default "up"), as Cast and CastLike define them."""
    return bool(int(attrs.get("saturate", 1))), choice(attrs, "round_mode", "up", _lowp.ROUND_MODES)


@kernel("Cast")
def _cast(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    if "to" not in attrs:
        raise KernelError("attribute 'to' is required")
    return [cast_array(x, onnx_dtype(attrs["to"]), *_cast_attrs(attrs))]


@kernel("CastLike")
def _cast_like(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, like = need(inputs, 0, "input"), need(inputs, 1, "target_type")
    return [cast_array(x, like.dtype, *_cast_attrs(attrs))]


# ---- more unary math (trigonometric, hyperbolic, rounding, tests) ----

_unary("Tan", lambda x, a: np.tan(x))
_unary("Asin", lambda x, a: np.arcsin(x))
_unary("Acos", lambda x, a: np.arccos(x))
_unary("Atan", lambda x, a: np.arctan(x))
_unary("Sinh", lambda x, a: np.sinh(x))
_unary("Cosh", lambda x, a: np.cosh(x))
_unary("Asinh", lambda x, a: np.arcsinh(x))
_unary("Acosh", lambda x, a: np.arccosh(x))
_unary("Atanh", lambda x, a: np.arctanh(x))
_unary("Round", lambda x, a: np.round(x))  # halves to even, as ONNX requires
_unary("Celu", lambda x, a: np.maximum(0, x) + np.minimum(0, _f(a, "alpha", 1.0) * np.expm1(x / _f(a, "alpha", 1.0))))
_unary("ThresholdedRelu", lambda x, a: np.where(x > _f(a, "alpha", 1.0), x, 0))
_unary("Swish", lambda x, a: wide(x) * sigmoid(_f(a, "alpha", 1.0) * wide(x)))
_unary(
    "Shrink",
    lambda x, a: np.where(
        x < -_f(a, "lambd", 0.5),
        x + _f(a, "bias", 0.0),
        np.where(x > _f(a, "lambd", 0.5), x - _f(a, "bias", 0.0), 0),
    ),
)


@kernel("IsNaN")
def _isnan(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    return [np.isnan(need(inputs, 0, "X"))]


@kernel("IsInf")
def _isinf(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    neg, pos = int(attrs.get("detect_negative", 1)), int(attrs.get("detect_positive", 1))
    return [np.isinf(x) & (((x < 0) & bool(neg)) | ((x > 0) & bool(pos)))]


@kernel("SwiGLU")
def _swiglu(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    a, b = need(inputs, 0, "A"), need(inputs, 1, "B")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise KernelError(f"SwiGLU: A {a.dtype}{a.shape} and B {b.dtype}{b.shape} must have one shape and dtype")
    with np.errstate(all="ignore"):
        y = wide(a) * sigmoid(_f(attrs, "alpha", 1.0) * wide(a)) * wide(b)
    return [y.astype(a.dtype)]


# ---- bitwise ----

_binary("BitwiseAnd", np.bitwise_and)
_binary("BitwiseOr", np.bitwise_or)
_binary("BitwiseXor", np.bitwise_xor)
_unary("BitwiseNot", lambda x, a: np.invert(x))


@kernel("BitShift")
def _bitshift(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, y = need(inputs, 0, "X"), need(inputs, 1, "Y")
    direction = choice(attrs, "direction", "", ("LEFT", "RIGHT"))
    if x.dtype.kind not in "iu" or y.dtype != x.dtype:
        raise KernelError(f"BitShift takes two tensors of one integer type, got {x.dtype} and {y.dtype}")
    x, y = np.broadcast_arrays(x, y)
    bits = x.dtype.itemsize * 8
    # Shifts by a negative amount or >= the width move every bit out: 0, or -1 for a negative right shift.
    out_of_range = (y < 0) | (y >= bits)
    shift = np.where(out_of_range, 0, y)
    if direction == "RIGHT":
        out = np.right_shift(x, shift.astype(x.dtype))  # arithmetic for signed types
        spill = np.where(x < 0, -1, 0) if x.dtype.kind == "i" else 0
    else:
        unsigned = np.dtype(f"u{x.dtype.itemsize}")  # left shifts of signed values wrap as two's complement
        out = np.left_shift(x.astype(unsigned), shift.astype(unsigned)).astype(x.dtype)
        spill = 0
    return [np.where(out_of_range, spill, out).astype(x.dtype)]


@kernel("BitCast")
def _bitcast(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "input")
    dtype = onnx_dtype(attrs.get("to", 0))
    if dtype.kind in "OV" or x.dtype.kind in "OV":
        raise KernelError(f"BitCast between {x.dtype} and {dtype} is not supported")
    if dtype.itemsize != x.dtype.itemsize:
        raise KernelError(f"BitCast needs types of one bit width, got {x.dtype} and {dtype}")
    return [np.asarray(x, order="C").view(dtype)]  # not ascontiguousarray: it turns 0-d into (1,)
