"""Element types by name, including the ONNX types numpy lacks (bfloat16, float8, float4, int4, int2).

Those come from ``ml_dtypes`` (onnx's own numpy_helper uses it). Everything that stores or reads a dtype
*name* (IR types, encoded consts, manifests, cache tensor attributes) goes through ``dtype_from_name``, so
the names round-trip whether or not anything else imported ml_dtypes first.

ml_dtypes arrays hold one element per byte (or two bytes for bfloat16): int4/uint4/float4/int2/uint2 are
*unpacked* in memory, as ``onnx.numpy_helper.to_array`` returns them. Only ONNX's serialised form packs
them (``unpack_sub_byte``). zarr cannot store these dtypes, so storage layers keep them as a same-itemsize
unsigned view (``storage_dtype``) and record the logical name beside it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads with the first array, not with this module (planning uses names only)
    import numpy as np

# ONNX element types numpy cannot represent natively, by the name ml_dtypes (and numpy, once ml_dtypes is
# imported) gives them. FLOAT6 types are left out: onnx.numpy_helper does not convert them either.
EXTENDED_NAMES = ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                  "float8_e8m0fnu", "float4_e2m1fn", "int4", "uint4", "int2", "uint2")


@cache
def _extended_dtypes() -> dict[str, np.dtype]:
    import ml_dtypes  # costs an import only when a low-precision type is really used
    import numpy as np

    return {name: np.dtype(getattr(ml_dtypes, name)) for name in EXTENDED_NAMES}


class _Extended(Mapping):
    """name -> dtype of the ml_dtypes types, importing ml_dtypes on the first lookup, not at import."""

    def __getitem__(self, name: str) -> np.dtype:
        if name not in EXTENDED_NAMES:
            raise KeyError(name)
        return _extended_dtypes()[name]

    def __contains__(self, name: object) -> bool:
        return name in EXTENDED_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(EXTENDED_NAMES)

    def __len__(self) -> int:
        return len(EXTENDED_NAMES)


EXTENDED: Mapping[str, np.dtype] = _Extended()  # name -> dtype
# Bits per element of the types ONNX packs several to a byte in TensorProto / external data.
PACKED_BITS: dict[str, int] = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}
# Bytes an element of the other ml_dtypes types takes (their numpy itemsize, known without loading ml_dtypes)
EXTENDED_ITEMSIZE: dict[str, int] = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1,
                                     "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1}


def packed_nbytes(name: str, count: int) -> int:
    """Bytes ``count`` elements of packed type ``name`` (``PACKED_BITS``) take serialised, the last byte padded."""
    return -(-count * PACKED_BITS[name] // 8)


@cache
def itemsize(name: str) -> int:
    """Bytes an element of stored dtype ``name`` takes (a numpy dtype made per call costs ~1.5 us: a bundle's
    tables have thousands of entries); TypeError when unknown."""
    return dtype_from_name(name).itemsize


def dtype_from_name(name: str) -> np.dtype:
    """numpy dtype of a stored dtype name ("float32", "bfloat16", "int4", ...); TypeError when unknown."""
    if name in EXTENDED:
        return EXTENDED[name]
    import numpy as np

    return np.dtype(name)


@cache
def dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, remembered: numpy computes it anew on every access (microseconds, thousands a parse)."""
    return dtype.name


def is_extended(dtype: np.dtype | str) -> bool:
    """Whether ``dtype`` is one of the ml_dtypes types (numpy has no native equivalent)."""
    # an ml_dtypes dtype's name is its type name; no numpy-native dtype has one of those names
    if isinstance(dtype, str):
        return dtype in EXTENDED_NAMES
    if "ml_dtypes" not in sys.modules:
        return False  # no array of those types can exist before ml_dtypes is loaded
    import numpy as np

    return np.dtype(dtype) in _extended_set()  # a hashed lookup: numpy computes a dtype's .name slowly


@cache
def _extended_set() -> frozenset:
    return frozenset(_extended_dtypes().values())


def storage_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype a storage layer (zarr) holds ``dtype``'s bytes as: itself, or a same-itemsize unsigned int."""
    import numpy as np

    dtype = dtype_from_name(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    return np.dtype(f"uint{8 * dtype.itemsize}") if is_extended(dtype) else dtype


def stored_bytes(arr: np.ndarray) -> memoryview:
    """The bytes a tensor is stored as (packs, the bundle's packed array): C-order little-endian values, ml_dtypes
    types as their bit patterns."""
    plain = sys.byteorder == "little" and arr.dtype.isnative and not is_extended(arr.dtype)
    if plain and arr.flags.c_contiguous and arr.size:  # (a view with a 0 in its shape cannot be cast)
        return memoryview(arr).cast("B")  # the common case, in a tenth of the time (thousands of small tensors)
    stored = storage_dtype(arr.dtype)
    return memoryview(arr.view(stored).astype(stored.newbyteorder("<"), copy=False).reshape(-1).view("u1"))


def hash_key(dtype: np.dtype) -> str:
    """The dtype's part of a tensor hash: numpy's ``str`` ('<f4') as always, the name for ml_dtypes types,
    whose ``str`` is an anonymous '<V1' shared by every 1-byte type (float8 variants would hash alike)."""
    return dtype.name if is_extended(dtype) else dtype.str


def unpack_sub_byte(raw: np.ndarray, name: str, count: int) -> np.ndarray:
    """``count`` elements of packed type ``name`` from ONNX's packed bytes (lowest bits first), unpacked."""
    import numpy as np

    bits = PACKED_BITS[name]
    per_byte = 8 // bits
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size < math.ceil(count / per_byte):
        raise ValueError(f"{raw.size} bytes hold fewer than {count} {name} elements")
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    # ml_dtypes keeps a sub-byte element in the low bits of its byte, high bits zero (as numpy_helper does)
    fields = ((raw[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:count]
    return np.ascontiguousarray(fields).view(EXTENDED[name])
