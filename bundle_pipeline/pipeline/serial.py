"""Serial prefix: stale tasks run here, in order, before dask loads, while a scheduler could not pay for itself.

After a small edit most stale tasks are early cutoffs (their inputs hash as before) and the ones that
must run form a chain: a weight edit re-runs parse.weights -> dedupe -> formats.weights -> pack, each
waiting for the one before. Handing a chain to a thread pool buys nothing. A small cold build (a real model
split into three graphs: 0.1-0.6 s of tasks) could run a few tasks side by side, but on threads these
Python-bound stages gain little (a 32-graph build measured the same on threads as on sync), while loading
dask and its pool costs 0.1-0.3 s, a third of such a build. So the local schedulers first walk the stale
tasks here: each task whose upstream is known is *settled* (blocked, lost or cached: no stage runs); a
task that must run runs on this thread when it is the only one ready, or, while this prefix has run for
less than ``budget_s``, the first of several. Past the budget, the first time two tasks could run at once
the rest goes to dask, so a big build keeps its parallelism. Results are the same TaskResults dask would
return, and bundles the same bytes; only where a task ran differs.

State kept: none between calls. Within one call: ``done`` (task id -> result), and per stale task how many of its
inputs are not final yet (a task becomes ready when that reaches zero: no rescans of the whole list).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from ..tasks.runner import BuildContext, execute_task, settled
from ..tasks.task import TaskResult
from .dag import TaskGraph
from .events import Event

# Seconds of work after which a build is big enough to pay for loading dask (see the module docstring)
SERIAL_BUDGET_S = 1.0


def run_serial_prefix(dag: TaskGraph, stale: list[str], known: dict[str, TaskResult], ctxs: dict[str, BuildContext],
                      notify: Callable, budget_s: float | None = None) -> dict[str, TaskResult]:
    """Settle and run stale tasks (topological order) while at most one of them has to run at a time, or for
    ``budget_s`` seconds (default ``SERIAL_BUDGET_S``); return the results of those it finished. The caller
    schedules the rest."""
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
            for tid in batch:
                result = settled(dag.tasks[tid], ctxs[dag.tasks[tid].bundle], *_upstream(dag, tid, known, done))
                if result is None:
                    heapq.heappush(must_run, order[tid])
                else:
                    notify(Event("start", tid))
                    notify(Event("finish", tid, result))
                    finish(tid, result)
            continue
        if not must_run or (len(must_run) > 1 and time.perf_counter() > deadline):
            return done  # finished, or a big build's tasks that can run side by side: a scheduler's job
        tid = stale[heapq.heappop(must_run)]  # the only one that can start, or the first while the build is small
        notify(Event("start", tid))
        result = execute_task(dag.tasks[tid], ctxs[dag.tasks[tid].bundle], *_upstream(dag, tid, known, done))
        notify(Event("finish", tid, result))
        finish(tid, result)


def _upstream(dag: TaskGraph, tid: str, known: dict[str, TaskResult], done: dict[str, TaskResult]) -> list[TaskResult]:
    return [done.get(p) or known[p] for p in sorted(dag.predecessors(tid))]
