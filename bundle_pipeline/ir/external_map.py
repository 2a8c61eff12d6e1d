"""Large external-data weights as read-only arrays over a memory map of their file: no bytes copied.

``ExternalRef.load`` reads a tensor into a new buffer. On the development VM every page of new memory costs
~17 us on first touch (~60 MB/s), which made reading 1 GiB of weights cost seconds; the file's pages are
usually in the page cache already (the source digest just read them), and mapping them allocates nothing.
Storing a tensor (``cache.put_tensor``) only hashes it and writes its bytes, so a view of the map serves.

A map of a file that shrinks while it is read would fault (SIGBUS), as ``statstate.hash_stream``'s map of the
same file would: the user's input files must not be truncated during a build.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass

import numpy as np

from ..dtypes import PACKED_BITS, dtype_from_name
from ..errors import BundleIOError
from ..files import describe_error, open_regular
from .external import ExternalRef

MAP_MIN_BYTES = 1 << 20  # smaller tensors are read (a map costs a few syscalls and a VMA)


@dataclass(frozen=True)
class MappedExternal:
    """An ``ExternalRef`` whose ``load()`` maps a large tensor's bytes instead of reading them."""

    ref: ExternalRef

    @property
    def nbytes(self) -> int:
        return self.ref.nbytes

    def load(self) -> np.ndarray:
        """The tensor, read-only when mapped. Packed sub-byte types are unpacked (a new array), and big-endian
        hosts convert: both go through ``ExternalRef.load``."""
        if self.ref.nbytes < MAP_MIN_BYTES or self.ref.dtype in PACKED_BITS or np.little_endian is False:
            return self.ref.load()
        return mapped_array(self.ref)


def mapped_array(ref: ExternalRef) -> np.ndarray:
    """A read-only array of ``ref``'s bytes viewed in place in a shared read-only map of its file (the map lives
    as long as the array); BundleIOError when the file cannot be opened or is shorter than the tensor."""
    try:
        fd = open_regular(ref.path)
    except OSError as err:
        raise BundleIOError(f"cannot read external data: {describe_error(err)}", ref.path) from None
    try:
        if ref.offset < 0 or os.fstat(fd).st_size < ref.offset + ref.nbytes:
            raise BundleIOError(f"external data file is shorter than the tensor needs ({ref.nbytes} bytes at "
                                f"offset {ref.offset})", ref.path)
        start = ref.offset - ref.offset % mmap.ALLOCATIONGRANULARITY  # a map starts on a page boundary
        mapped = mmap.mmap(fd, ref.offset + ref.nbytes - start, access=mmap.ACCESS_READ, offset=start)
    finally:
        os.close(fd)  # the map keeps the file open
    dtype = dtype_from_name(ref.dtype)
    return np.frombuffer(mapped, dtype=dtype, count=math.prod(ref.shape), offset=ref.offset - start).reshape(ref.shape)
