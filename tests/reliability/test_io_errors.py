"""Disk full / file too large / permission denied on the output or the cache: one IO_ERROR line, the previous
bundle intact, and the next build (once there is room) succeeds.

Real failures where the machine allows them: a tiny tmpfs in a private mount namespace (``unshare -m``,
skipped without the privilege) gives a real ENOSPC; ``RLIMIT_FSIZE`` (any user) makes the kernel refuse
writes past a size with EFBIG. Permission denied is simulated (the tests may run as root, whom file
modes do not stop) by making the cache's or pack's writes raise EACCES.
"""

from __future__ import annotations

import errno
import json
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import faults
import models
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bundle_pipeline.cache import Cache
from bundle_pipeline.cache.backend_local import LocalBackend
from bundle_pipeline.errors import BundleError
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages import pack


def edit_weights(model: Path) -> None:
    m = onnx.load(model)
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(1), t.name))
    onnx.save(m, model)


def can_mount_tmpfs() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"], capture_output=True, timeout=30)
    return probe.returncode == 0


# Runs inside the private mount namespace: build, fill the tmpfs, edit, build again, free, build again.
DISK_FULL_SCRIPT = textwrap.dedent("""
    import json, sys, os
    sys.path[:0] = [{tests!r}, {here!r}]
    import test_io_errors as t, faults
    from pathlib import Path
    from bundle_pipeline.errors import BundleError
    from bundle_pipeline.pipeline import build
    from bundle_pipeline.spec import load_spec
    spec_path, cache, out, mount = (Path(a) for a in sys.argv[1:5])
    spec = load_spec(spec_path, cache=str(cache), output=str(out))
    first = build(spec, scheduler="sync")
    before = faults.bundle_bytes(out)
    try:  # take every free block of the tmpfs
        with open(mount / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\\0" * 4096)
    except OSError:
        pass
    t.edit_weights(spec_path.parent / "init.onnx")
    try:
        build(spec, scheduler="sync")
        error = None
    except BundleError as err:
        error = {{"status": err.status, "line": str(err)}}
    intact = faults.bundle_bytes(out) == before
    os.unlink(mount / "filler")
    after = build(spec, scheduler="sync")
    print(json.dumps({{"error": error, "intact": intact, "changed": after.digest != first.digest}}))
""")


@pytest.mark.parametrize("full", ["output", "cache"])
def test_real_disk_full_on_a_tmpfs(tmp_path, full):
    if not can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs CAP_SYS_ADMIN)")
    built = models.mlp(tmp_path / "mlp")
    mount = tmp_path / "small"
    mount.mkdir()
    cache = mount / "cache" if full == "cache" else tmp_path / "cache"
    out = mount / "out.bundle" if full == "output" else tmp_path / "out.bundle"
    script = tmp_path / "script.py"
    here = Path(__file__).resolve().parent
    script.write_text(DISK_FULL_SCRIPT.format(tests=str(here.parent), here=str(here)))
    command = f"mount -t tmpfs -o size=2m tmpfs {mount} && exec {sys.executable} {script} " \
              f"{built.spec} {cache} {out} {mount}"
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"]["status"] == "IO_ERROR"
    assert "No space left on device" in result["error"]["line"] and str(mount) in result["error"]["line"]
    assert result["intact"] and result["changed"]


def limit_file_size(nbytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))  # Python ignores SIGXFSZ: writes fail EFBIG

    return apply


def largest_file(root: Path) -> int:
    return max(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_file_too_large_on_the_output_leaves_the_previous_zip(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    cache, out = tmp_path / "cache", tmp_path / "out.zip"
    faults.report(faults.run(faults.run_args(built.spec, cache, out)))
    before = out.read_bytes()
    edit_weights(built.init)
    limit = largest_file(cache) * 2  # every cache entry fits, the zip (manifest + all constants) does not
    assert len(before) > limit
    proc = subprocess.run(faults.run_args(built.spec, cache, out), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size(limit))
    line = faults.one_line_error(proc, proc.stderr)
    assert line.startswith("error: IO_ERROR: ") and "File too large" in line and str(out) in line
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.zip")] == []  # staging cleaned up
    faults.report(faults.run(faults.run_args(built.spec, cache, out)))  # without the limit: fine
    assert out.read_bytes() != before


def test_file_too_large_in_the_cache_is_an_io_error_naming_the_cache(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    cache, out = tmp_path / "cache", tmp_path / "out.bundle"
    faults.report(faults.run(faults.run_args(built.spec, cache, out)))
    before = faults.bundle_bytes(out)
    edit_weights(built.init)
    proc = subprocess.run(faults.run_args(built.spec, cache, out), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size(64))  # any new cache entry is larger than that
    line = faults.one_line_error(proc, proc.stderr)
    assert line.startswith("error: IO_ERROR: ") and "File too large" in line and str(cache) in line
    assert faults.bundle_bytes(out) == before
    assert Cache(cache).verify()["corrupt"] == []


def test_permission_denied_on_the_cache(tmp_path, monkeypatch):
    built = models.mlp(tmp_path / "mlp")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    build(spec, scheduler="sync")
    before = faults.bundle_bytes(Path(spec.output))
    edit_weights(built.init)

    def denied(self, rel, data):
        raise PermissionError(errno.EACCES, "Permission denied", self.path(rel))

    monkeypatch.setattr(LocalBackend, "write_atomic", denied)
    with pytest.raises(BundleError) as err:
        build(spec, scheduler="sync")
    assert err.value.status == "IO_ERROR" and "Permission denied" in str(err.value)
    assert "cannot read or write the cache" in str(err.value) and str(tmp_path / "cache") in str(err.value)
    assert faults.bundle_bytes(Path(spec.output)) == before
    monkeypatch.undo()
    assert build(spec, scheduler="sync").digest != ""


@pytest.mark.parametrize("stage", ["staging", "swap"])
def test_permission_denied_or_disk_full_on_the_output(tmp_path, monkeypatch, stage):
    built = models.mlp(tmp_path / "mlp")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    first = build(spec, scheduler="sync")
    before = faults.bundle_bytes(Path(spec.output))
    edit_weights(built.init)
    if stage == "staging":
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "mlp" / "build"))

        monkeypatch.setattr(pack.tempfile, "mkdtemp", refuse)
    else:
        def full(a, b):
            raise OSError(errno.ENOSPC, "No space left on device", str(b))

        monkeypatch.setattr(pack, "_exchange", full)
    with pytest.raises(BundleError) as err:
        build(spec, scheduler="sync")
    assert err.value.status == "IO_ERROR" and "cannot write bundle" in str(err.value)
    assert faults.bundle_bytes(Path(spec.output)) == before
    assert not any(p.name.startswith(f".{Path(spec.output).name}.") for p in Path(spec.output).parent.iterdir())
    monkeypatch.undo()
    assert build(spec, scheduler="sync").digest != first.digest
