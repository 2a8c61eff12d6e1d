"""kill -9 of a build at random points: the next build succeeds and is byte-identical to a clean build; the
cache never holds an entry that fails verification (partial writes stay temp files), and the output is
always either the previous bundle or a complete new one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import faults
import pytest

from bundle_pipeline.cache import Cache
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec

KILL_POINTS = 6


@pytest.mark.slow
def test_kill_9_at_random_points_then_rebuild_is_byte_identical(tmp_path):
    spec = faults.many_graphs(tmp_path / "data")
    clean_out = tmp_path / "clean.bundle"
    began = time.monotonic()
    clean = faults.report(faults.run(faults.run_args(spec, tmp_path / "clean-cache", clean_out)))
    full = time.monotonic() - began  # a cold CLI build: imports, then every task
    clean_bytes = faults.bundle_bytes(clean_out)
    out = tmp_path / "out.bundle"  # one output across kills: each kill may hit a previous bundle there
    rng = random.Random(7)
    tried, survived, mid_build = 0, 0, 0
    recorded_when_done = Cache(tmp_path / "clean-cache").info()["actions"]["count"]
    for i in range(KILL_POINTS):
        cache = tmp_path / f"cache-{i}"  # cold, so the killed build is writing entries when it dies
        delay = full * (0.3 + 0.7 * (i + rng.random()) / KILL_POINTS)
        proc = faults.start(faults.run_args(spec, cache, out))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:  # still running: the point of the test
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        tried += 1
        recorded = Cache(cache).info()["actions"]["count"]
        mid_build += 0 < recorded < recorded_when_done  # killed after some tasks, before the last
        # the output is absent, or a whole bundle (every build here produces the clean one)
        assert faults.digest_or_none(out) in (None, clean["digest"]), f"kill {i} at {delay:.2f}s left a partial bundle"
        assert Cache(cache).verify()["corrupt"] == [], f"kill {i} at {delay:.2f}s left a corrupt cache entry"
        again = build(load_spec(spec, cache=str(cache), output=str(out)), scheduler="threads")
        assert again.digest == clean["digest"]
        assert faults.bundle_bytes(out) == clean_bytes
        survived += 1
    assert tried == survived == KILL_POINTS
    assert mid_build >= KILL_POINTS // 2, "too few kills landed while tasks were running"
