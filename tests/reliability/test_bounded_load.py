"""Loading a hostile bundle is bounded by what is really there: `exec` and `inspect`, run under an address-space
limit (RLIMIT_AS), end in one `error:` line naming the problem, never a MemoryError, a hang or a traceback.

Directory bundles: a chunk that is a symlink (to /dev/zero, or out of the bundle), a FIFO, a sparse 2 GiB file
where a chunk or nothing belongs, a manifest too large to parse. Zip bundles: a deflate bomb, sizes the central
directory claims but the file does not hold, a symlink entry, duplicate and stray entries. Manifests: a 32 TiB
arena (a well-formed bundle that needs more memory than allowed is RUNTIME_ERROR saying what it needs, not
"corrupt"), constants larger than the bundle stores. The good bundle runs under the same limit.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import demo_project, limited_cli, one_error, snapshot

from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec

SPARSE = 2 << 30


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bounded-load")
    project = demo_project(root)
    spec = load_spec(project / "bundle.yaml", cache=str(root / "cache"))
    out = {"dir": Path(build(spec, scheduler="sync").bundle), "x": project / "x.npy"}
    zipped = load_spec(project / "bundle.yaml", cache=str(root / "cache"), output=str(root / "demo.zip"))
    out["zip"] = Path(build(zipped, scheduler="sync").bundle)
    return out


def a_chunk(bundle: Path) -> Path:
    return next(p for p in sorted((bundle / "constants").rglob("c.*")) if p.is_file())


def chunk_to(target: str) -> Callable[[Path], None]:
    def damage(bundle: Path) -> None:
        chunk = a_chunk(bundle)
        chunk.unlink()
        chunk.symlink_to(target)
    return damage


def chunk_to_fifo(bundle: Path) -> None:
    chunk = a_chunk(bundle)
    chunk.unlink()
    os.mkfifo(chunk)


def sparse(rel: str | None) -> Callable[[Path], None]:
    def damage(bundle: Path) -> None:
        path = a_chunk(bundle) if rel is None else bundle / rel
        with open(path, "ab") as f:
            f.truncate(SPARSE)
    return damage


def manifest_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(bundle: Path) -> None:
        meta = json.loads((bundle / "zarr.json").read_text())
        edit(meta["attributes"])
        (bundle / "zarr.json").write_text(json.dumps(meta))
    return damage


def huge_arena(m: dict) -> None:
    next(g for g in m["graphs"] if g["role"] == "infer")["program"]["arena_bytes"] = 1 << 45


def huge_constant(m: dict) -> None:
    initial = {v["initial"] for v in m["variables"]}
    next(c for cid, c in m["constants"].items() if cid not in initial)["shape"] = [1 << 28]  # infer's act_scale


DIRECTORY_CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "chunk symlink to /dev/zero": (chunk_to("/dev/zero"), "BUNDLE_CORRUPT", "is a symbolic link"),
    "chunk symlink out of the bundle": (chunk_to("OUTSIDE"), "BUNDLE_CORRUPT", "is a symbolic link"),
    "manifest symlink": (lambda b: ((b / "zarr.json").unlink(), (b / "zarr.json").symlink_to("OUTSIDE")),
                         "BUNDLE_CORRUPT", "is a symbolic link"),
    "chunk is a FIFO": (chunk_to_fifo, "BUNDLE_CORRUPT", "FIFO"),
    "sparse 2 GiB chunk": (sparse(None), "BUNDLE_CORRUPT", f"holds {SPARSE} bytes"),
    "sparse 2 GiB file no constant claims": (sparse("constants/junk"), "BUNDLE_CORRUPT", "belongs to no constant"),
    "sparse 2 GiB stray file": (sparse("extra.bin"), "BUNDLE_CORRUPT", "unexpected entry"),
    "sparse 2 GiB manifest": (sparse("zarr.json"), "BUNDLE_CORRUPT", "more than the"),
    "32 TiB arena": (manifest_edit(huge_arena), "RUNTIME_ERROR", "needs 32.0 TiB of memory"),
    "constant larger than the bundle": (manifest_edit(huge_constant), "BUNDLE_CORRUPT", "the constants claim"),
}


# inspect checks structure only: the enlarged constant (a small one, in the packed array) no longer spans its bytes
INSPECT_SAYS = {"constant larger than the bundle": "constant 'infer.act_scale' has a bad size"}


def rezip(src: Path, dst: Path, entry: Callable[[zipfile.ZipFile, zipfile.ZipInfo, bytes], None]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            entry(zout, zipfile.ZipInfo(info.filename, date_time=info.date_time), zin.read(info.filename))


def is_chunk(info: zipfile.ZipInfo) -> bool:
    return "/c." in info.filename


def deflate_bomb(zout, info, data) -> None:
    if is_chunk(info) and not getattr(deflate_bomb, "done", False):
        zout.writestr(info, b"\0" * (1 << 30), compress_type=zipfile.ZIP_DEFLATED)  # 1 GiB of zeros in ~1 MiB
        deflate_bomb.done = True
        return
    zout.writestr(info, data)


def symlink_entry(zout, info, data) -> None:
    if is_chunk(info):
        info.external_attr = 0o120777 << 16
        data = b"/dev/zero"
    zout.writestr(info, data)


def duplicate_entry(zout, info, data) -> None:
    zout.writestr(info, data)
    if info.filename == "zarr.json":
        zout.writestr(zipfile.ZipInfo("zarr.json"), data)


def stray_entry(zout, info, data) -> None:
    zout.writestr(info, data)
    if info.filename == "zarr.json":
        zout.writestr(zipfile.ZipInfo("payload.bin"), b"x")


def claimed_sizes(src: Path, dst: Path) -> None:
    """The central directory's first record claims 4 GiB (compressed and uncompressed) for its entry."""
    data = bytearray(src.read_bytes())
    record = data.find(b"PK\x01\x02")
    struct.pack_into("<II", data, record + 20, 0xFFFFFFF0, 0xFFFFFFF0)
    dst.write_bytes(bytes(data))


