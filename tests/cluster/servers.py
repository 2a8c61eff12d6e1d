"""Servers the cluster tests start themselves, on loopback only, and stop on exit.

- ``dask_cluster``: ``dask scheduler`` and ``dask worker`` as separate processes (their own session, so the
  whole group is killed at the end; the scheduler also exits by itself after 10 idle minutes and the
  workers when the scheduler is gone).
- ``s3_server``: moto's ``ThreadedMotoServer`` (an S3-compatible HTTP server) in a thread of the test
  process, with a bucket; clients reach it through ``FSSPEC_S3_ENDPOINT_URL`` (other processes) or
  fsspec's config (this one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


def _dask_command(*args: str) -> list[str]:
    """``dask <args>`` run by this interpreter (``python -m dask`` is the ``dask`` CLI)."""
    return [sys.executable, "-m", "dask", *args]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def dask_cluster(workdir: Path, n_workers: int = 2, env: dict[str, str] | None = None,
                 timeout: float = 120) -> Iterator[str]:
    """A scheduler and ``n_workers`` single-threaded workers on 127.0.0.1; yields the scheduler address.

    The workers run in ``workdir/worker-<i>`` (empty directories), with ``env`` added to the environment.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    sched_file = workdir / "scheduler.json"
    full_env = {**os.environ, **(env or {})}
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        log = open(workdir / "scheduler.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(
            _dask_command("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                          str(sched_file), "--idle-timeout", "600s"),
            stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=workdir, start_new_session=True))
        deadline = time.monotonic() + timeout
        address = None
        while address is None:
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {(workdir / 'scheduler.log').read_text()[-2000:]}")
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                address = json.loads(sched_file.read_text())["address"]
            time.sleep(0.1)
        for i in range(n_workers):
            home = workdir / f"worker-{i}"
            home.mkdir(exist_ok=True)
            log = open(workdir / f"worker-{i}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen(
                _dask_command("worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}",
                              "--death-timeout", "60", "--local-directory", str(home)),
                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=home, start_new_session=True))
        from distributed import Client

        with Client(address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()


@contextlib.contextmanager
def s3_server(bucket: str = "bundles") -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) with ``bucket`` created; yields the endpoint URL.
    Clients need the dummy credentials of ``S3_ENV`` in their environment."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{server._server.server_port}"
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()
