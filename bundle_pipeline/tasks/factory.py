"""Task factory: one BundleSpec -> the tasks of its stages, all derived from the declarations (``stages/order``).

Per stage: one task per graph (``<bundle>/<stage>:<graph>``) or one for the bundle (``<bundle>/<stage>``); its
dependencies from the stage's ``inputs``, its params (in the key) from the words it declares (``PARAMS``), its
context (not in the key) from what it touches: the model file for a stage that reads the user's files, the
output path for the stage that writes the bundle.
"""

from __future__ import annotations

from collections.abc import Callable

from ..options import OPTIONS, options_for, validate_options
from ..spec import BundleSpec, GraphSpec
from ..stages import order
from ..stages.stage import BUNDLE, GRAPH, Stage
from .task import Dep, Task

_DEFAULTS = {key: default for key, (_, default, _) in OPTIONS.items()}


def _options(g: GraphSpec) -> dict[str, str]:
    return validate_options(g.options, f"graph {g.name}") if g.role == "infer" else {}


def _assign(g: GraphSpec) -> dict:
    return {"assign": dict(sorted(g.assign.items()))} if g.assign else {}


# PARAMS word -> (stage, spec, graph or None) -> the params it adds
_PARAMS: dict[str, Callable[[Stage, BundleSpec, GraphSpec | None], dict]] = {
    "target": lambda st, spec, g: {"target": spec.target},
    "role": lambda st, spec, g: {"role": g.role},
    "bundle": lambda st, spec, g: {"name": spec.name},
    "graph names": lambda st, spec, g: {"graphs": [x.name for x in spec.graphs]},
    "graph roles": lambda st, spec, g: {"graphs": [{"name": x.name, "role": x.role} for x in spec.graphs]},
    "graph options": lambda st, spec, g: {"graphs": [{"name": x.name, "role": x.role, "options": _options(x)}
                                                     for x in spec.graphs]},
    "variables": lambda st, spec, g: {"variables": list(spec.variables) if spec.variables else None},
    "assigns": lambda st, spec, g: {"assign": {x.name: _assign(x)["assign"] for x in spec.graphs if x.assign}},
    "assign": lambda st, spec, g: _assign(g),
    "options": lambda st, spec, g: {"options": options_for(st.name, _options(g))},
    "option values": lambda st, spec, g: options_for(st.name, _options(g) or _DEFAULTS),
}


def _source(g: GraphSpec) -> dict:
    return {"bytes": g.model} if isinstance(g.model, bytes) else {"path": g.model}


def _context(stage: Stage, spec: BundleSpec, g: GraphSpec | None) -> dict:
    if stage.reads is not None:
        where = f"graph {g.name} ({g.model})" if isinstance(g.model, str) else f"graph {g.name}"
        return {"source": _source(g), "where": where}
    return {"out": spec.output} if stage.writes_bundle else {}


def _deps(stage: Stage, spec: BundleSpec, g: GraphSpec | None) -> list[Dep]:
    deps = []
    for inp in stage.inputs:
        upstream = order.named(inp.stage)
        base = f"{spec.name}/{upstream.name}"
        if upstream.scope == BUNDLE:
            deps.append(Dep(inp.key, base, inp.output))
        elif stage.scope == GRAPH:
            deps.append(Dep(inp.key, f"{base}:{g.name}", inp.output))
        else:
            deps.extend(Dep(f"{inp.key}:{x.name}", f"{base}:{x.name}", inp.output) for x in spec.graphs)
    return deps


def make_task(stage: Stage, spec: BundleSpec, g: GraphSpec | None) -> Task:
    params: dict = {}
    for word in stage.params:
        params.update(_PARAMS[word](stage, spec, g))
    tid = f"{spec.name}/{stage.name}:{g.name}" if g else f"{spec.name}/{stage.name}"
    return Task(tid, spec.name, stage.group, stage.name, stage.version, g.name if g else None,
                tuple(_deps(stage, spec, g)), params, _context(stage, spec, g))


def bundle_tasks(spec: BundleSpec) -> list[Task]:
    """All tasks of one bundle in dependency order (the stage order; consecutive per-graph stages graph by graph).

    The stages and what each reads and writes: ``docs/tasks.md``.
    """
    tasks: list[Task] = []
    run: list[Stage] = []  # consecutive per-graph stages not yet made

    def flush() -> None:
        tasks.extend(make_task(stage, spec, g) for g in spec.graphs for stage in run)
        run.clear()

    for stage in order.ordered():
        if stage.scope == GRAPH:
            run.append(stage)
        else:
            flush()
            tasks.append(make_task(stage, spec, None))
    flush()
    return tasks
