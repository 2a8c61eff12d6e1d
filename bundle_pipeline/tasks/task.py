"""Task: a stage applied to content-addressed inputs; its key is a hash of everything it reads.

A task never sees dask. ``execute`` is a constructive trace with early cutoff (Build Systems a la
Carte): the key hashes the stage name and VERSION, the target fingerprint, the parameters the stage
reads and the *content hashes* of its inputs (never upstream task keys). A key found in the cache's
``actions/`` area returns the recorded output hashes without running; so when an upstream task re-runs
and yields the same bytes, everything downstream hits.

State kept: none in memory; the record of each run lives in the cache (``actions/<key>``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..hashing import hash_json


@dataclass(frozen=True)
class Dep:
    """Input ``name`` of a task is output ``output`` of task ``task``."""

    name: str
    task: str
    output: str


@dataclass(frozen=True)
class Task:
    id: str
    bundle: str  # the bundle (spec name) it belongs to: selects its BuildContext
    stage: str  # parse | dedupe | formats | tiling | codegen | pack
    step: str  # the function in tasks.steps that runs it (formats has two: bundle-level and per graph)
    version: str
    graph: str | None
    deps: tuple[Dep, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, hash=False)  # in the key: what the stage reads
    context: dict[str, Any] = field(default_factory=dict, hash=False)  # not in the key: paths, labels


@dataclass
class TaskResult:
    id: str
    stage: str
    graph: str | None
    key: str
    outputs: dict[str, str]  # output name -> content hash (objects/ or tensors/)
    status: str  # "ran" | "cached"
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict:
        return {"id": self.id, "stage": self.stage, "graph": self.graph, "status": self.status,
                "seconds": round(self.seconds, 6)}


def task_key(task: Task, inputs: dict[str, str], target_fingerprint: str) -> str:
    """hash(stage, VERSION, target, params, input content hashes)."""
    return hash_json({"stage": task.step, "version": task.version, "target": target_fingerprint,
                      "params": task.params, "inputs": dict(sorted(inputs.items()))})


def input_hashes(task: Task, upstream: dict[str, TaskResult]) -> dict[str, str]:
    return {dep.name: upstream[dep.task].outputs[dep.output] for dep in task.deps}


def timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start