ZIP_CASES: dict[str, tuple[Callable[[Path, Path], None], str, str]] = {
    "deflate bomb": (lambda s, d: rezip(s, d, deflate_bomb), "BUNDLE_CORRUPT", "is compressed"),
    "4 GiB claimed by the central directory": (claimed_sizes, "BUNDLE_CORRUPT", "which the"),
    "symlink entry": (lambda s, d: rezip(s, d, symlink_entry), "BUNDLE_CORRUPT", "is a symbolic link"),
    "duplicate entry": (lambda s, d: rezip(s, d, duplicate_entry), "BUNDLE_CORRUPT", "appears twice"),
    "stray entry": (lambda s, d: rezip(s, d, stray_entry), "BUNDLE_CORRUPT", "unexpected entry"),
}


def hostile_dir(good: dict, tmp_path: Path, case: str) -> Path:
    bundle = tmp_path / "b.bundle"
    shutil.copytree(good["dir"], bundle)
    outside = tmp_path / "outside"
    outside.write_bytes(b"\0" * 256)
    damage = DIRECTORY_CASES[case][0]
    damage(bundle)
    for link in [p for p in bundle.rglob("*") if p.is_symlink() and os.readlink(p) == "OUTSIDE"]:
        link.unlink()
        link.symlink_to(outside)
    return bundle


def check(proc, status: str, fragment: str) -> None:
    line = one_error(proc)
    assert line.startswith(f"error: {status}: ") and fragment in line, line


@pytest.mark.parametrize("command", ["exec", "inspect"])
def test_the_good_bundles_load_under_the_limit(good, command):
    for form in ("dir", "zip"):
        args = ["infer", "-i", f"x={good['x']}"] if command == "exec" else []
        proc = limited_cli(command, str(good[form]), *args)
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # a CLI process per case
@pytest.mark.parametrize("case", sorted(DIRECTORY_CASES))
def test_hostile_directory_bundles_end_in_one_line(good, tmp_path, case):
    bundle = hostile_dir(good, tmp_path, case)
    _, status, fragment = DIRECTORY_CASES[case]
    before = snapshot(tmp_path)
    check(limited_cli("exec", str(bundle), "infer", "-i", f"x={good['x']}"), status, fragment)
    if status == "BUNDLE_CORRUPT":  # inspect reads no constant: it names the array that does not match instead
        check(limited_cli("inspect", str(bundle)), status, INSPECT_SAYS.get(case, fragment))
    assert snapshot(tmp_path) == before  # loading reads, never writes (nor follows a link out)


@pytest.mark.slow  # a CLI process per case
@pytest.mark.parametrize("case", sorted(ZIP_CASES))
def test_hostile_zip_bundles_end_in_one_line(good, tmp_path, case):
    bundle = tmp_path / "b.zip"
    make, status, fragment = ZIP_CASES[case]
    make(good["zip"], bundle)
    check(limited_cli("exec", str(bundle), "infer", "-i", f"x={good['x']}"), status, fragment)
    check(limited_cli("inspect", str(bundle)), status, fragment)


def test_a_special_file_as_the_bundle_is_refused_without_blocking(good, tmp_path):
    os.mkfifo(tmp_path / "pipe.zip")
    check(limited_cli("exec", str(tmp_path / "pipe.zip"), "infer"), "BUNDLE_CORRUPT", "FIFO")
    check(limited_cli("inspect", "/dev/zero"), "BUNDLE_CORRUPT", "character device")


def test_a_user_who_means_it_raises_the_budget(good, tmp_path):
    """The 32 TiB case says what it needs; --max-memory with less still refuses, the message names the option."""
    bundle = hostile_dir(good, tmp_path, "32 TiB arena")
    proc = limited_cli("exec", str(bundle), "infer", "-i", f"x={good['x']}", "--max-memory", "2T")
    check(proc, "RUNTIME_ERROR", "more than the 2.0 TiB allowed")
    assert "--max-memory" in proc.stderr
