"""pipeline/fuse.py: a graph's consecutive stale tasks become one cluster task; bundles stay the same bytes."""

from __future__ import annotations

from collections import Counter

import models
import pytest

from bundle_pipeline.pipeline import build
from bundle_pipeline.pipeline.build import prepare
from bundle_pipeline.pipeline.fuse import (
    BATCHES_PER_SLOT,
    Members,
    batch_sizes,
    batched,
    execute_group,
    fuse,
    group_graph,
    priority,
)
from bundle_pipeline.spec import load_spec


def steps(dag, ids: list[str]) -> list[str]:
    return [dag.tasks[t].step for t in ids]


def test_each_graph_fuses_into_three_groups_around_the_bundle_barriers(tmp_path):
    built = models.shared(tmp_path / "shared")
    _, dag, _ = prepare([load_spec(built.spec, cache=str(tmp_path / "c"))])
    groups, group_of = fuse(dag, list(dag.order()))
    shapes = sorted({tuple(steps(dag, g.ids)) for g in groups})
    assert shapes == sorted({("parse", "parse.weights"), ("dedupe",), ("dedupe.storage",), ("formats.cost",),
                             ("formats.assign",), ("formats", "tiling", "codegen"), ("formats.weights",), ("pack",)})
    graphs = {dag.tasks[t].graph for t in dag.order()} - {None}
    assert len(groups) == 3 * len(graphs) + 5
    for group in groups:  # a later member reads only its group and what the group's first task waits for
        assert len({dag.tasks[t].graph for t in group.ids}) == 1
        for tid in group.ids[1:]:
            assert all(p in group.ids or p in group.bundle_ancestors for p in dag.predecessors(tid))
        assert all(group_of[t] is group for t in group.ids)


def test_with_several_workers_formats_ends_its_group_and_groups_are_ranked_and_spread(tmp_path):
    """formats.weights reads each graph's formats but not its tiling or codegen: on a cluster that runs two tasks at
    once formats ends its group, so that barrier can run beside the codegen (and parse ends its group before
    parse.weights, which dedupe does not read). Priorities count the barriers still waiting."""
    built = models.shared(tmp_path / "shared")
    _, dag, ctxs = prepare([load_spec(built.spec, cache=str(tmp_path / "c"))])
    groups, group_of = fuse(dag, list(dag.order()), split=True)
    assert {tuple(steps(dag, g.ids)) for g in groups if dag.tasks[g.key].graph is not None} == {
        ("parse",), ("parse.weights",), ("formats.cost",), ("formats",), ("tiling", "codegen")}
    for group in groups:  # a later member reads only its group and what the group's first task waits for
        for tid in group.ids[1:]:
            assert all(p in group.ids or p in group.bundle_ancestors or id(group_of[p]) in group.reads_groups
                       for p in dag.predecessors(tid))
    assert {tuple(steps(dag, g.ids)): priority(g, dag) for g in groups} == {
        ("parse",): 5, ("dedupe",): 5, ("parse.weights",): 3, ("dedupe.storage",): 3, ("formats.cost",): 3,
        ("formats.assign",): 3, ("formats",): 2, ("formats.weights",): 2, ("tiling", "codegen"): 1, ("pack",): 1}
    workers = [("tcp://a", 1), ("tcp://b", 1)]
    graph, notes = group_graph(dag, list(dag.order()), {}, ctxs, workers)
    assert set(notes) == set(graph) and all(set(n) == {"priority"} for n in notes.values())  # no placement hints
    # batches of graphs are queued and handed to the first free worker; the barriers are placed as usual
    assert {t: graph[t].data_producer for t in graph} == {t: dag.tasks[t].graph is not None for t in graph}


def test_a_task_with_a_barrier_its_group_does_not_wait_for_starts_a_new_group(tmp_path):
    """formats.cost reads dedupe, which the parse group does not wait for: it is its own group."""
    built = models.mlp(tmp_path / "mlp")
    _, dag, _ = prepare([load_spec(built.spec, cache=str(tmp_path / "c"))])
    _, group_of = fuse(dag, list(dag.order()))
    parse, cost = next(t for t in dag.order() if t.endswith("parse:infer")), next(
        t for t in dag.order() if t.endswith("formats.cost:infer"))
    assert group_of[parse] is not group_of[cost]


def test_groups_run_in_order_and_give_the_bundle_of_a_plain_build(tmp_path):
    """Running the fused graph by hand (what a cluster does) gives every task's result and the same bundle."""
    built = models.shared(tmp_path / "shared")
    plain = build(load_spec(built.spec, cache=str(tmp_path / "plain"), output=str(tmp_path / "plain.bundle")),
                  scheduler="sync")
    specs = [load_spec(built.spec, cache=str(tmp_path / "fused"), output=str(tmp_path / "fused.bundle"))]
    _, dag, ctxs = prepare(specs)
    graph, annotations = group_graph(dag, list(dag.order()), {}, ctxs)
    assert annotations == {}  # no cluster named: nothing to batch, rank or spread
    results: dict = {}
    for key, (fn, members, ctx, *upstream) in graph.items():  # keys are in topological order
        assert fn is execute_group and isinstance(members, Members)
        results[key] = fn(members, ctx, *(results[u] if isinstance(u, str) else u for u in upstream))
    flat = {tid: r for group in results.values() for tid, r in group.items()}
    assert set(flat) == set(dag.order()) and {r.status for r in flat.values()} == {"ran"}
    assert {tid: r.outputs for tid, r in flat.items()} == {r.id: r.outputs for r in plain.tasks}


