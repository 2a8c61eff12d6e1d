"""Fuzz what may be written and what is read: mutated output paths for builds, mutated bundle entries for loads.

Output paths are drawn from the user's own files and directories (the project, its models, spec and feeds,
other directories, FIFOs, symlinks, the cache, parents of all of them) with suffixes (``/..``, ``/sub.bundle``,
...). Whatever a build does with one, every file that existed outside the new bundle and the cache is
byte-for-byte what it was, and a refusal is one BundleError line.

Bundle entries are replaced by symlinks (to a file or directory outside, to /dev/zero, dangling), FIFOs, sparse
or truncated files, stray files; zip entries get compressed, symlink modes, sizes their central directory claims,
duplicates. Loading and inspecting such a bundle ends in a BundleError or a bundle that works, within a
memory and time limit, and changes nothing anywhere (links are never followed).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import uuid
import zipfile
from pathlib import Path

import pytest
from hostile import demo_project, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_bundle import check_case

from bundle_pipeline.errors import BundleError
from bundle_pipeline.guard import canonical
from bundle_pipeline.inspect import describe
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A project (the demo + a user's notes), a directory of the user's (files, a FIFO, links), a built cache."""
    root = tmp_path_factory.mktemp("fuzz-paths")
    project = demo_project(root)
    outside = root / "outside"
    (outside / "photos").mkdir(parents=True)
    (outside / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (outside / "notes.txt").write_text("the user's notes")
    os.mkfifo(outside / "pipe")
    (outside / "link-to-model").symlink_to(project / "infer.onnx")
    (outside / "link-to-dir").symlink_to(outside / "photos")
    (outside / "empty").mkdir()
    cache = root / "cache"
    build(load_spec(project / "bundle.yaml", cache=str(cache)), scheduler="sync")  # later builds only re-pack
    return {"root": root, "project": project, "outside": outside, "cache": cache}


BASES = ["project", "project/build", "project/build/demo.bundle", "project/build/demo.bundle/constants",
         "project/infer.onnx", "project/x.npy",
         "project/bundle.yaml", "project/new_weights", "project/new_weights/fc1.weight.new.npy", "outside",
         "outside/photos", "outside/photos/cat.jpg", "outside/notes.txt", "outside/pipe", "outside/link-to-model",
         "outside/link-to-dir", "outside/empty", "cache", "cache/objects", "cache/state", "."]
SUFFIXES = ["", "/..", "/.", "/../..", "/sub.bundle", "/sub.zip", "/../new.bundle", "/deeper/new.bundle", ".bundle",
            ".zip"]


def resolve(workspace: dict[str, Path], base: str, suffix: str) -> str:
    """``base``'s first component names a workspace entry (project, outside, cache) or is the workspace root."""
    first, _, rest = base.partition("/")
    head = workspace.get(first, workspace["root"]) / rest
    return os.path.normpath(head) + suffix


def inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or under it. What a build may change: its bundle; what it may add: the bundle and the
    parent directories it created for it."""
    return path == root or path.startswith(root + os.sep)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), suffix=st.sampled_from(SUFFIXES), zipped=st.booleans())
def test_mutated_outputs_change_nothing_outside_the_bundle_and_the_cache(workspace, base, suffix, zipped):
    root, cache = workspace["root"], workspace["cache"]
    out = resolve(workspace, base, suffix)
    if zipped and not out.endswith((".zip", "/")) and not os.path.lexists(out):
        out += ".zip"
    before = snapshot(root, skip=(cache,))
    try:
        build(load_spec(workspace["project"] / "bundle.yaml", cache=str(cache), output=out), scheduler="sync")
        built = True
    except BundleError as err:
        assert "\n" not in str(err) and err.status in ("PARAM_INVALID", "IO_ERROR"), err
        built = False
    after = snapshot(root, skip=(cache,))
    rel_out = os.path.relpath(canonical(out), root)
    changed = [k for k in before if after.get(k) != before[k] and not (built and inside(k, rel_out))]
    added = [k for k in after if k not in before and not (built and (inside(k, rel_out) or inside(rel_out, k)))]
    assert not changed and not added, (out, built, changed[:5], added[:5])


@pytest.fixture(scope="module")
def bundles(workspace) -> dict[str, Path]:
    project, cache = workspace["project"], str(workspace["cache"])
    zipped = build(load_spec(project / "bundle.yaml", cache=cache, output=str(workspace["root"] / "b.zip")),
                   scheduler="sync")
    return {"dir": project / "build" / "demo.bundle", "zip": Path(zipped.bundle)}


def damage_directory(bundle: Path, outside: Path, rng: random.Random) -> str:
    victims = sorted(p for p in bundle.rglob("*"))
    victim = rng.choice(victims)
    kind = rng.choice(["link-file", "link-dir", "link-zero", "link-dangling", "fifo", "sparse", "truncate", "stray",
                       "stray-link"])
    if kind.startswith("stray"):
        where = victim if victim.is_dir() else victim.parent
        extra = where / f"extra-{rng.randrange(100)}"
        if kind == "stray":
            with open(extra, "wb") as f:
                f.truncate(rng.choice([1, 4096, 2 << 30]))
        else:
            extra.symlink_to(outside / "notes.txt")
        return f"{kind} {extra.relative_to(bundle)}"
    if kind in ("sparse", "truncate"):
        if victim.is_file():
            size = rng.choice([0, 1, 7, 2 << 30]) if kind == "sparse" else rng.randrange(victim.stat().st_size + 1)
            with open(victim, "r+b") as f:
                f.truncate(size)
        return f"{kind} {victim.relative_to(bundle)}"
    if victim.is_dir():
        shutil.rmtree(victim)
    else:
        victim.unlink()
    target = {"link-file": outside / "notes.txt", "link-dir": outside / "photos", "link-zero": Path("/dev/zero"),
              "link-dangling": outside / "nothing-here"}.get(kind)
    if target is None:
        os.mkfifo(victim)
    else:
        victim.symlink_to(target)
    return f"{kind} {victim.relative_to(bundle)}"


def damage_zip(src: Path, dst: Path, rng: random.Random) -> str:
    with zipfile.ZipFile(src) as zf:
        entries = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    pick = rng.randrange(len(entries))
    kind = rng.choice(["deflate", "symlink", "fifo-mode", "duplicate", "stray", "claim"])
    with zipfile.ZipFile(dst, "w") as zout:
        for i, (name, data) in enumerate(entries):
            info = zipfile.ZipInfo(name)
            if i == pick and kind == "deflate":
                zout.writestr(info, data * rng.choice([1, 1000]), compress_type=zipfile.ZIP_DEFLATED)
                continue
            if i == pick and kind in ("symlink", "fifo-mode"):
                info.external_attr = (0o120777 if kind == "symlink" else 0o010644) << 16
            zout.writestr(info, data)
            if i == pick and kind in ("duplicate", "stray"):
                zout.writestr(zipfile.ZipInfo(name if kind == "duplicate" else "stray.bin"), data)
    if kind == "claim":
        raw = bytearray(dst.read_bytes())
        record = -1
        for _ in range(pick + 1):
            record = raw.find(b"PK\x01\x02", record + 1)
        claim = rng.choice([0, 1, 1 << 20, 0xFFFFFFF0])
        struct.pack_into("<II", raw, record + 20, claim, rng.choice([claim, 0xFFFFFFF0]))
        dst.write_bytes(bytes(raw))
    return f"{kind} {entries[pick][0]}"


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), form=st.sampled_from(["dir", "zip"]))
def test_mutated_bundle_entries_are_bundle_errors_and_change_nothing(workspace, bundles, tmp_path_factory, rng, form):
    case = tmp_path_factory.getbasetemp() / "fuzz-entries" / uuid.uuid4().hex
    case.mkdir(parents=True)
    if form == "dir":
        bundle = case / "b.bundle"
        shutil.copytree(bundles["dir"], bundle)
        what = damage_directory(bundle, workspace["outside"], rng)
    else:
        bundle = case / "b.zip"
        what = damage_zip(bundles["zip"], bundle, rng)
    before = snapshot(workspace["root"], skip=(workspace["cache"],)), snapshot(case)
    try:
        check_case(bundle)
        try:
            describe(str(bundle))
        except BundleError as err:
            assert "\n" not in str(err)
    except AssertionError as err:
        raise AssertionError(f"{form} bundle, {what}: {err}") from None
    after = snapshot(workspace["root"], skip=(workspace["cache"],)), snapshot(case)
    assert after == before, f"{form} bundle, {what}: loading changed files"
