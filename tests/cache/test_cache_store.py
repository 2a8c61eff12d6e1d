"""Objects, actions, info, verify and gc of bundle_pipeline.cache on local and memory:// roots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bundle_pipeline.cache import Cache, CacheMiss
from bundle_pipeline.cache import store as store_mod
from bundle_pipeline.cache.store import MARKER
from bundle_pipeline.hashing import canonical_json, hash_bytes, stored_json


@pytest.fixture(params=["local", "memory"])
def cache(request, tmp_path, memory_root):
    if request.param == "local":
        return Cache(tmp_path / "cache", state_dir=tmp_path / "state")
    return Cache(memory_root, state_dir=tmp_path / "state")


def read_raw(c: Cache, rel: str) -> bytes:
    return c._backend.read(rel)


def write_raw(c: Cache, rel: str, data: bytes) -> None:
    if c._backend.is_local:
        os.makedirs(os.path.dirname(c._backend.path(rel)), exist_ok=True)
        with open(c._backend.path(rel), "wb") as f:
            f.write(data)
    else:
        c._backend.fs.pipe_file(c._backend.path(rel), data)


def all_rels(c: Cache) -> list[str]:
    b = c._backend
    if b.is_local:
        out = []
        for dirpath, _, files in os.walk(b.root):
            out += [os.path.relpath(os.path.join(dirpath, f), b.root) for f in files]
        return sorted(out)
    return sorted(p[len(b.root) + 1 :] for p in b.fs.find(b.root))


# -- objects ---------------------------------------------------------------------------------------


def test_root_is_normalised(tmp_path, memory_root):
    assert Cache(str(tmp_path) + "/c/").root == str(tmp_path / "c")
    assert Cache(f"file://{tmp_path}/c").root == str(tmp_path / "c")
    assert Cache(memory_root + "/").root == memory_root
    assert not (tmp_path / "c").exists()  # nothing created until the first write


def test_object_round_trip_and_layout(cache):
    data = b"\x00stage output\xff" * 100
    h = cache.put_object(data)
    assert h == hash_bytes(data)
    assert cache.has_object(h)
    assert cache.get_object(h) == data
    assert read_raw(cache, f"objects/{h[:2]}/{h}") == data
    # no temp file left behind; a local root also got its marker when the write created it
    assert [r for r in all_rels(cache) if r != MARKER] == [f"objects/{h[:2]}/{h}"]


def test_put_object_is_idempotent_and_skips_existing(cache, monkeypatch):
    h = cache.put_object(b"same")
    writes = []
    monkeypatch.setattr(cache._backend, "write_atomic", lambda rel, data: writes.append(rel))
    assert cache.put_object(b"same") == h
    assert writes == []


def test_missing_object_is_cachemiss_keyerror(cache):
    h = hash_bytes(b"never stored")
    assert not cache.has_object(h)
    with pytest.raises(CacheMiss):
        cache.get_object(h)
    with pytest.raises(KeyError):
        cache.get_object(h)


def test_malformed_hash_is_rejected_not_used_as_a_path(cache):
    for bad in ["../../etc/passwd", "ab", "A" * 64, "g" * 64]:
        with pytest.raises(ValueError):
            cache.get_object(bad)
        with pytest.raises(ValueError):
            cache.has_tensor(bad)


def test_corrupt_object_is_a_miss_and_removed(cache):
    data = bytes(range(256)) * 4
    h = cache.put_object(data)
    rel = f"objects/{h[:2]}/{h}"
    flipped = bytearray(read_raw(cache, rel))
    flipped[100] ^= 0x01
    write_raw(cache, rel, bytes(flipped))
    with pytest.raises(CacheMiss):
        cache.get_object(h)
    assert not cache.has_object(h)
    assert cache.put_object(data) == h  # rebuilt on the next put
    assert cache.get_object(h) == data


def test_json_objects_are_canonical(cache):
    h1 = cache.put_json({"b": [1, 2.5, "x"], "a": {"z": None, "y": True}})
    h2 = cache.put_json({"a": {"y": True, "z": None}, "b": [1, 2.5, "x"]})
    assert h1 == h2
    assert cache.get_json(h1) == {"a": {"y": True, "z": None}, "b": [1, 2.5, "x"]}
    assert cache.get_object(h1) == canonical_json({"a": {"y": True, "z": None}, "b": [1, 2.5, "x"]})


@pytest.mark.parametrize("value", [{"eps": 1e-05, "big": 1e16, "n": None, "s": "null é"}, {"k": (1, None, 2.5e-7)},
                                   {3: "int key", 4: [None, 1e-9]}, [2**62, 0.1], {"deep": [[{"b": 1, "a": -0.0}]]}])
def test_stored_outputs_decode_to_what_was_stored(cache, value):
    """Stage outputs are encoded by orjson (hashing.stored_json), whose float spelling differs from json's;
    every value still decodes equal (tuples as lists, int keys as strings, as json does), one value one hash."""
    h = cache.put_json(value)
    assert json.loads(cache.get_object(h)) == json.loads(canonical_json(value))
    assert stored_json(value) == stored_json(json.loads(json.dumps(value)))  # tuples, int keys: one spelling
    assert cache.put_json(value) == h


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_stored_outputs_refuse_nan_like_canonical_json(cache, bad):
    with pytest.raises(ValueError):
        cache.put_json({"weights": [1.0, bad], "note": None})
    with pytest.raises(ValueError):
        cache.put_json({"weights": (bad,)})


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    c = Cache(tmp_path / "c")
    c.put_object(b"first")  # creates the directories

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        c.put_object(b"second")
    monkeypatch.undo()
    assert [r for r in all_rels(c) if ".tmp-" in r] == []
    with pytest.raises(CacheMiss):
        c.get_object(hash_bytes(b"second"))


# -- actions ---------------------------------------------------------------------------------------


KEY = "3f" * 32


def test_action_round_trip_and_replace(cache):
    assert cache.get_action(KEY) is None
    record = {"outputs": {"structure": "ab" * 32}, "seconds": 0.25, "stage": "parse"}
    cache.put_action(KEY, record)
    assert cache.get_action(KEY) == record
    cache.put_action(KEY, {"outputs": {}, "seconds": 1.0})
    assert cache.get_action(KEY) == {"outputs": {}, "seconds": 1.0}
    payload = json.loads(read_raw(cache, f"actions/{KEY[:2]}/{KEY}"))
    assert set(payload) == {"checksum", "record", "v"}


def test_truncated_or_garbled_action_is_none(cache):
    cache.put_action(KEY, {"outputs": {"a": "cd" * 32}, "note": "ünïcode"})
    rel = f"actions/{KEY[:2]}/{KEY}"
    good = read_raw(cache, rel)
    for cut in (0, 1, len(good) // 2, len(good) - 1):
        write_raw(cache, rel, good[:cut])
        assert cache.get_action(KEY) is None, cut
    # still valid JSON, but the record no longer matches its checksum
    write_raw(cache, rel, good.replace(b'"cd', b'"ce', 1))
    assert json.loads(read_raw(cache, rel))
    assert cache.get_action(KEY) is None
    for junk in (b"\xff\xfe\x00", b"[]", b'{"v": 1}', b"null"):
        write_raw(cache, rel, junk)
        assert cache.get_action(KEY) is None


def test_an_action_is_checked_where_its_record_lies_and_refuses_what_canonical_json_would(cache):
    """decode_action hashes the record's bytes in place; a hand-made record with the right hash but a NaN, or
    that is not an object, is still no record; a file in another (valid) spelling takes the decoding path."""
    from bundle_pipeline.cache.actions import decode_action

    for body in (b'{"seconds":NaN}', b"[1,2]", b'{"a":'):
        assert decode_action(b'{"checksum":"%s","record":%s,"v":1}' % (hash_bytes(body).encode(), body)) is None
    record = {"outputs": {"a": "cd" * 32}, "seconds": 0.5}
    spaced = json.dumps({"v": 1, "record": record, "checksum": hash_bytes(canonical_json(record))}, indent=1)
    assert decode_action(spaced.encode()) == record


def test_action_keys_and_records_are_validated(cache):
    for bad in ["", "a", ".tmp-x", "a/b", "../x"]:
        with pytest.raises(ValueError):
            cache.put_action(bad, {})
    with pytest.raises(TypeError):
        cache.put_action(KEY, ["not", "a", "dict"])
    cache.put_action("parse-model_1.v2", {"ok": 1})
    assert cache.get_action("parse-model_1.v2") == {"ok": 1}


# -- info / verify / gc ----------------------------------------------------------------------------


def test_info_counts_areas(cache):
    cache.put_object(b"12345")
    cache.put_json([1, 2])
    cache.put_tensor(np.arange(10, dtype=np.int32))
    cache.put_action(KEY, {"outputs": {}})
    info = cache.info()
    assert info["objects"] == {"count": 2, "bytes": 5 + len(b"[1,2]")}
    assert info["tensors"]["count"] == 1 and info["tensors"]["bytes"] > 40
    # the record, and on a local disk the memo of the tensor entry's file digests (written with the entry)
    assert info["actions"]["count"] == (2 if cache._backend.is_local else 1)
    assert info["temp"] == {"count": 0, "bytes": 0}


def test_verify_reports_and_removes_corrupt_entries(cache):
    good = cache.put_object(b"good")
    bad = cache.put_object(b"bad!")
    t_good = cache.put_tensor(np.arange(100, dtype=np.float32))
    t_bad = cache.put_tensor(np.arange(100, dtype=np.float64))
    cache.put_action(KEY, {"outputs": {"x": good}})
    cache.put_action("aa" * 32, {"outputs": {}})
    write_raw(cache, f"objects/{bad[:2]}/{bad}", b"bad?")
    chunk = next(r for r in all_rels(cache) if r.startswith(f"tensors/{t_bad[:2]}/{t_bad}/") and
                 not r.endswith("zarr.json"))  # the one chunk file, whatever the chunk key layout
    raw = bytearray(read_raw(cache, chunk))
    raw[7] ^= 0x80
    write_raw(cache, chunk, bytes(raw))
    write_raw(cache, f"actions/aa/{'aa' * 32}", b'{"trunc')
    result = cache.verify()
    memos = 2 if cache._backend.is_local else 0  # the file-digest memo written with each local tensor entry
    assert result["checked"] == 6 + memos
    assert sorted(os.path.basename(p) for p in result["corrupt"]) == sorted([bad, t_bad, "aa" * 32])
    assert cache.get_object(good) == b"good"
    assert cache.get_tensor(t_good).sum() == 4950
    assert not cache.has_object(bad) and not cache.has_tensor(t_bad)
    assert cache.verify() == {"checked": 3 + memos, "corrupt": [], "foreign": []}


def make_temp_leftovers(c: Cache) -> None:
    """Leftovers named as the cache names its temps (``temp_name()``: .tmp-<32 hex>)."""
    write_raw(c, f"objects/ab/.tmp-{'de' * 16}", b"half an object")
    write_raw(c, f"actions/cd/.tmp-{'01' * 16}", b'{"half')
    write_raw(c, f"tensors/ef/.tmp-{'45' * 16}/zarr.json", b'{"shape": [4')
    write_raw(c, f"tensors/ef/.tmp-{'45' * 16}/c/0", b"\x00" * 16)


def test_gc_removes_temp_leftovers_only(cache):
    h = cache.put_object(b"keep me")
    t = cache.put_tensor(np.ones((3, 3), dtype=np.float16))
    cache.put_action(KEY, {"outputs": {}})
    make_temp_leftovers(cache)
    assert cache.info()["temp"]["count"] == 3
    assert cache.gc(older_than_s=3600)["temp_removed"] == 0  # fresh: maybe a live writer's
    result = cache.gc()
    assert result["temp_removed"] == 3
    assert result["bytes_freed"] == len(b"half an object") + len(b'{"half') + 12 + 16
    assert not any(".tmp-" in r for r in all_rels(cache))
    assert cache.get_object(h) == b"keep me"
    assert cache.get_tensor(t).dtype == np.float16
    assert cache.get_action(KEY) == {"outputs": {}}


def test_gc_keeps_only_what_kept_actions_reach(cache):
    w_kept = cache.put_tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    w_shared = cache.put_tensor(np.zeros(5, dtype=np.int64))
    w_dropped = cache.put_tensor(np.ones(7, dtype=np.uint8))
    manifest = cache.put_json({"tensors": {"w": w_kept, "s": w_shared}, "other": "x"})
    blob = cache.put_object(b"\x93msgpack-ish")
    manifest_b = cache.put_json({"tensors": {"s": w_shared, "d": w_dropped}})
    loose = cache.put_object(b"unreferenced")
    cache.put_action("aa" * 32, {"outputs": {"weights": manifest, "program": [blob]}})
    cache.put_action("bb" * 32, {"outputs": {"weights": manifest_b}})
    result = cache.gc(keep_actions={"aa" * 32})
    memos = 3 if cache._backend.is_local else 0  # file-digest memos of the tensor entries: not roots
    assert result["actions_removed"] == 1 + memos
    assert result["objects_removed"] == 2  # manifest_b, loose
    assert result["tensors_removed"] == 1  # w_dropped
    assert result["bytes_freed"] > 0
    assert cache.get_action("aa" * 32) is not None and cache.get_action("bb" * 32) is None
    for h in (manifest, blob):
        assert cache.has_object(h)
    for h in (manifest_b, loose):
        assert not cache.has_object(h)
    assert cache.has_tensor(w_kept) and cache.has_tensor(w_shared) and not cache.has_tensor(w_dropped)


def test_gc_spares_recent_unreachable_entries(cache):
    h = cache.put_object(b"written by a build still running")
    result = cache.gc(keep_actions=set(), older_than_s=3600)
    assert result["objects_removed"] == 0 and cache.has_object(h)
    assert cache.gc(keep_actions=set())["objects_removed"] == 1


def test_cache_is_rebuilt_from_root_and_options(tmp_path):
    c = Cache(tmp_path / "c", chunk_bytes=4096)
    fn, args = c.__reduce__()
    clone = fn(*args)
    assert clone.root == c.root and clone.chunk_bytes == 4096
    h = c.put_object(b"shared")
    assert clone.get_object(h) == b"shared"
