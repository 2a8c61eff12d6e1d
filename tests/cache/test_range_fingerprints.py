"""Range fingerprints: a rewritten external-data file of several weights has only the ranges whose bytes changed
hashed again; the others keep the tensor hash recorded when their xxh3-128 was the same."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from bundle_pipeline.cache import Cache, statstate
from bundle_pipeline.dtypes import EXTENDED_NAMES
from bundle_pipeline.hashing import tensor_hash
from bundle_pipeline.ir.external import ExternalRef
from bundle_pipeline.ir.external_map import hash_ranges
from bundle_pipeline.ir.external_ranges import PLAIN_TYPES, _file_bytes, fingerprint_ranges, range_key

HOUR_NS = 3600 * 10**9


def write_at(path, data: bytes, age_ns: int = HOUR_NS) -> None:
    """Write ``data`` in place (the same inode) with an mtime ``age_ns`` ago (old: outside the racy window)."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(data)
    mtime = time.time_ns() - age_ns
    os.utime(path, ns=(mtime, mtime))


def counting(calls: list) -> statstate.RangeHash:
    def hashed(fd: int, keys: list[str], prints: dict[str, str] | None = None) -> dict[str, str]:
        calls.append(sorted(keys))
        return hash_ranges(fd, keys, prints)
    return hashed


def three_weights() -> tuple[np.ndarray, list[str]]:
    data = np.arange(48, dtype="<f4")
    return data, [range_key(64 * i, "float32", [16]) for i in range(3)]


def hashed_once(tmp_path, age_ns: int = HOUR_NS) -> tuple[Path, np.ndarray, list[str], list, dict[str, str]]:
    """A file of three float32 weights, written ``age_ns`` ago and hashed once through the cache at ``tmp_path/c``:
    its path, its values, the range keys, the list of hash calls and the hashes."""
    path = tmp_path / "w.data"
    data, keys = three_weights()
    write_at(path, data.tobytes(), age_ns=age_ns)
    calls: list = []
    return path, data, keys, calls, Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges)


def test_only_the_ranges_whose_bytes_changed_are_hashed_again(tmp_path):
    path, data, keys, calls, first = hashed_once(tmp_path, 2 * HOUR_NS)
    edited = data.copy()
    edited[16:32] += 1  # the second weight, written in place: the file's stat changes
    write_at(path, edited.tobytes())
    again = Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges)  # a new process
    assert calls == [sorted(keys), [keys[1]]]
    assert again == {k: tensor_hash(edited[16 * i:16 * (i + 1)]) for i, k in enumerate(keys)}
    assert again[keys[0]] == first[keys[0]] and again[keys[1]] != first[keys[1]]
    sig, remembered = Cache(tmp_path / "c").known_ranges(path)  # recorded whole at the new signature
    assert sig == statstate.signature(os.stat(path)) and remembered == again


def test_a_file_written_again_whole_with_the_same_bytes_hashes_nothing(tmp_path):
    path, data, keys, calls, first = hashed_once(tmp_path, 2 * HOUR_NS)
    path.unlink()
    write_at(path, data.tobytes())  # a new inode, the same bytes (an export run again)
    assert Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges) == first
    assert len(calls) == 1


def test_a_file_of_one_range_is_not_fingerprinted(tmp_path):
    path = tmp_path / "w.data"
    write_at(path, bytes(64))
    Cache(tmp_path / "c").range_hashes(path, [range_key(0, "uint8", [64])], hash_ranges, fingerprint_ranges)
    entry = json.loads((tmp_path / "c" / "state" / "stat.json").read_bytes())["entries"][statstate.RANGES + str(path)]
    assert len(entry) == 5  # nothing to tell apart: a changed stat hashes its one range whatever the fingerprint


def test_an_edit_inside_the_racy_window_is_compared_with_the_recorded_entry(tmp_path):
    path, data, keys, calls, _ = hashed_once(tmp_path)
    for n in (1, 2):  # two edits just before their builds: never recorded, both compared with the old entry
        edited = data.copy()
        edited[:16] += n
        write_at(path, edited.tobytes(), age_ns=0)
        with statstate.one_build():
            got = Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges)
        assert calls[-1] == [keys[0]] and got[keys[0]] == tensor_hash(edited[:16])
    assert Cache(tmp_path / "c").known_ranges(path)[0] != statstate.signature(os.stat(path))


