"""Build profiles: ``run --profile FILE`` writes a Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing).

The trace is the JSON object format of the Trace Event Format: ``{"traceEvents": [...], "displayTimeUnit": "ms",
"otherData": {...}}``. Every task of the build is one complete event (``"ph": "X"``, ``ts``/``dur`` in
microseconds since the build started) named by its task id, with ``cat`` = its stage and ``args``
``{bundle, stage, step, graph, cache: "hit" | "miss", worker, key}``:

- a task that ran (cache miss) is drawn where and when it ran: start/stop and worker come from the task
  itself (``TaskResult.extra``, stamped by ``tasks.runner``), so threads, processes and distributed
  workers all get their own rows (process = worker, thread = the worker's thread);
- a task early cutoff spared at run time is a hit with its real (short) span on its worker;
- a task the planner resolved from the cache before scheduling is a hit of zero duration at the end of
  the "plan" span (the planner's lookups are not timed one by one), with ``recorded_seconds`` = what
  it took when it ran.

A build that finds a cache entry lost plans again after repairing it (``pipeline/build.py``): each round
is a "plan" span, and a task keeps the span of its last execution (``args.status`` = "lost" / "blocked"
for one that could not finish).

Timestamps are wall-clock (``time.time()``) of each worker's host: on a multi-host cluster the rows are
as aligned as the hosts' clocks.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

from ..tasks.task import TaskResult
from .events import Event

PLANNER_THREAD = "planner"


class TraceRecorder:
    """A build observer that turns plan/finish events into a Chrome trace."""

    def __init__(self) -> None:
        self.dag = None
        self.resolved: dict[str, tuple[TaskResult, float]] = {}  # task id -> (planner hit, when its plan ended)
        self.ran: dict[str, TaskResult] = {}  # the last execution of each task the scheduler ran
        self.plans: list[tuple[float, float, int]] = []  # (started, finished, tasks up to date) per plan
        self.planner = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, event: Event) -> None:
        if event.kind == "plan":  # one per round: a build plans again after repairing a lost cache entry
            self.dag = event.data["dag"]
            found = event.data["plan"]
            for tid, result in found.resolved.items():
                self.resolved.setdefault(tid, (result, event.data["finished"]))
            self.plans.append((event.data["started"], event.data["finished"], len(found.resolved)))
        elif event.kind == "finish" and event.result is not None:
            self.ran[event.task] = event.result

    def trace(self) -> dict:
        if self.dag is None or not self.plans:
            raise ValueError("no build was observed")
        t0 = self.plans[0][0]
        rows = _Rows()
        planner_pid, planner_tid = rows.ids(self.planner, PLANNER_THREAD)
        n = len(self.dag)
        events = [{"name": "plan", "cat": "plan", "ph": "X", "ts": _us(start - t0), "dur": _us(end - start),
                   "pid": planner_pid, "tid": planner_tid, "args": {"tasks": n, "up_to_date": hits, "to_run": n - hits}}
                  for start, end, hits in self.plans]
        for tid, (result, planned) in self.resolved.items():
            if tid not in self.ran:  # a task resolved in a later round after running in an earlier one ran
                events.append(self._span(tid, result, planner_pid, planner_tid, planned - t0, 0.0, self.planner))
        for tid, result in self.ran.items():
            extra = result.extra
            worker = str(extra.get("worker", "unknown"))
            pid, thread = rows.ids(worker, str(extra.get("thread", "main")))
            start, stop = extra.get("start", t0), extra.get("stop", t0)
            events.append(self._span(tid, result, pid, thread, start - t0, stop - start, worker))
        events.sort(key=lambda e: (e["ts"], e["pid"], e["tid"]))
        return {"traceEvents": rows.metadata(self.planner) + events, "displayTimeUnit": "ms",
                "otherData": {"tool": "bundle-pipeline", "started_unix_s": t0, "plans": len(self.plans),
                              "bundles": sorted({t.bundle for t in self.dag.tasks.values()})}}

    def _span(self, tid: str, result: TaskResult, pid: int, thread: int, start_s: float, dur_s: float,
              worker: str) -> dict:
        task = self.dag.tasks[tid]
        args = {"bundle": task.bundle, "stage": task.stage, "step": task.step, "graph": task.graph,
                "cache": "hit" if result.status == "cached" else "miss", "worker": worker, "key": result.key}
        if result.status not in ("ran", "cached"):  # "lost" / "blocked": a cache entry went missing (repaired)
            args["status"] = result.status
        if result.status == "cached":
            args["recorded_seconds"] = result.extra.get("recorded_seconds")
            args["resolved_by"] = "worker (early cutoff)" if tid in self.ran else "planner"
        return {"name": tid, "cat": task.stage, "ph": "X", "ts": _us(start_s), "dur": _us(max(dur_s, 0.0)),
                "pid": pid, "tid": thread, "args": args}

    def write(self, path: str | os.PathLike) -> None:
        """Write the trace atomically (temp file + rename)."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.trace(), f)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _Rows:
    """Small integer pid/tid per worker and thread, with the metadata events that name them."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.tids: dict[tuple[str, str], int] = {}

    def ids(self, worker: str, thread: str) -> tuple[int, int]:
        pid = self.pids.setdefault(worker, len(self.pids) + 1)
        tid = self.tids.setdefault((worker, thread), sum(1 for w, _ in self.tids if w == worker) + 1)
        return pid, tid

    def metadata(self, planner: str) -> list[dict]:
        out = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                "args": {"name": f"bundle-pipeline {worker}" if worker == planner else f"worker {worker}"}}
               for worker, pid in self.pids.items()]
        out += [{"name": "thread_name", "ph": "M", "pid": self.pids[worker], "tid": tid, "args": {"name": thread}}
                for (worker, thread), tid in self.tids.items()]
        return out


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)
