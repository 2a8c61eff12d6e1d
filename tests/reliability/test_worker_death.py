"""A worker process dying (kill -9) in the middle of a LocalCluster build: the build completes (dask
reschedules the worker's tasks; the nanny restarts it) or fails with one clear error line; never a
wrong bundle, and the next build is byte-identical to a clean one."""

from __future__ import annotations

import json
import signal
import time

import faults
import psutil
import pytest

from bundle_pipeline.cache import Cache
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec


def worker_processes(cli_pid: int) -> list[psutil.Process]:
    """The LocalCluster's worker processes: forks of the CLI's multiprocessing fork server (the server itself is
    the CLI's child; its resource tracker is not a worker), or spawned children of the CLI."""
    try:
        children = psutil.Process(cli_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            line = " ".join(child.cmdline())
            if "spawn_main" in line or ("forkserver" in line and child.ppid() != cli_pid):
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.slow
def test_worker_killed_mid_build_never_gives_a_wrong_bundle(tmp_path):
    spec = faults.many_graphs(tmp_path / "data")
    clean = build(load_spec(spec, cache=str(tmp_path / "clean-cache"), output=str(tmp_path / "clean.bundle")))
    cache, out = tmp_path / "cache", tmp_path / "out.bundle"
    proc = faults.start(faults.run_args(spec, cache, out, "--workers", "2"))
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        recorded = Cache(cache).info()["actions"]["count"] if cache.exists() else 0
        workers = worker_processes(proc.pid)
        if recorded >= 20 and len(workers) == 2:  # the cluster is up and tasks are completing
            victim = workers[0]
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert victim is not None, f"the build finished before a worker could be killed: {stderr[-2000:]}"
    assert not out.exists() or proc.returncode == 0  # a failed build leaves no bundle (there was none before)
    if proc.returncode == 0:
        report = json.loads(stdout.strip().splitlines()[-1])
        assert report["digest"] == clean.digest
        assert faults.bundle_bytes(out) == faults.bundle_bytes(tmp_path / "clean.bundle")
    else:
        assert "IO_ERROR" in faults.one_line_error(proc, stderr)
    assert Cache(cache).verify()["corrupt"] == []
    again = build(load_spec(spec, cache=str(cache), output=str(out)))
    assert again.digest == clean.digest
    assert faults.bundle_bytes(out) == faults.bundle_bytes(tmp_path / "clean.bundle")