def test_entries_without_fingerprints_still_hold_and_bad_ones_are_dropped(tmp_path):
    path, _, keys, calls, first = hashed_once(tmp_path)
    state = tmp_path / "c" / "state" / "stat.json"
    entries = json.loads(state.read_bytes())["entries"]
    entry = entries[statstate.RANGES + str(path)]
    state.write_text(json.dumps({"v": 1, "entries": {statstate.RANGES + str(path): entry[:5]}}))  # an older tool's
    assert Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges) == first
    assert len(calls) == 1
    for bad in ({keys[0]: "not a fingerprint"}, [1]):
        state.write_text(json.dumps({"v": 1, "entries": {statstate.RANGES + str(path): [*entry[:5], bad]}}))
        assert Cache(tmp_path / "c").known_ranges(path) is None


@pytest.mark.parametrize(("dtype", "shape", "nbytes"), [("float32", [2, 3], 24), ("int4", [5], 3), ("uint2", [5], 2),
                                                        ("bfloat16", [3], 6), ("float8_e5m2", [4], 4), ("bool", [], 1)])
def test_a_fingerprint_covers_exactly_the_bytes_of_the_range(tmp_path, dtype, shape, nbytes):
    path = tmp_path / "w.data"
    path.write_bytes(bytes(range(40)))
    key = range_key(7, dtype, shape)
    with open(path, "rb") as f:
        assert fingerprint_ranges(f.fileno(), [key]) == {key: xxhash.xxh3_128_hexdigest(bytes(range(7, 7 + nbytes)))}


@pytest.mark.parametrize(("offset", "dtype", "shape"), [(36, "float32", [2]), (-1, "uint8", [1]),
                                                        (0, "no-such-type", [1])])
def test_a_range_outside_the_file_or_of_an_unknown_type_has_no_fingerprint(tmp_path, offset, dtype, shape):
    path = tmp_path / "w.data"
    path.write_bytes(bytes(40))
    with open(path, "rb") as f:
        assert fingerprint_ranges(f.fileno(), [range_key(offset, dtype, shape)]) == {}


def test_a_fingerprint_kept_only_in_memory_is_never_compared(tmp_path):
    """Two edits in one build (both inside the racy window): the second is compared with the recorded entry, not
    with the first edit's, which may pair a fingerprint and a hash of other bytes (rewritten within a tick)."""
    path, data, keys, calls, _ = hashed_once(tmp_path)
    first, second = data.copy(), data.copy()
    first[:16] += 1
    second[:16] += 1
    second[16:32] += 1
    with statstate.one_build():
        write_at(path, first.tobytes(), age_ns=0)
        Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges)
        write_at(path, second.tobytes(), age_ns=0)
        got = Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges)
    assert calls[1:] == [[keys[0]], sorted(keys[:2])]  # the first range differs from what was recorded
    assert got == {k: tensor_hash(second[16 * i:16 * (i + 1)]) for i, k in enumerate(keys)}


def test_an_entry_without_fingerprints_at_an_older_signature_means_hashing_again(tmp_path):
    path, data, keys, calls, _ = hashed_once(tmp_path, 2 * HOUR_NS)
    state = tmp_path / "c" / "state" / "stat.json"
    entries = json.loads(state.read_bytes())["entries"]
    entries[statstate.RANGES + str(path)] = entries[statstate.RANGES + str(path)][:5]  # an older tool's entry
    state.write_text(json.dumps({"v": 1, "entries": entries}))
    write_at(path, data.tobytes())  # the same bytes, a new mtime
    Cache(tmp_path / "c").range_hashes(path, keys, counting(calls), fingerprint_ranges)
    assert calls == [sorted(keys), sorted(keys)]


def test_a_hash_taken_again_at_one_signature_drops_the_fingerprint_of_the_old_one():
    old = [1, 2, 3, 4, {"a": "0" * 64, "b": "1" * 64}, {"a": "2" * 32, "b": "3" * 32}]
    new = [1, 2, 3, 4, {"a": "4" * 64}]  # "a" hashed again without a fingerprint (a one-range call)
    assert statstate._merged(old, new) == [1, 2, 3, 4, {"a": "4" * 64, "b": "1" * 64}, {"b": "3" * 32}]


