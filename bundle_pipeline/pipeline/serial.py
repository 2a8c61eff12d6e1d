"""Serial prefix: the stale tasks no scheduler could run side by side, run here in order before dask loads.

After a small edit most stale tasks are early cutoffs (their inputs hash as before) and the ones that
must run form a chain: a weight edit re-runs parse.weights -> dedupe -> formats.weights -> pack, each
waiting for the one before. Handing a chain to a thread pool buys nothing and loading dask costs
0.1-0.2 s, more than such a rebuild's own work. So the local schedulers first walk the stale tasks here:
each task whose upstream is known is *settled* (blocked, lost or cached: no stage runs); when exactly one
task must run and nothing else is ready, it runs on this thread. As soon as two tasks could run at once
the rest goes to dask, so no parallelism is lost. Results are the same TaskResults dask would return.

State kept: none between calls; ``done`` (task id -> result) grows within one call.
"""

from __future__ import annotations

from collections.abc import Callable

from ..tasks.runner import BuildContext, execute_task, settled
from ..tasks.task import TaskResult
from .dag import TaskGraph
from .events import Event


def run_serial_prefix(dag: TaskGraph, stale: list[str], known: dict[str, TaskResult],
                      ctxs: dict[str, BuildContext], notify: Callable) -> dict[str, TaskResult]:
    """Settle and run stale tasks (topological order) while at most one of them has to run at a time;
    return the results of those it finished. The caller schedules the rest."""
    done: dict[str, TaskResult] = {}
    must_run: set[str] = set()  # settled as "has to run": its upstream is final, so that never changes
    while True:
        ready = [t for t in stale if t not in done and all(p in known or p in done for p in dag.predecessors(t))]
        settled_some = False
        for tid in (t for t in ready if t not in must_run):
            result = settled(dag.tasks[tid], ctxs[dag.tasks[tid].bundle], *_upstream(dag, tid, known, done))
            if result is None:
                must_run.add(tid)
            else:
                done[tid], settled_some = result, True
                notify(Event("start", tid))
                notify(Event("finish", tid, result))
        if settled_some:
            continue  # what they unblock may settle too
        if len(ready) != 1:
            return done  # finished, or tasks that can run side by side: a scheduler's job
        tid = ready[0]  # nothing else can start until this one ends
        notify(Event("start", tid))
        done[tid] = execute_task(dag.tasks[tid], ctxs[dag.tasks[tid].bundle], *_upstream(dag, tid, known, done))
        notify(Event("finish", tid, done[tid]))


def _upstream(dag: TaskGraph, tid: str, known: dict[str, TaskResult], done: dict[str, TaskResult]) -> list[TaskResult]:
    return [done.get(p) or known[p] for p in sorted(dag.predecessors(tid))]
