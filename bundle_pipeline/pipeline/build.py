"""Build bundles: specs -> tasks -> one DAG -> rebuilder (what is up to date) -> scheduler (the rest)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..cache import Cache
from ..cache.statstate import one_build
from ..cache.store import NotACache
from ..errors import BundleIOError, ParamInvalid
from ..guard import check_outputs
from ..spec import BundleSpec
from ..tasks.factory import bundle_tasks
from ..tasks.runner import LOST, BuildContext, LostEntry, forget_holders, forget_records
from ..tasks.task import TaskResult
from .dag import TaskGraph, build_dag
from .events import Event, Observer
from .rebuild import Plan, plan, remember
from .schedule import check_scheduler, run_stale


@dataclass
class BuildReport:
    bundle: str
    digest: str
    seconds: float  # planning and running tasks
    tasks: list[TaskResult] = field(default_factory=list)
    # cache entries found missing or corrupt and rebuilt: {"task", "missing", "rerun": [task ids]}
    cache_repairs: list[dict] = field(default_factory=list)
    # loading the scheduler and the compilers, starting workers: a cost of starting the tool, not of the build
    setup_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"bundle": self.bundle, "digest": self.digest, "seconds": round(self.seconds, 6),
                "setup_seconds": round(self.setup_seconds, 6),
                "tasks": [t.report() for t in self.tasks], "kernel_cache": self.kernel_cache(),
                "cache_repairs": self.cache_repairs}

    def kernel_cache(self) -> dict[str, int]:
        """Kernel-level decisions reused (hits) or made (misses) by the tiling/codegen tasks that ran."""
        return {"hits": sum(t.extra.get("kernel_hits", 0) for t in self.tasks),
                "misses": sum(t.extra.get("kernel_misses", 0) for t in self.tasks)}


def identity(spec: BundleSpec) -> str:
    """Which spec a last-build record belongs to: its file, or its name for API builds."""
    return spec.spec_path or f"api:{spec.name}"


def prepare(specs: list[BundleSpec], force: bool = False):
    """Tasks, DAG and per-bundle contexts of a set of specs (bundle names must be unique)."""
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ParamInvalid(f"two specs are both named {duplicates[0]!r}; bundle names must be unique in one run",
                           "name")
    tasks = {s.name: bundle_tasks(s) for s in specs}
    dag = build_dag([t for ts in tasks.values() for t in ts])
    ctxs = {s.name: BuildContext(cache_root=s.cache, target=s.target, force=force) for s in specs}
    return tasks, dag, ctxs


def status(specs: list[BundleSpec]) -> Plan:
    """What a run would execute, and why, without running anything."""
    _, dag, ctxs = prepare(specs)
    return plan(dag, ctxs, {s.name: identity(s) for s in specs})


def build(spec: BundleSpec, scheduler: str | None = None, force: bool = False,
          workers: int | None = None, on_event: Observer | None = None) -> BuildReport:
    return build_many([spec], scheduler, force, workers, on_event)[0]


def build_many(specs: list[BundleSpec], scheduler: str | None = None, force: bool = False,
               workers: int | None = None, on_event: Observer | None = None) -> list[BuildReport]:
    """One DAG for all bundles, so they share workers and the kernel cache.

    ``on_event`` (progress displays, build profiles) gets ``Event("plan", data={"dag", "plan", "started",
    "finished"})`` once the up-to-date tasks are known, then the scheduler's "start"/"finish" events.
    """
    with one_build():  # a file the plan hashed inside the racy window is not hashed again by its task
        return _build_many(specs, scheduler, force, workers, on_event)


def _build_many(specs: list[BundleSpec], scheduler: str | None, force: bool, workers: int | None,
                on_event: Observer | None) -> list[BuildReport]:
    check_scheduler(scheduler, workers)
    claim_caches(specs, write=False)  # refusals first: nothing is written before every check passed
    check_outputs(specs)
    claim_caches(specs)
    start = time.perf_counter()
    tasks, dag, ctxs = prepare(specs, force)
    repairs: list[dict] = []
    ran: dict[str, TaskResult] = {}  # tasks that ran in any round, reported as ran even if a later round hit
    setup = [0.0]
    for round_ in range(MAX_REPAIR_ROUNDS + 1):
        results = _build_round(specs, dag, ctxs, scheduler, workers, on_event, repairs, setup)
        ran.update({tid: r for tid, r in results.items() if r.status == "ran"})
        lost = [r for r in results.values() if r.status == LOST]
        if results and not lost:
            break
        if round_ == MAX_REPAIR_ROUNDS:
            what = lost[0] if lost else None
            raise BundleIOError(f"the cache keeps losing entries (last: {what.extra['missing'] if what else '?'}, "
                                f"needed by {what.id if what else '?'}) after {MAX_REPAIR_ROUNDS} repairs; "
                                f"check the cache storage, or run `bundle-pipeline cache verify`", specs[0].cache)
        for r in lost:
            repairs.append(_repair(r, dag, results, ctxs))
    for tid, r in results.items():
        if r.status == "cached" and tid in ran and ran[tid].key == r.key:
            results[tid] = ran[tid]
    seconds = time.perf_counter() - start - setup[0]
    reports = []
    for spec in specs:
        mine = [results[t.id] for t in tasks[spec.name]]
        try:
            remember(Cache(spec.cache), identity(spec), mine)
        except OSError as err:
            raise BundleIOError(f"cannot record the build in the cache: {err.strerror or err}",
                                str(err.filename or spec.cache)) from None
        ids = {t.id for t in tasks[spec.name]}
        reports.append(BuildReport(spec.output, results[f"{spec.name}/pack"].outputs["digest"], seconds, mine,
                                   [r for r in repairs if r["task"] in ids], setup[0]))
    return reports


def claim_caches(specs: list[BundleSpec], write: bool = True) -> None:
    """Each cache root must be a cache (its marker), nothing yet or an empty directory (marked now, unless
    ``write`` is False: then only checked)."""
    for root in sorted({s.cache for s in specs}):
        try:
            cache = Cache(root)
            cache.claim() if write else cache.may_claim()
        except NotACache as err:
            raise ParamInvalid(f"refusing to use it as the cache: {err}", root) from None
        except OSError as err:
            raise BundleIOError(f"cannot use the cache: {err.strerror or err}", str(err.filename or root)) from None


# Rounds of "forget the records naming a lost cache entry, build again" before giving up (tasks/runner.py)
MAX_REPAIR_ROUNDS = 3


def _build_round(specs, dag, ctxs, scheduler, workers, on_event, repairs: list[dict],
                 setup: list[float]) -> dict[str, TaskResult]:
    """Plan and run once; {} when the plan itself met a lost entry (it was deleted: plan again). The seconds
    spent setting up the scheduler are added to ``setup[0]``."""
    started = time.time()
    try:
        found = plan(dag, ctxs, {s.name: identity(s) for s in specs}, use_last=not repairs)
    except LostEntry as lost:
        repairs.append({"task": lost.task, "missing": lost.missing, "rerun": []})
        return {}
    if on_event:
        on_event(Event("plan", data={"dag": dag, "plan": found, "started": started, "finished": time.time()}))
    stale = list(found.stale)  # topological order, as plan walked them
    results = dict(found.resolved)
    if stale:
        done, setup_seconds = run_stale(dag, stale, found.resolved, ctxs, scheduler, workers, on_event, found.recorded)
        results.update(done)
        setup[0] += setup_seconds
    return results


def _repair(lost: TaskResult, dag: TaskGraph, results: dict[str, TaskResult], ctxs) -> dict:
    """Forget the upstream records that name the lost entry, so the next round writes it again. When
    none names it any more (their output objects are gone too), forget every upstream record."""
    import networkx as nx

    task = dag.tasks[lost.id]
    upstream = [results[a] for a in nx.ancestors(dag.nx, lost.id) if a in results]
    missing = lost.extra["missing"]
    cache = Cache(ctxs[task.bundle].cache_root)
    rerun = forget_holders(missing, upstream, cache) or forget_records(upstream, cache)
    return {"task": lost.id, "missing": missing, "rerun": rerun}
