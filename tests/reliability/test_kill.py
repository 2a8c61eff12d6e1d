"""kill -9 of a build at random points: the next build succeeds and is byte-identical to a clean build; the
cache never holds an entry that fails verification (partial writes stay temp files), and the output is
always either the previous bundle or a complete new one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import faults
import pytest

from bundle_pipeline.cache import Cache
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec

KILL_POINTS = 6


def records(cache: Path) -> int:
    """Action records written so far (task records and memos): how far a running build has got."""
    return sum(len(files) for _, _, files in os.walk(cache / "actions"))


def kill_after(proc: subprocess.Popen, cache: Path, wanted: int, timeout: float = 120) -> None:
    """SIGKILL the build's process group once ``wanted`` records exist (or the build ends first): the kill
    lands at a point of the build's progress, whatever the machine's load, not at a point of the clock."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and records(cache) < wanted and time.monotonic() < deadline:
        time.sleep(0.002)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_kill_9_at_random_points_then_rebuild_is_byte_identical(tmp_path):
    spec = faults.many_graphs(tmp_path / "data")
    clean_out = tmp_path / "clean.bundle"
    clean = faults.report(faults.run(faults.run_args(spec, tmp_path / "clean-cache", clean_out)))
    clean_bytes = faults.bundle_bytes(clean_out)
    out = tmp_path / "out.bundle"  # one output across kills: each kill may hit a previous bundle there
    rng = random.Random(7)
    tried, survived, mid_build = 0, 0, 0
    recorded_when_done = Cache(tmp_path / "clean-cache").info()["actions"]["count"]
    for i in range(KILL_POINTS):
        cache = tmp_path / f"cache-{i}"  # cold, so the killed build is writing entries when it dies
        wanted = 1 + int((recorded_when_done - 2) * (i + rng.random()) / KILL_POINTS)
        proc = faults.start(faults.run_args(spec, cache, out))
        kill_after(proc, cache, wanted)
        proc.communicate(timeout=60)
        tried += 1
        recorded = Cache(cache).info()["actions"]["count"] if cache.exists() else 0
        mid_build += 0 < recorded < recorded_when_done  # killed after some tasks, before the last
        # the output is absent, or a whole bundle (every build here produces the clean one)
        point = f"kill {i} after {wanted} records"
        assert faults.digest_or_none(out) in (None, clean["digest"]), f"{point} left a partial bundle"
        assert Cache(cache).verify()["corrupt"] == [], f"{point} left a corrupt cache entry"
        again = build(load_spec(spec, cache=str(cache), output=str(out)), scheduler="threads")
        assert again.digest == clean["digest"]
        assert faults.bundle_bytes(out) == clean_bytes
        survived += 1
    assert tried == survived == KILL_POINTS
    assert mid_build >= KILL_POINTS // 2, "too few kills landed while tasks were running"
