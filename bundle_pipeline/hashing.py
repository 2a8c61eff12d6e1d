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


def sha256_hex(data: bytes | memoryview) -> str:
    """sha256 hex digest (what a bundle lists for each file); hashlib loads on first use, not on a no-op."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def stored_json(obj: Any) -> bytes:
    """The canonical encoding of a stage output (``cache.put_json``): sorted keys, compact, UTF-8, by orjson
    (4-5x faster than ``canonical_json`` on IR-sized values).

    orjson spells some floats differently (``0.00001`` for ``1e-05``), so a kind of value is always encoded by
    one of the two: stored outputs here, keys and records by ``canonical_json``. orjson writes NaN and inf as
    null, so an output with a null in it is checked for them (``canonical_json`` then refuses it, as before).
    Only what orjson cannot encode (ints beyond 64 bits) takes ``canonical_json``'s spelling.
    """
    import orjson  # a compiled extension, ~5 ms: loaded by the first task that stores an output, never by a no-op

    try:
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # ints beyond 64 bits, numpy scalars: json's rules (or its error)
        return canonical_json(obj)
    if b"null" in data and orjson.loads(data) != obj and not _finite(obj):
        return canonical_json(obj)  # raises: a NaN or inf became null
    return data


def _finite(obj: Any) -> bool:
    """No NaN or inf anywhere in a JSON-able value (the rare path of ``stored_json``: a value with tuples)."""
    if isinstance(obj, float):
        return obj - obj == 0.0
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return True


def hash_json(obj: Any) -> str:
    """Hash of the canonical JSON of ``obj``; use for task keys and stage outputs."""
    return hash_bytes(canonical_json(obj))


def tensor_hash(arr: np.ndarray) -> str:
    """Hash of a tensor's dtype, shape and C-order bytes: equal values give equal hashes."""
    import numpy as np

    from .dtypes import hash_key

    arr = np.asarray(arr, order="C")  # keeps 0-d arrays 0-d, so a scalar and [x] hash apart
    h = tensor_hasher(hash_key(arr.dtype), arr.shape, arr.nbytes)
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def tensor_hasher(dtype_key: str, shape: tuple[int, ...] | list[int], nbytes: int) -> blake3.blake3:
    """A blake3 hasher fed a tensor's header: feed it the C-order bytes for ``tensor_hash`` (also taken without
    numpy, from a mapped file: ``ir.external_ranges``)."""
    # threads from 1 MiB: half the time of one thread on two cores (4 MiB: 0.70 to 0.36 ms), the same hash
    h = blake3.blake3(max_threads=blake3.blake3.AUTO if nbytes >= 1 << 20 else 1)
    # canonical_json({"dtype", "shape", "v"}) written out: dtype keys are plain ASCII ("<f4", "bfloat16"), and
    # this runs once a tensor (thousands a build)
    h.update(f'{{"dtype":"{dtype_key}","shape":[{",".join(map(str, shape))}],"v":"{HASH_VERSION}"}}'.encode())
    return h
