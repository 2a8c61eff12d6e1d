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
tiling + codegen), with the bundle-level barriers (dedupe, dedupe.storage, formats.assign, formats.weights,
pack) alone. On a cluster that runs several tasks at once, a group ends at a task a barrier reads when the
barrier does not wait for the rest: ``parse`` (``dedupe`` reads its interface, not the weights) and ``formats``
(``formats.weights`` reads it, not the tiling or codegen after it), so those barriers run beside the rest.

For a cluster, ``group_graph`` then shapes the dask graph:
- **batches**: groups of different graphs doing the same steps are merged, largest batches first and the last
  ones short (``batch_sizes``), about ``BATCHES_PER_SLOT`` + 1 per worker thread and stage. A distributed worker
  ran a 128-graph build's ~390 single-graph groups 1.5-2 ms apart and their tasks ~1.7x slower than in one
  process (its event loop takes the GIL from the task).
- **priorities**: a batch's priority is how many barriers still wait for it, so the next barrier's inputs
  run first (``formats`` before the tiling and codegen only ``pack`` waits for).
- **handed out**: every batch of graphs is queued on the scheduler and given to whichever worker has a
  free thread (``_handed_out``). Hints that dealt the batches to the workers by turns left one worker idle
  for up to 0.5 s a stage when the two ran at unequal speeds; with no hints and no queue, the batches that
  read ``dedupe``'s result piled up on the worker holding it.

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
    barriers_after: frozenset[str] = frozenset()  # stale bundle-level tasks that wait for the first one
    reads_groups: set[int] = field(default_factory=set)  # id() of the groups the first one reads from
    rank: float = 0.0  # in [0, 1): among batches of one stage, the larger ones higher (``batched``)

    @property
    def key(self) -> str:
        return self.ids[0]


def fuse(dag: TaskGraph, ids: list[str], split: bool = False) -> tuple[list[Group], dict[str, Group]]:
    """Group ``ids`` (stale, topological order); return the groups and each task's group. ``split``: also end a
    group at a task a barrier reads, when the barrier does not wait for the rest of the group (a cluster that
    runs several tasks at once can run that barrier beside the rest)."""
    batch = set(ids)
    groups: list[Group] = []
    group_of: dict[str, Group] = {}
    ancestors: dict[str, set[str]] = {}  # stale bundle-level ancestors of each task (a bundle has ~4 such tasks)
    after = _barriers_after(dag, ids, batch)
    readers: dict[str, list[str]] = {}  # each task's stale bundle-level readers
    for tid in ids if split else ():
        if dag.tasks[tid].graph is None:
            for p in dag.predecessors(tid):
                readers.setdefault(p, []).append(tid)
    for tid in ids:
        task, preds = dag.tasks[tid], [p for p in dag.predecessors(tid) if p in batch]
        ancestors[tid] = set().union(*(ancestors[p] | ({p} if dag.tasks[p].graph is None else set()) for p in preds))
        joined = _joinable(dag, task, preds, group_of, after, readers)
        if joined is None:
            joined = Group([], ancestors[tid], after[tid], {id(group_of[p]) for p in preds})
            groups.append(joined)
        joined.ids.append(tid)
        group_of[tid] = joined
    return groups, group_of


def _barriers_after(dag: TaskGraph, ids: list[str], batch: set[str]) -> dict[str, frozenset[str]]:
    """Each task's stale bundle-level descendants in the batch (propagated from the last task back)."""
    after: dict[str, set[str]] = {tid: set() for tid in ids}
    for tid in reversed(ids):
        mine = after[tid] | ({tid} if dag.tasks[tid].graph is None else set())
        for p in dag.predecessors(tid):
            if p in batch:
                after[p] |= mine
    return {tid: frozenset(v) for tid, v in after.items()}


def _joinable(dag: TaskGraph, task: Task, preds: list[str], group_of: dict[str, Group],
              after: dict[str, frozenset[str]], readers: dict[str, list[str]]) -> Group | None:
    """The group ``task`` can join: one its graph's stale predecessors are in, whose first task already waits for
    every other stale predecessor (a bundle-level task, or a group it reads from), when every bundle-level task
    that reads the group's last task (``readers``) also waits for ``task``; else None."""
    if task.graph is None:
        return None  # bundle-level tasks are the barriers: each runs alone
    own = {id(group_of[p]): group_of[p] for p in preds if dag.tasks[p].graph == task.graph
           and dag.tasks[p].bundle == task.bundle}
    for group in own.values():  # at most one can hold all the others' outputs before it starts
        finished_first = [p for p in preds if group_of[p] is not group]
        if all(p in group.bundle_ancestors or id(group_of[p]) in group.reads_groups for p in finished_first):
            return group if all(r in after[task.id] for r in readers.get(group.ids[-1], ())) else None
    return None


def priority(group: Group, dag: TaskGraph) -> float:
    """A scheduler priority (higher first): the barriers still waiting for the group, counting itself when it is
    one. Ready work the next barrier needs runs before work only ``pack`` waits for; within a stage, larger
    batches first (``rank``)."""
    return len(group.barriers_after) + (dag.tasks[group.key].graph is None) + group.rank


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


# Batches per stage and per worker thread, as their uniform size (``batch_sizes`` shrinks them from twice that):
# enough to balance the workers, few enough that the scheduler's cost per task (messages, and the worker's event
# loop taking the GIL from the task) stays small beside the work
BATCHES_PER_SLOT = 4


