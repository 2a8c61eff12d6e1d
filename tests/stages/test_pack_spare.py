"""pack_spare: a re-pack keeps the tree it replaced for the next pack, which updates it instead of making one anew.

Checked as a user would see it: the bundle is byte-identical to a fresh pack whatever the kept tree holds
(arrays unchanged, changed, gone; files added, altered or replaced by someone), unchanged arrays keep their
directory (no new one made), nothing is left beside the output, and ``cache gc`` empties the slots.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_pack import TENSORS, files, meta, place

from bundle_pipeline.hashing import tensor_hash
from bundle_pipeline.stages import pack, pack_spare
from bundle_pipeline.tasks.runner import output_stamp
from bundle_pipeline.tasks.steps import CachePlacer

BIG = "constants/infer.t1"  # the one tensor of TENSORS large enough for an array of its own


def tensors_with(*big: np.ndarray) -> list[np.ndarray]:
    """TENSORS plus more large arrays (each its own array directory), so some can change and some not."""
    return [*TENSORS, *big]


def pack_into(out: Path, tensors: list[np.ndarray], tmp_path: Path) -> str:
    return pack.run(meta(tensors), place({tensor_hash(t): t for t in tensors}, tmp_path), str(out))


def fresh(tensors: list[np.ndarray], tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "fresh" / "b.bundle"
    shutil.rmtree(out.parent, ignore_errors=True)
    pack_into(out, tensors, tmp_path)
    return files(out)


def slot(tmp_path: Path, out: Path) -> Path:
    return Path(place({}, tmp_path).spare(out))


BIG2 = np.linspace(0, 1, 200_000, dtype=np.float32)
BIG3 = np.linspace(1, 2, 200_000, dtype=np.float32)


def test_the_replaced_tree_waits_in_the_cache_and_the_next_pack_updates_it(tmp_path):
    out = tmp_path / "b.bundle"
    first = tensors_with(BIG2, BIG3)
    pack_into(out, first, tmp_path)
    inode = (out / "constants/infer.t5").stat().st_ino
    edited = tensors_with(BIG2, BIG3 + 1)  # infer.t6 changes, infer.t5 does not
    pack_into(out, edited, tmp_path)
    assert slot(tmp_path, out).is_dir()  # the first tree, kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle", "tensor-cache"]  # nothing beside it
    again = tensors_with(BIG2, BIG3 + 2)
    digest = pack_into(out, again, tmp_path)  # updates the first tree
    assert (out / "constants/infer.t5").stat().st_ino == inode  # kept: no directory made for it
    assert files(out) == fresh(again, tmp_path) and pack.bundle_digest(out) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle", "fresh", "tensor-cache"]


def test_kept_arrays_are_checked_against_the_record_of_the_tree_not_one_cache_record_each(tmp_path, monkeypatch):
    out = tmp_path / "b.bundle"
    pack_into(out, tensors_with(BIG2, BIG3), tmp_path)
    pack_into(out, tensors_with(BIG2, BIG3 + 1), tmp_path)
    monkeypatch.setattr(CachePlacer, "placed", lambda *a: pytest.fail("the tree's record answers for kept arrays"))
    final = tensors_with(BIG2, BIG3 + 2)
    inode = (slot(tmp_path, out) / "constants/infer.t5").stat().st_ino
    digest = pack_into(out, final, tmp_path)
    assert (out / "constants/infer.t5").stat().st_ino == inode
    assert files(out) == fresh(final, tmp_path) and pack.bundle_digest(out) == digest


def test_the_record_of_a_re_pack_takes_the_kept_arrays_entries_as_checked_and_stats_only_the_new(tmp_path,
                                                                                                 monkeypatch):
    """Kept and linked arrays were just found file by file as recorded: the record of the new tree takes their
    entries as they are; only arrays placed anew are stat'ed. The record is the one a full description gives."""
    out = tmp_path / "b.bundle"
    pack_into(out, tensors_with(BIG2, BIG3), tmp_path)
    pack_into(out, tensors_with(BIG2, BIG3 + 1), tmp_path)  # the first re-pack links infer.t5 from the bundle
    stated: list[str] = []
    real_stats, real_describe = pack_spare._stats, pack_spare.describe
    monkeypatch.setattr(pack_spare, "_stats", lambda d, shas: stated.append(os.path.basename(d)) or real_stats(d, shas))
    described: list[dict] = []

    def describe_both_ways(stage, arrays, listing, layout, checked=None):
        quick = real_describe(stage, arrays, listing, layout, checked)
        described.append({"quick": quick, "full": real_describe(stage, arrays, listing, layout)})
        return quick

    monkeypatch.setattr(pack_spare, "describe", describe_both_ways)
    pack_into(out, tensors_with(BIG2, BIG3 + 2), tmp_path)  # the kept tree: infer.t5 kept, infer.t6 anew
    quick_stated = stated[: len(stated) - len(described[0]["full"]["arrays"])]  # the full description stats all
    assert "infer.t5" not in quick_stated and "infer.t6" in quick_stated
    assert described[0]["quick"] == described[0]["full"]


