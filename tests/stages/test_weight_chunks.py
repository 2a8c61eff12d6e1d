"""weight_chunks: small constants converted straight into the bundle's packed-array chunks, each chunk built once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bundle_pipeline.cache import Cache
from bundle_pipeline.cache import objects as objects_mod
from bundle_pipeline.formats import to_format
from bundle_pipeline.hashing import sha256_hex, tensor_hash
from bundle_pipeline.layouts import storage_shape
from bundle_pipeline.stages import pack, weight_chunks

RNG = np.random.default_rng(3)
NZ = "FRACTAL_NZ"


def sources() -> dict[str, tuple[np.ndarray, str]]:
    """constant id -> (source values, the format it is stored in)."""
    return {"a.bias": (RNG.standard_normal(40).astype(np.float32), "ND"),
            "a.weight": (RNG.standard_normal((20, 40)).astype(np.float32), NZ),
            "b.weight": (RNG.standard_normal((33, 17)).astype(np.float32), NZ),
            "b.steps": (np.arange(5, dtype=np.int64), "ND"),
            "c.empty": (np.zeros((0, 3), np.float32), "ND")}


class Counting:
    """The cache as a stage sees it, counting the objects it stores."""

    def __init__(self, cache: Cache):
        self.cache, self.stored = cache, 0

    def put_object(self, data: bytes, placed: bool = False) -> str:
        self.stored += 1
        return self.cache.put_object(data, placed)

    def __getattr__(self, name: str):
        return getattr(self.cache, name)


def layout(cache: Cache, consts: dict[str, tuple[np.ndarray, str]]) -> tuple[dict, dict]:
    """The packed array's table as formats.weights lays it out, and the source packs."""
    refs = cache.put_tensors({cid: arr for cid, (arr, _) in consts.items()})
    entries = {}
    for cid, (arr, fmt) in consts.items():
        shape = list(arr.shape) if fmt == "ND" else list(storage_shape(fmt, arr.shape))
        entries[cid] = {"hash": weight_chunks.source_name(refs[cid]["tensor"], fmt), "dtype": arr.dtype.name,
                        "shape": list(arr.shape), **({"format": fmt, "storage": shape} if fmt != "ND" else {})}
    return pack.constant_table(entries), {r["tensor"]: r["pack"] for r in refs.values()}


def chunk_bytes(cache: Cache, objects: list[str]) -> bytes:
    return b"".join(cache.get_object(h) for h in objects)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(pack, "PACKED_CHUNK_BYTES", 2048)  # several chunks, constants straddling them


def test_chunks_hold_each_constant_converted_at_its_offset(tmp_path, small_chunks):
    cache = Cache(tmp_path / "c")
    consts = sources()
    table, packs = layout(cache, consts)
    objects, hashes = weight_chunks.build(cache, table, packs)
    raw = chunk_bytes(cache, objects)
    assert len(objects) > 2 and all(len(cache.get_object(h)) == 2048 for h in objects)
    for cid, (arr, fmt) in consts.items():
        want = to_format(arr, fmt)
        c = table[cid]
        assert raw[c["offset"] : c["offset"] + c["nbytes"]] == want.astype(want.dtype.newbyteorder("<")).tobytes()
        assert hashes[c["hash"]] == tensor_hash(want)
    ends = sorted((c["offset"], c["offset"] + c["nbytes"]) for c in table.values())
    gaps = [raw[end:start] for (_, end), (start, _) in itertools.pairwise(ends)] + [raw[ends[-1][1]:]]
    assert all(g == bytes(len(g)) for g in gaps)  # zeros between and after the constants


def test_a_rebuild_stores_nothing_and_an_edit_rebuilds_only_its_chunks(tmp_path, small_chunks):
    cache = Counting(Cache(tmp_path / "c"))
    consts = sources()
    table, packs = layout(cache.cache, consts)
    first = weight_chunks.build(cache, table, packs)
    assert cache.stored == len(first[0])
    cache.stored = 0
    assert weight_chunks.build(cache, table, packs) == first and cache.stored == 0
    edited = dict(consts, **{"b.steps": (np.arange(5, dtype=np.int64) * 7, "ND")})
    table2, packs2 = layout(cache.cache, edited)
    objects, hashes = weight_chunks.build(cache, table2, packs2)
    changed = [i for i, (a, b) in enumerate(zip(first[0], objects, strict=True)) if a != b]
    steps = table2["b.steps"]
    assert changed == [steps["offset"] // 2048] and cache.stored == 1
    assert hashes[steps["hash"]] == tensor_hash(np.arange(5, dtype=np.int64) * 7)


def test_placing_a_chunk_reads_nothing_back(tmp_path, monkeypatch):
    """The sha256 a bundle digest lists is remembered when the chunk is stored: linking it reads no bytes."""
    cache = Cache(tmp_path / "c")
    table, packs = layout(cache, sources())
    objects, _ = weight_chunks.build(cache, table, packs)
    monkeypatch.setattr(objects_mod, "get_object", lambda *a: pytest.fail("read the chunk back"))
    digest = cache.place_object(objects[0], tmp_path / "c.0")
    assert digest == sha256_hex((tmp_path / "c.0").read_bytes())
