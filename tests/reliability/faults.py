"""Helpers for the fault tests: CLI builds in subprocesses, bundle digests and bytes, the 34-graph bench bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bundle_pipeline.stages.pack import bundle_digest, entries

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "bundle_pipeline.cli"]


def many_graphs(directory: Path) -> Path:
    """The benchmark's 32-infer-graph bundle (bench/generate.py, kind c) at a small scale; its spec path."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import generate
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return Path(generate.generate("c", directory, scale=0.05)["spec"])


def run_args(spec: Path, cache: Path | str, out: Path, *extra: str) -> list[str]:
    return [*CLI, "run", str(spec), "--cache", str(cache), "--out", str(out), "--json", *extra]


def start(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    """A CLI process in its own session (so a test can kill its whole process group)."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True, **kwargs)


def run(args: list[str], env: dict | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                          **kwargs)


def report(proc: subprocess.CompletedProcess) -> dict:
    """The last --json report line of a successful CLI run."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_line_error(proc: subprocess.CompletedProcess | subprocess.Popen, stderr: str) -> str:
    """The single `error: STATUS: ...` line of a failed CLI run (no traceback)."""
    assert proc.returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def bundle_bytes(path: Path) -> dict[str, bytes]:
    """Every entry of a directory bundle (or the one file of a zip bundle) by relative path."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {rel: (path / rel).read_bytes() for rel in entries(path)}


def digest_or_none(path: Path) -> str | None:
    return bundle_digest(path) if path.exists() else None
