"""Write a large new file without filling the page cache: ``O_DIRECT`` from a reused, already-touched buffer.

Why: on the development VM the first touch of a memory page the host has not backed costs ~17 us per 4 KiB
(~60 MB/s), and a buffered write allocates a fresh page-cache page for every 4 KiB it writes. Measured with
256 MiB from a touched buffer: buffered 92 MiB/s the first time, ``O_DIRECT`` 1.1-1.4 GiB/s; a cold build of
1 GiB of weights spent 16 s of its 17 s in the kernel. ``O_DIRECT`` moves the bytes from our buffer to the
device, so no page is allocated; the buffer is allocated and touched once per process and then reused.

``write_new_file`` copies the source piece by piece into such a buffer (the source may be an ``mmap`` of the
user's file or an array: reading them allocates nothing either), hashes each piece (sha256, what a bundle
lists for each file) while it is in the CPU cache, and writes it. ``O_DIRECT`` needs the buffer address, file
offset and length aligned to the device's logical block size (``ALIGN`` covers 512 and 4096): the last piece
is written padded to ``ALIGN`` with zeros and the file then cut to its size (``ftruncate``). Where the file
system refuses ``O_DIRECT`` (tmpfs, some FUSE and network file systems: EINVAL at open or at the first
write) the same loop writes through the page cache, as before. Nothing is fsync'ed: durability is what
``backend_local`` documents (a torn entry fails verification and is rebuilt).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import threading
from typing import Any

from bundle_pipeline.threads import Beside

ALIGN = 4096  # a multiple of every logical block size O_DIRECT may require here (512 or 4096)
PIECE_BYTES = 4 << 20  # one buffer a writing thread; a multiple of ALIGN
DIRECT_MIN_BYTES = 1 << 20  # smaller files are written through the page cache (a few pages: nothing to save)
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the platform has none (macOS): always the plain path
_ZEROS = memoryview(bytes(PIECE_BYTES))  # calloc'd and only ever read: the kernel's shared zero page, no memory


class _BufferPool:
    """Page-aligned anonymous buffers, touched once and kept for the process: a thread takes one for a file."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        buf = mmap.mmap(-1, PIECE_BYTES)  # page-aligned, so ALIGN-aligned
        view = memoryview(buf)
        view[::mmap.PAGESIZE] = _ZEROS[:PIECE_BYTES // mmap.PAGESIZE]  # fault every page in now, once
        view.release()
        return buf

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)

    def reset(self) -> None:
        """In a fork()ed child: another thread of the parent may have held the lock or a buffer."""
        self._free, self._lock = [], threading.Lock()


_POOL = _BufferPool()


def write_new_file(path: str, data: memoryview | bytes, size: int, direct: bool = True) -> str:
    """Create ``path`` (FileExistsError if it exists) holding ``data`` then zeros up to ``size`` bytes (a chunk
    file's padding); return the sha256 of the file's bytes. ``O_DIRECT`` when ``direct``, the file is at least
    ``DIRECT_MIN_BYTES`` and the file system allows it; else through the page cache. On error the partial file
    is left for the caller (files are written inside a temp directory that is removed whole)."""
    src = memoryview(data).cast("B")
    if len(src) > size:
        raise ValueError(f"{len(src)} bytes do not fit a file of {size}")
    use_direct = direct and O_DIRECT != 0 and size >= DIRECT_MIN_BYTES
    fd = _open_new(path, use_direct)
    try:
        return _fill(fd, src, size, use_direct and _has_direct(fd))
    finally:
        os.close(fd)


def _open_new(path: str, direct: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    if direct:
        try:
            return os.open(path, flags | O_DIRECT, 0o666)
        except OSError as err:
            if err.errno != errno.EINVAL:  # EINVAL: this file system has no direct I/O (tmpfs); anything else is real
                raise
    return os.open(path, flags, 0o666)


def _has_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT) if O_DIRECT else False


def _drop_direct(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)


