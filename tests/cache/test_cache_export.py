"""export_tensor: hard-linked chunk files with remembered sha256, a zarr.json made from the entry's metadata
(a cache object, linked like the chunks); damage through a link is detected."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bundle_pipeline.cache import Cache, CacheMiss


def test_export_links_files_and_returns_their_sha256(tmp_path):
    cache = Cache(tmp_path / "c")
    arr = np.random.default_rng(0).standard_normal((600, 1024)).astype(np.float32)  # 3 chunks of ~1 MiB
    h = cache.put_tensor(arr)
    digests = cache.export_tensor(h, tmp_path / "out")
    on_disk = {p.relative_to(tmp_path / "out").as_posix(): p for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert set(digests) == set(on_disk) and "zarr.json" in digests
    for rel, path in on_disk.items():
        assert digests[rel] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.stat().st_nlink >= 2  # the cache's own files: a re-pack creates no file
    assert cache.export_tensor(h, tmp_path / "again") == digests  # remembered, same answer
    entry = tmp_path / "c" / "tensors" / h[:2] / h / "zarr.json"
    assert (tmp_path / "out" / "zarr.json").read_bytes() == entry.read_bytes()  # as this version writes entries


def test_write_through_a_link_is_detected_on_next_export(tmp_path):
    cache = Cache(tmp_path / "c")
    h = cache.put_tensor(np.arange(300_000, dtype=np.float32))
    cache.export_tensor(h, tmp_path / "out")
    chunk = next(p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "zarr.json")
    with open(chunk, "r+b") as f:  # in place: the cache shares this inode
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(CacheMiss):
        cache.export_tensor(h, tmp_path / "out2")


def test_a_re_export_places_the_remembered_files_without_reading_the_entry(tmp_path, monkeypatch):
    """A re-pack's fast path: the first export records what it placed (stats, digests, zarr.json); the next
    links the same files and writes the same zarr.json without parsing the entry's metadata."""
    import os

    from bundle_pipeline.cache import tensors

    cache = Cache(tmp_path / "c")
    h = cache.put_tensor(np.random.default_rng(1).standard_normal((600, 1024)).astype(np.float32))
    first = cache.export_tensor(h, tmp_path / "out")
    monkeypatch.setattr(tensors, "entry_meta", lambda *a: pytest.fail("the remembered export read the entry"))
    assert cache.export_tensor(h, tmp_path / "again") == first
    for rel in first:
        assert (tmp_path / "again" / rel).read_bytes() == (tmp_path / "out" / rel).read_bytes()
    monkeypatch.undo()
    chunk = next(p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "zarr.json")
    os.utime(chunk, ns=(1, 1))  # the recorded stat no longer matches: the slow path re-verifies the bytes
    assert cache.export_tensor(h, tmp_path / "third") == first


def test_a_zarr_json_changed_through_its_link_is_placed_anew_not_reused(tmp_path):
    cache = Cache(tmp_path / "c")
    h = cache.put_tensor(np.arange(300_000, dtype=np.float32))
    first = cache.export_tensor(h, tmp_path / "out")
    doc = tmp_path / "out" / "zarr.json"
    good = doc.read_bytes()
    with open(doc, "r+b") as f:  # in place: the cache's document object shares this inode
        f.write(b"{}")
    assert cache.export_tensor(h, tmp_path / "again") == first
    assert (tmp_path / "again" / "zarr.json").read_bytes() == good
    assert cache.export_tensor(h, tmp_path / "third") == first  # and remembered again
    assert (tmp_path / "third" / "zarr.json").read_bytes() == good
