"""Tensor store of bundle_pipeline.cache: zarr round trips, chunking, chunk hashes, damage handling."""

from __future__ import annotations

import hashlib
import os
import uuid

import numpy as np
import pytest

from bundle_pipeline.cache import SUPPORTED_DTYPES, Cache, CacheMiss, chunk_shape
from bundle_pipeline.hashing import tensor_hash

DTYPES = sorted(str(d) for d in SUPPORTED_DTYPES)
SHAPES = [(), (0,), (1,), (7,), (0, 3), (3, 0, 2), (5, 3), (2, 3, 4, 5), (1000, 3)]


@pytest.fixture(params=["local", "memory"])
def cache(request, tmp_path, memory_root):
    # tiny chunks so small test arrays span many chunks
    if request.param == "local":
        return Cache(tmp_path / "cache", chunk_bytes=256, state_dir=tmp_path / "state")
    return Cache(memory_root, chunk_bytes=256, state_dir=tmp_path / "state")


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    # random bit patterns: covers NaNs, infinities, subnormals and negative zero
    return rng.integers(0, 256, size=(*shape, dt.itemsize), dtype=np.uint8).view(dt).reshape(shape)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def tensor_files(c: Cache, h: str) -> dict[str, bytes]:
    b = c._backend
    base = b.path(f"tensors/{h[:2]}/{h}")
    if b.is_local:
        out = {}
        for dirpath, _, files in os.walk(base):
            for f in files:
                full = os.path.join(dirpath, f)
                with open(full, "rb") as fh:
                    out[os.path.relpath(full, base)] = fh.read()
        return out
    return {p[len(base) + 1 :]: b.fs.cat_file(p) for p in b.fs.find(base)}


def write_file(c: Cache, h: str, name: str, data: bytes) -> None:
    b = c._backend
    path = b.path(f"tensors/{h[:2]}/{h}/{name}")
    if b.is_local:
        with open(path, "wb") as f:
            f.write(data)
    else:
        b.fs.pipe_file(path, data)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype_and_shape(tmp_path, dtype):
    c = Cache(tmp_path / "cache", chunk_bytes=64)
    for i, shape in enumerate(SHAPES):
        arr = sample(dtype, shape, seed=i)
        h = c.put_tensor(arr)
        assert h == tensor_hash(arr)
        assert c.has_tensor(h)
        assert_same(c.get_tensor(h), arr)
        assert_same(c.get_tensor(h, verify=False), arr)


def test_round_trip_on_both_backends(cache):
    for i, (dtype, shape) in enumerate([("float32", (40, 7)), ("int64", ()), ("bool", (0, 4)), ("float16", (9,))]):
        arr = sample(dtype, shape, seed=i)
        h = cache.put_tensor(arr)
        assert_same(cache.get_tensor(h), arr)
    assert cache.info()["temp"]["count"] == 0


def test_non_contiguous_and_big_endian_inputs(tmp_path):
    c = Cache(tmp_path / "cache", chunk_bytes=128)
    base = np.arange(600, dtype=np.float32).reshape(20, 30)
    for view in (base.T, base[::3, 1::2], np.asfortranarray(base)):
        h = c.put_tensor(view)
        assert h == tensor_hash(view)
        assert_same(c.get_tensor(h), np.ascontiguousarray(view))
    big = np.arange(50, dtype=">i4")
    h = c.put_tensor(big)
    got = c.get_tensor(h)
    assert got.dtype == np.dtype("int32") and np.array_equal(got, big)  # stored in native order
    assert h == tensor_hash(big.astype("=i4"))


def test_unsupported_dtypes_are_refused(tmp_path):
    c = Cache(tmp_path / "cache")
    for arr in (np.array(["a", "b"]), np.array([object()]), np.array(["2024-01-01"], dtype="M8[D]")):
        with pytest.raises(TypeError):
            c.put_tensor(arr)


def test_missing_tensor_is_cachemiss(cache):
    h = tensor_hash(np.zeros(3))
    assert not cache.has_tensor(h)
    with pytest.raises(CacheMiss):
        cache.get_tensor(h)
    with pytest.raises(CacheMiss):
        cache.tensor_chunks(h)