@pytest.mark.parametrize("tamper", [False, True])
def test_a_first_re_pack_links_unchanged_arrays_from_the_bundle_it_replaces(tmp_path, monkeypatch, tamper):
    """No kept tree yet (the first edit after a cold build): unchanged arrays are linked from the bundle being
    replaced, by its record, and only the changed one is placed by the cache; a file of the live bundle that is
    not the one recorded is not linked."""
    out = tmp_path / "b.bundle"
    pack_into(out, tensors_with(BIG2, BIG3), tmp_path)
    if tamper:
        chunk = out / "constants/infer.t5/c.0"
        data = chunk.read_bytes()
        chunk.unlink()
        chunk.write_bytes(data[::-1])
    asked: list[str] = []
    real = CachePlacer.tensor
    monkeypatch.setattr(CachePlacer, "tensor", lambda self, h, dest: asked.append(h) or real(self, h, dest))
    final = tensors_with(BIG2, BIG3 + 1)
    digest = pack_into(out, final, tmp_path)
    want = {tensor_hash(BIG3 + 1)} | ({tensor_hash(BIG2)} if tamper else set())
    assert set(asked) == want
    assert files(out) == fresh(final, tmp_path) and pack.bundle_digest(out) == digest


def test_a_record_of_another_layout_or_tree_is_not_used(tmp_path, monkeypatch):
    out = tmp_path / "b.bundle"
    pack_into(out, tensors_with(BIG2, BIG3), tmp_path)
    pack_into(out, tensors_with(BIG2, BIG3 + 1), tmp_path)
    record = slot(tmp_path, out).with_name(slot(tmp_path, out).name + ".json")
    assert record.is_file()
    monkeypatch.setattr(CachePlacer, "layout", property(lambda self: "another chunking"))
    asked = []
    real = CachePlacer.placed
    monkeypatch.setattr(CachePlacer, "placed", lambda self, h, dest: asked.append(h) or real(self, h, dest))
    final = tensors_with(BIG2, BIG3 + 2)
    digest = pack_into(out, final, tmp_path)
    assert tensor_hash(BIG2) in asked  # checked by the placer, not taken from the record
    assert files(out) == fresh(final, tmp_path) and pack.bundle_digest(out) == digest


@pytest.mark.parametrize("tamper", ["extra file", "altered chunk", "relinked chunk", "extra array", "root file",
                                    "array is a file", "no zarr.json"])
def test_whatever_the_kept_tree_holds_the_bundle_equals_a_fresh_pack(tmp_path, tamper):
    out = tmp_path / "b.bundle"
    pack_into(out, tensors_with(BIG2), tmp_path)
    pack_into(out, tensors_with(BIG2 + 1), tmp_path)
    kept = slot(tmp_path, out)
    array = kept / BIG
    chunk = next(p for p in sorted(array.iterdir()) if p.name.startswith("c"))
    if tamper == "extra file":
        (array / "notes.txt").write_text("x")
    elif tamper == "altered chunk":  # through the link: the cache entry's own file changes too (its stat does)
        os.utime(chunk, ns=(1, 1))
    elif tamper == "relinked chunk":
        data = chunk.read_bytes()
        chunk.unlink()
        chunk.write_bytes(data[::-1])  # another file of the same size in its place
    elif tamper == "extra array":
        shutil.copytree(array, kept / "constants/infer.t9")
    elif tamper == "root file":
        (kept / "stray.json").write_text("{}")
    elif tamper == "array is a file":
        shutil.rmtree(array)
        array.write_text("x")
    elif tamper == "no zarr.json":
        (array / "zarr.json").unlink()
    final = tensors_with(BIG2 + 2)
    digest, stamp = pack.run_stamped(meta(final), place({tensor_hash(t): t for t in final}, tmp_path), str(out))
    assert files(out) == fresh(final, tmp_path) and pack.bundle_digest(out) == digest
    assert stamp == output_stamp(str(out))  # what the no-op compares: the stamp taken from records is the walk's


