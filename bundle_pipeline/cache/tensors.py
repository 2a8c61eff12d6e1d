"""Owns ``tensors/<h[:2]>/<h>/``: one uncompressed zarr v3 array per ``tensor_hash``; nothing in memory.

On-disk state
-------------
``tensors/<h[:2]>/<h>/`` is a zarr v3 array (``LocalStore`` on local disks, ``FsspecStore``
elsewhere) holding the C-order values of the array whose ``tensor_hash`` is ``h``::

    zarr.json        shape, dtype, chunk grid, codecs [bytes(little)], fill_value 0, and
                     attributes {"bundle_pipeline": {"tensor_hash": h, "chunk_sha256": [...],
                     "checksum": hash_json([h, {"chunk_sha256": [...]}])}}: the sha256 of each chunk
                     file, which a bundle digest lists (entries written before this held blake3
                     ``chunk_hashes`` of the chunks instead; they are still read)
                     ml_dtypes tensors (bfloat16, float8*, float4, int4, int2, ...), which zarr cannot
                     type, are stored as a same-itemsize unsigned view (uint8/uint16) with the logical
                     dtype name added as "dtype" (and covered by the checksum); plain tensors' files
                     are byte-identical to what they were before such tensors were supported
    c.<i>.<j>...     one file per chunk, every chunk written (write_empty_chunks) so a missing
                     chunk file is damage, not "all zeros"

Chunks are at most ``chunk_bytes`` (16 MiB) slabs along axis 0, full size on the other axes, balanced (see
``chunk_shape``): they bound the memory and the size of one file. ``chunk_sha256[i]`` is the sha256 of chunk
file i: a full chunk shape, edge chunks padded with the fill value 0, as zarr stores them.

Entries are written with plain file I/O in the layout ``bundle_pipeline.zarr_plain`` describes (zarr
itself would cost 0.3 s to import and milliseconds an entry); zarr opens them as usual. On a local root each
chunk file is written straight from the array's bytes (``chunk_ranges``: every chunk is one contiguous byte
range, an edge chunk then zeros) by ``direct_io`` (O_DIRECT for large files: no page cache filled, no padded
copy made), which returns the file's sha256; other roots get the cut chunks (``chunk_files``).

No compression: measured on 256 MiB of random normal float32 (2 cores, ext4, page cache), zarr
with zstd level 3 wrote at ~0.5 GB/s and read at ~1 GB/s for an 8 % size saving, against
~1.1 GB/s / ~2 GB/s uncompressed. Float mantissas are close to noise, so real weights are not
expected to do much better (not measured: no large trained model was at hand). Uncompressed
chunks also make the stored chunk file equal to its decoded bytes, which lets local reads skip
zarr and read each chunk file straight into the result (``_read_plain``, ~3x faster than zarr's
read path); other layouts and remote roots are read through zarr. The layout is fixed, so the same
array always gives byte-identical files. Arrays are written to ``tensors/<h[:2]>/.tmp-<uuid>/``
and then renamed into place.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bundle_pipeline import zarr_plain
from bundle_pipeline.dtypes import EXTENDED, dtype_from_name, is_extended, storage_dtype
from bundle_pipeline.hashing import hash_json, tensor_hash
from bundle_pipeline.threads import Beside
from bundle_pipeline.zarr_plain import chunk_grid, chunk_shape  # noqa: F401  (chunk_grid: for the cache)

if TYPE_CHECKING:
    from bundle_pipeline.cache.backends import Backend

ATTR = "bundle_pipeline"

# Every ONNX tensor type numpy represents natively, and (stored as their unsigned bit patterns) those
# ml_dtypes adds: bfloat16, float8*, float4, int4/uint4, int2/uint2. STRING is refused (TypeError).
NATIVE_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
)


def __getattr__(name: str):
    if name == "SUPPORTED_DTYPES":  # every dtype put_tensor stores (the ml_dtypes ones load ml_dtypes)
        return NATIVE_DTYPES | frozenset(EXTENDED.values())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What zarr/numpy raise on a damaged entry: bad JSON, metadata of the wrong shape (zarr calls
# .get on whatever the JSON holds, hence AttributeError), wrong-sized chunk bytes. Other OSErrors
# (network, permissions) propagate: they say nothing about the entry's contents.
def damage_errors() -> tuple[type[BaseException], ...]:
    # zarr is imported lazily: a no-op build only stats inputs and reads JSON records
    import zarr.errors

    return (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, zarr.errors.BaseZarrError)


def tensor_rel(h: str) -> str:
    return f"tensors/{h[:2]}/{h}"


def normalise(arr: Any) -> np.ndarray:
    """C-contiguous, native-byte-order copy-if-needed of ``arr``; TypeError for unsupported dtypes."""
    arr = np.asarray(arr)
    if arr.dtype.newbyteorder("=") not in NATIVE_DTYPES and not is_extended(arr.dtype):
        supported = NATIVE_DTYPES | frozenset(EXTENDED.values())
        raise TypeError(
            f"cannot store dtype {arr.dtype} as a tensor; supported: {', '.join(sorted(str(d) for d in supported))}"
        )
    # Stored files are little-endian and read back in native order, so hash the native form.
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def chunk_files(arr: np.ndarray, chunks: tuple[int, ...]) -> Iterator[tuple[str, memoryview]]:
    """(file name, bytes) of each chunk of a plain array: C-order little-endian values, edge chunks padded
    with zeros to the full chunk shape (as zarr stores them). A whole slab along axis 0 is a view, not a copy."""
    for name, region in zarr_plain.chunk_grid(arr.shape, chunks):
        block = arr[region]
        if block.shape != chunks:
            padded = np.zeros(chunks, dtype=arr.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        block = np.ascontiguousarray(block).reshape(-1)  # a copy only when the region is not contiguous
        yield name, memoryview(block.view(np.uint8))


def chunk_ranges(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> Iterator[tuple[str, int, int, int]]:
    """(file name, byte offset, byte length, file size) of each chunk of a C-order array: ``chunk_shape``'s chunks
    (1 on the leading axes, a slab on one axis, whole on the rest) are contiguous byte ranges of the array, and
    an edge chunk's file is its range followed by zeros (the padding ``chunk_files`` writes)."""
    strides = [itemsize * math.prod(shape[k + 1:]) for k in range(len(shape))]
    size = itemsize * math.prod(chunks)
    for name, region in zarr_plain.chunk_grid(shape, chunks):
        start = sum(r.start * st for r, st in zip(region, strides, strict=True))
        yield name, start, itemsize * math.prod(r.stop - r.start for r in region), size