def test_put_is_idempotent_and_byte_deterministic(tmp_path, memory_root):
    arr = sample("float32", (100, 9), seed=3)
    a = Cache(tmp_path / "a", chunk_bytes=512)
    h = a.put_tensor(arr)
    files = tensor_files(a, h)
    mtimes = {n: os.stat(os.path.join(a.root, "tensors", h[:2], h, n)).st_mtime_ns for n in files}
    assert a.put_tensor(arr.copy()) == h
    assert {n: os.stat(os.path.join(a.root, "tensors", h[:2], h, n)).st_mtime_ns for n in files} == mtimes
    # another cache, another backend: the very same files
    b = Cache(tmp_path / "b", chunk_bytes=512)
    assert tensor_files(b, b.put_tensor(arr)) == files
    m = Cache(memory_root, chunk_bytes=512)
    assert tensor_files(m, m.put_tensor(arr)) == files


def test_chunk_shape_slabs_along_axis_0():
    assert chunk_shape((), 4, 1 << 20) == ()
    assert chunk_shape((10,), 4, 1 << 20) == (10,)
    assert chunk_shape((1 << 20,), 4, 1 << 20) == (1 << 18,)
    assert chunk_shape((4096, 1024), 4, 1 << 20) == (256, 1024)  # 256 rows * 4 KiB = 1 MiB
    assert chunk_shape((64, 3, 3, 3), 4, 1 << 20) == (64, 3, 3, 3)
    assert chunk_shape((0, 5), 8, 1 << 20) == (1, 5)
    assert chunk_shape((3, 0), 8, 1 << 20) == (3, 1)
    # a single row larger than a chunk: split the next axis instead
    assert chunk_shape((2, 1 << 20), 4, 1 << 20) == (1, 1 << 18)


def test_default_chunks_are_at_most_16_mib_and_balanced(tmp_path):
    c = Cache(tmp_path / "cache")
    arr = np.zeros((5000, 1024), dtype=np.float32)  # 20 MB: two chunks of 2,500 rows (10 MB), not 16 MiB + padding
    h = c.put_tensor(arr)
    chunks = sorted(n for n in tensor_files(c, h) if n != "zarr.json")
    assert chunks == ["c.0.0", "c.1.0"]
    assert len(tensor_files(c, h)["c.0.0"]) == len(tensor_files(c, h)["c.1.0"]) == 2500 * 4096


def test_chunks_are_balanced_so_padding_stays_under_a_row():
    assert chunk_shape((1000, 1024), 4, 1 << 20) == (250, 1024)  # four chunks of 250 rows, none padded
    assert chunk_shape((1001, 1024), 4, 1 << 20) == (251, 1024)  # four chunks: 3 rows of padding in all


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_chunk_hashes_are_the_sha256_of_the_chunk_files_in_order(cache):
    arr = sample("float32", (50, 3), seed=1)  # chunk_bytes=256: at most 21 rows of 12 bytes, balanced: 3 x 17
    h = cache.put_tensor(arr)
    hashes = cache.tensor_chunks(h)
    files = tensor_files(cache, h)
    # uncompressed little-endian chunks: the stored file is the decoded chunk
    assert hashes == [sha256(files[f"c.{i}.0"]) for i in range(3)]
    assert hashes[0] == sha256(arr[:17].tobytes())
    edge = np.zeros((17, 3), dtype=np.float32)
    edge[:16] = arr[34:]
    assert hashes[2] == sha256(edge.tobytes())  # the edge chunk is padded with zeros, as zarr does


def test_editing_one_element_changes_only_its_chunk(cache):
    arr = sample("float32", (100, 5), seed=2)  # 12 rows per chunk, 9 chunks
    before = cache.tensor_chunks(cache.put_tensor(arr))
    edited = arr.copy()
    edited[30, 4] += 1  # row 30 lives in chunk 2
    after = cache.tensor_chunks(cache.put_tensor(edited))
    assert len(before) == len(after) == 9
    assert [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y] == [2]


