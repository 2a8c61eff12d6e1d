"""JSON nested past the parser's depth (json raises RecursionError, not ValueError) in a cache or state file is a
miss or an empty state, as any damaged entry is: never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from bundle_pipeline.cache import Cache, CacheMiss
from bundle_pipeline.cache.tensors import tensor_rel

NESTED = b"[" * 200_000 + b"]" * 200_000


def test_an_object_of_the_right_hash_that_is_no_json_of_ours_is_a_miss(tmp_path):
    cache = Cache(tmp_path / "c")
    h = cache.put_object(NESTED)
    with pytest.raises(CacheMiss):
        cache.get_json(h)


def test_a_tensor_entry_whose_metadata_is_nested_past_the_parser_is_a_miss(tmp_path):
    cache = Cache(tmp_path / "c")
    h = cache.put_tensor(np.arange(6, dtype=np.float32))
    (tmp_path / "c" / tensor_rel(h) / "zarr.json").write_bytes(NESTED)
    with pytest.raises(CacheMiss):
        cache.get_tensor(h)
    assert cache.put_tensor(np.arange(6, dtype=np.float32)) == h  # the damaged entry went: stored again
    np.testing.assert_array_equal(cache.get_tensor(h), np.arange(6, dtype=np.float32))


@pytest.mark.parametrize("name", ["stat.json", "outputs.json"])
def test_a_state_file_nested_past_the_parser_reads_as_empty(tmp_path, name):
    cache = Cache(tmp_path / "c")
    model = tmp_path / "m.bin"
    model.write_bytes(b"x" * 64)
    cache.file_hash(model)
    cache.record_output(tmp_path / "out.bundle", {"key": "0" * 64, "stamp": "1" * 64})
    (tmp_path / "c" / "state" / name).write_bytes(NESTED)
    fresh = Cache(tmp_path / "c")
    assert fresh.file_hash(model) == cache.file_hash(model)  # hashed again when stat.json is unreadable
    assert fresh.output_record(tmp_path / "out.bundle") is None or name == "stat.json"


def test_an_action_record_nested_near_the_parsers_depth_is_a_miss(tmp_path):
    """The encoder takes a few more stack frames a level than the decoder: a record that decodes may not encode
    (the slow path checks its checksum by encoding it). Every depth around the limit, as the stack here allows."""
    from bundle_pipeline.cache.layout import action_rel

    cache, key = Cache(tmp_path / "c"), "ab" * 32
    cache.put_action(key, {"x": 1})
    for depth in range(900, 1010):
        nested = "[" * depth + "]" * depth
        (tmp_path / "c" / action_rel(key)).write_text(f'{{"v": 1, "checksum": "0", "record": {{"x": {nested}}}}}')
        assert cache.get_action(key) is None


@pytest.mark.parametrize("header", [b"[]", b"7", b"[" * 100_000 + b"]" * 100_000])
def test_a_pack_whose_header_is_no_object_is_a_miss(tmp_path, header):
    import struct

    from bundle_pipeline.cache.packs import MAGIC

    cache = Cache(tmp_path / "c")
    pack = cache.put_object(MAGIC + struct.pack("<Q", len(header)) + header)
    with pytest.raises(CacheMiss):
        cache.get_tensor("0" * 64, pack=pack)


def test_gc_and_the_yaml_memo_read_nested_files_as_nothing(tmp_path):
    from bundle_pipeline import yaml_memo
    from bundle_pipeline.cache import gc

    cache = Cache(tmp_path / "c")
    h = cache.put_object(b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}")
    assert gc._named_by(cache._backend, h) == (set(), set())
    memo = tmp_path / "memo.json"
    memo.write_bytes(NESTED)
    assert yaml_memo._read(memo) is None
