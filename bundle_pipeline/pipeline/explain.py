"""``explain``: one task's key inputs from its last build against now, like ``ninja -d explain``."""

from __future__ import annotations

from ..cache import Cache
from ..errors import ParamInvalid
from ..spec import BundleSpec
from .build import identity, prepare
from .rebuild import last_build, plan


def explain_task(spec: BundleSpec, task_id: str) -> list[str]:
    tasks, dag, ctxs = prepare([spec])
    ids = [t.id for t in tasks[spec.name]]
    tid = task_id if task_id in ids else f"{spec.name}/{task_id}"
    if tid not in ids:
        raise ParamInvalid(f"no task {task_id!r}; tasks: {', '.join(ids)}", "task")
    found = plan(dag, ctxs, {spec.name: identity(spec)})
    cache = Cache(spec.cache)
    old_key = last_build(cache, identity(spec)).get(tid)
    old = cache.get_action(old_key) if old_key else None
    task = dag.tasks[tid]
    if tid in found.resolved:
        now = found.resolved[tid]
        head = [f"{tid}: up to date (key {now.key[:16]})"]
        new_inputs, new_key = cache.get_action(now.key)["inputs"], now.key
    else:
        stale = found.stale[tid]
        head = [f"{tid}: stale: {stale.reason}"]
        if stale.found is None:
            return [*head, "  its inputs are not known until the upstream tasks run"]
        new_inputs, new_key = stale.found.inputs, stale.found.key
    rows = [("key", old_key, new_key), ("stage version", old and old.get("version"), task.version)]
    old_params = (old or {}).get("params", {})
    rows += [(f"param {k}", old_params.get(k), task.params.get(k)) for k in sorted(set(old_params) | set(task.params))]
    old_inputs = (old or {}).get("inputs", {})
    rows += [(f"input {k}", old_inputs.get(k), new_inputs.get(k)) for k in sorted(set(old_inputs) | set(new_inputs))]
    return head + [f"  {'changed' if a != b else 'same':<8} {name:<28} {_short(a)} -> {_short(b)}"
                   for name, a, b in rows]


def _short(value: object) -> str:
    text = str(value) if value is not None else "-"
    return text[:16] if len(text) == 64 else text[:60]
