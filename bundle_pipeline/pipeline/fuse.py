"""Per-graph fusion for clusters: one dask task runs a graph's consecutive stale tasks, in order, on one worker.

A distributed scheduler costs about a millisecond of client and scheduler work per task, paid on the
same two cores the workers use, and a worker that runs ``formats -> tiling -> codegen`` of one graph
reads each output it just wrote back from the cache. So for ``--workers`` and ``tcp://`` clusters the
stale tasks are grouped: a task joins the group of its graph's stale predecessor when everything else it
reads is already known or finished before that group starts (a bundle-level task such as ``dedupe``
that the group's first task waits for). Within a group the tasks run one after another through
``execute_task``, each with its own key, cache record and early cutoff, exactly as if scheduled alone,
so bundles are the same bytes; the group returns every member's result.

A 32-graph npu bundle has 6 tasks a graph; fused, 3 (parse + parse.weights, formats.cost, formats +
tiling + codegen), with the bundle-level barriers (dedupe, formats.assign, formats.weights, pack) alone.

State kept: none; ``Group`` lists are built per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..tasks.runner import BuildContext, execute_task
from ..tasks.task import Task, TaskResult
from .dag import TaskGraph


@dataclass
class Group:
    """Stale tasks of one graph, in topological order, run as one scheduler task named after the first."""

    ids: list[str]
    bundle_ancestors: set[str] = field(default_factory=set)  # stale bundle-level tasks the first one waits for

    @property
    def key(self) -> str:
        return self.ids[0]


def fuse(dag: TaskGraph, ids: list[str]) -> tuple[list[Group], dict[str, Group]]:
    """Group ``ids`` (stale, topological order); return the groups and each task's group."""
    batch = set(ids)
    groups: list[Group] = []
    group_of: dict[str, Group] = {}
    ancestors: dict[str, set[str]] = {}  # stale bundle-level ancestors of each task (a bundle has ~4 such tasks)
    for tid in ids:
        task, preds = dag.tasks[tid], [p for p in dag.predecessors(tid) if p in batch]
        ancestors[tid] = set().union(*(ancestors[p] | ({p} if dag.tasks[p].graph is None else set()) for p in preds))
        joined = _joinable(dag, task, preds, group_of)
        if joined is None:
            joined = Group([], ancestors[tid])
            groups.append(joined)
        joined.ids.append(tid)
        group_of[tid] = joined
    return groups, group_of


def _joinable(dag: TaskGraph, task: Task, preds: list[str], group_of: dict[str, Group]) -> Group | None:
    """The group ``task`` can join: its graph's stale predecessors are all in it, and every other stale
    predecessor is a bundle-level task the group already waits for; else None."""
    if task.graph is None:
        return None  # bundle-level tasks are the barriers: each runs alone
    own = {id(group_of[p]): group_of[p] for p in preds if dag.tasks[p].graph == task.graph
           and dag.tasks[p].bundle == task.bundle}
    if len(own) != 1:
        return None
    group = next(iter(own.values()))
    others = [p for p in preds if group_of[p] is not group]
    return group if all(p in group.bundle_ancestors for p in others) else None


@dataclass(frozen=True)
class Members:
    """A group's tasks and what each reads, in one object: dask looks for keys inside lists and tuples of a
    task's arguments (task ids are keys), never inside other objects."""

    tasks: tuple[Task, ...]
    preds: tuple[tuple[str, ...], ...]


def execute_group(members: Members, ctx: BuildContext,
                  *upstream: TaskResult | dict[str, TaskResult]) -> dict[str, TaskResult]:
    """Run a group's tasks in order on this worker and return every member's result; ``upstream`` are the
    results its members read from outside the group (single results, or other groups' result dicts)."""
    known: dict[str, TaskResult] = {}
    for value in upstream:
        known.update(value if isinstance(value, dict) else {value.id: value})
    for task, reads in zip(members.tasks, members.preds, strict=True):
        known[task.id] = execute_task(task, ctx, *(known[p] for p in reads))
    return {task.id: known[task.id] for task in members.tasks}


# Batches per stage and per worker thread: enough to balance the workers, few enough that the scheduler's cost
# per task (messages, and the worker's event loop taking the GIL from the task) stays small beside the work
BATCHES_PER_SLOT = 4


def batched(dag: TaskGraph, groups: list[Group], slots: int) -> tuple[list[Group], dict[str, Group]]:
    """Groups of different graphs doing the same steps after the same barriers, merged into at most
    ``BATCHES_PER_SLOT * slots`` batches each (graphs are independent of each other: a batch runs its graphs'
    tasks one graph after another). A distributed worker ran a 128-graph build's ~390 single-graph groups about
    1.7x slower than the same tasks in one process, and 1.5-2 ms apart."""
    shapes: dict[tuple, list[Group]] = {}
    for g in groups:
        task = dag.tasks[g.key]
        shape = (task.bundle, tuple(dag.tasks[t].step for t in g.ids), frozenset(g.bundle_ancestors))
        shapes.setdefault(shape if task.graph is not None else (g.key,), []).append(g)
    merged: list[Group] = []
    for same in shapes.values():
        size = -(-len(same) // (BATCHES_PER_SLOT * max(1, slots)))  # ceil: graphs a batch
        for i in range(0, len(same), size):
            part = same[i:i + size]
            merged.append(Group([t for g in part for t in g.ids], set(part[0].bundle_ancestors)))
    return merged, {t: g for g in merged for t in g.ids}


def group_graph(dag: TaskGraph, ids: list[str], known: dict[str, TaskResult],
                ctxs: dict[str, BuildContext], slots: int | None = None) -> dict[str, tuple]:
    """The dask graph of ``ids`` fused: one ``execute_group`` task per group, keyed by its first task id; with
    ``slots`` (the cluster's worker threads), groups of many graphs are batched (``batched``)."""
    groups, group_of = fuse(dag, ids)
    if slots is not None:
        groups, group_of = batched(dag, groups, slots)
    graph = {}
    for group in groups:
        members = Members(tuple(dag.tasks[t] for t in group.ids), tuple(tuple(dag.predecessors(t)) for t in group.ids))
        outside = [p for p in dict.fromkeys(p for reads in members.preds for p in reads) if p not in group.ids]
        literal = [known[p] for p in outside if p in known]
        keys = dict.fromkeys(group_of[p].key for p in outside if p not in known)  # dask passes their results
        graph[group.key] = (execute_group, members, ctxs[members.tasks[0].bundle], *literal, *keys)
    return graph
