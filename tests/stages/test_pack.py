"""pack: manifest + constant pool -> a zarr v3 bundle, as a directory or a stored zip, reproducibly and atomically."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from bundle_pipeline.cache import Cache
from bundle_pipeline.hashing import tensor_hash
from bundle_pipeline.stages import pack
from bundle_pipeline.tasks.steps import CachePlacer

RNG = np.random.default_rng(0)
TENSORS = [
    RNG.standard_normal((3, 4)).astype(np.float32),
    RNG.standard_normal((300_000,)).astype(np.float32),  # > 1 MiB: several chunks
    np.array(2.5, np.float32),
    np.arange(6, dtype=np.int64).reshape(2, 3),
    np.zeros((0, 3), np.float32),
]
BY_HASH = {tensor_hash(t): t for t in TENSORS}


def meta(tensors=TENSORS) -> dict:
    constants = {f"infer.t{i}": {"hash": tensor_hash(t), "shape": list(t.shape), "dtype": t.dtype.name}
                 for i, t in enumerate(tensors)}
    storage = {"constants": constants, "bindings": {"infer": {f"t{i}": f"infer.t{i}" for i in range(len(tensors))}},
               "initial": {"v": "infer.t0"}}
    variables = {"v": {"shape": [3, 4], "dtype": "float32", "readers": ["infer"], "writers": ["update"],
                       "source": "initializer"}}
    graphs = [{"name": "update", "role": "update", "options": {}, "program": {"graph": "update", "steps": []}},
              {"name": "infer", "role": "infer", "options": {"precision_mode": "force_fp16"},
               "program": {"graph": "infer", "steps": [{"op": "Relu"}]}}]
    return pack.manifest("demo", "cpu", graphs, variables, {"v": "ND"}, storage)


def place(by_hash: dict, tmp_path: Path) -> CachePlacer:
    """The cache's placer (hard links) over a fresh cache holding these tensors, each as its own entry."""
    cache = Cache(tmp_path / "tensor-cache", chunk_bytes=1 << 20)  # 1 MiB chunks: the big tensor has several
    for t in by_hash.values():
        cache.put_tensor(t)
    return CachePlacer(cache, {})


def read_constant(group, const: dict) -> np.ndarray:
    """A constant's values from an opened bundle group: its own array, or its bytes in the packed array."""
    if const["array"] != pack.PACKED_ARRAY:
        return group[const["array"]][...]
    raw = np.asarray(group[pack.PACKED_ARRAY][const["offset"] : const["offset"] + const["nbytes"]])
    return raw.view(np.dtype(const["dtype"]).newbyteorder("<")).reshape(const["shape"])


def files(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in pack.entries(root)}


def test_manifest_lists_graphs_variables_and_constants():
    m = meta()
    assert m["format_version"] == pack.FORMAT_VERSION and m["target"] == "cpu" and m["name"] == "demo"
    assert [g["name"] for g in m["graphs"]] == ["update", "infer"]
    assert m["graphs"][0]["bindings"] == {} and m["graphs"][1]["bindings"]["t0"] == "infer.t0"
    assert m["variables"] == [{"name": "v", "shape": [3, 4], "dtype": "float32", "format": "ND", "storage": [3, 4],
                               "nbytes": 48,
                               "readers": ["infer"], "writers": ["update"], "source": "initializer",
                               "initial": "infer.t0"}]
    assert m["constants"]["infer.t1"]["array"] == "constants/infer.t1"  # 1.2 MB: an array of its own
    small = {cid: c for cid, c in m["constants"].items() if c["array"] == pack.PACKED_ARRAY}
    assert sorted(small) == ["infer.t0", "infer.t2", "infer.t3", "infer.t4"]
    assert [c["offset"] for c in small.values()] == [0, 64, 128, 192] and small["infer.t3"]["nbytes"] == 48


