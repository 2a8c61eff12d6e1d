"""direct_io: large new files written with O_DIRECT from an aligned source or a pooled buffer, and the page-cache
fallback.

Every path ends in the same bytes and the same sha256: O_DIRECT with an aligned or a ragged tail (padded write,
then ftruncate), the plain path (small files, ``direct=False``), a file system refusing O_DIRECT at open
(injected EINVAL) and the kernel refusing a direct write (a misaligned buffer: a real EINVAL), after which the
file finishes through the page cache. Tensor entries written through it equal what ``chunk_files`` cuts, on a
local cache and on a remote (fsspec memory) one, and read back equal.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from bundle_pipeline.cache import Cache
from bundle_pipeline.cache import direct_io as dio
from bundle_pipeline.cache import tensors as tensors_mod
from bundle_pipeline.hashing import tensor_hash

MiB = 1 << 20


def pattern(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def direct_supported(folder) -> bool:
    try:
        fd = os.open(os.path.join(folder, ".probe"), os.O_WRONLY | os.O_CREAT | dio.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(os.path.join(folder, ".probe"))
    return dio.O_DIRECT != 0


SIZES = [  # (bytes of data, file size)
    (dio.PIECE_BYTES, dio.PIECE_BYTES),  # one whole aligned piece
    (2 * dio.PIECE_BYTES + 3 * dio.ALIGN, 2 * dio.PIECE_BYTES + 3 * dio.ALIGN),  # aligned tail piece
    (3 * MiB + 123, 3 * MiB + 123),  # ragged tail: written padded, then cut
    (dio.PIECE_BYTES + 5, dio.PIECE_BYTES + 4 * MiB + 77),  # an edge chunk: data, then zeros to the size
    (0, 2 * MiB + 1),  # all padding
    (1000, 5000),  # below DIRECT_MIN_BYTES: the plain path
]


@pytest.mark.parametrize(("have", "size"), SIZES)
@pytest.mark.parametrize("direct", [True, False])
def test_file_holds_data_then_zeros_and_its_sha256_is_returned(tmp_path, have, size, direct):
    data = pattern(have, have)
    path = str(tmp_path / "f")
    digest = dio.write_new_file(path, data, size, direct=direct)
    want = data + bytes(size - have)
    assert Path(path).read_bytes() == want
    assert digest == hashlib.sha256(want).hexdigest()


def page_aligned(data: bytes) -> memoryview:
    buf = mmap.mmap(-1, max(len(data), 1))  # an anonymous map starts on a page: aligned like a mapped file
    buf[:len(data)] = data
    return memoryview(buf)[:len(data)]


@pytest.mark.parametrize(("have", "size"), SIZES)
def test_an_aligned_source_is_written_from_where_it_lies_with_the_same_bytes(tmp_path, have, size, monkeypatch):
    data = pattern(have, have + 1)
    if direct_supported(tmp_path) and have % dio.ALIGN == 0 and have == size and size >= dio.DIRECT_MIN_BYTES:
        monkeypatch.setattr(dio._POOL, "take", lambda: pytest.fail("whole aligned blocks need no buffer"))
    digest = dio.write_new_file(str(tmp_path / "f"), page_aligned(data), size)
    want = data + bytes(size - have)
    assert (tmp_path / "f").read_bytes() == want and digest == hashlib.sha256(want).hexdigest()


def test_an_aligned_source_refused_in_place_finishes_through_the_buffer(tmp_path, monkeypatch):
    real_pwrite, calls = os.pwrite, []

    def refuse_first(fd, data, offset):  # a file system that takes O_DIRECT from its own buffers only
        calls.append(offset)
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(dio.os, "pwrite", refuse_first)
    data = pattern(2 * dio.PIECE_BYTES + 100, 7)
    digest = dio.write_new_file(str(tmp_path / "f"), page_aligned(data), len(data))
    assert (tmp_path / "f").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("stop", ["refused", "short"])
def test_an_in_place_write_stopping_midway_still_returns_the_sha256_of_the_file(tmp_path, monkeypatch, stop):
    """The source is hashed ahead on another thread while it is written; a write that stops after the first
    piece (refused, or short by a few blocks) leaves that hash unused and the file's digest still right."""
    real_pwrite, calls = os.pwrite, []

    def stop_second(fd, data, offset):
        calls.append(offset)
        if len(calls) != 2:
            return real_pwrite(fd, data, offset)
        if stop == "refused":
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data[: len(data) - 3 * dio.ALIGN], offset)  # whole blocks, short

    monkeypatch.setattr(dio.os, "pwrite", stop_second)
    data = pattern(3 * dio.PIECE_BYTES + 100, 11)
    digest = dio.write_new_file(str(tmp_path / "f"), page_aligned(data), len(data))
    assert (tmp_path / "f").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_a_reused_buffer_does_not_leak_old_bytes_into_padding(tmp_path):
    dio.write_new_file(str(tmp_path / "a"), b"\xff" * (2 * dio.PIECE_BYTES), 2 * dio.PIECE_BYTES)
    dio.write_new_file(str(tmp_path / "b"), b"\x01" * 10, dio.PIECE_BYTES + 3)
    assert (tmp_path / "b").read_bytes() == b"\x01" * 10 + bytes(dio.PIECE_BYTES - 7)


