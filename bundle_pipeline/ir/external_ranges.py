"""Weights' byte ranges in their external-data files: names, and hashes of plain types (no numpy: planning runs this).

A cold build or a weight edit computes the source digest of a changed external-data file from the tensor hashes of
its ranges before any task runs (``tasks/sources.py``). For the standard numeric types the hash is blake3 of a
small header and the file's bytes as they lie (little-endian, C order), so the planner needs no numpy (~0.1 s to
import, more than the hashing of a 4 MiB edit); the types ONNX packs or numpy lacks take ``external_map``.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import sys
from typing import Any

from ..dtypes import EXTENDED_ITEMSIZE, PACKED_BITS, packed_nbytes
from ..hashing import tensor_hasher
from ..threads import Beside, cores

# numpy's ``dtype.str`` (what ``hashing.tensor_hash`` writes) and item size of the plain numeric types
PLAIN_TYPES: dict[str, tuple[str, int]] = {
    "float16": ("<f2", 2), "float32": ("<f4", 4), "float64": ("<f8", 8),
    "int8": ("|i1", 1), "int16": ("<i2", 2), "int32": ("<i4", 4), "int64": ("<i8", 8),
    "uint8": ("|u1", 1), "uint16": ("<u2", 2), "uint32": ("<u4", 4), "uint64": ("<u8", 8),
    "bool": ("|b1", 1), "complex64": ("<c8", 8), "complex128": ("<c16", 16),
}


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")  # nothing json.dumps would escape


def range_key(offset: int, dtype: str, shape: list[int] | tuple[int, ...]) -> str:
    """What a weight's tensor hash depends on besides its bytes: JSON ``[offset, dtype, shape]`` (as
    ``ir.external_map.hash_ranges`` reads it back). A plain dtype name is spelled as ``json.dumps`` would spell it,
    in a fifth of the time (a plan takes one key a weight, thousands in a real model)."""
    if _PLAIN_NAME.fullmatch(dtype):
        return f'[{int(offset)},"{dtype}",[{",".join(str(int(n)) for n in shape)}]]'
    return json.dumps([int(offset), dtype, [int(n) for n in shape]], separators=(",", ":"))


def ref_range_key(external: dict) -> str:
    """``range_key`` of a weight ref's ``external`` part (``ExternalRef.to_json``)."""
    return range_key(external["offset"], external["dtype"], external["shape"])


def ranges_by_file(refs: dict[str, dict]) -> dict[str, list[str]]:
    """Each external-data file a graph's weight refs name (its ``location``) -> the sorted ``range_key`` of every
    range they take from it: all a weight edit's key needs of the refs (``parse`` stores it apart, as ``sources``,
    so a plan reads a few bytes a graph, ``{}`` for a model without external data, not every weight's ref)."""
    ranges: dict[str, set[str]] = {}
    for ref in refs.values():
        if "external" in ref:
            e = ref["external"]
            ranges.setdefault(e["location"], set()).add(ref_range_key(e))
    return {location: sorted(keys) for location, keys in sorted(ranges.items())}


def hash_plain_ranges(fd: int, keys: list[str], prints: dict[str, str] | None = None) -> dict[str, str] | None:
    """``hashing.tensor_hash`` of each range named by ``range_key`` in file ``fd``, computed from the mapped bytes;
    None when one is not a plain type (``PLAIN_TYPES``) in the file on this little-endian host: the caller then
    uses ``external_map.hash_ranges``, which reads the others through numpy (or gives up). ``prints``: filled
    with each range's fingerprint (``fingerprint``), taken while its bytes are in the CPU's cache."""
    if sys.byteorder != "little":
        return None
    size = os.fstat(fd).st_size
    spans = [_span(key, size) for key in keys]
    if not all(span is not None and span[1] in PLAIN_TYPES for span in spans):
        return None
    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else None
    try:
        view = memoryview(mapped) if mapped is not None else memoryview(b"")
        with view:
            hashes = {}
            for key, (offset, dtype, shape, end) in zip(keys, spans, strict=True):
                with view[offset:end] as piece:
                    hashes[key] = _tensor_hash(dtype, shape, piece)
                    if prints is not None:
                        prints[key] = fingerprint(piece)
                release(mapped, offset, end)
            return hashes
    finally:
        if mapped is not None:
            mapped.close()