def test_directory_and_zip_have_the_same_digest_and_content(tmp_path):
    d = pack.run(meta(), place(BY_HASH, tmp_path), str(tmp_path / "b.bundle"))
    z = pack.run(meta(), place(BY_HASH, tmp_path), str(tmp_path / "b.zip"))
    assert d == z == pack.bundle_digest(tmp_path / "b.bundle") == pack.bundle_digest(tmp_path / "b.zip")
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == files(tmp_path / "b.bundle")
    for store in (zarr.storage.LocalStore(tmp_path / "b.bundle", read_only=True),
                  zarr.storage.ZipStore(tmp_path / "b.zip", mode="r")):
        group = zarr.open_group(store, mode="r")
        assert group.attrs.asdict() == meta()
        for i, t in enumerate(TENSORS):
            value = read_constant(group, meta()["constants"][f"infer.t{i}"])
            assert value.shape == t.shape and value.dtype == t.dtype
            np.testing.assert_array_equal(value, t)
        store.close()
    assert sum(1 for rel in files(tmp_path / "b.bundle") if rel.startswith("constants/infer.t1/c.")) > 1


def test_digest_changes_with_a_tensor(tmp_path):
    edited = [t.copy() for t in TENSORS]
    edited[1][7] += 1
    by_hash = {tensor_hash(t): t for t in edited}
    a = pack.run(meta(), place(BY_HASH, tmp_path), str(tmp_path / "a.bundle"))
    b = pack.run(meta(edited), place(by_hash, tmp_path), str(tmp_path / "b.bundle"))
    assert a != b


def test_writing_twice_gives_byte_identical_files(tmp_path):
    for out in ("one.bundle", "two/other.bundle", "one.zip", "two/other.zip"):
        pack.run(meta(), place(BY_HASH, tmp_path), str(tmp_path / out))
    assert files(tmp_path / "one.bundle") == files(tmp_path / "two/other.bundle")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two/other.zip").read_bytes()
    before = (tmp_path / "one.zip").read_bytes()
    pack.run(meta(), place(BY_HASH, tmp_path), str(tmp_path / "one.zip"))  # rewrite in place
    assert (tmp_path / "one.zip").read_bytes() == before


def test_zip_is_sorted_stored_with_fixed_timestamps(tmp_path):
    pack.run(meta(), place(BY_HASH, tmp_path), str(tmp_path / "b.zip"))
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        infos = zf.infolist()
        assert zf.testzip() is None
    names = [i.filename for i in infos]
    assert names == sorted(names) and len(names) == len(set(names))
    assert "zarr.json" in names and not any(n.endswith("/") for n in names)
    assert {i.date_time for i in infos} == {pack.ZIP_EPOCH}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}


def failing_place(tmp_path: Path):
    """Places every tensor but the big one, which fails as an unavailable tensor store would."""
    class Failing(CachePlacer):
        def tensor(self, h: str, dest: Path) -> dict[str, str]:
            if BY_HASH[h].shape == (300_000,):
                raise RuntimeError("tensor store unavailable")
            return super().tensor(h, dest)

    ok = place(BY_HASH, tmp_path)
    return Failing(ok.cache, ok.packs)


@pytest.mark.parametrize("name", ["b.bundle", "b.zip"])
def test_failed_write_leaves_the_previous_bundle_and_no_temp_files(tmp_path, name):
    out = tmp_path / "out" / name
    old_tensors = [np.ones((2, 2), np.float32)]
    old_hash = {tensor_hash(t): t for t in old_tensors}
    digest = pack.run(meta(old_tensors), place(old_hash, tmp_path), str(out))
    snapshot = files(out) if out.is_dir() else out.read_bytes()
    with pytest.raises(RuntimeError, match="tensor store unavailable"):
        pack.run(meta(), failing_place(tmp_path), str(out))
    assert (files(out) if out.is_dir() else out.read_bytes()) == snapshot
    assert pack.bundle_digest(out) == digest
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no staging dirs, no .old, no .zip.tmp


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        pack.run(meta(), failing_place(tmp_path), str(tmp_path / "new" / "b.bundle"))
    assert list((tmp_path / "new").iterdir()) == []