def _write_chunk_files(backend: Backend, tmp: str, arr: np.ndarray, chunks: tuple[int, ...]) -> dict[str, str]:
    """Write ``arr``'s chunk files into temp directory ``tmp``; their sha256 by file name. A local cache writes
    each from the array's bytes with ``direct_io`` (no page cache filled, no padded copy made); elsewhere the
    chunks are cut (``chunk_files``) and written by the backend."""
    digests: dict[str, str] = {}
    if not arr.size:
        return digests
    if not backend.is_local:
        for name, data in chunk_files(arr, chunks):
            digests[name] = hashlib.sha256(data).hexdigest()
            backend.write_new(f"{tmp}/{name}", data)
        return digests
    flat = memoryview(arr.reshape(-1).view(np.uint8))  # C-contiguous (normalise): a view, also of a mapped file
    for name, start, length, size in chunk_ranges(arr.shape, chunks, arr.dtype.itemsize):
        digests[name] = backend.write_new_file(f"{tmp}/{name}", flat[start:start + length], size)
    return digests


def _attrs(h: str, chunk_sha256: list[str], logical: str | None = None) -> dict[str, Any]:
    listed = {"chunk_sha256": chunk_sha256}
    extra = {} if logical is None else {"dtype": logical}
    return {ATTR: {"tensor_hash": h, **listed, **extra, "checksum": hash_json([h, listed, *extra.values()])}}


HASH_BESIDE_BYTES = 1 << 20  # a tensor to write whose hash is not known yet is hashed on a thread beside the write
BESIDE_SHARD = "00"  # where such a write's temp directory goes before its hash names the entry