def test_every_pack_s_stamp_is_the_one_a_walk_of_the_bundle_gives(tmp_path):
    out = tmp_path / "b.bundle"
    stamps = []
    for tensors in (tensors_with(BIG2, BIG3), tensors_with(BIG2, BIG3 + 1), tensors_with(BIG2 + 1),
                    tensors_with(BIG2 + 1, BIG3), tensors_with(BIG2 + 1, BIG3)):  # fresh, linked, kept, pruned
        digest, stamp = pack.run_stamped(meta(tensors), place({tensor_hash(t): t for t in tensors}, tmp_path), str(out))
        stamps.append(stamp)
        assert digest == pack.bundle_digest(out)
        assert stamp is None or stamp == output_stamp(str(out))
    assert stamps[0] is not None and all(s is not None for s in stamps)  # a local cache: every pack described its tree


def test_a_pack_racing_another_records_its_own_tree_not_the_one_at_the_output(tmp_path, monkeypatch):
    """B swaps its tree in, then A packs other content over it before B records anything: B's record must still
    describe B's tree (now in A's hands), so no later pack takes A's files for B's tensor."""
    out = tmp_path / "b.bundle"
    version = [tensors_with(BIG2 + k) for k in range(6)]
    pack_into(out, version[1], tmp_path)
    pack_into(out, version[2], tmp_path)
    real_swap, raced = pack._swap_into_place, []

    def swap_then_race(staged, target):
        real_swap(staged, target)
        if not raced:
            raced.append(True)
            pack_into(out, version[4], tmp_path)  # A, start to end, between B's swap and B's record

    monkeypatch.setattr(pack, "_swap_into_place", swap_then_race)
    pack_into(out, version[3], tmp_path)  # B
    monkeypatch.setattr(pack, "_swap_into_place", real_swap)
    pack_into(out, version[5], tmp_path)
    for k in (3, 4, 3, 5):
        digest = pack_into(out, version[k], tmp_path)
        assert files(out) == fresh(version[k], tmp_path) and pack.bundle_digest(out) == digest, k


def test_a_zip_output_keeps_no_tree(tmp_path):
    out = tmp_path / "b.zip"
    pack_into(out, TENSORS, tmp_path)
    pack_into(out, tensors_with(BIG2), tmp_path)
    assert not slot(tmp_path, out).exists()


def test_a_slot_that_is_not_a_tree_is_not_used(tmp_path):
    out = tmp_path / "b.bundle"
    spare = slot(tmp_path, out)
    spare.parent.mkdir(parents=True)
    spare.write_text("not a bundle")
    assert pack_spare.claim(spare, out, set(), pack.PACKED_ARRAY, "any")[0] is None
    digest = pack_into(out, TENSORS, tmp_path)
    assert pack.bundle_digest(out) == digest and files(out) == fresh(TENSORS, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle", "fresh", "tensor-cache"]


def test_a_failed_pack_leaves_the_previous_bundle_and_no_stage(tmp_path):
    class Failing(CachePlacer):
        def tensor(self, h: str, dest: Path) -> dict[str, str]:
            raise RuntimeError("tensor store unavailable")

    out = tmp_path / "b.bundle"
    pack_into(out, TENSORS, tmp_path)
    pack_into(out, tensors_with(BIG2), tmp_path)  # the first tree is kept
    before = files(out)
    ok = place({tensor_hash(BIG3): BIG3}, tmp_path)
    with pytest.raises(RuntimeError, match="tensor store unavailable"):  # claims the kept tree, then fails
        pack.run(meta(tensors_with(BIG3)), Failing(ok.cache, ok.packs), str(out))
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle", "tensor-cache"]


def test_cache_gc_empties_the_slots(tmp_path):
    out = tmp_path / "b.bundle"
    pack_into(out, TENSORS, tmp_path)
    pack_into(out, tensors_with(BIG2), tmp_path)
    placer = place({}, tmp_path)
    assert slot(tmp_path, out).is_dir()
    placer.cache.gc(keep_actions=placer.cache.newest_builds())
    assert not slot(tmp_path, out).exists()
