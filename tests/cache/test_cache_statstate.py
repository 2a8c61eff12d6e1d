"""Input stat state of bundle_pipeline.cache: hash once, trust the stat signature, notice changes."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from bundle_pipeline.cache import Cache, statstate
from bundle_pipeline.hashing import hash_bytes

HOUR_NS = 3600 * 10**9


def write_old(path, data: bytes, age_ns: int = HOUR_NS) -> int:
    """Write a file and date it in the past (outside the racy window); return its mtime_ns."""
    path.write_bytes(data)
    mtime = time.time_ns() - age_ns
    os.utime(path, ns=(mtime, mtime))
    return mtime


@pytest.fixture
def reads(monkeypatch):
    """Count the files actually read (hashed) by the stat state."""
    seen = []
    real = statstate.hash_stream

    def counting(f):
        seen.append(f.name)
        return real(f)

    monkeypatch.setattr(statstate, "hash_stream", counting)
    return seen


def test_hash_matches_hash_bytes_and_streams(tmp_path, monkeypatch):
    monkeypatch.setattr(statstate, "READ_BYTES", 7)  # force many partial reads
    data = os.urandom(1000)
    f = tmp_path / "model.onnx"
    write_old(f, data)
    assert Cache(tmp_path / "c").file_hash(f) == hash_bytes(data)
    empty = tmp_path / "empty"
    write_old(empty, b"")
    assert Cache(tmp_path / "c").file_hash(empty) == hash_bytes(b"")


def test_unchanged_file_is_not_read_again(tmp_path, reads):
    f = tmp_path / "w.bin"
    write_old(f, b"weights v1")
    c = Cache(tmp_path / "c")
    h = c.file_hash(f)
    assert c.file_hash(f) == h
    assert c.file_hash(str(f)) == h  # str and Path name the same entry
    assert Cache(tmp_path / "c").file_hash(f) == h  # a new process: from state/stat.json
    assert reads == [str(f)]
    state = json.loads((tmp_path / "c" / "state" / "stat.json").read_bytes())
    st = os.stat(f)
    assert state["entries"][str(f)] == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, h]


def test_same_size_and_mtime_is_trusted_but_new_mtime_rehashes(tmp_path, reads):
    f = tmp_path / "w.bin"
    mtime = write_old(f, b"AAAA")
    c = Cache(tmp_path / "c")
    old = c.file_hash(f)
    # rewrite in place with the same size and restore mtime_ns: the stat state cannot tell
    with open(f, "r+b") as fh:
        fh.write(b"BBBB")
    os.utime(f, ns=(mtime, mtime))
    assert c.file_hash(f) == old
    assert len(reads) == 1  # proved: the content was not read
    os.utime(f, ns=(mtime + 1, mtime + 1))
    assert c.file_hash(f) == hash_bytes(b"BBBB")
    assert len(reads) == 2
    assert Cache(tmp_path / "c").file_hash(f) == hash_bytes(b"BBBB")  # and the new entry was saved
    assert len(reads) == 2


def test_size_or_inode_change_rehashes(tmp_path, reads):
    f = tmp_path / "w.bin"
    mtime = write_old(f, b"1234")
    c = Cache(tmp_path / "c")
    c.file_hash(f)
    f.write_bytes(b"12345")
    os.utime(f, ns=(mtime, mtime))
    assert c.file_hash(f) == hash_bytes(b"12345")
    # replaced by another file (new inode) with the same size and mtime, as `mv new old` does
    other = tmp_path / "other"
    other.write_bytes(b"abcde")
    os.utime(other, ns=(mtime, mtime))
    keep_alive = tmp_path / "keep"
    os.link(f, keep_alive)  # keep the old inode allocated so the new file cannot reuse its number
    os.replace(other, f)
    assert c.file_hash(f) == hash_bytes(b"abcde")
    assert len(reads) == 3


def test_recently_modified_file_is_hashed_but_not_trusted(tmp_path, reads):
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"just written")  # mtime = now: inside the racy window
    c = Cache(tmp_path / "c")
    assert c.file_hash(f) == hash_bytes(b"just written")
    assert c.file_hash(f) == hash_bytes(b"just written")
    assert len(reads) == 2
    assert not (tmp_path / "c" / "state" / "stat.json").exists()
    c._stat.racy_window_ns = 0
    c.file_hash(f)
    c.file_hash(f)
    assert len(reads) == 3


def test_file_changing_while_read_is_not_recorded(tmp_path, monkeypatch):
    f = tmp_path / "growing.bin"
    mtime = write_old(f, b"start")
    real = statstate.hash_stream
    attempts = []

    def append_while_reading(fh):
        attempts.append(1)
        with open(f, "ab") as w:
            w.write(b"+")
        os.utime(f, ns=(mtime, mtime))  # an old mtime, so only the size tells the read was torn
        return real(fh)

    monkeypatch.setattr(statstate, "hash_stream", append_while_reading)
    c = Cache(tmp_path / "c")
    c.file_hash(f)
    assert len(attempts) == 3  # re-read while unstable, then gave up
    assert not (tmp_path / "c" / "state" / "stat.json").exists()


def test_missing_file_raises_filenotfounderror(tmp_path):
    with pytest.raises(FileNotFoundError):
        Cache(tmp_path / "c").file_hash(tmp_path / "nope.onnx")


def test_corrupt_state_file_is_treated_as_empty(tmp_path, reads):
    f = tmp_path / "w.bin"
    write_old(f, b"data")
    state = tmp_path / "c" / "state" / "stat.json"
    state.parent.mkdir(parents=True)
    for junk in (b'{"v": 1, "entries": {"', b"[]", b'{"v": 1, "entries": {"%s": [1, 2, 3, 4, "x"]}}' % str(f).encode()):
        state.write_bytes(junk)
        assert Cache(tmp_path / "c").file_hash(f) == hash_bytes(b"data")
    assert len(reads) == 3
    assert json.loads(state.read_bytes())["entries"][str(f)][4] == hash_bytes(b"data")


def test_concurrent_writers_merge_and_never_corrupt(tmp_path):
    files = []
    for i in range(24):
        f = tmp_path / f"in{i}.bin"
        write_old(f, f"input {i}".encode())
        files.append(f)
    caches = [Cache(tmp_path / "c") for _ in range(4)]  # as if four processes

    wrong = []

    def work(k):
        for f in files[k::4]:
            if caches[k].file_hash(f) != hash_bytes(f.read_bytes()):
                wrong.append(f)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    entries = json.loads((tmp_path / "c" / "state" / "stat.json").read_bytes())["entries"]
    assert entries  # valid JSON; some entries may have been lost to races, never wrong ones
    for path, entry in entries.items():
        assert entry[4] == hash_bytes(Path(path).read_bytes())
    assert not [n for n in os.listdir(tmp_path / "c" / "state") if n.startswith(".tmp-")]


def test_remote_root_keeps_state_on_local_disk(tmp_path, reads):
    name = f"bp-cache-test-{uuid.uuid4().hex}"
    f = tmp_path / "w.bin"
    write_old(f, b"remote")
    try:
        c = Cache(f"memory://{name}", state_dir=tmp_path / "state")
        h = c.file_hash(f)
        assert Cache(f"memory://{name}", state_dir=tmp_path / "state").file_hash(f) == h
        assert len(reads) == 1
        assert (tmp_path / "state" / "stat.json").exists()
        assert not fsspec.filesystem("memory").exists(f"/{name}/state")
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


def test_default_remote_state_dir_is_per_root_under_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a, b = Cache("memory://root-a"), Cache("memory://root-b")
    assert a._stat.path.startswith(str(tmp_path / "xdg" / "bundle-pipeline" / "state") + os.sep)
    assert a._stat.path.endswith(os.sep + "stat.json")
    assert a._stat.path != b._stat.path


def test_gc_prunes_entries_of_deleted_files(tmp_path):
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    write_old(kept, b"k")
    write_old(gone, b"g")
    c = Cache(tmp_path / "c")
    c.file_hash(kept)
    c.file_hash(gone)
    gone.unlink()
    (tmp_path / "c" / "state" / ".tmp-leftover").write_bytes(b"{")
    result = c.gc()
    assert result["stat_entries_pruned"] == 1 and result["temp_removed"] == 1
    entries = json.loads((tmp_path / "c" / "state" / "stat.json").read_bytes())["entries"]
    assert list(entries) == [str(kept)]


def test_two_caches_on_one_root_keep_every_output_record(tmp_path):
    """Two bundles of one build use two Cache objects on one root; concurrent packs must not lose records
    (a lost record re-packs that bundle on the next build)."""
    caches = [Cache(str(tmp_path / "cache")), Cache(str(tmp_path / "cache"))]
    paths = [str(tmp_path / f"out{i}.bundle") for i in range(40)]

    def record(i: int) -> None:
        caches[i % 2].record_output(paths[i], {"key": f"k{i}", "stamp": f"s{i}"})

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(caches[0].output_record(p) == {"key": f"k{i}", "stamp": f"s{i}"} for i, p in enumerate(paths))


def test_deferred_records_save_once_and_keep_other_processes_entries(tmp_path, monkeypatch, reads):
    """The planner hashes every new model of a cold build: one read-merge-write of the state, not one per file."""
    files = [tmp_path / f"m{i}.onnx" for i in range(5)]
    for i, f in enumerate(files):
        write_old(f, b"model %d" % i)
    c = Cache(tmp_path / "c")
    other = Cache(tmp_path / "c")  # another process's view of the same state file
    writes = []
    real = statstate.StatState._write
    monkeypatch.setattr(statstate.StatState, "_write", lambda self, entries: (writes.append(len(entries)),
                                                                               real(self, entries)))
    with c.deferred_file_hashes():
        hashes = [c.file_hash(f) for f in files[:4]]
        assert writes == []
        assert c.file_hash(files[0]) == hashes[0]  # known in memory already: not read again
        other.file_hash(files[4])  # saved at once, outside the deferral
        assert writes == [1]
    assert writes == [1, 5]  # the deferred four merged with the other's one, in one write
    again = Cache(tmp_path / "c")
    assert [again.file_hash(f) for f in files] == [*hashes, hash_bytes(b"model 4")]
    assert len(reads) == 5  # each file hashed once: the fresh Cache found all five entries on disk


def test_a_recently_modified_model_is_hashed_every_time_even_inside_one_build(tmp_path, reads):
    """Only range hashes are kept for a build (their task checks what it reads against them); a whole file's
    hash is taken again by its task, which does not hash the bytes it parses."""
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"edited just now")  # inside the racy window
    with statstate.one_build():
        plan, task = Cache(tmp_path / "c"), Cache(tmp_path / "c")
        assert plan.file_hash(f) == task.file_hash(f) == hash_bytes(b"edited just now")
        assert len(reads) == 2
    assert not (tmp_path / "c" / "state" / "stat.json").exists()


def test_a_stat_state_read_again_after_another_process_saved_sees_its_entries(tmp_path):
    old = tmp_path / "old.bin"
    write_old(old, b"old bytes")
    Cache(tmp_path / "c").file_hash(old)
    mine = Cache(tmp_path / "c")._stat
    assert old.resolve().as_posix() in mine._read_disk()
    other = tmp_path / "other.bin"
    write_old(other, b"other bytes")
    Cache(tmp_path / "c").file_hash(other)  # saved by "another process": a new version of stat.json
    assert {old.resolve().as_posix(), other.resolve().as_posix()} <= set(mine._read_disk())
