"""Serial prefix: stale tasks run here, in order, before dask loads, while a scheduler could not pay for itself.

After a small edit most stale tasks are early cutoffs (their inputs hash as before) and the ones that
must run form a chain: a weight edit re-runs parse.weights -> dedupe.storage -> formats.weights -> pack, each
waiting for the one before. Handing a chain to a thread pool buys nothing. A small cold build (a real model
split into three graphs: 0.1-0.6 s of tasks) could run a few tasks side by side, but on threads these
Python-bound stages gain little (a 32-graph build measured the same on threads as on sync), while loading
dask and its pool costs 0.1-0.3 s, a third of such a build. So the local schedulers first walk the stale
tasks here: each task whose upstream is known is *settled* (blocked, lost or cached: no stage runs); a
task that must run runs on this thread when it is the only one ready, or, while this prefix has run for
less than ``budget_s``, the first of several. Past the budget, the first time two tasks that gain from
threads could run at once (I/O-bound ones: the packs of several bundles) the rest goes to dask. Python-bound
tasks (parse, formats, tiling, codegen) stay here however many are ready: on threads they only take turns
with the GIL, and 128 graphs took 4.4 s on dask's threads against 3.2 s here (``--workers`` runs them in
processes). Results are the same TaskResults dask would return, and bundles the same bytes; only where a
task ran differs.

Tasks that read external data (``parse.weights``) are the exception: settling one hashes its files, running it
stores its tensors, both blake3 and file I/O that release the GIL, and a cold build of a 1 GiB model spends
most of its time there (three 340 MB graphs: 0.55 s each). They wait in ``bulk`` while anything else can run
(the cheap structure parses that unblock them), then go together to a few threads (``threads.map_values``).

State kept: none between calls (the last build's records, ``recorded``, are the plan's). Within one call:
``done`` (task id -> result), per stale task how many of its inputs are not final yet (a task becomes ready when
that reaches zero: no rescans of the whole list), and ``bulk``, the ready tasks that read external data, not yet
settled.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from ..stages import order as order_of_stages
from ..stages.stage import EXTERNAL_DATA
from ..tasks.runner import BuildContext, execute_task, settled
from ..tasks.task import TaskResult
from ..threads import map_values
from .dag import TaskGraph
from .events import Event

# Seconds of work after which a build is big enough to pay for loading dask (see the module docstring)
SERIAL_BUDGET_S = 1.0


def run_serial_prefix(dag: TaskGraph, stale: list[str], known: dict[str, TaskResult], ctxs: dict[str, BuildContext],
                      notify: Callable, budget_s: float | None = None, threads: bool = True,
                      recorded: dict[str, dict[str, dict]] | None = None) -> dict[str, TaskResult]:
    """Settle and run stale tasks (topological order) while at most one of them has to run at a time, for
    ``budget_s`` seconds (default ``SERIAL_BUDGET_S``), or while no two ready ones gain from threads; return
    the results of those it finished. The caller schedules the rest. ``threads``: the external-data tasks may
    run side by side (not for ``--scheduler sync``, which promises one thread). ``recorded``: the last build's
    records by bundle and key (``rebuild.Plan``)."""
    recorded = recorded or {}
    deadline = time.perf_counter() + (SERIAL_BUDGET_S if budget_s is None else budget_s)
    done: dict[str, TaskResult] = {}
    order = {t: i for i, t in enumerate(stale)}
    waiting = {t: sum(p not in known for p in dag.predecessors(t)) for t in stale}  # upstream not final yet
    readers: dict[str, list[str]] = {}
    for t in stale:
        for p in dag.predecessors(t):
            readers.setdefault(p, []).append(t)
    fresh = [t for t in stale if not waiting[t]]  # ready, not yet asked whether it must run
    must_run: list[int] = []  # heap of ``order`` of the ready tasks settled as "has to run" (that never changes)
    bulk: list[str] = []  # ready tasks that read external data: settled and run together, on threads

    def finish(tid: str, result: TaskResult) -> None:
        done[tid] = result
        for reader in readers.get(tid, ()):
            if reader in waiting:
                waiting[reader] -= 1
                if not waiting[reader]:
                    fresh.append(reader)

    while True:
        if fresh:  # settle them (in build order); what they unblock is settled in the next round
            batch = sorted(fresh, key=order.__getitem__)
            fresh.clear()
            external = [t for t in batch if _reads_external_data(dag, t)]
            bulk += external
            for tid in (t for t in batch if t not in external):
                task = dag.tasks[tid]
                result = settled(task, ctxs[task.bundle], *_upstream(dag, tid, known, done),
                                 recorded=recorded.get(task.bundle))
                if result is None:
                    heapq.heappush(must_run, order[tid])
                else:
                    notify(Event("start", tid))
                    notify(Event("finish", tid, result))
                    finish(tid, result)
            continue
        if bulk and not must_run:  # nothing else can run: the external-data tasks' turn, all at once
            began = time.perf_counter()
            for tid, result in _run_together(dag, sorted(bulk, key=order.__getitem__), known, done, ctxs,
                                             notify, threads, recorded).items():
                finish(tid, result)
            bulk.clear()
            deadline += time.perf_counter() - began  # they ran side by side already: not work dask could spread
            continue
        if not must_run or (time.perf_counter() > deadline and _side_by_side(dag, [stale[i] for i in must_run])):
            return done  # finished, or a big build's tasks that gain from running side by side: a scheduler's job
        tid = stale[heapq.heappop(must_run)]  # the only one that can start, or the first while the build is small
        notify(Event("start", tid))
        task = dag.tasks[tid]
        result = execute_task(task, ctxs[task.bundle], *_upstream(dag, tid, known, done),
                              recorded=recorded.get(task.bundle))
        notify(Event("finish", tid, result))
        finish(tid, result)


def _side_by_side(dag: TaskGraph, ready: list[str]) -> bool:
    """Whether two of the ready tasks would gain from threads: both I/O-bound (``Stage.io_bound``). Python-bound
    stages interleaved on threads only contend for the GIL: 128 graphs built in 4.4 s on dask's threads against
    3.2 s one task after another (the same run of bench/speed.py)."""
    return sum(order_of_stages.named(dag.tasks[t].step).io_bound for t in ready) > 1


def _reads_external_data(dag: TaskGraph, tid: str) -> bool:
    return order_of_stages.named(dag.tasks[tid].step).reads == EXTERNAL_DATA


def _run_together(dag: TaskGraph, ids: list[str], known: dict[str, TaskResult], done: dict[str, TaskResult],
                  ctxs: dict[str, BuildContext], notify: Callable, threads: bool,
                  recorded: dict[str, dict[str, dict]]) -> dict[str, TaskResult]:
    """Settle and run ``ids`` (tasks whose upstream is final), on threads (one a core) if ``threads``; this thread
    reports them."""
    for tid in ids:
        notify(Event("start", tid))

    def run(tid: str) -> TaskResult:
        task = dag.tasks[tid]
        return execute_task(task, ctxs[task.bundle], *_upstream(dag, tid, known, done),
                            recorded=recorded.get(task.bundle))

    results = map_values(run, {t: t for t in ids}) if threads else {t: run(t) for t in ids}
    for tid in ids:
        notify(Event("finish", tid, results[tid]))
    return results


def _upstream(dag: TaskGraph, tid: str, known: dict[str, TaskResult], done: dict[str, TaskResult]) -> list[TaskResult]:
    return [done.get(p) or known[p] for p in sorted(dag.predecessors(tid))]
