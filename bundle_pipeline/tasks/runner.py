"""Run one task against the cache: compute its key, return the recorded outputs on a hit, else run the step."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..cache import Cache
from ..ir.hashing import hash_json
from ..targets import get_target
from .sources import external_digests, source_digest
from .steps import STEPS
from .task import Task, TaskResult, input_hashes, task_key, timed


@dataclass(frozen=True)
class BuildContext:
    """What every task of one bundle needs besides its inputs; small and picklable so any scheduler can ship it."""

    cache_root: str
    target: str
    force: bool = False


@dataclass
class Lookup:
    key: str
    inputs: dict[str, str]
    record: dict | None  # the cached record when it is a valid hit


def lookup(task: Task, ctx: BuildContext, upstream: dict[str, TaskResult], cache: Cache) -> Lookup:
    """The task's key from its inputs' content hashes, and its cached record if still valid."""
    inputs = input_hashes(task, upstream)
    if task.step == "parse":
        inputs["model"] = source_digest(task.context["source"], cache, task.context["where"])
    elif task.step == "parse.weights":
        model_dir = Path(task.context["source"].get("path", ".")).parent
        inputs.update(external_digests(cache.get_json(inputs["refs"]), model_dir, cache, task.context["where"]))
    key = task_key(task, inputs, get_target(ctx.target).fingerprint)
    record = None if ctx.force else cache.get_action(key)
    if record is not None and not _still_valid(task, record, cache):
        record = None
    return Lookup(key, inputs, record)


def cached_result(task: Task, found: Lookup) -> TaskResult:
    return TaskResult(task.id, task.stage, task.graph, found.key, found.record["outputs"], "cached", 0.0,
                      {"recorded_seconds": found.record.get("seconds", 0.0)})


def execute_task(task: Task, ctx: BuildContext, *upstream_results: TaskResult) -> TaskResult:
    """Constructive trace with early cutoff: the key reads input content hashes, never upstream keys."""
    start = time.time()
    cache = Cache(ctx.cache_root)
    found = lookup(task, ctx, {r.id: r for r in upstream_results}, cache)
    if found.record is not None:
        return _stamped(cached_result(task, found), start)
    outputs, seconds = timed(STEPS[task.step], task, cache, found.inputs)
    extra = outputs.pop("_extra", {}) if isinstance(outputs.get("_extra"), dict) else {}
    record = {"task": task.id, "outputs": outputs, "seconds": seconds, "inputs": found.inputs,
              "params": task.params, "version": task.version, "target": get_target(ctx.target).fingerprint}
    if task.step == "pack":
        record["stamp"] = output_stamp(task.context["out"])
    cache.put_action(found.key, record)
    return _stamped(TaskResult(task.id, task.stage, task.graph, found.key, outputs, "ran", seconds, extra), start)


def _stamped(result: TaskResult, start: float) -> TaskResult:
    """Where and when a task executed, for build profiles: wall-clock start/stop (epoch seconds) and worker."""
    result.extra.update(start=start, stop=time.time(), worker=worker_name(), pid=os.getpid(),
                        thread=threading.current_thread().name)
    return result


def worker_name() -> str:
    """The dask.distributed worker's address when running on one, else ``host:pid``."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            return str(get_worker().address)
        except ValueError:  # not inside a distributed worker
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


def _still_valid(task: Task, record: dict, cache: Cache) -> bool:
    """A hit needs its outputs in the cache; pack's output must also still be the bundle it wrote."""
    if task.step == "pack":
        return record.get("stamp") == output_stamp(task.context["out"])
    return all(cache.has_object(h) for h in record["outputs"].values())


def output_stamp(path: str) -> str | None:
    """Stat fingerprint of a written bundle (every entry's path, size, mtime_ns, inode); None when absent."""
    root = Path(path)
    if root.is_file():
        st = root.stat()
        return hash_json([root.name, st.st_size, st.st_mtime_ns, st.st_ino])
    if not root.is_dir():
        return None
    rows = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            rows.append([os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns, st.st_ino])
    return hash_json(sorted(rows))
