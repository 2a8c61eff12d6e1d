"""Canonical content hashing: bytes, JSON-able objects and tensors all hash to 64 hex digits (blake3)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import blake3

if TYPE_CHECKING:  # numpy is imported by whoever holds an array; a no-op build never does
    import numpy as np

HASH_VERSION = "1"


def hash_bytes(data: bytes | memoryview) -> str:
    """blake3 hex digest of raw bytes."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO if len(data) > 1 << 22 else 1).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON encoding: sorted keys, no whitespace, no NaN (they are not portable)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def hash_json(obj: Any) -> str:
    """Hash of the canonical JSON of ``obj``; use for task keys and stage outputs."""
    return hash_bytes(canonical_json(obj))


def tensor_hash(arr: np.ndarray) -> str:
    """Hash of a tensor's dtype, shape and C-order bytes: equal values give equal hashes."""
    import numpy as np

    from .dtypes import hash_key

    arr = np.asarray(arr, order="C")  # keeps 0-d arrays 0-d, so a scalar and [x] hash apart
    h = blake3.blake3(max_threads=blake3.blake3.AUTO if arr.nbytes > 1 << 22 else 1)
    # canonical_json({"dtype", "shape", "v"}) written out: dtype keys are plain ASCII ("<f4", "bfloat16"), and
    # this runs once a tensor (thousands a build)
    h.update(f'{{"dtype":"{hash_key(arr.dtype)}","shape":[{",".join(map(str, arr.shape))}],'
             f'"v":"{HASH_VERSION}"}}'.encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()