def _tensor_hash(dtype: str, shape: list[int], data: memoryview) -> str:
    """``hashing.tensor_hash`` of a C-order little-endian array of plain type ``dtype`` held in ``data``."""
    h = tensor_hasher(PLAIN_TYPES[dtype][0], shape, len(data))
    h.update(data)
    return h.hexdigest()


def release(mapped: mmap.mmap | None, start: int, end: int) -> None:
    """Unmap the whole pages of ``[start, end)`` of a read-only file mapping once read (``MADV_DONTNEED``: the page
    cache keeps them). Unmapping 378 MB at the mapping's close took 14 ms, on the thread that closed it; dropped a
    range at a time it is spread over the threads that read them, and a run's RSS no longer counts the whole file."""
    if mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


def fingerprint(data: Any) -> str:
    """xxh3-128 of a range's bytes (any buffer): what the stat state compares to tell unchanged ranges."""
    import xxhash  # a weight file that changed: not loaded by a no-op

    return xxhash.xxh3_128_hexdigest(data)


def fingerprint_ranges(fd: int, keys: list[str]) -> dict[str, str]:
    """xxh3-128 of the bytes of each range named by ``range_key`` in file ``fd``, for the stat state to tell which
    ranges of a rewritten file still hold the bytes it hashed (``StatState.range_hashes``). A range outside the
    file, or of a type whose size in the file is not known here, gets none (it is hashed again). The ranges are
    split by bytes between one thread a core: mapping the file's pages in costs as much as the hash (a fresh
    process: 32 ms for 378 MB on one thread, 21-25 ms on two; xxh3 lets go of the GIL)."""
    size = os.fstat(fd).st_size
    spans = {key: (span[0], span[3]) for key in keys if (span := _span(key, size)) is not None}
    if not spans or not size:  # (an empty file cannot be mapped)
        return {}
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:

        def prints(part: list[str]) -> dict[str, str]:
            out = {}
            for key in part:
                with view[spans[key][0]:spans[key][1]] as piece:
                    out[key] = fingerprint(piece)
                release(mapped, *spans[key])
            return out

        first, *rest = _split_by_bytes(spans, _threads_for(sum(end - start for start, end in spans.values())))
        beside: list[Beside] = []  # threads of their own: the plan has loaded no pool (5-8 ms to import)
        try:
            beside += [Beside(prints, part, name="bundle-pipeline-fingerprint") for part in rest]
            found = prints(first)
        finally:
            for thread in beside:  # every one joined before the mapping closes, whatever happened here
                thread.join()
        for thread in beside:
            found.update(thread.result())
        return found


FINGERPRINT_BYTES_A_THREAD = 32 << 20  # below this a thread of its own costs more than it saves


def _threads_for(nbytes: int) -> int:
    """Threads to fingerprint ``nbytes`` on: one for each 32 MiB, and no more than the cores this process may use."""
    return max(1, min(cores(), nbytes // FINGERPRINT_BYTES_A_THREAD))


def _split_by_bytes(spans: dict[str, tuple[int, int]], n: int) -> list[list[str]]:
    """The keys of ``spans`` in up to ``n`` runs of about equal bytes (none empty)."""
    total = sum(end - start for start, end in spans.values())
    parts: list[list[str]] = [[] for _ in range(n)]
    done = 0
    for key, (start, end) in spans.items():  # a range goes to the run its middle byte falls in
        parts[min(n - 1, (2 * done + end - start) * n // max(2 * total, 1))].append(key)
        done += end - start
    return [part for part in parts if part]


def _span(key: str, size: int) -> tuple[int, str, list[int], int] | None:
    """(offset, dtype, shape, end) of the range ``range_key`` names, when it lies inside a file of ``size`` bytes
    and its dtype's size in the file is known here; else None."""
    offset, dtype, shape = json.loads(key)
    nbytes = _file_bytes(dtype, math.prod(shape))
    return None if nbytes is None or offset < 0 or offset + nbytes > size else (offset, dtype, shape, offset + nbytes)


def _file_bytes(dtype: str, count: int) -> int | None:
    """Bytes ``count`` elements of ``dtype`` take in an external-data file (``ExternalRef.nbytes``, without numpy)."""
    if dtype in PACKED_BITS:
        return packed_nbytes(dtype, count)
    width = PLAIN_TYPES[dtype][1] if dtype in PLAIN_TYPES else EXTENDED_ITEMSIZE.get(dtype)
    return None if width is None else count * width