def put_tensor(backend: Backend, arr: Any, chunk_bytes: int, tmp_name: str, known_hash: str | None = None,
               likely_new: bool = False) -> tuple[str, dict[str, str] | None]:
    """Write ``arr`` under its tensor hash unless already there; return the hash and, when this call wrote
    the entry, the sha256 of each chunk file (file name -> digest), else None. ``known_hash`` is the caller's
    ``tensor_hash(arr)``, taken from the same bytes (``parse.weights``: while the source digest read the file
    at the stat signature it still has); it saves hashing the array again.

    The array is written to ``tensors/<h[:2]>/<tmp_name>`` first (zarr.json last), then renamed into place.
    ``likely_new``: the caller found no entry for these bytes (``parse.weights``, a weight file just edited); a large
    array of a local cache is then hashed on a thread while its chunks are written, in
    ``tensors/<BESIDE_SHARD>/<tmp_name>``, and the hash names the entry once both are done. Otherwise the hash comes
    first: an array already stored is not written again.
    """
    arr = normalise(arr)
    beside = likely_new and known_hash is None and backend.is_local and arr.nbytes >= HASH_BESIDE_BYTES
    # blake3 and the O_DIRECT write both let go of the GIL: a changed 4 MiB tensor's hash (1.3-1.7 ms) no longer
    # comes before its write (2.8-3.5 ms) but beside it
    hashing = Beside(tensor_hash, arr, name="bundle-pipeline-hash") if beside else None
    try:
        return _put_tensor(backend, arr, chunk_bytes, tmp_name, known_hash, hashing)
    finally:
        if hashing is not None:
            hashing.join()  # whatever happened: the thread reads the caller's array (maybe a mapped file)


def _put_tensor(backend: Backend, arr: np.ndarray, chunk_bytes: int, tmp_name: str, known_hash: str | None,
                hashing: Beside | None) -> tuple[str, dict[str, str] | None]:
    h = known_hash if known_hash is not None or hashing is not None else tensor_hash(arr)
    if h is not None and backend.exists(f"{tensor_rel(h)}/zarr.json"):
        return h, None
    logical = arr.dtype.name if is_extended(arr.dtype) else None
    arr = arr.view(storage_dtype(arr.dtype))  # zarr has no ml_dtypes types: store their bit patterns
    chunks = chunk_shape(arr.shape, arr.dtype.itemsize, chunk_bytes)
    tmp = f"tensors/{(h or BESIDE_SHARD)[:2]}/{tmp_name}"
    try:
        backend.new_dir(tmp)
        digests = _write_chunk_files(backend, tmp, arr, chunks)
        if hashing is not None:
            h = hashing.result()
            if backend.exists(f"{tensor_rel(h)}/zarr.json"):
                return h, None  # the same bytes were stored already (the temp is removed below)
            backend.new_dir(f"tensors/{h[:2]}")  # the entry's shard, where its temp was not
        meta = zarr_plain.array_meta(arr.shape, arr.dtype.name, arr.dtype.itemsize, chunks,
                                     _attrs(h, [digests[n] for n, _ in zarr_plain.chunk_grid(arr.shape, chunks)]
                                            if arr.size else [], logical))
        backend.write_new(f"{tmp}/zarr.json", zarr_plain.dumps(meta))
        _publish(backend, tmp, tensor_rel(h))
    finally:
        backend.remove_tree(tmp)  # no-op after a successful rename
    return h, digests


def write_chunks(arr: np.ndarray, chunks: tuple[int, ...], dest: str) -> dict[str, str]:
    """Write ``arr``'s plain chunk files into local directory ``dest``; return their sha256 by file name."""
    os.makedirs(dest, exist_ok=True)
    digests = {}
    stored = normalise(arr).view(storage_dtype(arr.dtype))
    for name, data in (chunk_files(stored, chunks) if stored.size else ()):
        digests[name] = hashlib.sha256(data).hexdigest()
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)
    return digests


def entry_document(h: str, dtype: np.dtype, shape: tuple[int, ...], chunks: tuple[int, ...],
                   chunk_digests: dict[str, str]) -> bytes:
    """The zarr.json of tensor ``h`` (logical ``dtype``) as this version writes it, given its chunk digests."""
    hashes = [chunk_digests[name] for name, _ in zarr_plain.chunk_grid(shape, chunks)]
    stored = storage_dtype(dtype)
    attrs = _attrs(h, hashes, dtype.name if is_extended(dtype) else None)
    return zarr_plain.dumps(zarr_plain.array_meta(shape, stored.name, stored.itemsize, chunks, attrs))


