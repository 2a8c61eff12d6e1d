"""Large external-data weights as read-only arrays over a memory map of their file: no bytes copied.

``ExternalRef.load`` reads a tensor into a new buffer. On the development VM every page of new memory costs
~17 us on first touch (~60 MB/s), which made reading 1 GiB of weights cost seconds; the file's pages are
usually in the page cache already (the source digest just read them), and mapping them allocates nothing.
Storing a tensor (``cache.put_tensor``) only hashes it and writes its bytes, so a view of the map serves.

``hash_ranges`` gives the tensor hashes of byte ranges of an external-data file, read through one map, for the
types ``external_ranges.hash_plain_ranges`` leaves to numpy (it hashes the plain ones without numpy): the
source digest of an external-data file is made of them (``tasks/sources.py``), and ``parse.weights`` stores a
tensor under the hash remembered for its range while the file keeps the stat signature it was hashed at, so a
cold build hashes each weight byte once with blake3 instead of twice (file digest, then tensor hash).

A map of a file that shrinks while it is read would fault (SIGBUS), as ``statstate.hash_stream``'s map of the
same file would: the user's input files must not be truncated during a build.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import sys
from dataclasses import dataclass

import numpy as np

from ..dtypes import PACKED_BITS, dtype_from_name, unpack_sub_byte
from ..errors import BundleIOError
from ..files import describe_error, open_regular
from ..hashing import tensor_hash
from .external import ExternalRef
from .external_ranges import fingerprint, release

MAP_MIN_BYTES = 1 << 20  # smaller tensors are read (a map costs a few syscalls and a VMA)


Signature = tuple[int, int, int, int]  # statstate.signature: size, mtime_ns, inode, device


def hash_ranges(fd: int, keys: list[str], prints: dict[str, str] | None = None) -> dict[str, str] | None:
    """The tensor hash of each range named by ``external_ranges.range_key`` (JSON ``[offset, dtype, shape]``) in file
    ``fd``, as ``put_tensor`` hashes ``ExternalRef.load()`` of it (sub-byte types unpacked first); None when one
    is not a tensor read that way (outside the file, an unknown dtype, a big-endian host): the caller digests
    the whole file instead, and the stage reports the problem when it reads the tensor. ``prints``: filled with
    each range's fingerprint (``external_ranges.fingerprint`` of its bytes in the file)."""
    if sys.byteorder != "little":  # external data is little-endian: this host converts it on load
        return None
    size = os.fstat(fd).st_size
    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
    out = {}
    for key in keys:
        offset, dtype, shape = json.loads(key)
        try:
            nbytes = ExternalRef("", offset, 0, dtype, tuple(shape)).nbytes
        except TypeError:  # not a dtype this tool stores
            return None
        if offset < 0 or offset + nbytes > size:
            return None
        raw = np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=offset if nbytes else 0)
        try:
            out[key] = tensor_hash(_decode(raw, dtype, tuple(shape)))
        except (TypeError, ValueError):  # a dtype numpy cannot view raw bytes as (the stage refuses it)
            return None
        if prints is not None:
            prints[key] = fingerprint(raw)
        release(mapped if size else None, offset, offset + nbytes)
    return out


def _decode(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype in PACKED_BITS:
        return unpack_sub_byte(raw, dtype, math.prod(shape)).reshape(shape)
    return raw.view(dtype_from_name(dtype)).reshape(shape)


@dataclass(frozen=True)
class MappedExternal:
    """An ``ExternalRef`` whose ``load()`` maps a large tensor's bytes instead of reading them. ``known`` is the
    file's stat signature and the tensor hash remembered for this range at it (``hash_ranges``)."""

    ref: ExternalRef
    known: tuple[Signature, str] | None = None

    @property
    def nbytes(self) -> int:
        return self.ref.nbytes

    def load(self) -> np.ndarray:
        return self.load_hashed()[0]

    def load_hashed(self) -> tuple[np.ndarray, str | None]:
        """The tensor (read-only when mapped) and its tensor hash when ``known`` still holds: the mapped file has
        the signature the hash was taken at. Small tensors, packed sub-byte types (unpacked: a new array) and
        big-endian hosts (converted) go through ``ExternalRef.load`` and get no hash."""
        if self.ref.nbytes < MAP_MIN_BYTES or self.ref.dtype in PACKED_BITS or sys.byteorder != "little":
            return self.ref.load(), None
        return mapped_array(self.ref, self.known)


def mapped_array(ref: ExternalRef, known: tuple[Signature, str] | None = None) -> tuple[np.ndarray, str | None]:
    """A read-only array of ``ref``'s bytes viewed in place in a shared read-only map of its file (the map lives
    as long as the array), and ``known``'s hash if the file has ``known``'s signature; BundleIOError when the
    file cannot be opened or is shorter than the tensor."""
    try:
        fd = open_regular(ref.path)
    except OSError as err:
        raise BundleIOError(f"cannot read external data: {describe_error(err)}", ref.path) from None
    try:
        st = os.fstat(fd)
        if ref.offset < 0 or st.st_size < ref.offset + ref.nbytes:
            raise BundleIOError(f"external data file is shorter than the tensor needs ({ref.nbytes} bytes at "
                                f"offset {ref.offset})", ref.path)
        start = ref.offset - ref.offset % mmap.ALLOCATIONGRANULARITY  # a map starts on a page boundary
        mapped = mmap.mmap(fd, ref.offset + ref.nbytes - start, access=mmap.ACCESS_READ, offset=start)
    finally:
        os.close(fd)  # the map keeps the file open
    same = known is not None and known[0] == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    dtype = dtype_from_name(ref.dtype)
    arr = np.frombuffer(mapped, dtype=dtype, count=math.prod(ref.shape), offset=ref.offset - start).reshape(ref.shape)
    return arr, known[1] if same else None
