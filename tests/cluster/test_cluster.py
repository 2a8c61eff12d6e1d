"""run --scheduler tcp://HOST:PORT against a real dask.distributed scheduler and workers started as separate
processes on loopback: same bytes as a local build; the workers run only the cache-only stages (parse
reads this machine's files and pack writes its bundle, here); with an s3:// cache the workers reach
the data through it alone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import fsspec
import models
import pytest
from servers import S3_ENV, dask_cluster, s3_server

from bundle_pipeline.errors import BundleError
from bundle_pipeline.pipeline import build, schedule
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages.pack import bundle_digest

CLIENT_STEPS = {"parse", "parse.weights", "pack"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """Two workers in empty working directories; they know the S3 endpoint only from their environment."""
    with dask_cluster(tmp_path_factory.mktemp("dask"), 2, env={**S3_ENV, "FSSPEC_S3_ENDPOINT_URL": s3}) as address:
        yield address


@pytest.fixture
def s3_client_config(s3, monkeypatch):
    """This process reaches the server through fsspec's config (what FSSPEC_S3_ENDPOINT_URL sets at import)."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3})
    return s3


def where_tasks_ran(report) -> dict[str, set[str]]:
    here = f"{socket.gethostname()}:{os.getpid()}"
    out: dict[str, set[str]] = {"client": set(), "cluster": set()}
    for t in report.tasks:
        if t.status == "ran":
            out["client" if t.extra["worker"] == here else "cluster"].add(step_of(t.id))
    return out


def step_of(task_id: str) -> str:
    return task_id.split("/", 1)[1].split(":")[0]  # "cnn/parse.weights:init" -> "parse.weights"


@pytest.mark.slow
def test_tcp_cluster_build_matches_a_local_build(cluster, tmp_path):
    built = models.cnn(tmp_path / "cnn")
    local = build(load_spec(built.spec, cache=str(tmp_path / "local-cache"), output=str(tmp_path / "local.bundle")),
                  scheduler="sync")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"), output=str(tmp_path / "out.bundle"))
    report = build(spec, scheduler=cluster)
    assert report.digest == local.digest == bundle_digest(tmp_path / "out.bundle")
    ran = where_tasks_ran(report)
    assert ran["client"] == CLIENT_STEPS  # the files of this machine are touched here only
    assert ran["cluster"] == {step_of(t.id) for t in report.tasks} - CLIENT_STEPS
    workers = {t.extra["worker"] for t in report.tasks if t.status == "ran"} - {f"{socket.gethostname()}:{os.getpid()}"}
    assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    # the CLI against the same cluster: a no-op
    proc = subprocess.run([sys.executable, "-m", "bundle_pipeline.cli", "run", str(built.spec), "--cache",
                           spec.cache, "--out", spec.output, "--scheduler", cluster, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {t["status"] for t in json.loads(proc.stdout.splitlines()[-1])["tasks"]} == {"cached"}


@pytest.mark.slow
def test_tcp_cluster_with_an_s3_cache(cluster, s3_client_config, tmp_path, monkeypatch):
    """The workers run in empty directories and know the bucket only from their environment
    (FSSPEC_S3_ENDPOINT_URL): every input they read and every output they write goes through it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    built = models.mlp(tmp_path / "mlp")
    local = build(load_spec(built.spec, cache=str(tmp_path / "local-cache"), output=str(tmp_path / "local.bundle")),
                  scheduler="sync")
    spec = load_spec(built.spec, cache="s3://bundles/cluster-cache", output=str(tmp_path / "out.bundle"))
    report = build(spec, scheduler=cluster)
    assert report.digest == local.digest
    assert where_tasks_ran(report)["cluster"] >= {"dedupe", "codegen"}
    fs = fsspec.filesystem("s3", endpoint_url=s3_client_config)
    assert fs.find("bundles/cluster-cache/actions")  # the workers recorded their tasks in the bucket


def test_unreachable_scheduler_is_one_io_error(tmp_path, monkeypatch):
    monkeypatch.setattr(schedule, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    built = models.mlp(tmp_path / "mlp")
    with pytest.raises(BundleError) as err:
        build(load_spec(built.spec, cache=str(tmp_path / "cache")), scheduler=f"tcp://127.0.0.1:{port}")
    assert err.value.status == "IO_ERROR" and "cannot connect to the dask scheduler" in str(err.value)
    assert not Path(built.directory / "build").exists()


def test_client_steps_run_in_batches_around_the_cluster_steps(tmp_path):
    """parse* -> cluster -> pack for one bundle; two bundles still need only three batches."""
    from bundle_pipeline.pipeline.build import prepare

    a, b = models.mlp(tmp_path / "a"), models.cnn(tmp_path / "b")
    specs = [load_spec(a.spec, cache=str(tmp_path / "c")), load_spec(b.spec, cache=str(tmp_path / "c"))]
    _, dag, _ = prepare(specs)

    order = list(dag.order())
    batches = schedule._batches(dag, order)
    assert [on_client for on_client, _ in batches] == [True, False, True]
    steps = [{dag.tasks[t].step for t in ids} for _, ids in batches]
    assert steps[0] == {"parse", "parse.weights"} and steps[2] == {"pack"} and not steps[1] & CLIENT_STEPS
    assert sum(len(ids) for _, ids in batches) == len(order)
    shutil.rmtree(tmp_path / "c", ignore_errors=True)
