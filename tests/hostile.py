"""Helpers for the hostile-input tests: snapshots of what a user owns, CLI runs under an address-space limit."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
CLI = [sys.executable, "-m", "bundle_pipeline.cli"]
# What a CLI process may map in the limited runs: the interpreter, numpy, zarr, onnx and a small bundle need far
# less; every hostile case here would need several GiB if the tool trusted what the input claims.
ADDRESS_SPACE_LIMIT = 1536 << 20
HASHED_BYTES = 16 << 20  # larger files (the tests' sparse ones) are compared by size and mtime
CASE_TIMEOUT_S = 120  # a FIFO read would block forever: a hang fails the case instead of the run


def demo_project(tmp_path: Path) -> Path:
    """A fresh copy of the demo project (spec, models, x.npy, new_weights/), no build and no cache yet."""
    dest = tmp_path / "demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    return dest


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): type, size, mtime and, for files, a sha256.

    ``skip`` entries (and what is under them) are left out: the bundle and the cache, which a build may change.
    """
    skipped = [str(p) for p in skip]
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if any(path == s or path.startswith(s + os.sep) for s in skipped):
                continue
            st = os.lstat(path)
            digest = _sha256(path) if stat.S_ISREG(st.st_mode) and st.st_size <= HASHED_BYTES else None
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            # a directory's own mtime moves when a cache or bundle is created in it: its entries tell the rest
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_size if mtime else None, mtime, digest,
                                                link)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def limited_cli(*args: str, limit: int = ADDRESS_SPACE_LIMIT, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose address space is capped (``RLIMIT_AS``): an allocation of what a hostile
    input claims fails there instead of swapping the machine. One BLAS thread: its buffers are sized per thread."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=CASE_TIMEOUT_S, preexec_fn=cap,
                          env=env, cwd=cwd)


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: STATUS: ...`` line of a failed run (exit 1, no traceback, no MemoryError)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]
