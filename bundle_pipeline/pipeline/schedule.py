"""Schedulers: run the stale part of a task DAG on dask (sync, threads, processes, a LocalCluster or a cluster).

Only small references travel between tasks: each task returns a ``TaskResult`` of content hashes,
and reads and writes data through the cache. Already-resolved upstream results are passed in as
literal values, so the scheduler never sees the up-to-date part of the DAG.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import networkx as nx

from ..errors import ParamInvalid
from ..tasks.runner import BuildContext, execute_task
from ..tasks.task import TaskResult

SCHEDULERS = ("sync", "threads", "processes", "tcp://HOST:PORT")


def check_scheduler(scheduler: str | None, workers: int | None) -> None:
    if scheduler not in (None, "sync", "threads", "processes") and not str(scheduler).startswith("tcp://"):
        raise ParamInvalid(f"unknown scheduler {scheduler!r}; use one of: {', '.join(SCHEDULERS)}", "--scheduler")
    if workers is not None and workers < 1:
        raise ParamInvalid("--workers must be at least 1", "--workers")
    if workers is not None and str(scheduler).startswith("tcp://"):
        raise ParamInvalid("--workers starts a local cluster; it cannot be combined with a tcp:// scheduler",
                           "--workers")


def run_stale(dag: nx.DiGraph, stale: list[str], resolved: dict[str, TaskResult], ctxs: dict[str, BuildContext],
              scheduler: str | None, workers: int | None) -> dict[str, TaskResult]:
    """Execute the stale tasks; return their results by task id."""
    graph = {}
    for tid in stale:
        task = dag.nodes[tid]["task"]
        upstream = [resolved.get(p, p) for p in sorted(dag.predecessors(tid))]  # literal when resolved
        graph[tid] = (execute_task, task, ctxs[task.bundle], *upstream)
    with _getter(scheduler, workers) as get:
        values = get(graph, stale)
    return dict(zip(stale, values, strict=True))


@contextmanager
def _getter(scheduler: str | None, workers: int | None) -> Iterator:
    if scheduler is None and workers is not None:
        with _local_cluster(workers) as get:
            yield get
        return
    if scheduler is not None and scheduler.startswith("tcp://"):
        from distributed import Client

        with Client(scheduler, set_as_default=False) as client:
            yield client.get
        return
    yield _local_getter(scheduler or "threads", workers)


def _local_getter(scheduler: str, workers: int | None):
    import dask

    if scheduler == "sync":
        return dask.get
    if scheduler == "threads":
        import dask.threaded

        return lambda graph, keys: dask.threaded.get(graph, keys, num_workers=workers)
    import dask.multiprocessing

    return lambda graph, keys: dask.multiprocessing.get(graph, keys, num_workers=workers)


@contextmanager
def _local_cluster(workers: int) -> Iterator:
    """A distributed.LocalCluster of ``workers`` single-threaded worker processes, closed afterwards."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster, set_as_default=False) as client:
        yield client.get