def batched(dag: TaskGraph, groups: list[Group], slots: int) -> tuple[list[Group], dict[str, Group]]:
    """Groups of different graphs doing the same steps after the same barriers, merged into batches of
    ``batch_sizes`` (graphs are independent of each other: a batch runs its graphs' tasks one graph after
    another). A distributed worker ran a 128-graph build's ~390 single-graph groups about 1.7x slower than the
    same tasks in one process, and 1.5-2 ms apart."""
    shapes: dict[tuple, list[Group]] = {}
    for g in groups:
        task = dag.tasks[g.key]
        shape = (task.bundle, tuple(dag.tasks[t].step for t in g.ids), frozenset(g.bundle_ancestors),
                 g.barriers_after)
        shapes.setdefault(shape if task.graph is not None else (g.key,), []).append(g)
    merged: list[Group] = []
    for same in shapes.values():
        sizes = batch_sizes(len(same), slots)
        start = 0
        for i, size in enumerate(sizes):
            part = same[start:start + size]
            start += size
            merged.append(Group([t for g in part for t in g.ids], set(part[0].bundle_ancestors),
                                part[0].barriers_after, rank=(len(sizes) - i) / (len(sizes) + 1)))
    return merged, {t: g for g in merged for t in g.ids}


def batch_sizes(n: int, slots: int) -> list[int]:
    """Graphs a batch for ``n`` graphs doing the same steps on ``slots`` worker threads, largest first and
    shrinking (guided self-scheduling): each takes its share of what is left, at least a quarter of the uniform
    size, so a stage ends in short batches and the workers reach the next barrier together. With equal batches
    (a 128-graph build's parse in eight of 17), one worker waited ~0.1 s at each barrier for the other's last one."""
    slots = max(1, slots)
    smallest = -(-n // (4 * BATCHES_PER_SLOT * slots))
    sizes: list[int] = []
    while n > 0:
        sizes.append(min(n, max(smallest, -(-n // (2 * slots)))))
        n -= sizes[-1]
    return sizes


def group_graph(dag: TaskGraph, ids: list[str], known: dict[str, TaskResult], ctxs: dict[str, BuildContext],
                workers: list[tuple[str, int]] | None = None) -> tuple[dict[str, tuple], dict[str, dict]]:
    """The dask graph of ``ids`` fused: one ``execute_group`` task per group, keyed by its first task id, and each
    group's scheduler annotations. With ``workers`` (the cluster's (address, threads)), groups end where a barrier
    can start early, groups of many graphs are batched (``batched``) and get a ``priority``, and each batch is a
    task the scheduler hands out as a worker thread frees up (``_handed_out``)."""
    slots = sum(n for _, n in workers) if workers else 0
    groups, group_of = fuse(dag, ids, split=slots > 1)
    if workers:
        groups, group_of = batched(dag, groups, slots)
    graph, annotations = {}, {}
    first = _nearer_barriers_first(dag, groups) if workers else {}
    for group in groups:
        members = Members(tuple(dag.tasks[t] for t in group.ids), tuple(tuple(dag.predecessors(t)) for t in group.ids))
        outside = [p for p in dict.fromkeys(p for reads in members.preds for p in reads) if p not in group.ids]
        literal = [known[p] for p in outside if p in known]
        keys = list(dict.fromkeys([*(group_of[p].key for p in outside if p not in known),  # dask passes their results
                                   *first.get(group.key, ())]))
        args = (members, ctxs[members.tasks[0].bundle], *literal)
        if workers:
            graph[group.key] = _handed_out(group.key, args, keys, dag.tasks[group.key].graph is not None)
            annotations[group.key] = {"priority": priority(group, dag)}
        else:
            graph[group.key] = (execute_group, *args, *keys)
    return graph, annotations


def _nearer_barriers_first(dag: TaskGraph, groups: list[Group]) -> dict[str, list[str]]:
    """For each batch of graphs, the batches it waits for although it reads nothing of them: those released by the
    same barriers that more barriers wait for (``formats`` before the ``tiling``/``codegen`` only ``pack`` waits
    for). Priorities alone did not keep that order: a batch made ready by its graphs' ``formats`` went straight to
    the worker that ran them (a free thread takes a ready task before the scheduler's queue is looked at), and
    the last ``formats`` batches ran after most of the codegen, leaving ``formats.weights`` alone at the end of a
    128-graph build. A batch never waits for one downstream of it: that one has no more barriers after it."""
    ahead: dict[tuple, list[Group]] = {}
    for g in groups:
        if dag.tasks[g.key].graph is not None:
            ahead.setdefault((dag.tasks[g.key].bundle, frozenset(g.bundle_ancestors)), []).append(g)
    return {g.key: [h.key for h in same if g.barriers_after < h.barriers_after]
            for same in ahead.values() for g in same}


def _handed_out(key: str, args: tuple, keys: list[str], per_graph: bool):
    """A batch as a dask task. A batch of graphs is marked a data producer, which makes the scheduler queue it
    and give it to the first worker with a free thread (a worker holds at most ``worker-saturation`` x threads,
    rounded up, of them), wherever the tiny results it reads live. Placed up front, by turns or by the scheduler's
    estimates, the batches of a stage ended up to 0.5 s apart on a machine whose two cores ran at unequal speeds."""
    from dask.task_spec import Task as DaskTask
    from dask.task_spec import TaskRef

    return DaskTask(key, execute_group, *args, *(TaskRef(k) for k in keys), _data_producer=per_graph)
