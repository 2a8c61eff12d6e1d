"""Tensor store: numpy arrays as uncompressed zarr v3 arrays named by their ``tensor_hash``.

On-disk state
-------------
``tensors/<h[:2]>/<h>/`` is a zarr v3 array (``LocalStore`` on local disks, ``FsspecStore``
elsewhere) holding the C-order values of the array whose ``tensor_hash`` is ``h``::

    zarr.json        shape, dtype, chunk grid, codecs [bytes(little)], fill_value 0, and
                     attributes {"bundle_pipeline": {"tensor_hash": h, "chunk_hashes": [...],
                     "checksum": hash_json([h, chunk_hashes])}}
                     ml_dtypes tensors (bfloat16, float8*, float4, int4, int2, ...), which zarr cannot
                     type, are stored as a same-itemsize unsigned view (uint8/uint16) with the logical
                     dtype name added as "dtype" (and covered by the checksum); plain tensors' files
                     are byte-identical to what they were before such tensors were supported
    c.<i>.<j>...     one file per chunk, every chunk written (write_empty_chunks) so a missing
                     chunk file is damage, not "all zeros"

Chunks are ~``chunk_bytes`` (1 MiB) slabs along axis 0, full size on the other axes (see
``chunk_shape``), so a weight edit rewrites only the chunks it touches and ``chunk_hashes`` tells
later stages which ones those are. ``chunk_hashes[i]`` is ``hash_bytes`` of chunk i's decoded bytes
as zarr returns them: a full chunk shape, edge chunks padded with the fill value 0.

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

from bundle_pipeline.dtypes import EXTENDED, dtype_from_name, is_extended, storage_dtype
from bundle_pipeline.ir.hashing import hash_bytes, hash_json, tensor_hash

if TYPE_CHECKING:
    from bundle_pipeline.cache.store import Backend

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
SUPPORTED_DTYPES = NATIVE_DTYPES | frozenset(EXTENDED.values())

# What zarr/numpy raise on a damaged entry: bad JSON, metadata of the wrong shape (zarr calls
# .get on whatever the JSON holds, hence AttributeError), wrong-sized chunk bytes. Other OSErrors
# (network, permissions) propagate: they say nothing about the entry's contents.
def damage_errors() -> tuple[type[BaseException], ...]:
    # zarr is imported lazily: a no-op build only stats inputs and reads JSON records
    import zarr.errors

    return (ValueError, TypeError, KeyError, IndexError, AttributeError, zarr.errors.BaseZarrError)


def tensor_rel(h: str) -> str:
    return f"tensors/{h[:2]}/{h}"


def chunk_shape(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> tuple[int, ...]:
    """Chunk shape for an array: slabs of whole rows along axis 0 totalling about ``chunk_bytes``.

    When a single row is already larger than ``chunk_bytes`` the slab moves to the first axis whose
    trailing block fits (leading axes get chunk size 1), so huge rows are still split.
    """
    if not shape:
        return ()
    for axis in range(len(shape)):
        block = itemsize * math.prod(shape[axis + 1 :])
        if block <= chunk_bytes or axis == len(shape) - 1:
            rows = min(shape[axis], max(1, chunk_bytes // max(block, 1)))
            chunks = (1,) * axis + (rows,) + tuple(shape[axis + 1 :])
            return tuple(max(1, c) for c in chunks)  # zarr needs positive chunk sizes
    raise AssertionError("unreachable")


def normalise(arr: Any) -> np.ndarray:
    """C-contiguous, native-byte-order copy-if-needed of ``arr``; TypeError for unsupported dtypes."""
    arr = np.asarray(arr)
    if arr.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        raise TypeError(
            f"cannot store dtype {arr.dtype} as a tensor; supported: "
            f"{', '.join(sorted(str(d) for d in SUPPORTED_DTYPES))}"
        )
    # Stored files are little-endian and read back in native order, so hash the native form.
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Chunk regions in C order (zarr's chunk order for a regular grid)."""
    counts = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    for idx in itertools.product(*(range(n) for n in counts)):
        yield tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape, strict=True))