def test_large_files_are_opened_for_direct_io_where_the_file_system_allows(tmp_path):
    if not direct_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    fd = dio._open_new(str(tmp_path / "f"), direct=True)
    try:
        assert dio._has_direct(fd)
    finally:
        os.close(fd)


def test_a_file_system_refusing_direct_io_at_open_gets_a_plain_write(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):  # what tmpfs before Linux 6.6, ramfs and some FUSE file systems answer
        if flags & dio.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(dio.os, "open", no_direct)
    data = pattern(3 * MiB + 5, 1)
    digest = dio.write_new_file(str(tmp_path / "f"), data, len(data))
    assert (tmp_path / "f").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_a_refused_direct_write_finishes_through_the_page_cache(tmp_path):
    if not direct_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    fd = dio._open_new(str(tmp_path / "f"), direct=True)
    buf = mmap.mmap(-1, 2 * dio.ALIGN)
    buf[:] = bytes(range(256)) * (2 * dio.ALIGN // 256)
    view = memoryview(buf)
    try:
        # a buffer one byte past a page boundary: the kernel refuses the direct write with EINVAL
        still_direct = dio._write_piece(fd, view[1:], dio.ALIGN, 0, True)
        assert not still_direct and not dio._has_direct(fd)
    finally:
        os.close(fd)
        view.release()
    assert (tmp_path / "f").read_bytes() == bytes(buf[1:1 + dio.ALIGN])


def test_errors_other_than_einval_propagate_and_existing_files_are_not_overwritten(tmp_path):
    with pytest.raises(FileNotFoundError):
        dio.write_new_file(str(tmp_path / "missing" / "f"), b"x" * (2 * MiB), 2 * MiB)
    (tmp_path / "f").write_bytes(b"user's")
    with pytest.raises(FileExistsError):
        dio.write_new_file(str(tmp_path / "f"), b"x" * (2 * MiB), 2 * MiB)
    assert (tmp_path / "f").read_bytes() == b"user's"
    with pytest.raises(ValueError):
        dio.write_new_file(str(tmp_path / "g"), b"x" * 10, 9)


@pytest.mark.parametrize(("shape", "dtype"), [((1000, 1500), "float32"), ((3, 700, 1023), "float16"),
                                              ((2_500_001,), "int8")])
def test_large_entries_hold_the_chunks_zarr_would_and_read_back_equal(tmp_path, memory_root, shape, dtype):
    arr = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    local = Cache(tmp_path / "c", chunk_bytes=2 * MiB + 100, state_dir=tmp_path / "s")
    remote = Cache(memory_root, chunk_bytes=2 * MiB + 100, state_dir=tmp_path / "s2")
    h = local.put_tensor(arr)
    assert remote.put_tensor(arr) == h == tensor_hash(arr)
    chunks = tensors_mod.chunk_shape(arr.shape, arr.dtype.itemsize, 2 * MiB + 100)
    want = {name: bytes(data) for name, data in tensors_mod.chunk_files(arr, chunks)}
    assert len(want) > 1 and any(len(b) % dio.ALIGN for b in want.values())
    root = local._backend.path(f"tensors/{h[:2]}/{h}")
    got = {name: (Path(root) / name).read_bytes() for name in want}
    assert got == want and sorted(os.listdir(root)) == sorted([*want, "zarr.json"])
    in_order = [hashlib.sha256(b).hexdigest() for b in want.values()]  # chunk_files yields in chunk order
    assert local.tensor_chunks(h) == remote.tensor_chunks(h) == in_order
    for c in (local, remote):
        back = c.get_tensor(h)
        assert back.dtype == arr.dtype and back.tobytes() == arr.tobytes()


def test_a_read_only_mapped_array_is_stored_as_it_is(tmp_path):
    arr = np.arange(3 * MiB // 4, dtype=np.float32).reshape(-1, 256)
    path = tmp_path / "weights.bin"
    path.write_bytes(arr.tobytes())
    with open(path, "rb") as f:
        mapped = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.float32).reshape(arr.shape)
    assert not mapped.flags.writeable
    c = Cache(tmp_path / "c", state_dir=tmp_path / "s")
    h = c.put_tensor(mapped)
    assert h == tensor_hash(arr) and c.get_tensor(h).tobytes() == arr.tobytes()
