"""The rebuilder: decide, before any scheduling, which tasks are up to date and which must run.

Walks the DAG in topological order in this process. A task whose upstream results are all known gets
its key computed (input content hashes + stage version + target + params) and looked up in the cache;
a valid hit is resolved without running. Anything else is stale: either its key misses (the reason
says which input changed since the last build of this spec), or an upstream task is stale, so its key
is unknown until that one runs (early cutoff may still spare it at execution time).

State kept: ``last-build`` records in the cache (one per spec: task id -> key of the last successful
build, and each task's outputs and seconds), written by ``remember``; ``status`` and ``explain`` diff against
them. The plan also hands their records, by key, to the lookups of this process (``Plan.recorded``): a task
whose key is the one it had last time takes its outputs from there (checked like any cached record: its
output objects must exist) instead of reading its action record, one file a task.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from ..cache import Cache
from ..hashing import hash_json
from ..stages import order
from ..tasks.runner import BuildContext, Lookup, cached_result, lookup
from ..tasks.task import Task, TaskResult
from .dag import TaskGraph


@dataclass
class Stale:
    id: str
    reason: str
    found: Lookup | None = None  # None when an upstream task is stale (key unknown yet)


@dataclass
class Plan:
    resolved: dict[str, TaskResult] = field(default_factory=dict)
    stale: dict[str, Stale] = field(default_factory=dict)
    recorded: dict[str, dict[str, dict]] = field(default_factory=dict)  # bundle -> key -> the last build's record

    def definite(self) -> list[Stale]:
        """Tasks whose key is known to miss: a run executes them."""
        return [s for s in self.stale.values() if s.found is not None]

    def pending(self) -> list[Stale]:
        """Tasks downstream of a stale one: a run executes them unless early cutoff spares them."""
        return [s for s in self.stale.values() if s.found is None]


def plan(dag: TaskGraph, ctxs: dict[str, BuildContext], identities: dict[str, str], use_last: bool = True) -> Plan:
    """Resolve every task whose key hits; explain why each other task is stale. ``use_last=False``: every lookup
    reads the cache's action records (after a repair forgot some, the last build's copies must not answer)."""
    caches = {b: Cache(ctx.cache_root) for b, ctx in ctxs.items()}
    with contextlib.ExitStack() as saved_once:  # a cold build hashes every model: one stat-state write, not N
        for cache in caches.values():
            saved_once.enter_context(cache.deferred_file_hashes())
        return _plan(dag, ctxs, identities, caches, use_last)


def _plan(dag: TaskGraph, ctxs: dict[str, BuildContext], identities: dict[str, str], caches: dict[str, Cache],
          use_last: bool) -> Plan:
    result = Plan()
    records = {b: _last_build_record(caches[b], identities[b]) for b in ctxs}
    previous = {b: dict(records[b].get("tasks", {})) for b in ctxs}
    if use_last:
        result.recorded = {b: _by_key(records[b]) for b in ctxs}
    for tid in dag.order():
        task: Task = dag.tasks[tid]
        blocked = [p for p in dag.predecessors(tid) if p in result.stale]
        if blocked:
            result.stale[tid] = Stale(tid, f"upstream {blocked[0]} re-runs (early cutoff may still spare this one)")
            continue
        ctx, cache = ctxs[task.bundle], caches[task.bundle]
        found = lookup(task, ctx, result.resolved, cache, result.recorded.get(task.bundle))
        if found.record is not None:
            result.resolved[tid] = cached_result(task, found)
        else:
            reason = "forced (--force)" if ctx.force else why(task, found, previous[task.bundle].get(tid), cache)
            result.stale[tid] = Stale(tid, reason, found)
    return result


def last_build_key(identity: str) -> str:
    return hash_json({"last-build": identity})


def last_build(cache: Cache, identity: str) -> dict[str, str]:
    return dict(_last_build_record(cache, identity).get("tasks", {}))


def _last_build_record(cache: Cache, identity: str) -> dict:
    record = cache.get_action(last_build_key(identity))
    return record if record is not None and isinstance(record.get("tasks"), dict) else {}


def _by_key(record: dict) -> dict[str, dict]:
    """The last build's task records by key, as ``lookup`` takes them (outputs and seconds)."""
    outputs, seconds = record.get("outputs"), record.get("seconds")
    if not isinstance(outputs, dict) or not isinstance(seconds, dict):
        return {}  # a record of an older version: keys only
    return {key: {"outputs": outputs[tid], "seconds": seconds.get(tid, 0.0)}
            for tid, key in record["tasks"].items() if isinstance(outputs.get(tid), dict)}


def remember(cache: Cache, identity: str, results: list[TaskResult]) -> None:
    """Record the keys and outputs of a successful build, so status/explain can say what changed next time and
    the next plan finds the unchanged tasks' outputs in one record. Written only when a key or an output changed
    (a no-op writes nothing)."""
    tasks = {r.id: r.key for r in results}
    outputs = {r.id: r.outputs for r in results}
    old = _last_build_record(cache, identity)
    if old.get("tasks") != tasks or old.get("outputs") != outputs:
        seconds = {r.id: r.seconds if r.status == "ran" else r.extra.get("recorded_seconds", 0.0) for r in results}
        cache.put_action(last_build_key(identity),
                         {"identity": identity, "tasks": tasks, "outputs": outputs, "seconds": seconds})


def why(task: Task, found: Lookup, old_key: str | None, cache: Cache) -> str:
    """One line naming what changed since the last build: file, tensor, option, stage version, target."""
    if old_key is None:
        return "never built"
    old = cache.get_action(old_key)
    if old is None:
        return "no cached result for the last build (evicted)"
    if old_key == found.key:
        return "output missing or modified" if order.named(task.step).writes_bundle else "cached outputs missing"
    if old.get("version") != task.version:
        return f"stage version changed ({old.get('version')} -> {task.version})"
    if old.get("params") != task.params:
        return f"option changed: {_diff_names(old.get('params', {}), task.params)}"
    changed = sorted(k for k in set(old.get("inputs", {})) | set(found.inputs)
                     if old.get("inputs", {}).get(k) != found.inputs.get(k))
    if not changed:
        return "target changed"
    return "; ".join(_describe_input(task, name, old["inputs"].get(name), found.inputs.get(name), cache)
                     for name in changed)


def _describe_input(task: Task, name: str, old: str | None, new: str | None, cache: Cache) -> str:
    if name == "model":
        src = task.context["source"]
        return f"file changed: {src.get('path', 'in-memory model')}"
    if name.startswith("file:"):
        return f"file changed: {name[5:]} (external data)"
    if name.startswith("weights") and old and new:
        tensors = _tensor_diff(cache, old, new)
        if tensors:
            return f"tensor changed: {', '.join(tensors[:5])}{' ...' if len(tensors) > 5 else ''}"
    return f"input changed: {name}"


def _tensor_diff(cache: Cache, old: str, new: str) -> list[str]:
    try:
        a, b = cache.get_json(old)["tensors"], cache.get_json(new)["tensors"]
    except KeyError:
        return []
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _diff_names(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
