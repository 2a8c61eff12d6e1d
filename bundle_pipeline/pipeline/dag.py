"""Task lists -> a networkx DiGraph (edge = data dependency) and its dask graph."""

from __future__ import annotations

import networkx as nx

from ..tasks.task import Task


def build_dag(tasks: list[Task]) -> nx.DiGraph:
    dag = nx.DiGraph()
    for task in tasks:
        dag.add_node(task.id, task=task)
    for task in tasks:
        for dep in task.deps:
            dag.add_edge(dep.task, task.id)
    if not nx.is_directed_acyclic_graph(dag):
        raise ValueError(f"task graph has a cycle: {nx.find_cycle(dag)}")  # a factory bug, not user input
    return dag
