"""A corrupted object or tensor chunk in the cache (flipped byte, truncated file) is detected by its hash,
treated as a miss, rebuilt, and reported under ``cache_repairs``; the bundle is byte-identical to a clean
build. Damage is done in place, as bit rot or a torn write would do it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faults
import models
import pytest
from typer.testing import CliRunner

from bundle_pipeline.cache import Cache
from bundle_pipeline.cli import app
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec


def flip(path: Path, at: int = 5) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.fixture
def built(tmp_path):
    """A bundle with a 1 MiB weight (a tensor entry of its own) beside small ones (packed)."""
    b = models.wide(tmp_path / "wide")
    spec = load_spec(b.spec, cache=str(tmp_path / "cache"))
    first = build(spec, scheduler="sync")
    return spec, first, faults.bundle_bytes(Path(spec.output))


def chunk_files(cache: str) -> list[Path]:
    return sorted(p for p in Path(cache, "tensors").rglob("c*") if p.is_file() and ".tmp-" not in str(p))


def program_object(cache: str) -> Path:
    return next(p for p in Path(cache, "objects").rglob("*") if p.is_file() and b'"steps"' in p.read_bytes())


@pytest.mark.parametrize("damage", [flip, truncate])
def test_corrupt_tensor_chunk_is_rebuilt_and_reported(built, damage):
    spec, first, clean = built
    victim = max(chunk_files(spec.cache), key=lambda p: p.stat().st_size)
    tensor = next(p.name for p in victim.parents if p.parent.parent.name == "tensors")  # tensors/<xx>/<hash>/c/...
    damage(victim)  # in place: the bundle's hard link to this chunk sees the damage too, so pack must re-run
    report = build(spec, scheduler="threads")
    assert report.digest == first.digest
    assert faults.bundle_bytes(Path(spec.output)) == clean
    (repair,) = report.cache_repairs
    assert repair["task"].endswith("/pack") and repair["missing"] == tensor
    assert any(t.split("/")[1].startswith("parse") for t in repair["rerun"])  # the writer of that tensor re-ran
    assert report.to_json()["cache_repairs"] == [repair]
    assert Cache(spec.cache).verify()["corrupt"] == []
    assert build(spec).cache_repairs == []  # repaired for good


@pytest.mark.parametrize("damage", [flip, truncate])
def test_corrupt_packed_chunk_is_rebuilt(built, damage):
    """The bundle's packed array links cache objects: damage through the link makes pack re-run and find the
    object corrupt (it is deleted); formats.weights, whose output names it, builds that chunk again from the
    tensors (a repair round) and pack links the new one."""
    spec, first, clean = built
    packed = Path(spec.output) / "constants" / "packed"
    victim = next(p for p in packed.iterdir() if p.name.startswith("c."))
    inode = victim.stat().st_ino
    damage(victim)  # in place: the cache's object is the same file
    report = build(spec, scheduler="threads")
    assert report.digest == first.digest and faults.bundle_bytes(Path(spec.output)) == clean
    assert [t.id.split("/", 1)[1] for t in report.tasks if t.status == "ran"] == ["formats.weights", "pack"]
    (repair,) = report.cache_repairs
    assert repair["task"].endswith("/pack") and [r.split("/", 1)[1] for r in repair["rerun"]] == ["formats.weights"]
    assert (packed / victim.name).stat().st_ino != inode  # a new, intact object linked in
    assert Cache(spec.cache).verify()["corrupt"] == []


@pytest.mark.parametrize("damage", [flip, truncate])
def test_corrupt_object_is_rebuilt_and_reported(built, damage):
    spec, first, clean = built
    victim = program_object(spec.cache)
    damage(victim)
    shutil.rmtree(spec.output)  # pack must read the program again
    report = build(spec, scheduler="sync")
    assert report.digest == first.digest and faults.bundle_bytes(Path(spec.output)) == clean
    (repair,) = report.cache_repairs
    assert repair["missing"] == victim.name and repair["task"].endswith("/pack")
    assert len(repair["rerun"]) == 1 and "/codegen:" in repair["rerun"][0]
    ran = {t.id for t in report.tasks if t.status == "ran"}
    assert ran == {repair["rerun"][0], repair["task"]}  # early cutoff spared everything else


def test_corrupt_entry_needed_while_planning_is_rebuilt(built):
    """parse.weights reads its parse's external ranges (``sources``) to compute its key, before anything runs."""
    spec, first, clean = built
    hashes = {r.outputs["sources"] for r in first.tasks if "/parse:" in r.id}
    victims = [Path(spec.cache, "objects", h[:2], h) for h in hashes]
    for p in victims:
        flip(p, 1)
    shutil.rmtree(spec.output)
    report = build(spec, scheduler="sync")
    assert report.digest == first.digest and faults.bundle_bytes(Path(spec.output)) == clean
    assert report.cache_repairs and all(r["missing"] in {p.name for p in victims} for r in report.cache_repairs)


def test_cli_reports_repairs_and_verify_finds_damage(built):
    spec, first, _ = built
    victim = max(chunk_files(spec.cache), key=lambda p: p.stat().st_size)
    flip(victim)
    result = CliRunner().invoke(app, ["cache", "verify", spec.cache])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert len(found["corrupt"]) == 1 and victim.is_relative_to(found["corrupt"][0])
    result = CliRunner().invoke(app, ["run", spec.spec_path, "--cache", spec.cache, "--json"])
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["digest"] == first.digest and line["cache_repairs"][0]["task"].endswith("/pack")
    assert set(line) >= {"bundle", "digest", "seconds", "tasks", "kernel_cache", "cache_repairs"}


def test_partial_entries_are_never_served(tmp_path):
    """Leftovers of interrupted writes (temp names, a tensor directory without its zarr.json) are misses."""
    import numpy as np

    c = Cache(tmp_path / "cache")
    arr = np.arange(1000, dtype=np.float32)
    h = c.put_tensor(arr)
    entry = tmp_path / "cache" / "tensors" / h[:2] / h
    (entry / "zarr.json").unlink()  # as if the copy-in died before its last file
    assert not c.has_tensor(h)
    with pytest.raises(KeyError):
        c.get_tensor(h)
    assert c.put_tensor(arr) == h and np.array_equal(c.get_tensor(h), arr)  # rewritten whole
    obj = c.put_object(b"payload")
    (tmp_path / "cache" / "objects" / obj[:2] / obj).write_bytes(b"pay")  # torn
    with pytest.raises(KeyError):
        c.get_object(obj)
    assert not c.has_object(obj)  # the torn entry was removed, not kept