def entry_meta(backend: Backend, h: str) -> _Meta | None:
    """The checked metadata of tensor entry ``h``; None on a miss (a damaged zarr.json is deleted)."""
    try:
        return _load_meta(backend, h)
    except FileNotFoundError:
        return None
    except damage_errors():
        backend.remove_tree(tensor_rel(h))
        return None


def _publish(backend: Backend, tmp: str, final: str) -> None:
    if backend.publish_dir(tmp, final):
        return
    if backend.exists(f"{final}/zarr.json"):
        return  # a concurrent writer published the same content first
    # A destination without zarr.json is debris (a half-copied remote entry): replace it once.
    backend.remove_tree(final)
    if not backend.publish_dir(tmp, final) and not backend.exists(f"{final}/zarr.json"):
        raise OSError(f"could not publish tensor {final}")


@dataclass(frozen=True)
class _Meta:
    """What a reader needs from an entry's zarr.json, after checking it belongs to hash ``h``."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    chunk_sha256: list[str] | None  # None for entries written before they were recorded
    plain: bool  # exactly the layout put_tensor writes: chunks can be read as raw bytes
    dtype: np.dtype | None  # set when plain: the stored (zarr) dtype
    logical: np.dtype | None  # an ml_dtypes type the stored unsigned bit patterns are a view of


def _load_meta(backend: Backend, h: str) -> _Meta:
    """Parse and check ``tensors/.../<h>/zarr.json``; FileNotFoundError when absent, one of
    damage_errors() when it is not the metadata of tensor ``h``."""
    return _parse_meta(backend.read(f"{tensor_rel(h)}/zarr.json"), h)


def _parse_meta(data: bytes, h: str) -> _Meta:
    meta = json.loads(data)
    shape = tuple(int(n) for n in meta["shape"])
    chunks = tuple(int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"])
    attrs = meta["attributes"][ATTR]
    logical = attrs.get("dtype")
    extra = [] if logical is None else [logical]
    if "chunk_sha256" in attrs:
        hashes, listed = attrs["chunk_sha256"], {"chunk_sha256": attrs["chunk_sha256"]}
    else:  # an entry written before chunk files' sha256 were recorded: blake3 of each chunk instead
        hashes, listed = attrs["chunk_hashes"], attrs["chunk_hashes"]
    if attrs["tensor_hash"] != h or attrs["checksum"] != hash_json([h, listed, *extra]):
        raise ValueError("tensor attributes missing, damaged or for another hash")
    if len(shape) != len(chunks) or len(hashes) != math.prod(_counts(shape, chunks)):
        raise ValueError("chunk grid and chunk hash list disagree")
    dtype = np.dtype(meta["data_type"]) if isinstance(meta["data_type"], str) else None
    view = _logical(logical, dtype)
    plain = sys.byteorder == "little" and dtype in NATIVE_DTYPES and zarr_plain.is_plain(meta)
    return _Meta(shape, chunks, list(hashes) if "chunk_sha256" in attrs else None, plain, dtype if plain else None,
                 view)


def _logical(name: object, stored: np.dtype | None) -> np.dtype | None:
    """The ml_dtypes type an entry's recorded "dtype" names; it must be one whose bits ``stored`` holds."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in EXTENDED or storage_dtype(name) != stored:
        raise ValueError(f"tensor attributes record dtype {name!r} over stored {stored}")
    return dtype_from_name(name)


def _as_logical(arr: np.ndarray, meta: _Meta) -> np.ndarray:
    return arr if meta.logical is None else arr.view(meta.logical)