def test_replacing_a_bundle_removes_stale_entries(tmp_path):
    out = tmp_path / "b.bundle"
    pack.run(meta(), place(BY_HASH, tmp_path), str(out))
    fewer = TENSORS[:1]
    digest = pack.run(meta(fewer), place({tensor_hash(t): t for t in fewer}, tmp_path), str(out))
    assert not any(rel.startswith("constants/infer.t1") for rel in pack.entries(out))
    assert pack.bundle_digest(out) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle", "tensor-cache"]  # no staging leftovers


def test_directory_repack_links_cached_chunks_instead_of_writing_them(tmp_path):
    """A local cache hard-links chunk files into the bundle: a re-pack writes metadata, not tensor bytes
    (the packed array's chunks are cache objects, linked too)."""
    out = tmp_path / "b.bundle"
    pack.run(meta(), place(BY_HASH, tmp_path), str(out))
    pack.run(meta(), place(BY_HASH, tmp_path), str(out))
    chunk_files = [out / rel for rel in pack.entries(out) if rel.rsplit("/", 1)[-1].startswith("c")]
    assert chunk_files and all(p.stat().st_nlink >= 2 for p in chunk_files)
    cache_inodes = {p.stat().st_ino for p in (tmp_path / "tensor-cache").rglob("*") if p.is_file()}
    assert {p.stat().st_ino for p in chunk_files} <= cache_inodes


def test_a_pack_removes_a_killed_build_s_day_old_stage_and_nothing_else(tmp_path):
    import os

    out = tmp_path / "b.bundle"
    old_stage, new_stage = tmp_path / ".b.bundle.abcd1234", tmp_path / ".b.bundle.efgh5678"
    theirs, other = tmp_path / ".b.bundle.ijkl9012", tmp_path / ".b.bundle.notes"
    for d in (old_stage, new_stage, theirs, other):
        (d / "constants").mkdir(parents=True)
    (theirs / "thesis.tex").write_text("x")  # more than a bundle's top-level entries: someone's data
    day_ago = time.time() - pack.STALE_STAGE_S - 60
    for d in (old_stage, theirs, other):
        os.utime(d, (day_ago, day_ago))
    pack.run(meta(), place(BY_HASH, tmp_path), str(out))
    assert not old_stage.exists() and new_stage.is_dir() and theirs.is_dir() and other.is_dir()


def test_a_stored_constant_table_goes_into_the_manifest_as_it_is(tmp_path):
    """formats.weights lays the constants out to build the packed chunks and hands the table on as stored JSON: the
    manifest takes it undecoded (``RawJSON``), and the bundle is the same bytes as from the table laid out here."""
    from bundle_pipeline.hashing import stored_json
    from bundle_pipeline.zarr_plain import RawJSON, group_document

    fresh = meta()
    table = fresh["constants"]
    storage = {"constants": RawJSON(stored_json(table)), "bindings": {"infer": fresh["graphs"][1]["bindings"]},
               "initial": {"v": "infer.t0"}}
    graphs = [{k: g[k] for k in ("name", "role", "options", "program")} for g in fresh["graphs"]]
    variables = {"v": {k: fresh["variables"][0][k] for k in ("shape", "dtype", "readers", "writers", "source")}}
    given = pack.manifest("demo", "cpu", graphs, variables, {"v": "ND"}, storage)
    assert given["constants"] is storage["constants"]
    assert group_document(given) == group_document(fresh)
    layout = pack.Layout.of(table)
    assert set(layout.arrays) == {c["array"] for c in table.values() if c["array"] != pack.PACKED_ARRAY}
    a = pack.run(fresh, place(BY_HASH, tmp_path), str(tmp_path / "a.bundle"))
    assert pack.run_stamped(fresh, place(BY_HASH, tmp_path), str(tmp_path / "b.bundle"), layout=layout)[0] == a
    with pytest.raises(ValueError, match="chunks"):  # a stored table comes with its chunks (formats.weights')
        pack.run_stamped(given, place(BY_HASH, tmp_path), str(tmp_path / "c.bundle"), layout=layout)