def test_groups_of_many_graphs_are_batched_per_stage_and_give_the_same_bundle(tmp_path):
    """On a cluster of ``slots`` worker threads, the same steps of different graphs are merged into at most
    BATCHES_PER_SLOT * slots batches (fewer scheduler tasks); run by hand they still give the plain bundle."""
    built = models.shared(tmp_path / "shared")
    plain = build(load_spec(built.spec, cache=str(tmp_path / "plain"), output=str(tmp_path / "plain.bundle")),
                  scheduler="sync")
    specs = [load_spec(built.spec, cache=str(tmp_path / "batched"), output=str(tmp_path / "batched.bundle"))]
    _, dag, ctxs = prepare(specs)
    groups, _ = fuse(dag, list(dag.order()))
    merged, group_of = batched(dag, groups, slots=1)
    graphs = {dag.tasks[t].graph for t in dag.order()} - {None}
    assert len(graphs) == 5 > BATCHES_PER_SLOT
    per_shape = Counter(tuple(dict.fromkeys(steps(dag, g.ids))) for g in merged)
    assert per_shape[("parse", "parse.weights")] == per_shape[("formats", "tiling", "codegen")] == BATCHES_PER_SLOT - 1
    assert sorted(t for g in merged for t in g.ids) == sorted(dag.order())  # every task once
    position = {t: i for i, t in enumerate(dag.order())}
    assert all([position[t] for t in g.ids] == sorted(position[t] for t in g.ids) for g in merged)
    graph, _ = group_graph(dag, list(dag.order()), {}, ctxs, workers=[("tcp://w", 1)])
    assert len(graph) == len(merged) < len(groups)
    results: dict = {}
    for key, task in graph.items():  # dask Task objects: called with the results of the keys they reference
        assert task.func is execute_group
        results[key] = task({dep: results[dep] for dep in task.dependencies})
    flat = {tid: r for group in results.values() for tid, r in group.items()}
    assert {tid: r.outputs for tid, r in flat.items()} == {r.id: r.outputs for r in plain.tasks}
    assert all(group_of[t].key in graph for t in dag.order())


@pytest.mark.parametrize("n, slots", [(130, 2), (34, 2), (5, 1), (514, 2), (1, 2), (8, 4)])
def test_batches_shrink_so_a_stage_ends_in_short_ones(n, slots):
    sizes = batch_sizes(n, slots)
    uniform = -(-n // (BATCHES_PER_SLOT * slots))
    assert sum(sizes) == n and all(s > 0 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)  # largest first
    assert sizes[-1] <= uniform and max(sizes) <= max(1, -(-n // (2 * slots)))
    assert len(sizes) <= 3 * BATCHES_PER_SLOT * slots  # a few more scheduler tasks than equal batches, not many


def test_on_two_workers_every_codegen_batch_waits_for_every_formats_batch_and_gives_the_same_bundle(tmp_path):
    """formats.weights reads every graph's formats: run first, it builds beside the codegen instead of after it."""
    built = models.shared(tmp_path / "shared")
    plain = build(load_spec(built.spec, cache=str(tmp_path / "plain"), output=str(tmp_path / "plain.bundle")),
                  scheduler="sync")
    _, dag, ctxs = prepare([load_spec(built.spec, cache=str(tmp_path / "c"), output=str(tmp_path / "c.bundle"))])
    graph, notes = group_graph(dag, list(dag.order()), {}, ctxs, workers=[("tcp://a", 1), ("tcp://b", 1)])
    first = {key: dag.tasks[key].step for key in graph}
    formats = {key for key, step in first.items() if step == "formats"}
    later = {key for key, step in first.items() if step == "tiling"}
    assert formats and later and all(formats <= set(graph[key].dependencies) for key in later)
    assert all(notes[f]["priority"] > notes[t]["priority"] for f in formats for t in later)
    results: dict = {}
    while len(results) < len(graph):  # run by hand in dependency order: the graph has no cycle
        ready = [k for k, task in graph.items() if k not in results and set(task.dependencies) <= set(results)]
        assert ready
        for key in ready:
            results[key] = graph[key]({dep: results[dep] for dep in graph[key].dependencies})
    flat = {tid: r for group in results.values() for tid, r in group.items()}
    assert {tid: r.outputs for tid, r in flat.items()} == {r.id: r.outputs for r in plain.tasks}
