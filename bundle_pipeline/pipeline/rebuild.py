"""The rebuilder: decide, before any scheduling, which tasks are up to date and which must run.

Walks the DAG in topological order in this process. A task whose upstream results are all known gets
its key computed (input content hashes + stage version + target + params) and looked up in the cache;
a valid hit is resolved without running. Anything else is stale: either its key misses (the reason
says which input changed since the last build of this spec), or an upstream task is stale, so its key
is unknown until that one runs (early cutoff may still spare it at execution time).

State kept: ``last-build`` records in the cache (one per spec: task id -> key of the last successful
build), written by ``remember``; ``status`` and ``explain`` diff against them.
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

    def definite(self) -> list[Stale]:
        """Tasks whose key is known to miss: a run executes them."""
        return [s for s in self.stale.values() if s.found is not None]

    def pending(self) -> list[Stale]:
        """Tasks downstream of a stale one: a run executes them unless early cutoff spares them."""
        return [s for s in self.stale.values() if s.found is None]


def plan(dag: TaskGraph, ctxs: dict[str, BuildContext], identities: dict[str, str]) -> Plan:
    """Resolve every task whose key hits; explain why each other task is stale."""
    caches = {b: Cache(ctx.cache_root) for b, ctx in ctxs.items()}
    with contextlib.ExitStack() as saved_once:  # a cold build hashes every model: one stat-state write, not N
        for cache in caches.values():
            saved_once.enter_context(cache.deferred_file_hashes())
        return _plan(dag, ctxs, identities, caches)


def _plan(dag: TaskGraph, ctxs: dict[str, BuildContext], identities: dict[str, str], caches: dict[str, Cache]) -> Plan:
    result = Plan()
    previous = {b: last_build(caches[b], identities[b]) for b in ctxs}
    for tid in dag.order():
        task: Task = dag.tasks[tid]
        blocked = [p for p in dag.predecessors(tid) if p in result.stale]
        if blocked:
            result.stale[tid] = Stale(tid, f"upstream {blocked[0]} re-runs (early cutoff may still spare this one)")
            continue
        ctx, cache = ctxs[task.bundle], caches[task.bundle]
        found = lookup(task, ctx, result.resolved, cache)
        if found.record is not None:
            result.resolved[tid] = cached_result(task, found)
        else:
            reason = "forced (--force)" if ctx.force else why(task, found, previous[task.bundle].get(tid), cache)
            result.stale[tid] = Stale(tid, reason, found)
    return result


def last_build_key(identity: str) -> str:
    return hash_json({"last-build": identity})


def last_build(cache: Cache, identity: str) -> dict[str, str]:
    record = cache.get_action(last_build_key(identity))
    return dict(record["tasks"]) if record else {}


def remember(cache: Cache, identity: str, results: list[TaskResult]) -> None:
    """Record the keys of a successful build, so status/explain can say what changed next time."""
    tasks = {r.id: r.key for r in results}
    if last_build(cache, identity) != tasks:
        cache.put_action(last_build_key(identity), {"identity": identity, "tasks": tasks})


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
