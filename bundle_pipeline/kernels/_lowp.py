"""Conversions to and from the ml_dtypes element types with ONNX semantics (Cast, CastLike, QuantizeLinear).

ml_dtypes' own ``astype`` is ONNX's conversion for most pairs: round to nearest even into the float
types, truncate and wrap into int4/uint4/int2/uint2 (what onnx's reference and its backend test data do).
What it does not do, ONNX defines here:

- ``saturate`` (float8 E4M3FN/E4M3FNUZ/E5M2/E5M2FNUZ, the default): out-of-range values and infinities
  clamp to the largest finite value of the sign; NaN stays NaN. Without it ml_dtypes' overflow (NaN or
  Inf) is kept.
- FLOAT8E8M0 (a power of two, 2**(e-127), byte e; 0xFF is NaN): the float32 exponent field rounded by
  ``round_mode`` ("up": any fraction bumps it; "nearest"; "down": truncate), saturating at 0xFE.
- pairs ml_dtypes refuses (e.g. int4 -> uint4, float8 -> e8m0) go through int64 or float64, which hold
  every value of these types exactly, so only the final step rounds.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..dtypes import EXTENDED

FLOAT8_SATURATING = frozenset(EXTENDED[n] for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                                                     "float8_e5m2fnuz"))
E8M0 = EXTENDED["float8_e8m0fnu"]
SUB_BYTE_INTS = frozenset(EXTENDED[n] for n in ("int4", "uint4", "int2", "uint2"))
ROUND_MODES = ("up", "nearest", "down")


def is_integer(dtype: np.dtype) -> bool:
    """Integer types, numpy's and ml_dtypes' (int4, uint4, int2, uint2); bool is not one."""
    return dtype.kind in "iu" or dtype in SUB_BYTE_INTS


def int_range(dtype: np.dtype) -> tuple[int, int]:
    """(min, max) of an integer type, numpy's or ml_dtypes'."""
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def convert(x: np.ndarray, dtype: np.dtype, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast of a numeric/bool array to ``dtype`` (saturate and round_mode as the Cast attributes)."""
    if dtype == E8M0:
        return to_e8m0(x, saturate, round_mode)
    if dtype in FLOAT8_SATURATING and saturate:
        return saturate_float8(x, dtype)
    return astype(x, dtype)


def astype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``x.astype(dtype)``, through int64 / float64 for the pairs ml_dtypes has no direct cast for."""
    with np.errstate(all="ignore"):
        try:
            return x.astype(dtype)
        except TypeError:
            wide = np.int64 if is_integer(x.dtype) and is_integer(dtype) else np.float64
            return x.astype(wide).astype(dtype)


def saturate_float8(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Clamp to the float8 type's finite range (infinities included), then round; NaN stays NaN."""
    info = ml_dtypes.finfo(dtype)
    if x.dtype == np.bool_ or x.dtype in SUB_BYTE_INTS:
        x = astype(x, np.dtype(np.float32))
    with np.errstate(all="ignore"):
        # python float bounds: the clamp happens in x's own type, like onnx's saturate_cast
        return astype(np.clip(x, float(info.min), float(info.max)), dtype)


def to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """FLOAT8E8M0 from the float32 value's exponent field: the sign is dropped, NaN/Inf become 0xFF."""
    if round_mode not in ROUND_MODES:
        raise ValueError(f"round_mode={round_mode!r} is not one of {list(ROUND_MODES)}")
    bits = astype(np.asarray(x), np.dtype(np.float32)).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)  # uint16: room for the carry past 0xFE
    special = exponent == 0xFF
    if round_mode == "up":
        bump = (bits & 0x7FFFFF) != 0
    elif round_mode == "nearest":
        guard = (bits & 0x400000) != 0
        bump = guard & (((bits & 0x3FFFFF) != 0) | (exponent > 0))  # ties away from an exponent of 0 only
    else:
        bump = np.zeros(bits.shape, dtype=bool)
    bump &= ~special
    if saturate:
        bump &= exponent != 0xFE  # the largest power of two stays, instead of overflowing into NaN
    out = np.where(special, 0xFF, exponent + bump).astype(np.uint8)
    return out.view(E8M0)
