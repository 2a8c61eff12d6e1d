"""--cache s3://bucket/prefix against a real S3-compatible server (moto) on loopback, through s3fs: two
"machines" (different working directories and stat states, same cache URL) reuse each other's results;
the whole build path works remotely (pack exports tensors by downloading and verifying them); the stat
state stays on each machine; cache info/verify/gc work on the bucket; damage in the bucket is repaired."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import models
import pytest
from servers import S3_ENV, s3_server

from bundle_pipeline.cache import Cache
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages.pack import bundle_digest, entries

CACHE = "s3://bundles/team-cache"


@pytest.fixture
def s3(monkeypatch):
    with s3_server() as url:
        for key, value in S3_ENV.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": url})  # this process: fsspec config
        yield url


def cli(args: list[str], endpoint: str, xdg: Path) -> subprocess.CompletedProcess:
    """Another machine: a fresh process that knows the endpoint only from FSSPEC_S3_ENDPOINT_URL."""
    env = {**os.environ, **S3_ENV, "FSSPEC_S3_ENDPOINT_URL": endpoint, "XDG_CACHE_HOME": str(xdg)}
    return subprocess.run([sys.executable, "-m", "bundle_pipeline.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def files(bundle: Path) -> dict[str, bytes]:
    return {rel: (bundle / rel).read_bytes() for rel in entries(bundle)}


@pytest.mark.slow
def test_two_machines_share_an_s3_cache(s3, tmp_path, monkeypatch):
    built = models.cnn(tmp_path / "machine-a" / "cnn")
    for f in built.directory.iterdir():  # written long ago: the stat state records only settled files
        os.utime(f, (time.time() - 60, time.time() - 60))
    shutil.copytree(tmp_path / "machine-a" / "cnn", tmp_path / "machine-b" / "cnn")
    local = build(load_spec(built.spec, cache=str(tmp_path / "local-cache"), output=str(tmp_path / "local.bundle")),
                  scheduler="sync")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a" / "xdg"))
    first = build(load_spec(built.spec, cache=CACHE), scheduler="threads")
    assert {t.status for t in first.tasks} == {"ran"} and first.digest == local.digest

    proc = cli(["run", str(tmp_path / "machine-b" / "cnn" / "bundle.yaml"), "--cache", CACHE, "--json"], s3,
               tmp_path / "machine-b" / "xdg")
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(proc.stdout.strip().splitlines()[-1])
    statuses = {t["id"].split("/", 1)[1]: t["status"] for t in second["tasks"]}
    # every compile task is a hit; pack runs only to write machine b's own bundle from the cache
    assert {k: v for k, v in statuses.items() if k != "pack"} == dict.fromkeys(set(statuses) - {"pack"}, "cached")
    assert statuses["pack"] == "ran" and second["kernel_cache"] == {"hits": 0, "misses": 0}
    bundle_b = tmp_path / "machine-b" / "cnn" / "build" / "cnn.bundle"
    assert second["digest"] == local.digest == bundle_digest(bundle_b)
    assert files(bundle_b) == files(tmp_path / "local.bundle")
    load_bundle(bundle_b)

    # the stat state (this machine's paths, inodes, mtimes) stays on each machine, never in the bucket
    for machine in ("machine-a", "machine-b"):
        assert list((tmp_path / machine / "xdg" / "bundle-pipeline" / "state").rglob("stat.json"))
    fs = fsspec.filesystem("s3", endpoint_url=s3)
    assert not [p for p in fs.find("bundles/team-cache") if "/state/" in p]

    # machine a again: a no-op
    again = build(load_spec(built.spec, cache=CACHE))
    assert {t.status for t in again.tasks} == {"cached"}


@pytest.mark.slow
def test_cache_commands_and_repairs_on_s3(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    built = models.wide(tmp_path / "wide")  # a 1 MiB weight: a tensor entry of its own, with chunk files
    spec = load_spec(built.spec, cache=CACHE)
    first = build(spec, scheduler="sync")
    fs = fsspec.filesystem("s3", endpoint_url=s3)

    info = json.loads(cli(["cache", "info", CACHE], s3, tmp_path / "xdg").stdout)
    assert info["root"] == CACHE and info["objects"]["count"] > 0 and info["tensors"]["count"] > 0

    # damage one stored tensor chunk in the bucket; pack (forced by a missing output) finds and repairs it
    chunk = max((p for p in fs.find("bundles/team-cache/tensors") if not p.endswith("/zarr.json")),
                key=lambda p: fs.size(p))
    data = bytearray(fs.cat_file(chunk))
    data[0] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    shutil.rmtree(spec.output)
    repaired = build(spec, scheduler="sync")
    assert repaired.digest == first.digest
    (repair,) = repaired.cache_repairs
    assert repair["task"].endswith("/pack") and repair["missing"] in chunk

    # verify finds damage; gc keeps what the newest build needs
    other = fs.find("bundles/team-cache/objects")[0]
    fs.pipe_file(other, b"garbage")
    verified = json.loads(cli(["cache", "verify", CACHE], s3, tmp_path / "xdg").stdout)
    assert [p.rsplit("/", 1)[1] for p in verified["corrupt"]] == [other.rsplit("/", 1)[1]]
    cache = Cache(CACHE)
    cache.put_action("stale-record-of-an-old-build", {"outputs": {"x": cache.put_object(b"old output")}})
    proc = cli(["cache", "gc", CACHE], s3, tmp_path / "xdg")
    assert proc.returncode == 0, proc.stderr[-2000:]
    gc = json.loads(proc.stdout)
    assert gc["actions_removed"] >= 1 and gc["objects_removed"] >= 1 and gc["roots"] > 0
    assert cache.get_action("stale-record-of-an-old-build") is None
    shutil.rmtree(spec.output)
    after = build(spec, scheduler="sync")  # what the newest build needs survived gc
    assert after.digest == first.digest
    writer = {t.id for t in first.tasks if other.rsplit("/", 1)[1] in t.outputs.values()}
    # only the writer of the object verify removed, and pack (its output was deleted), had to run
    assert {t.id for t in after.tasks if t.status == "ran"} <= writer | {f"{spec.name}/pack"}
