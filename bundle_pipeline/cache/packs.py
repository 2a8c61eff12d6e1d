"""Tensor packs: many small tensors in one object (``objects/``); in memory, ``DECODED`` (packs read lately).

A tensor entry of its own (``tensors.py``) is a directory with two files: right for a weight of megabytes
(chunked, an edit rewrites only its chunks, a bundle hard-links them), but a model's hundreds of biases,
norms and small convolution kernels would each pay a directory, two files and a rename. A stage that stores
many tensors at once puts the small ones (at most ``SMALL_TENSOR_BYTES``) into one *pack*::

    b"BPTPACK1" | header length (u64 little-endian) | header | zeros to a 64-byte boundary | data

    header: canonical JSON {"v": 1, "tensors": [[tensor_hash, dtype name, shape, offset], ...]}, sorted by
            hash, each tensor once; ``offset`` is relative to the data start and 64-byte aligned, the bytes
            are the C-order little-endian values (ml_dtypes types as their unsigned bit patterns).

The pack is an object (``objects/``): named by the blake3 of all its bytes, verified whole when read, so a
tensor read from a verified pack needs no hash of its own. A tensor's identity is still its ``tensor_hash``;
stage outputs that name packed tensors say where they are in a ``"packs"`` dict (tensor hash -> pack hash),
which ``cache gc`` follows like ``"tensors"``.

State kept: ``DECODED``, this process's recently read packs (verified, decoded), bounded by
``DECODED_CACHE_BYTES``, so the tasks of one build that read the same pack read and verify it once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..dtypes import stored_bytes
from ..hashing import canonical_json
from .recent import Recent

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"BPTPACK1"
ALIGN = 64
SMALL_TENSOR_BYTES = 256 << 10  # tensors up to this size are packed; larger ones get an entry of their own
DECODED_CACHE_BYTES = 256 << 20
PACK_VERSION = 1


def encode(arrays: Mapping[str, np.ndarray]) -> bytes:
    """One pack holding ``arrays`` (tensor hash -> normalised array: C-contiguous, native byte order)."""
    rows, offset = [], 0
    for h in sorted(arrays):
        arr = arrays[h]
        rows.append([h, arr.dtype.name, list(arr.shape), offset])
        offset += _aligned(arr.nbytes)
    header = canonical_json({"tensors": rows, "v": PACK_VERSION})
    start = _aligned(len(MAGIC) + 8 + len(header))
    out = bytearray(start + offset)
    out[: len(MAGIC)] = MAGIC
    out[len(MAGIC) : len(MAGIC) + 8] = struct.pack("<Q", len(header))
    out[len(MAGIC) + 8 : len(MAGIC) + 8 + len(header)] = header
    for (h, _, _, at) in rows:
        out[start + at : start + at + arrays[h].nbytes] = stored_bytes(arrays[h])
    return bytes(out)


def decode(blob: bytes) -> dict[str, np.ndarray]:
    """tensor hash -> read-only array view into ``blob``; ValueError when the pack is malformed."""
    import numpy as np

    from ..dtypes import dtype_from_name, storage_dtype

    if blob[: len(MAGIC)] != MAGIC or len(blob) < len(MAGIC) + 8:
        raise ValueError("not a tensor pack")
    (size,) = struct.unpack("<Q", blob[len(MAGIC) : len(MAGIC) + 8])
    try:
        header = json.loads(blob[len(MAGIC) + 8 : len(MAGIC) + 8 + size])
    except RecursionError:
        raise ValueError("tensor pack header nested past the parser's depth") from None
    if not isinstance(header, dict):
        raise ValueError("tensor pack header is not an object")
    start = _aligned(len(MAGIC) + 8 + size)
    if header.get("v") != PACK_VERSION:
        raise ValueError(f"tensor pack version {header.get('v')!r} is not {PACK_VERSION}")
    out: dict[str, np.ndarray] = {}
    for h, dtype_name, shape, at in header["tensors"]:
        dtype = dtype_from_name(dtype_name)
        count = 1
        for d in shape:
            count *= int(d)
        end = start + int(at) + count * dtype.itemsize
        if int(at) < 0 or end > len(blob):
            raise ValueError(f"tensor {h} lies outside its pack")
        stored = np.frombuffer(blob, dtype=storage_dtype(dtype).newbyteorder("<"), count=count, offset=start + at)
        out[h] = stored.astype(storage_dtype(dtype), copy=False).view(dtype).reshape(shape)
    return out


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


DECODED = Recent(DECODED_CACHE_BYTES)  # pack hash -> its decoded tensors
