"""The package's layering, read from the source: who may import whom, no import circle, no oversized module.

Every ``import`` / ``from ... import`` in every module of ``bundle_pipeline`` counts: module level, inside
functions (lazy imports) and under ``if TYPE_CHECKING:``; relative imports are resolved. Layers, lowest first
(issue 15; ``docs/architecture.md`` draws them):

- **low**: what everything may use: errors, dtypes, files, layouts, hashing, formats, program, options,
  guard, feeds, zarr_plain, spec, tables, ``kernels/`` (op semantics, for folding and the runtime), ``targets/``
  (target descriptions and capability predicates such as ``targets.npu.supports``). Imports only low.
- **ir**: the graph IR and ONNX import (folding calls ``kernels`` directly). low + ir.
- **stages**: pure compile stages, and ``split.py`` (which cuts graphs with ir). low + ir + stages.
- **cache**: the content-addressed store. low + cache.
- **tasks**: stage + cache glue. low, ir, stages, cache, tasks.
- **pipeline**: DAG, scheduling, reports. Everything above plus pipeline.
- **runtime**: loads and runs bundles. low + runtime only: it never sees the compiler.
- **top**: api, cli, inspect, backend and the package itself: may import anything.

Nothing below ``top`` imports ``runtime``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "bundle_pipeline"
MAX_LINES = 500  # aim for <= 400; over 500 a module is doing more than one job

LOW_MODULES = ("errors", "dtypes", "files", "layouts", "hashing", "formats", "program", "options", "guard", "feeds",
               "zarr_plain", "spec", "spec_yaml", "yaml_memo", "tables",
               "threads")
LOW_PACKAGES = ("kernels", "targets")
TOP_MODULES = ("api", "cli", "inspect", "backend", "__main__")
LAYER_PACKAGES = ("ir", "stages", "cache", "tasks", "pipeline", "runtime")
LAYER_OF_MODULE = {"split": "stages"}  # top-level modules that sit in a layer other than low/top
ALLOWED = {
    "low": {"low"},
    "ir": {"low", "ir"},
    "stages": {"low", "ir", "stages"},
    "cache": {"low", "cache"},
    "tasks": {"low", "ir", "stages", "cache", "tasks"},
    "pipeline": {"low", "ir", "stages", "cache", "tasks", "pipeline"},
    "runtime": {"low", "runtime"},
    "top": {"low", "ir", "stages", "cache", "tasks", "pipeline", "runtime", "top"},
}
HOW_TO_FIX = {
    "runtime": "the build side must not depend on the runtime: move what both need into the low layer "
               "(formats.py, kernels/, targets/, program.py) and import it from there",
    "ir": "the runtime and the cache must not depend on the compiler's IR: move what both need into the low layer "
          "(program.py for the program encoding, hashing.py, dtypes.py) and import it from there",
}

@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (before its imported names are looked at)."""
    if node.level == 0:
        return node.module or ""
    is_package = modules()[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str) -> Iterator[Import]:
    """Every import of a bundle_pipeline module by ``name``, at any depth of its syntax tree."""
    known = modules()
    tree = ast.parse(known[name].read_text(), filename=str(known[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            # "from pkg import mod" imports the module pkg.mod; "from pkg import name" imports pkg itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            while target and target not in known:  # "import a.b.c" where c is a name: the nearest module
                target = target.rpartition(".")[0]
            if target.startswith("bundle_pipeline") and target != name:
                yield Import(name, target, node.lineno)


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(i for name in modules() for i in imports_of(name))


def layer(name: str) -> str:
    parts = name.split(".")[1:]
    if not parts or parts[0] in TOP_MODULES:
        return "top"
    if parts[0] in LOW_MODULES or parts[0] in LOW_PACKAGES:
        return "low"
    if parts[0] in LAYER_PACKAGES:
        return parts[0]
    if parts[0] in LAYER_OF_MODULE:
        return LAYER_OF_MODULE[parts[0]]
    raise AssertionError(f"{name} is in no layer: add it to LOW_MODULES, TOP_MODULES or LAYER_OF_MODULE in "
                         f"{Path(__file__).name} (and to the layer picture in docs/architecture.md)")


def where(imp: Import) -> str:
    return f"{modules()[imp.importer].relative_to(PACKAGE.parent)}:{imp.line}"


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_modules_import_only_their_own_layer_or_lower():
    problems = []
    for imp in all_imports():
        src, dst = layer(imp.importer), layer(imp.imported)
        if dst in ALLOWED[src]:
            continue
        fix = HOW_TO_FIX.get(dst, f"move the code {imp.importer} needs down into a layer '{src}' may import, or move "
                                  f"{imp.importer} up")
        problems.append(f"{where(imp)}: {imp.importer} (layer '{src}') imports {imp.imported} (layer '{dst}'); "
                        f"'{src}' may import only {', '.join(sorted(ALLOWED[src]))}. Fix: {fix}.")
    assert not problems, "layering violations (see tests/test_layering.py's docstring):\n" + "\n".join(problems)


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(modules())
    for imp in all_imports():
        graph.add_edge(imp.importer, imp.imported, line=imp.line)
    return graph


def describe_circle(graph: nx.DiGraph, members: set[str]) -> str:
    cycle = nx.find_cycle(graph.subgraph(members))
    return " -> ".join(f"{a} (line {graph.edges[a, b]['line']})" for a, b in cycle) + f" -> {cycle[0][0]}"


def test_no_import_circle():
    graph = import_graph()
    circles = [set(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    problems = [f"import circle: {describe_circle(graph, c)}. Fix: move what the modules share into a module both "
                f"import (lower in the layering), or pass it in as an argument; a lazy import inside a function "
                f"still counts." for c in circles]
    assert not problems, "\n".join(problems)


def test_no_module_over_the_size_limit():
    problems = []
    for path in modules().values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{path.relative_to(PACKAGE.parent)} has {lines} lines (limit {MAX_LINES}, aim for 400). "
                            f"Fix: split it by job into modules of one purpose each (as kernels/ is split by op "
                            f"family) and update its importers.")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_lazy_relative_and_package_imports():
    """The parser itself: a lazy import inside a function, ``from .. import module`` and ``from . import name``."""
    imported = {(i.importer, i.imported) for i in all_imports()}
    assert ("bundle_pipeline.stages.format_pass", "bundle_pipeline.targets.npu") in imported  # inside a function
    assert ("bundle_pipeline.runtime.executor", "bundle_pipeline.formats") in imported  # from .. import formats
    assert ("bundle_pipeline.runtime.npu.vector", "bundle_pipeline.kernels") in imported  # from ...kernels import f
    assert ("bundle_pipeline", "bundle_pipeline.api") in imported  # the package's lazy API
