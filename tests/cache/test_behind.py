"""Tensor entries written behind their task (cache/behind.py): hashed now, written on a thread, read after it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bundle_pipeline.cache import Cache, behind, tensor_store
from bundle_pipeline.errors import BundleIOError
from bundle_pipeline.hashing import tensor_hash


def big(seed: int) -> np.ndarray:
    """2 MiB of float32: large enough to be written behind (``tensors.HASH_BESIDE_BYTES``)."""
    return np.random.default_rng(seed).standard_normal((512, 1024)).astype(np.float32)


def entry(cache_root, h: str):
    return cache_root / "tensors" / h[:2] / h / "zarr.json"


def test_outside_a_build_that_allows_it_the_entry_is_written_before_put_returns(tmp_path):
    c, started = Cache(tmp_path / "cache"), []
    h = c.put_tensor(big(1), likely_new=True, started=started)
    assert started == [] and entry(tmp_path / "cache", h).is_file()


def test_inside_it_the_hash_comes_first_and_every_read_waits_for_the_write(tmp_path, monkeypatch):
    gate = threading.Event()
    real = tensor_store._put_now

    def slow(*args):
        gate.wait(5)
        return real(*args)

    monkeypatch.setattr(tensor_store, "_put_now", slow)
    c, started, arr = Cache(tmp_path / "cache"), [], big(2)
    with behind.allowed():
        h = c.put_tensor(arr, likely_new=True, started=started)
        assert h == tensor_hash(arr) and len(started) == 1
        assert not entry(tmp_path / "cache", h).is_file()  # named, not written yet
        assert c.put_tensor(arr.copy(), likely_new=True, started=(again := [])) == h and again == started
        threading.Timer(0.05, gate.set).start()
        assert c.has_tensor(h)  # waited for the write
        np.testing.assert_array_equal(c.get_tensor(h), arr)
    assert behind.writing(c.root, h) is None  # drained on leaving
    assert c.verify()["corrupt"] == []


def test_a_record_waits_for_its_task_s_writes_and_is_never_written_when_one_fails(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensor_store, "_put_now", full_disk)
    c, started, recorded = Cache(tmp_path / "cache"), [], []
    with pytest.raises(BundleIOError, match="No space left") as raised, behind.allowed():
        h = c.put_tensor(big(3), likely_new=True, started=started)
        behind.after(started, lambda: recorded.append("record"))
        with pytest.raises(BundleIOError, match=f"cannot write tensor {h}"):
            c.has_tensor(h)  # the reader gets the write's error
    assert raised.value.status == "IO_ERROR" and recorded == []
    assert not [t for t in threading.enumerate() if t.name.startswith("bundle-pipeline-")]


def test_with_no_writes_the_record_is_written_at_once(tmp_path):
    recorded: list[str] = []
    behind.after([], lambda: recorded.append("record"))
    assert recorded == ["record"]


def test_past_the_limit_of_writes_in_flight_the_caller_writes_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(behind, "max_in_flight", lambda: 0)
    c, started = Cache(tmp_path / "cache"), []
    with behind.allowed():
        h = c.put_tensor(big(4), likely_new=True, started=started)
        assert started == [] and entry(tmp_path / "cache", h).is_file()


def test_small_or_known_tensors_are_never_written_behind(tmp_path):
    c, started = Cache(tmp_path / "cache"), []
    small = np.arange(16, dtype=np.float32)
    with behind.allowed():
        h_small = c.put_tensor(small, likely_new=True, started=started)
        arr = big(5)
        h_known = c.put_tensor(arr, known_hash=tensor_hash(arr), likely_new=True, started=started)
        assert started == []
        assert entry(tmp_path / "cache", h_small).is_file() and entry(tmp_path / "cache", h_known).is_file()
