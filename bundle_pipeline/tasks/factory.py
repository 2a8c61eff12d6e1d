"""Task factories: one BundleSpec -> per-graph tasks (parse, formats, tiling, codegen) + bundle tasks."""

from __future__ import annotations

from ..options import options_for, validate_options
from ..spec import BundleSpec, GraphSpec
from .task import Dep, Task
from .versions import VERSIONS


def _task(bundle: str, step: str, graph: str | None, deps: list[Dep], params: dict,
          context: dict | None = None) -> Task:
    stage = step.split(".")[0]
    tid = f"{bundle}/{step}:{graph}" if graph else f"{bundle}/{step}"
    return Task(tid, bundle, stage, step, VERSIONS[step], graph, tuple(deps), params, context or {})


def _options(g: GraphSpec) -> dict[str, str]:
    return validate_options(g.options, f"graph {g.name}") if g.role == "infer" else {}


def _source(g: GraphSpec) -> dict:
    return {"bytes": g.model} if isinstance(g.model, bytes) else {"path": g.model}


def bundle_tasks(spec: BundleSpec) -> list[Task]:
    """All tasks of one bundle in dependency order; ids are ``<bundle>/<step>:<graph>`` or ``<bundle>/<step>``.

    Steps: parse (structure + weight refs from the ONNX file), parse.weights (weight table: reads
    external-data files only when they changed), dedupe, formats.cost (per graph: what each
    variable it reads costs in each format), formats.assign (bundle-level variable formats),
    formats, tiling, codegen (per graph), formats.weights (constants converted to their stored
    formats), pack.
    """
    b, target = spec.name, spec.target
    ids = {(stage, g.name): f"{b}/{stage}:{g.name}" for g in spec.graphs
           for stage in ("parse", "formats", "tiling", "codegen")}
    tasks: list[Task] = []
    for g in spec.graphs:
        opts = _options(g)
        where = f"graph {g.name} ({g.model})" if isinstance(g.model, str) else f"graph {g.name}"
        context = {"source": _source(g), "where": where}
        parse_options = options_for("parse", opts) if opts else {"input_shape": "", "out_nodes": ""}
        tasks.append(_task(b, "parse", g.name, [], {**parse_options, "role": g.role}, context))
        tasks.append(_task(b, "parse.weights", g.name, [Dep("refs", ids["parse", g.name], "refs")], {}, context))
    graph_list = [{"name": g.name, "role": g.role} for g in spec.graphs]
    interface_deps = [Dep(f"interface:{g.name}", ids["parse", g.name], "interface") for g in spec.graphs]
    weight_deps = [Dep(f"weights:{g.name}", f"{b}/parse.weights:{g.name}", "weights") for g in spec.graphs]
    dedupe_id, assign_id = f"{b}/dedupe", f"{b}/formats.assign"
    assign = {g.name: dict(sorted(g.assign.items())) for g in spec.graphs if g.assign}
    tasks.append(_task(b, "dedupe", None, interface_deps + weight_deps,
                       {"graphs": graph_list, "variables": list(spec.variables) if spec.variables else None,
                        "assign": assign}))
    variables_dep = Dep("variables", dedupe_id, "variables")
    for g in spec.graphs:
        tasks.append(_task(b, "formats.cost", g.name, [Dep("structure", ids["parse", g.name], "structure"),
                                                       variables_dep], {"target": target}))
    tasks.append(_task(b, "formats.assign", None,
                       [*(Dep(f"costs:{g.name}", f"{b}/formats.cost:{g.name}", "costs") for g in spec.graphs),
                        variables_dep], {"graphs": [g.name for g in spec.graphs], "target": target}))
    for g in spec.graphs:
        writes = {"assign": dict(sorted(g.assign.items()))} if g.assign else {}  # absent: keys as before assign
        tasks.append(_task(b, "formats", g.name, [Dep("structure", ids["parse", g.name], "structure"),
                                                  Dep("var_formats", assign_id, "var_formats")],
                           {"target": target, **writes}))
        tasks.append(_task(b, "tiling", g.name, [Dep("structure", ids["formats", g.name], "structure")],
                           {"target": target}))
        tasks.append(_task(b, "codegen", g.name, [Dep("structure", ids["formats", g.name], "structure"),
                                                  Dep("tiling", ids["tiling", g.name], "tiling"),
                                                  Dep("variables", dedupe_id, "variables")],
                           {"role": g.role, "options": options_for("codegen", _options(g)), "target": target,
                            **writes}))
    formatted = [Dep(f"weight_formats:{g.name}", ids["formats", g.name], "weight_formats") for g in spec.graphs]
    tasks.append(_task(b, "formats.weights", None, [*formatted, Dep("storage", dedupe_id, "storage"),
                                                    Dep("var_formats", assign_id, "var_formats")],
                       {"graphs": [g.name for g in spec.graphs]}))
    program_deps = [Dep(f"program:{g.name}", ids["codegen", g.name], "program") for g in spec.graphs]
    tasks.append(_task(b, "pack", None, [*program_deps, Dep("variables", dedupe_id, "variables"),
                                         Dep("var_formats", assign_id, "var_formats"),
                                         Dep("stored", f"{b}/formats.weights", "stored")],
                       {"name": b, "target": target,
                        "graphs": [{**g, "options": _options(spec.graphs[i])} for i, g in enumerate(graph_list)]},
                       {"out": spec.output}))
    return tasks
