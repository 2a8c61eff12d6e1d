"""Range hashes of external-data files: each weight's tensor hash, taken once from the file and remembered per
stat signature; the source digest of an external-data file is made of them and parse.weights stores the tensor
under the remembered hash without hashing it again (so a cold build hashes each weight byte once)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bundle_pipeline.cache import Cache, statstate
from bundle_pipeline.hashing import hash_bytes, hash_json, tensor_hash
from bundle_pipeline.ir.external import ExternalRef
from bundle_pipeline.ir.external_map import MAP_MIN_BYTES, MappedExternal, hash_ranges
from bundle_pipeline.ir.external_ranges import range_key, ranges_by_file
from bundle_pipeline.tasks import sources

HOUR_NS = 3600 * 10**9


def write_old(path, data: bytes) -> None:
    path.write_bytes(data)
    mtime = time.time_ns() - HOUR_NS  # outside the racy window: the hashes may be recorded
    os.utime(path, ns=(mtime, mtime))


def counting(calls: list) -> object:
    def hashed(fd: int, keys: list[str], prints: dict[str, str] | None = None) -> dict[str, str]:
        calls.append(list(keys))
        return hash_ranges(fd, keys, prints)
    return hashed


RANGES = [(0, "float32", [3, 4]), (48, "int4", [5]), (51, "bfloat16", [2, 2]), (59, "bool", [3]), (62, "uint8", []),
          (63, "float16", [0, 7])]


@pytest.mark.parametrize(("offset", "dtype", "shape"), RANGES)
def test_a_range_hash_is_the_tensor_hash_of_what_parse_weights_loads(tmp_path, offset, dtype, shape):
    path = tmp_path / "w.bin"
    write_old(path, bytes(range(64)))
    key = range_key(offset, dtype, shape)
    with open(path, "rb") as f:
        got = hash_ranges(f.fileno(), [key])
    ref = ExternalRef(str(path), offset, 0, dtype, tuple(shape))
    assert got == {key: tensor_hash(ref.load())}


@pytest.mark.parametrize(("offset", "dtype", "shape"), [(60, "float32", [2]), (-1, "uint8", [1]),
                                                        (0, "no-such-type", [1])])
def test_a_range_that_is_no_tensor_here_gives_none(tmp_path, offset, dtype, shape):
    path = tmp_path / "w.bin"
    write_old(path, bytes(64))
    with open(path, "rb") as f:
        assert hash_ranges(f.fileno(), [range_key(offset, dtype, shape)]) is None


def test_range_hashes_are_taken_once_and_remembered_per_stat_signature(tmp_path):
    path = tmp_path / "w.bin"
    write_old(path, bytes(range(64)))
    calls: list = []
    a, b = range_key(0, "float32", [4]), range_key(16, "uint8", [8])
    first = Cache(tmp_path / "c").range_hashes(path, [a], counting(calls))
    both = Cache(tmp_path / "c").range_hashes(path, [a, b], counting(calls))  # a new process: from stat.json
    assert calls == [[a], [b]] and both[a] == first[a]
    assert Cache(tmp_path / "c").range_hashes(path, [b, a], counting(calls)) == both and len(calls) == 2
    sig, remembered = Cache(tmp_path / "c").known_ranges(path)
    st = os.stat(path)
    assert sig == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) and remembered == both
    write_old(path, bytes(64))  # same size, new mtime: every range is hashed again, old ones forgotten
    again = Cache(tmp_path / "c").range_hashes(path, [a], counting(calls))
    assert calls[-1] == [a] and again[a] != both[a]
    assert Cache(tmp_path / "c").known_ranges(path)[1] == again


def test_inside_a_deferred_save_range_hashes_reach_stat_json_once_at_the_end(tmp_path):
    path, other = tmp_path / "w.bin", tmp_path / "v.bin"
    write_old(path, bytes(range(64)))
    write_old(other, bytes(64))
    a, b = range_key(0, "float32", [4]), range_key(16, "uint8", [8])
    cache, calls = Cache(tmp_path / "c"), []
    with cache.deferred_file_hashes():
        cache.range_hashes(path, [a], counting(calls))
        cache.range_hashes(path, [b], counting(calls))  # merged with a, not replacing it
        cache.file_hash(other)
        assert Cache(tmp_path / "c").known_ranges(path) is None  # nothing written yet
    assert set(Cache(tmp_path / "c").known_ranges(path)[1]) == {a, b}
    Cache(tmp_path / "c").range_hashes(path, [a, b], counting(calls))
    assert calls == [[a], [b]]


def test_a_recently_written_file_is_hashed_but_not_remembered(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(64))
    calls: list = []
    c = Cache(tmp_path / "c")
    key = range_key(0, "uint8", [64])
    assert c.range_hashes(path, [key], counting(calls)) == c.range_hashes(path, [key], counting(calls))
    assert len(calls) == 2 and c.known_ranges(path) is None


def test_range_entries_are_pruned_with_their_file_and_never_read_as_file_hashes(tmp_path):
    path = tmp_path / "w.bin"
    write_old(path, bytes(64))
    c = Cache(tmp_path / "c")
    c.range_hashes(path, [range_key(0, "uint8", [8])], hash_ranges)
    assert c.file_hash(path) == hash_bytes(bytes(64))  # the whole-file entry is its own
    state = tmp_path / "c" / "state" / "stat.json"
    entries = json.loads(state.read_bytes())["entries"]
    assert set(entries) == {str(path), statstate.RANGES + str(path)}
    entries[str(path)][4] = entries[statstate.RANGES + str(path)][4]  # a ranges dict where a hash belongs: invalid
    state.write_text(json.dumps({"v": 1, "entries": entries}))
    assert Cache(tmp_path / "c").file_hash(path) == hash_bytes(bytes(64))
    path.unlink()
    assert Cache(tmp_path / "c")._stat.prune_missing() == 2  # what `cache gc` calls: the range entry goes too
    assert json.loads(state.read_bytes())["entries"] == {}


def test_the_source_digest_is_made_of_the_range_hashes_or_the_file_hash(tmp_path):
    write_old(tmp_path / "w.bin", bytes(range(64)))
    refs = {"x": {"external": {"location": "w.bin", "offset": 0, "dtype": "float32", "shape": [4]}},
            "y": {"external": {"location": "w.bin", "offset": 16, "dtype": "uint8", "shape": [8]}},
            "z": {"tensor": "0" * 64}}
    c = Cache(tmp_path / "c")
    got = sources.external_digests(ranges_by_file(refs), tmp_path, c, "g")
    hashes = {range_key(0, "float32", [4]): tensor_hash(np.arange(64, dtype=np.uint8)[:16].view(np.float32)),
              range_key(16, "uint8", [8]): tensor_hash(np.arange(16, 24, dtype=np.uint8))}
    assert got == {"file:w.bin": hash_json({"external-ranges": hashes})}
    refs["y"]["external"]["offset"] = 60  # past the end: the file's content hash, the stage reports the problem
    got = sources.external_digests(ranges_by_file(refs), tmp_path, c, "g")
    assert got == {"file:w.bin": hash_bytes(bytes(range(64)))}


def test_a_graphs_changed_external_files_are_hashed_in_threads_and_saved_once(tmp_path, monkeypatch):
    refs = {}
    for i in range(5):
        write_old(tmp_path / f"w{i}.bin", bytes([i]) * 64)
        refs[f"t{i}"] = {"external": {"location": f"w{i}.bin", "offset": 0, "dtype": "uint8", "shape": [64]}}
    c = Cache(tmp_path / "c")
    saves: list = []
    write = statstate.StatState._write
    monkeypatch.setattr(statstate.StatState, "_write", lambda self, entries: (saves.append(1), write(self, entries)))
    got = sources.external_digests(ranges_by_file(refs), tmp_path, c, "g")
    assert len(got) == 5 and len(saves) == 1  # not a read-merge-write of stat.json per file
    again = sources.external_digests(ranges_by_file(refs), tmp_path, Cache(tmp_path / "c"), "g")  # a new process
    assert again == got and len(saves) == 1


def test_a_remembered_hash_is_used_only_while_the_file_keeps_its_signature(tmp_path):
    arr = np.random.default_rng(1).standard_normal(MAP_MIN_BYTES // 4).astype(np.float32)
    path = tmp_path / "w.bin"
    write_old(path, arr.tobytes())
    ref = ExternalRef(str(path), 0, arr.nbytes, "float32", arr.shape)
    c = Cache(tmp_path / "c")
    key = range_key(0, "float32", list(arr.shape))
    h = c.range_hashes(path, [key], hash_ranges)[key]
    sig, remembered = c.known_ranges(path)
    got, known = MappedExternal(ref, (sig, remembered[key])).load_hashed()
    assert known == h == tensor_hash(arr) and got.tobytes() == arr.tobytes()
    write_old(path, (arr + 1).tobytes())  # rewritten since: the old hash is not used
    got, known = MappedExternal(ref, (sig, h)).load_hashed()
    assert known is None and got.tobytes() == (arr + 1).tobytes()
    assert c.put_tensor(got, known) == tensor_hash(arr + 1)


def test_inside_one_build_a_recent_file_s_ranges_are_hashed_once_but_never_known_for_storing(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(64))  # inside the racy window
    calls: list = []
    key = range_key(0, "uint8", [64])
    with statstate.one_build():
        first = Cache(tmp_path / "c").range_hashes(path, [key], counting(calls))
        assert Cache(tmp_path / "c").remembered_ranges(path, [key]) == first  # the task's lookup: no hashing
        assert Cache(tmp_path / "c").range_hashes(path, [key], counting(calls)) == first
        assert len(calls) == 1
        assert Cache(tmp_path / "c").known_ranges(path) is None  # parse.weights hashes what it stores itself
    assert Cache(tmp_path / "c").remembered_ranges(path, [key]) is None  # the build is over


@pytest.mark.parametrize("offset, dtype, shape", [*RANGES, (2**40, "float8e4m3fn", (2, 2)), (7, 'we"ird\\', [1])])
def test_a_range_key_is_the_json_it_always_was(offset, dtype, shape):
    assert range_key(offset, dtype, shape) == json.dumps([offset, dtype, list(shape)], separators=(",", ":"))


def test_a_weight_file_rewritten_within_one_tick_during_a_build_is_refused_not_recorded(tmp_path):
    """A file edited just before the run keeps its range hashes for the build; if it is rewritten again with the
    same stat (same size, mtime and inode) before its task reads it, the bytes read no longer match the key."""
    from types import SimpleNamespace

    from bundle_pipeline.errors import BundleIOError
    from bundle_pipeline.tasks.steps import TaskContext

    path = tmp_path / "w.bin"
    first, second = np.arange(16, dtype="<f4"), np.arange(16, dtype="<f4")[::-1].copy()
    path.write_bytes(first.tobytes())  # inside the racy window
    externals = {"w": {"location": "w.bin", "offset": 0, "dtype": "float32", "shape": [16]}}
    key = range_key(0, "float32", [16])
    with statstate.one_build():
        cache = Cache(tmp_path / "c")
        ranges = ranges_by_file({"w": {"external": externals["w"]}})
        digest = sources.external_digests(ranges, tmp_path, cache, "graph g")
        task = SimpleNamespace(graph="g", context={"where": "graph g"})
        ctx = TaskContext(task, Cache(tmp_path / "c"), digest)
        ctx.check_read("w.bin", path, externals, {"w": tensor_hash(first)})  # what was planned: fine
        st = path.stat()
        with open(path, "r+b") as f:  # rewritten in place, its stat put back
            f.write(second.tobytes())
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert Cache(tmp_path / "c").remembered_ranges(path, [key]) == {key: tensor_hash(first)}
        with pytest.raises(BundleIOError, match="changed while this build read it"):
            ctx.check_read("w.bin", path, externals, {"w": tensor_hash(second)})


@given(st.dictionaries(st.text(), st.text(), max_size=5))
def test_a_files_digest_is_the_hash_of_the_canonical_json_of_its_range_hashes(hashes):
    """``sources.ranges_digest`` writes the canonical JSON out by hand: it must be ``hash_json``'s, byte for byte
    (quotes, backslashes, control characters and non-ASCII keys included)."""
    assert sources.ranges_digest(hashes) == hash_json({"external-ranges": hashes})