def _counts(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[int]:
    return [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]


def _read_plain(root: str, meta: _Meta) -> np.ndarray:
    """Read uncompressed little-endian chunk files straight into the result (local disks only).

    zarr's read path copies each chunk three times (file -> bytes -> chunk buffer -> result); this
    reads each file once into place, about 3x faster. Only used for the exact layout put_tensor
    writes; anything else goes through zarr. A missing or wrong-sized chunk file is damage.
    """
    assert meta.dtype is not None
    out = np.empty(meta.shape, dtype=meta.dtype)
    if out.size == 0:
        return out
    chunk_nbytes = math.prod(meta.chunks) * meta.dtype.itemsize
    idxs = list(itertools.product(*(range(n) for n in _counts(meta.shape, meta.chunks))))

    def read_one(idx: tuple[int, ...]) -> None:
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, meta.chunks, meta.shape, strict=True))
        path = os.path.join(root, "c" + "".join(f".{i}" for i in idx))
        try:
            with open(path, "rb", buffering=0) as f:
                if os.fstat(f.fileno()).st_size != chunk_nbytes:
                    raise ValueError(f"chunk file has the wrong size: {path}")
                target = out[(*region, ...)]  # the Ellipsis keeps a 0-d result a view, not a scalar
                if target.shape == meta.chunks and target.flags.c_contiguous:
                    _read_exact(f, memoryview(target.reshape(-1).view(np.uint8)))  # a view into out
                else:  # an edge chunk: zarr stored it padded to the full chunk shape
                    buf = np.empty(meta.chunks, dtype=meta.dtype)
                    _read_exact(f, memoryview(buf.reshape(-1).view(np.uint8)))
                    out[region] = buf[tuple(slice(0, r.stop - r.start) for r in region)]
        except FileNotFoundError:
            raise ValueError(f"chunk file missing: {path}") from None

    if len(idxs) == 1:
        read_one(idxs[0])
    else:
        # a few threads keep the disk (or page cache copy) busy while others wait on syscalls
        with ThreadPoolExecutor(max_workers=min(4, len(idxs))) as pool:
            list(pool.map(read_one, idxs))
    return out


def _read_exact(f: Any, view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise ValueError("chunk file ended early")
        done += n


def _read_zarr(backend: Backend, h: str) -> np.ndarray:
    import zarr

    z = zarr.open_array(backend.zarr_store(tensor_rel(h), read_only=True), mode="r", zarr_format=3)
    return np.asarray(z[...]) if z.size else np.zeros(z.shape, dtype=z.dtype)


def get_tensor(backend: Backend, h: str, verify: bool = True, missing_is_corrupt: bool = False) -> np.ndarray | None:
    """Read the array stored under ``h``; None on a miss. A damaged entry, or with ``verify`` one
    whose values don't hash to ``h``, is deleted and reported as a miss."""
    try:
        meta = _load_meta(backend, h)
        if meta.plain and backend.is_local:
            arr = _read_plain(backend.path(tensor_rel(h)), meta)
        else:
            arr = _read_zarr(backend, h)
        arr = _as_logical(arr, meta)
    except FileNotFoundError:
        # No zarr.json: absent, or (object stores) still being copied in by another writer
        if missing_is_corrupt:
            backend.remove_tree(tensor_rel(h))
        return None
    except damage_errors():
        backend.remove_tree(tensor_rel(h))
        return None
    if arr.shape != meta.shape or (verify and tensor_hash(arr) != h):
        backend.remove_tree(tensor_rel(h))
        return None
    return arr


def verify_local_copy(path: str, h: str) -> bool:
    """Whether the zarr array at local directory ``path`` (an exported entry) holds tensor ``h``.

    Used after downloading an entry from a remote cache: the copy is checked, not the remote again.
    """
    try:
        with open(os.path.join(path, "zarr.json"), "rb") as f:
            meta = _parse_meta(f.read(), h)
        if meta.plain:
            arr = _read_plain(path, meta)
        else:
            import zarr
            from zarr.storage import LocalStore

            z = zarr.open_array(LocalStore(path, read_only=True), mode="r", zarr_format=3)
            arr = np.asarray(z[...]) if z.size else np.zeros(z.shape, dtype=z.dtype)
        arr = _as_logical(arr, meta)
    except (FileNotFoundError, *damage_errors()):
        return False
    return arr.shape == meta.shape and tensor_hash(arr) == h


def chunk_sha256(backend: Backend, h: str) -> list[str] | None:
    """The sha256 of each chunk file of tensor ``h``, in chunk order: as recorded at write time (no chunk
    data is read), or hashed from the files for an entry written before they were recorded; None on a
    miss (a damaged zarr.json is deleted)."""
    try:
        meta = _load_meta(backend, h)
    except FileNotFoundError:
        return None
    except damage_errors():
        backend.remove_tree(tensor_rel(h))
        return None
    if meta.chunk_sha256 is not None:
        return meta.chunk_sha256
    try:
        return [hashlib.sha256(backend.read(f"{tensor_rel(h)}/{name}")).hexdigest()
                for name, _ in zarr_plain.chunk_grid(meta.shape, meta.chunks)]
    except FileNotFoundError:
        return None
