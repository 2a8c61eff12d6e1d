"""High-performance (approximate) kernels for ``op_select_implmode: high_performance``.

Codegen marks Gelu/Erf/Exp/Tanh/Sigmoid steps with ``"impl": "high_performance"`` and the executor runs them
here instead of the exact library kernels, as CANN's high_performance mode picks the faster, less accurate
implementation of an op. float16 inputs compute in float32; float32 and float64 in their own dtype.

Error bounds (``BOUNDS``; tests/test_options.py checks them for float32 inputs over a dense grid of
-30..30 and the ends of the float32 exp range):

- Exp: ``exp(x) = 2**n * p(r)``, ``n = rint(x / ln 2)``, ``r = x - n ln 2`` (Cody-Waite, |r| <= ln2/2), ``p`` the
  degree-4 Taylor polynomial. Relative error <= 7e-5 (the remainder (ln2/2)^5/5! / e^(-ln2/2)
  = 5.9e-5, plus float32 rounding); overflow to inf and underflow to 0 as exp does.
- Tanh: ``sign(x) (1 - e) / (1 + e)``, ``e = approx_exp(-2|x|)``. Absolute error <= 3.5e-5.
- Sigmoid: ``1 / (1 + e)`` or ``e / (1 + e)``, ``e = approx_exp(-|x|)``. Absolute error <= 2e-5.
- Erf: Abramowitz & Stegun 7.1.26 (5-term rational in ``t = 1 / (1 + 0.3275911 |x|)`` times ``exp(-x^2)``,
  itself within 1.5e-7) with approx_exp. Absolute error <= 5e-5.
- Gelu: the tanh form ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` with approx tanh, for both
  ``approximate="none"`` and ``"tanh"``. Absolute error <= 5e-4 against the exact (erf) Gelu (the tanh form's own
  4.73e-4), <= 3e-5 against the tanh form.

On this cpu target the point is the numerics of a device's fast kernels, not speed: measured on 1e6 float32
values, Erf (44 vs 103 ms) and Gelu (35 vs 63 ms) get faster than the exact float64 erf, but the polynomial
exp takes ~15 numpy passes where ``np.exp`` takes one, so Exp (22 vs 1.6 ms), Tanh (31 vs 5 ms) and Sigmoid
(63 vs 26 ms) get slower.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..kernels import KernelError

BOUNDS = {  # op -> (kind, bound) as documented above
    "Exp": ("relative", 7e-5),
    "Tanh": ("absolute", 3.5e-5),
    "Sigmoid": ("absolute", 2e-5),
    "Erf": ("absolute", 5e-5),
    "Gelu": ("absolute", 5e-4),  # against the exact erf Gelu; 3e-5 against the tanh form (approximate="tanh")
}
GELU_TANH_FORM_BOUND = 3e-5

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that n * _LN2_HI is exact for |n| < 2**11
_LN2_LO = 1.4286068203094173e-06
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_GELU_K = math.sqrt(2.0 / math.pi)


def _work(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype == np.float16 else x


def exp(x: np.ndarray) -> np.ndarray:
    """2**n * degree-4 Taylor polynomial of exp(r); relative error <= 7e-5."""
    x = _work(np.asarray(x))
    dtype = x.dtype.type
    xc = np.clip(x, dtype(-104.0), dtype(89.0))  # beyond these the result is 0 / inf; keeps n in int32 range
    n = np.rint(xc * dtype(_LOG2E))
    r = (xc - n * dtype(_LN2_HI)) - n * dtype(_LN2_LO)
    p = dtype(1.0) + r * (dtype(1.0) + r * (dtype(0.5) + r * (dtype(1.0 / 6.0) + r * dtype(1.0 / 24.0))))
    exponent = np.where(np.isnan(n), 0, n).astype(np.int32)
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(p, exponent).astype(x.dtype, copy=False)


def tanh(x: np.ndarray) -> np.ndarray:
    x = _work(np.asarray(x))
    e = exp(-2 * np.abs(x))
    return np.copysign((1 - e) / (1 + e), x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = _work(np.asarray(x))
    e = exp(-np.abs(x))
    s = 1 / (1 + e)
    return np.where(x >= 0, s, e * s)


def erf(x: np.ndarray) -> np.ndarray:
    x = _work(np.asarray(x))
    dtype = x.dtype.type
    ax = np.abs(x)
    t = 1 / (1 + dtype(_AS_P) * ax)
    a1, a2, a3, a4, a5 = (dtype(a) for a in _AS_A)
    poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    return np.copysign(1 - poly * exp(-ax * ax), x)


def gelu(x: np.ndarray) -> np.ndarray:
    x = _work(np.asarray(x))
    dtype = x.dtype.type
    return dtype(0.5) * x * (1 + tanh(dtype(_GELU_K) * (x + dtype(0.044715) * x * x * x)))


APPROX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Exp": exp, "Tanh": tanh, "Sigmoid": sigmoid, "Erf": erf, "Gelu": gelu,
}


def run(op: str, args: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """The approximate kernel of ``op`` (one float input, one output of the same dtype)."""
    fn = APPROX.get(op)
    if fn is None:
        raise KernelError(f"no high_performance kernel for op {op}; available: {', '.join(sorted(APPROX))}")
    if not args or args[0] is None or np.asarray(args[0]).dtype.kind != "f":
        raise KernelError(f"high_performance {op} needs one floating-point input")
    if op == "Gelu" and attrs.get("approximate", "none") not in ("none", "tanh"):
        raise KernelError(f"Gelu approximate={attrs.get('approximate')!r} is not 'none' or 'tanh'")
    x = np.asarray(args[0])
    with np.errstate(all="ignore"):
        return [np.asarray(fn(x)).astype(x.dtype, copy=False)]