def test_damaged_chunks_are_misses_and_removed(cache):
    arr = sample("int32", (64, 4), seed=4)  # 16 rows per chunk, 4 chunks
    damages = {
        "flip": lambda d: d[:5] + bytes([d[5] ^ 0x10]) + d[6:],
        "truncate": lambda d: d[: len(d) // 2],
        "extend": lambda d: d + b"\x00",
    }
    for name, damage in damages.items():
        h = cache.put_tensor(arr)
        write_file(cache, h, "c.1.0", damage(tensor_files(cache, h)["c.1.0"]))
        with pytest.raises(CacheMiss):
            cache.get_tensor(h)
        assert not cache.has_tensor(h), name
        assert tensor_files(cache, h) == {}, name


def test_deleted_chunk_is_a_miss_not_zeros(tmp_path):
    c = Cache(tmp_path / "cache", chunk_bytes=64)
    arr = np.arange(1, 65, dtype=np.int32)
    h = c.put_tensor(arr)
    os.unlink(os.path.join(c.root, "tensors", h[:2], h, "c.2"))
    with pytest.raises(CacheMiss):
        c.get_tensor(h)


def test_damaged_metadata_is_a_miss_and_removed(cache):
    arr = sample("float64", (10, 10), seed=5)
    for junk in (b"", b'{"shape": [1', b"\xff\xfe", b"[1, 2]", b'{"zarr_format": 3}'):
        h = cache.put_tensor(arr)
        write_file(cache, h, "zarr.json", junk)
        with pytest.raises(CacheMiss):
            cache.get_tensor(h)
        assert not cache.has_tensor(h)
        h = cache.put_tensor(arr)
        write_file(cache, h, "zarr.json", junk)
        with pytest.raises(CacheMiss):
            cache.tensor_chunks(h)
        assert not cache.has_tensor(h)


def test_metadata_of_another_tensor_is_a_miss(tmp_path):
    c = Cache(tmp_path / "cache")
    h1 = c.put_tensor(np.arange(10, dtype=np.int16))
    h2 = c.put_tensor(np.arange(10, 20, dtype=np.int16))
    write_file(c, h1, "zarr.json", tensor_files(c, h2)["zarr.json"])
    with pytest.raises(CacheMiss):
        c.get_tensor(h1, verify=False)  # even unverified reads check the recorded hash


def test_partial_temp_dir_is_ignored_and_collected(cache):
    arr = sample("float32", (30, 2), seed=6)
    h = tensor_hash(arr)
    # a writer that died after writing some chunks to its temp dir
    b = cache._backend
    tmp = b.path(f"tensors/{h[:2]}/.tmp-{uuid.uuid4().hex}")
    if b.is_local:
        os.makedirs(f"{tmp}/c/0")
        with open(f"{tmp}/c/0/0", "wb") as f:
            f.write(arr[:8].tobytes())
    else:
        b.fs.pipe_file(f"{tmp}/c/0/0", arr[:8].tobytes())
    assert not cache.has_tensor(h)
    with pytest.raises(CacheMiss):
        cache.get_tensor(h)
    assert cache.info()["tensors"]["count"] == 0 and cache.info()["temp"]["count"] == 1
    assert cache.put_tensor(arr) == h  # a new writer is not disturbed by the debris
    assert cache.gc()["temp_removed"] == 1
    assert cache.info()["temp"]["count"] == 0
    assert_same(cache.get_tensor(h), arr)


def test_half_published_remote_entry_is_replaced(memory_root):
    c = Cache(memory_root, chunk_bytes=64)
    arr = np.arange(100, dtype=np.float32)
    h = tensor_hash(arr)
    # an interrupted fs.mv: some chunks arrived, zarr.json (moved last) did not
    c._backend.fs.pipe_file(c._backend.path(f"tensors/{h[:2]}/{h}/c/0"), b"\x01" * 64)
    assert not c.has_tensor(h)
    assert c.put_tensor(arr) == h
    assert_same(c.get_tensor(h), arr)


def test_scalar_and_one_element_vector_are_distinct_entries(tmp_path):
    # hashing.tensor_hash once used np.ascontiguousarray, which turns a 0-d array into shape
    # (1,): both hashed alike and the cache handed back whichever was stored first
    c = Cache(tmp_path / "cache")
    scalar, vector = np.array(3.0), np.array([3.0])
    hs, hv = c.put_tensor(scalar), c.put_tensor(vector)
    assert hs != hv
    assert_same(c.get_tensor(hs), scalar)
    assert_same(c.get_tensor(hv), vector)


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint16", "float16", "float32", "int64", "complex128"])
def test_local_fast_read_matches_zarr(tmp_path, monkeypatch, dtype):
    from bundle_pipeline.cache import tensors as tensors_mod

    c = Cache(tmp_path / "cache", chunk_bytes=48)
    for i, shape in enumerate([(), (0, 2), (1,), (50, 3), (7, 2, 3), (3, 40)]):
        arr = sample(dtype, shape, seed=i)
        h = c.put_tensor(arr)
        with monkeypatch.context() as m:  # the zarr read path must not be needed locally
            m.setattr(tensors_mod, "_read_zarr", lambda *a: pytest.fail("zarr read used"))
            fast = c.get_tensor(h)
        assert_same(fast, arr)
        assert_same(tensors_mod._read_zarr(c._backend, h), arr)


def test_foreign_zarr_layout_falls_back_to_zarr(tmp_path):
    import zarr
    from zarr.codecs import ZstdCodec

    from bundle_pipeline.cache import tensors as tensors_mod

    c = Cache(tmp_path / "cache")
    arr = np.arange(1000, dtype=np.float32).reshape(100, 10)
    h = tensor_hash(arr)
    attrs = tensors_mod._attrs(h, [sha256(b) for _, b in tensors_mod.chunk_files(arr, (30, 10))])
    z = zarr.create_array(
        c._backend.zarr_store(f"tensors/{h[:2]}/{h}", read_only=False),
        shape=arr.shape,
        dtype=arr.dtype,
        chunks=(30, 10),
        compressors=ZstdCodec(level=3),
        attributes=attrs,
    )
    z[...] = arr
    assert c.has_tensor(h)
    assert_same(c.get_tensor(h), arr)
    assert len(c.tensor_chunks(h)) == 4


def test_missing_chunk_is_caught_even_unverified_locally(tmp_path):
    c = Cache(tmp_path / "cache", chunk_bytes=64)
    h = c.put_tensor(np.arange(1, 65, dtype=np.int32))
    os.unlink(os.path.join(c.root, "tensors", h[:2], h, "c.1"))
    with pytest.raises(CacheMiss):
        c.get_tensor(h, verify=False)
    assert not c.has_tensor(h)


def test_scalars_read_back_their_own_values(tmp_path):
    c = Cache(tmp_path / "cache")
    values = [np.array(v, dtype=dt) for v in (1.5, -2.0, 12345.0) for dt in ("float32", "float64", "int64")]
    hashes = [c.put_tensor(v) for v in values]
    fresh = Cache(tmp_path / "cache")
    for h, v in reversed(list(zip(hashes, values, strict=True))):
        assert_same(fresh.get_tensor(h), v)
        assert_same(fresh.get_tensor(h, verify=False), v)


def test_concurrent_puts_of_one_tensor_publish_once(tmp_path):
    import threading

    arr = sample("float32", (300, 11), seed=9)
    caches = [Cache(tmp_path / "cache", chunk_bytes=1024) for _ in range(4)]
    got = []
    threads = [threading.Thread(target=lambda c=c: got.append(c.put_tensor(arr))) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [tensor_hash(arr)] * 4
    assert caches[0].info()["tensors"]["count"] == 1 and caches[0].info()["temp"]["count"] == 0
    assert_same(caches[0].get_tensor(got[0]), arr)


def test_get_tensors_reads_each_pack_once_and_misses_like_get_tensor(tmp_path, monkeypatch):
    from bundle_pipeline.cache import tensor_store

    cache = Cache(tmp_path / "c")
    small = {f"t{i}": np.full((3,), i, dtype=np.float32) for i in range(5)}
    refs = cache.put_tensors({**small, "big": np.arange(400_000, dtype=np.float32)})
    wanted = {r["tensor"]: r.get("pack") for r in refs.values()}
    reads = []
    real = tensor_store.read_pack
    monkeypatch.setattr(tensor_store, "read_pack", lambda b, p: reads.append(p) or real(b, p))
    got = cache.get_tensors(wanted)
    assert len(reads) == len({p for p in wanted.values() if p})  # one read a pack, not one a tensor
    for ref in refs.values():
        np.testing.assert_array_equal(got[ref["tensor"]], cache.get_tensor(ref["tensor"], pack=ref.get("pack")))
    pack = next(p for p in wanted.values() if p)
    with pytest.raises(CacheMiss):
        cache.get_tensors({"0" * 64: pack})


def test_a_pack_this_process_just_stored_is_read_back_without_reading_the_file(tmp_path, monkeypatch):
    """put_tensors keeps the pack decoded, as a read would: formats.weights reads what parse.weights just stored.
    The copy is used only while the file keeps the stat it had when written."""
    from bundle_pipeline.cache import objects, tensor_store

    cache = Cache(tmp_path / "c")
    arrays = {f"w{i}": np.full((3, 4), i, dtype=np.float32) for i in range(3)}
    refs = cache.put_tensors(arrays)
    pack = refs["w1"]["pack"]
    monkeypatch.setattr(objects, "get_object", lambda *a: pytest.fail("the pack was read from disk"))
    monkeypatch.setattr(tensor_store, "get_object", lambda *a: pytest.fail("the pack was read from disk"))
    got = cache.get_tensor(refs["w1"]["tensor"], pack=pack)
    assert np.array_equal(got, arrays["w1"]) and not got.flags.writeable
    monkeypatch.undo()
    path = tmp_path / "c" / "objects" / pack[:2] / pack
    st = path.stat()
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")  # damaged in place: a new stat, the copy is not used
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # timestamps may be coarser than this test
    with pytest.raises(CacheMiss):
        cache.get_tensor(refs["w1"]["tensor"], pack=pack)


def test_a_large_new_tensor_is_hashed_beside_its_write_and_a_stored_one_is_not_written_again(tmp_path, monkeypatch):
    import threading

    from bundle_pipeline.cache import tensors

    writes: list[str] = []
    real = tensors._write_chunk_files

    def recording(backend, tmp, arr, chunks):
        writes.append(tmp)
        return real(backend, tmp, arr, chunks)

    monkeypatch.setattr(tensors, "_write_chunk_files", recording)
    c = Cache(tmp_path / "cache")
    arr = sample("float32", (512, 1024), seed=3)  # 2 MiB: at least HASH_BESIDE_BYTES
    assert arr.nbytes >= tensors.HASH_BESIDE_BYTES
    h = c.put_tensor(arr, likely_new=True)
    assert writes[0].startswith(f"tensors/{tensors.BESIDE_SHARD}/")  # written before its hash was known
    assert h == tensor_hash(arr) and (tmp_path / "cache/tensors" / h[:2] / h / "zarr.json").is_file()
    assert_same(c.get_tensor(h), arr)
    assert c.put_tensor(arr.copy()) == h and len(writes) == 1  # not said to be new: hashed first, not written
    assert c.put_tensor(arr.copy(), likely_new=True) == h and len(writes) == 2  # written, then discarded
    shard = tmp_path / "cache/tensors" / tensors.BESIDE_SHARD
    assert not any(p.name.startswith(".tmp-") for p in shard.iterdir())
    assert not [t for t in threading.enumerate() if t.name == "bundle-pipeline-hash"]
    assert c.verify()["corrupt"] == []


def test_a_write_failing_midway_joins_the_hash_beside_it_and_leaves_no_temp(tmp_path, monkeypatch):
    import threading

    from bundle_pipeline.cache import tensors

    real = tensors._write_chunk_files

    def full_disk(backend, tmp, arr, chunks):
        real(backend, tmp, arr, chunks)  # the chunks are on disk, then the next write fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensors, "_write_chunk_files", full_disk)
    c = Cache(tmp_path / "cache")
    with pytest.raises(OSError, match="No space"):
        c.put_tensor(sample("float32", (512, 1024), seed=4), likely_new=True)
    assert not [t for t in threading.enumerate() if t.name == "bundle-pipeline-hash"]
    shard = tmp_path / "cache/tensors" / tensors.BESIDE_SHARD
    assert shard.is_dir() and not any(p.name.startswith(".tmp-") for p in shard.iterdir())
