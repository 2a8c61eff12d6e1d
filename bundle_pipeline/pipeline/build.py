"""Build bundles: spec -> tasks -> DAG -> dask execution -> a report of what ran and what was cached."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import networkx as nx

from ..spec import BundleSpec
from ..tasks.factory import bundle_tasks
from ..tasks.runner import BuildContext
from ..tasks.task import TaskResult
from .dag import build_dag, to_dask

SCHEDULERS = ("sync", "threads")


@dataclass
class BuildReport:
    bundle: str
    digest: str
    seconds: float
    tasks: list[TaskResult] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"bundle": self.bundle, "digest": self.digest, "seconds": round(self.seconds, 6),
                "tasks": [t.report() for t in self.tasks]}


def build(spec: BundleSpec, scheduler: str = "threads", force: bool = False, workers: int | None = None) -> BuildReport:
    return build_many([spec], scheduler, force, workers)[0]


def build_many(specs: list[BundleSpec], scheduler: str = "threads", force: bool = False,
               workers: int | None = None) -> list[BuildReport]:
    """One DAG for all bundles, so they share workers; every spec must use the same cache and target."""
    start = time.perf_counter()
    tasks = [t for spec in specs for t in bundle_tasks(spec)]
    dag = build_dag(tasks)
    ctx = BuildContext(cache_root=specs[0].cache, target=specs[0].target, force=force)
    results = _run(to_dask(dag, ctx), list(nx.topological_sort(dag)), scheduler, workers)
    seconds = time.perf_counter() - start
    reports = []
    for spec in specs:
        mine = [results[t.id] for t in bundle_tasks(spec)]
        pack = results[f"{spec.name}/pack"]
        reports.append(BuildReport(spec.output, pack.outputs["digest"], seconds, mine))
    return reports


def _run(graph: dict, keys: list[str], scheduler: str, workers: int | None) -> dict[str, TaskResult]:
    import dask
    import dask.threaded

    if scheduler == "sync":
        values = dask.get(graph, keys)
    elif scheduler == "threads":
        values = dask.threaded.get(graph, keys, num_workers=workers)
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}; use one of {SCHEDULERS}")
    return dict(zip(keys, values, strict=True))