def compute_chunk_hashes(arr: np.ndarray, chunks: tuple[int, ...]) -> list[str]:
    """``hash_bytes`` of each chunk's decoded bytes; edge chunks are padded with zeros like zarr's."""
    out = []
    for region in _grid(arr.shape, chunks):
        block = arr[region]
        if block.shape != chunks:
            padded = np.zeros(chunks, dtype=arr.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        flat = block.reshape(-1)  # a copy when the region is not contiguous
        out.append(hash_bytes(memoryview(np.ascontiguousarray(flat).view(np.uint8))))
    return out


def _attrs(h: str, chunk_hashes: list[str], logical: str | None = None) -> dict[str, Any]:
    if logical is None:  # a plain dtype: exactly the attributes written before ml_dtypes were supported
        return {ATTR: {"tensor_hash": h, "chunk_hashes": chunk_hashes, "checksum": hash_json([h, chunk_hashes])}}
    return {ATTR: {"tensor_hash": h, "chunk_hashes": chunk_hashes, "dtype": logical,
                   "checksum": hash_json([h, chunk_hashes, logical])}}


def put_tensor(backend: Backend, arr: Any, chunk_bytes: int, tmp_name: str) -> str:
    """Write ``arr`` under its tensor hash unless already there; return the hash.

    The array is written to ``tensors/<h[:2]>/<tmp_name>`` first, then renamed into place.
    """
    arr = normalise(arr)
    h = tensor_hash(arr)
    final = tensor_rel(h)
    if backend.exists(f"{final}/zarr.json"):
        return h
    logical = arr.dtype.name if is_extended(arr.dtype) else None
    arr = arr.view(storage_dtype(arr.dtype))  # zarr has no ml_dtypes types: store their bit patterns
    chunks = chunk_shape(arr.shape, arr.dtype.itemsize, chunk_bytes)
    tmp = f"tensors/{h[:2]}/{tmp_name}"
    try:
        backend.new_dir(tmp)
        import zarr
        from zarr.codecs import BytesCodec

        z = zarr.create_array(
            backend.zarr_store(tmp, read_only=False),
            shape=arr.shape,
            dtype=arr.dtype,
            chunks=chunks,
            filters=None,
            compressors=None,
            serializer=BytesCodec(endian="little" if arr.dtype.itemsize > 1 else None),
            fill_value=False if arr.dtype == np.bool_ else 0,
            # flat chunk files (c.0.0) instead of nested directories (c/0/0): a bundle re-pack links every
            # chunk file into a fresh array directory, and each directory created costs more than a link
            chunk_key_encoding={"name": "default", "separator": "."},
            attributes=_attrs(h, compute_chunk_hashes(arr, chunks), logical),
            zarr_format=3,
            config={"write_empty_chunks": True},
        )
        if arr.size:
            z[...] = arr
        _publish(backend, tmp, final)
    finally:
        backend.remove_tree(tmp)  # no-op after a successful rename
    return h


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
    chunk_hashes: list[str]
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
    hashes = attrs["chunk_hashes"]
    logical = attrs.get("dtype")
    if attrs["tensor_hash"] != h or attrs["checksum"] != hash_json([h, hashes] if logical is None
                                                                   else [h, hashes, logical]):
        raise ValueError("tensor attributes missing, damaged or for another hash")
    if len(shape) != len(chunks) or len(hashes) != math.prod(_counts(shape, chunks)):
        raise ValueError("chunk grid and chunk hash list disagree")
    dtype = np.dtype(meta["data_type"]) if isinstance(meta["data_type"], str) else None
    view = _logical(logical, dtype)
    plain = (
        sys.byteorder == "little"
        and dtype in NATIVE_DTYPES
        and meta["codecs"] in _PLAIN_CODECS
        and meta["chunk_key_encoding"] == _PLAIN_KEYS
        and meta["chunk_grid"]["name"] == "regular"
        and not meta.get("storage_transformers")
    )
    return _Meta(shape, chunks, list(hashes), plain, dtype if plain else None, view)


def _logical(name: object, stored: np.dtype | None) -> np.dtype | None:
    """The ml_dtypes type an entry's recorded "dtype" names; it must be one whose bits ``stored`` holds."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in EXTENDED or storage_dtype(name) != stored:
        raise ValueError(f"tensor attributes record dtype {name!r} over stored {stored}")
    return dtype_from_name(name)


def _as_logical(arr: np.ndarray, meta: _Meta) -> np.ndarray:
    return arr if meta.logical is None else arr.view(meta.logical)


# The codec chains put_tensor writes (zarr omits the endianness of 1-byte types) and its chunk keys.
_PLAIN_CODECS = ([{"name": "bytes", "configuration": {"endian": "little"}}], [{"name": "bytes"}])
_PLAIN_KEYS = {"name": "default", "configuration": {"separator": "."}}


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


def chunk_hashes(backend: Backend, h: str) -> list[str] | None:
    """The per-chunk hashes of tensor ``h``, recorded at write time from the true values; None on a
    miss (a damaged zarr.json is deleted). The chunk data itself is not read."""
    try:
        return _load_meta(backend, h).chunk_hashes
    except FileNotFoundError:
        return None
    except damage_errors():
        backend.remove_tree(tensor_rel(h))
        return None
