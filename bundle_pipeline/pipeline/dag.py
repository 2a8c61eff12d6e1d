"""The task graph of a run: tasks in dependency order, edges = data dependencies.

Planning walks it on every run, a no-op included, so it is plain dicts: ``networkx`` (a 0.2 s import)
loads only for the analyses that need graph algorithms (``nx``: drawing, ancestors of a lost entry).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from ..tasks.task import Task

if TYPE_CHECKING:
    import networkx as nx


class TaskGraph:
    """Tasks by id in a topological order (each task after every task it reads from)."""

    def __init__(self, tasks: list[Task]):
        self.tasks: dict[str, Task] = {}
        self._preds: dict[str, list[str]] = {}
        for task in tasks:
            if task.id in self.tasks:
                raise ValueError(f"two tasks have the id {task.id!r}")  # a factory bug, not user input
            preds = list(dict.fromkeys(dep.task for dep in task.deps))  # in the order the deps list them
            unknown = [p for p in preds if p not in self.tasks]
            if unknown:  # listing dependencies first also rules out cycles
                raise ValueError(f"task {task.id!r} depends on {unknown[0]!r}, which is not listed before it")
            self.tasks[task.id] = task
            self._preds[task.id] = preds

    def __len__(self) -> int:
        return len(self.tasks)

    def order(self) -> Iterator[str]:
        """Task ids in a topological order."""
        return iter(self.tasks)

    def predecessors(self, tid: str) -> list[str]:
        """The tasks ``tid`` reads outputs of, in the order its deps name them."""
        return self._preds[tid]

    def edges(self) -> Iterator[tuple[str, str]]:
        return ((p, tid) for tid, preds in self._preds.items() for p in preds)

    @cached_property
    def nx(self) -> nx.DiGraph:
        """The same graph as a networkx DiGraph (node attribute ``task``)."""
        import networkx as nx

        dag = nx.DiGraph()
        for tid, task in self.tasks.items():
            dag.add_node(tid, task=task)
        dag.add_edges_from(self.edges())
        return dag


def build_dag(tasks: list[Task]) -> TaskGraph:
    return TaskGraph(tasks)