@pytest.mark.parametrize("dtype", sorted({*PLAIN_TYPES, *EXTENDED_NAMES}))
def test_a_fingerprint_spans_the_bytes_the_tensor_takes_in_its_file(dtype):
    for count in (0, 1, 5, 8):
        assert _file_bytes(dtype, count) == ExternalRef("", 0, 0, dtype, (count,)).nbytes


@pytest.mark.parametrize("keys", [[range_key(0, "float32", [4]), range_key(16, "uint8", [8])],
                                  [range_key(0, "int4", [5]), range_key(3, "bfloat16", [2, 2])]])
def test_the_fingerprints_a_hash_pass_takes_are_the_ones_a_fingerprint_pass_takes(tmp_path, keys):
    """A cold build takes the fingerprints while hashing (one pass); an edit compares them with a pass of its own."""
    from bundle_pipeline.ir.external_ranges import hash_plain_ranges

    path = tmp_path / "w.data"
    path.write_bytes(bytes(range(64)))
    with open(path, "rb") as f:
        plain, numpy_path = {}, {}
        hashes = hash_plain_ranges(f.fileno(), keys, plain)
        assert hash_ranges(f.fileno(), keys, numpy_path) == (hashes or hash_ranges(f.fileno(), keys))
        assert numpy_path == fingerprint_ranges(f.fileno(), keys) == (plain if hashes is not None else numpy_path)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_fingerprints_are_the_same_on_any_number_of_threads(tmp_path, monkeypatch, threads):
    from bundle_pipeline.ir import external_ranges

    path = tmp_path / "w.data"
    data = np.random.default_rng(5).standard_normal(4096).astype("<f4")
    path.write_bytes(data.tobytes())
    keys = [range_key(4 * start, "float32", [n]) for start, n in ((0, 5), (5, 1000), (1005, 3), (1008, 3088))]
    with open(path, "rb") as f:
        monkeypatch.setattr(external_ranges, "_threads_for", lambda nbytes: 1)
        one = fingerprint_ranges(f.fileno(), keys)
        monkeypatch.setattr(external_ranges, "_threads_for", lambda nbytes: threads)
        assert fingerprint_ranges(f.fileno(), keys) == one and len(one) == 4


def test_a_failing_fingerprint_thread_is_joined_before_the_mapping_closes(tmp_path, monkeypatch):
    from bundle_pipeline.ir import external_ranges

    path = tmp_path / "w.data"
    path.write_bytes(bytes(4096))
    keys = [range_key(1024 * i, "uint8", [1024]) for i in range(4)]
    calls = []

    def failing(piece):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # what a Ctrl-C in the planning thread looks like
        return "0" * 32

    monkeypatch.setattr(external_ranges, "_threads_for", lambda nbytes: 2)
    monkeypatch.setattr(external_ranges, "fingerprint", failing)
    with open(path, "rb") as f, pytest.raises(KeyboardInterrupt):  # not a BufferError from closing the mapping
        fingerprint_ranges(f.fileno(), keys)


@given(st.lists(st.integers(0, 50), max_size=30), st.integers(1, 8))
def test_ranges_split_by_bytes_keep_their_order_and_leave_no_part_empty(sizes, n):
    from bundle_pipeline.ir.external_ranges import _split_by_bytes

    spans, at = {}, 0
    for i, size in enumerate(sizes):
        spans[f"k{i}"] = (at, at + size)
        at += size
    parts = _split_by_bytes(spans, n)
    assert [k for part in parts for k in part] == list(spans) and all(parts) and len(parts) <= n


def test_releasing_a_read_range_keeps_the_bytes_of_its_neighbours(tmp_path):
    """``release`` drops the whole pages inside a range once read; a page shared with the next range stays, and
    whatever is read again comes back from the page cache unchanged."""
    import mmap

    from bundle_pipeline.ir.external_ranges import release

    path = tmp_path / "w.data"
    data = np.random.default_rng(6).integers(0, 256, 5 * mmap.PAGESIZE + 123, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for start, end in ((0, 100), (100, 3 * mmap.PAGESIZE + 7), (3 * mmap.PAGESIZE + 7, len(data)), (5, 5)):
            assert mapped[start:end] == data[start:end]
            release(mapped, start, end)
        assert mapped[:] == data
    release(None, 0, 10)  # an empty file has no mapping
