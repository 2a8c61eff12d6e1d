"""Kernel registry, KernelError and the small helpers every kernel module shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..dtypes import EXTENDED

Inputs = list[np.ndarray | None]
Attrs = dict[str, Any]
Tiling = dict[str, int] | None
Kernel = Callable[[Inputs, Attrs, int, Tiling], list[np.ndarray]]

KERNELS: dict[str, Kernel] = {}  # the default ONNX domain: op type -> kernel
DOMAIN_KERNELS: dict[str, dict[str, Kernel]] = {}  # every other domain: domain -> op type -> kernel
DEFAULT_DOMAINS = ("", "ai.onnx")  # the default domain's two spellings


class KernelError(ValueError):
    """An op, attribute value or input combination the kernel library cannot execute."""


def kernel(*op_types: str, domain: str = "") -> Callable[[Kernel], Kernel]:
    """Register ``fn(inputs, attrs, opset, tiling) -> outputs`` for each op type of ``domain`` (default: the
    default ONNX domain). ``opset`` is then the model's version of that domain."""

    def register(fn: Kernel) -> Kernel:
        table = KERNELS if domain in DEFAULT_DOMAINS else DOMAIN_KERNELS.setdefault(domain, {})
        for op in op_types:
            # One kernel per op: a second registration would silently win or lose by module import order.
            if op in table:
                raise RuntimeError(f"kernel for {op!r} of domain {domain!r} registered twice: {table[op].__module__}"
                                   f" and {fn.__module__}")
            table[op] = fn
        return fn

    return register


def arg(inputs: Inputs, i: int) -> np.ndarray | None:
    """Positional input ``i``, or None when omitted (absent or explicitly None)."""
    return inputs[i] if i < len(inputs) else None


def need(inputs: Inputs, i: int, name: str) -> np.ndarray:
    """Required positional input ``i``; a missing one is a caller error."""
    x = arg(inputs, i)
    if x is None:
        raise KernelError(f"required input {name!r} (#{i}) is missing")
    return np.asarray(x)


def int_list(value: Any) -> list[int]:
    """Attribute or 1-D tensor -> list of python ints."""
    return [int(v) for v in np.asarray(value).reshape(-1)]


def scalar(value: Any) -> Any:
    """A 0-d or 1-element tensor -> python scalar."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise KernelError(f"expected a scalar tensor, got shape {arr.shape}")
    return arr.reshape(-1)[0].item()


def norm_axis(axis: int, rank: int, name: str = "axis") -> int:
    """Map a possibly negative axis into [0, rank)."""
    if not -rank <= axis < rank:
        raise KernelError(f"{name}={axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def norm_axes(axes: Sequence[int], rank: int, name: str = "axes") -> list[int]:
    """Normalise a list of axes; duplicates are a caller error."""
    out = [norm_axis(int(a), rank, name) for a in axes]
    if len(set(out)) != len(out):
        raise KernelError(f"{name} has duplicate entries: {list(axes)}")
    return out


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """Numpy/ONNX multidirectional broadcast, raising KernelError when shapes don't broadcast."""
    try:
        return np.broadcast_shapes(*[tuple(s) for s in shapes])
    except ValueError:
        raise KernelError(f"shapes {[tuple(s) for s in shapes]} do not broadcast") from None


def choice(attrs: Attrs, name: str, default: str, allowed: Sequence[str]) -> str:
    """A string attribute restricted to ``allowed`` (the error lists them)."""
    value = attrs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode()
    if value not in allowed:
        raise KernelError(f"attribute {name}={value!r} is not one of {list(allowed)}")
    return value


def wide(x: np.ndarray) -> np.ndarray:
    """float16 -> float32 for computations numpy would do inaccurately in half precision."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


# ONNX TensorProto.DataType -> numpy dtype: numpy's own types, then ml_dtypes' (16 and up).
ONNX_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    8: np.dtype(object),  # string
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
    14: np.dtype(np.complex64),
    15: np.dtype(np.complex128),
    16: EXTENDED["bfloat16"],
    17: EXTENDED["float8_e4m3fn"],
    18: EXTENDED["float8_e4m3fnuz"],
    19: EXTENDED["float8_e5m2"],
    20: EXTENDED["float8_e5m2fnuz"],
    21: EXTENDED["uint4"],
    22: EXTENDED["int4"],
    23: EXTENDED["float4_e2m1fn"],
    24: EXTENDED["float8_e8m0fnu"],
    25: EXTENDED["uint2"],
    26: EXTENDED["int2"],
}


def onnx_dtype(code: int, name: str = "to") -> np.dtype:
    """numpy dtype of an ONNX element type code (KernelError for types without one, e.g. FLOAT6)."""
    try:
        return ONNX_DTYPES[int(code)]
    except KeyError:
        raise KernelError(f"attribute {name}={code}: element type not supported by the kernels") from None