def _fill(fd: int, src: memoryview, size: int, direct: bool) -> str:
    """Write ``src`` and zero padding to ``size`` bytes; the sha256 of what was written. In O_DIRECT mode a
    source at an ALIGN-aligned address (a mapped file, a page-aligned array) is written from where it lies, up
    to its last whole ALIGN block; the rest (and all of an unaligned source) goes through a pooled buffer."""
    digest = hashlib.sha256()
    offset = 0
    if direct and _aligned(src):
        offset, digest = _write_in_place(fd, src)
    if offset == size:
        return digest.hexdigest()
    buf = _POOL.take()
    view = memoryview(buf)
    try:
        while offset < size:
            n = min(PIECE_BYTES, size - offset)
            have = max(0, min(n, len(src) - offset))
            view[:have] = src[offset:offset + have]
            if have < n:  # the padding of an edge chunk (a reused buffer holds old bytes)
                view[have:n] = _ZEROS[:n - have]
            digest.update(view[:n])
            direct = _write_piece(fd, view, n, offset, direct)
            offset += n
        if direct and size % ALIGN:
            os.ftruncate(fd, size)  # the last piece went out padded to ALIGN
    finally:
        view.release()
        _POOL.give(buf)
    return digest.hexdigest()


def _aligned(src: memoryview) -> bool:
    if len(src) < ALIGN:
        return False
    import numpy as np  # loaded already wherever tensors are written; only its view of the address is needed

    return np.frombuffer(src, np.uint8).__array_interface__["data"][0] % ALIGN == 0


def _write_in_place(fd: int, src: memoryview) -> tuple[int, Any]:
    """O_DIRECT-write ``src``'s whole ALIGN blocks from the source itself (no copy, and no buffer to fault
    in: ~1,000 fresh pages a process on the development VM); return the bytes written and the sha256 of them.
    A refusal (EINVAL) or short write stops here: the caller's loop writes the rest, and falls back to the page
    cache. A large source is hashed by a second thread while this one writes (sha256 and the write both let go of
    the GIL: 4 MiB, 2.3 ms of hashing beside 1-3 ms of writing), and hashed again only if the write stopped short."""
    end = len(src) - len(src) % ALIGN
    ahead = Beside(hashlib.sha256, src[:end], name="sha256-ahead") if end >= HASH_AHEAD_BYTES else None
    offset = 0
    try:
        while offset < end:
            piece = src[offset:min(end, offset + PIECE_BYTES)]
            try:
                done = os.pwrite(fd, piece, offset)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                break
            offset += done - done % ALIGN  # a short direct write: the caller rewrites from the last whole block
            if done < len(piece):
                break
    finally:
        whole = ahead.result() if ahead is not None else None  # joined on every way out
    if whole is not None and offset == end:
        return offset, whole
    return offset, hashlib.sha256(src[:offset])


HASH_AHEAD_BYTES = 1 << 20  # below this a thread costs about what it saves


def _write_piece(fd: int, view: memoryview, n: int, offset: int, direct: bool) -> bool:
    """Write ``view[:n]`` at ``offset``; return whether the file is still in O_DIRECT mode afterwards.

    A direct piece is written rounded up to ALIGN (bytes past ``n`` are cut by the caller's ``ftruncate``); a
    file system that accepted O_DIRECT at open but refuses this write (EINVAL) gets the rest through the page
    cache."""
    if direct:
        padded = -(-n // ALIGN) * ALIGN
        if padded > n:
            view[n:padded] = _ZEROS[:padded - n]
        try:
            done = os.pwrite(fd, view[:padded], offset)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            done = 0
        if done >= n:
            return True
        _drop_direct(fd)  # refused or short: finish without O_DIRECT (a short tail is rewritten below)
        offset, n, start = offset + done, n - done, done
    else:
        start = 0
    while n:
        done = os.pwrite(fd, view[start:start + n], offset)
        offset, n, start = offset + done, n - done, start + done
    return False


with contextlib.suppress(AttributeError):  # os.register_at_fork is POSIX-only
    os.register_at_fork(after_in_child=_POOL.reset)
