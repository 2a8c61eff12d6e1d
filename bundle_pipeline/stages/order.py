"""The stages of a build, in order: the one place that names the order (see ``stage.py``).

A stage comes after every stage it reads from. The task factory makes the tasks in this order, running
consecutive per-graph stages graph by graph (parse, parse.weights of one graph, then the next graph's), and
the progress display lists stages in it. Consumers read ``ORDER`` when they run (``ordered``, ``named``), so a
test may insert a stage by patching it.
"""

from __future__ import annotations

from . import (
    codegen,
    dedupe,
    dedupe_storage,
    formats,
    formats_assign,
    formats_cost,
    pack,
    parse,
    parse_weights,
    tiling,
    weight_formats,
)
from .stage import Stage

ORDER: tuple[Stage, ...] = (
    parse.STAGE, parse_weights.STAGE, dedupe.STAGE, dedupe_storage.STAGE, formats_cost.STAGE, formats_assign.STAGE,
    formats.STAGE, tiling.STAGE, codegen.STAGE, weight_formats.STAGE, pack.STAGE,
)


def ordered() -> tuple[Stage, ...]:
    return ORDER


def named(name: str) -> Stage:
    """The stage a task's step names (KeyError for none: a factory bug, or a cache made by another version)."""
    for stage in ORDER:
        if stage.name == name:
            return stage
    raise KeyError(name)


def groups() -> tuple[str, ...]:
    """The stage groups (``Stage.group``) in build order, each once: the rows of a progress display."""
    return tuple(dict.fromkeys(stage.group for stage in ORDER))
