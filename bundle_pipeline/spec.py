"""bundle.yaml -> validated BundleSpec; errors name the file, key and line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import BundleIOError, OptionInvalid, ParamInvalid
from .files import TooLarge, describe_error, read_regular
from .guard import check_cache_url
from .options import validate_options
from .targets import get_target

ROLES = ("init", "update", "infer")
TOP_KEYS = {"name", "target", "output", "cache", "variables", "graphs"}
GRAPH_KEYS = {"name", "role", "model", "options", "assign"}
MAX_SPEC_BYTES = 16 << 20  # a spec is a few lines; this bounds what reading a wrong file costs
MAX_SPEC_NODES = 100_000  # YAML nodes after alias expansion (a "billion laughs" spec is refused, not expanded)
MAX_SPEC_NESTING = 100  # [ and { levels: PyYAML's scanner is quadratic in them (50k levels: minutes)


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a bundle: its model source is a path or serialized ONNX bytes."""

    name: str
    role: str
    model: str | bytes
    options: dict[str, str] = field(default_factory=dict)
    where: str = field(default="", compare=False)  # file:line of its entry, for error messages
    assign: dict[str, str] = field(default_factory=dict)  # output -> variable it writes (init/update graphs)


@dataclass(frozen=True)
class BundleSpec:
    name: str
    target: str
    output: str
    cache: str
    graphs: tuple[GraphSpec, ...]
    variables: tuple[str, ...] | None = None
    spec_path: str | None = None

    @property
    def zipped(self) -> bool:
        return self.output.endswith(".zip")


class _TooDeep(Exception):
    """The YAML nests [ ] / { } deeper than MAX_SPEC_NESTING."""


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping so errors can point at it, and refuses deep [ ] / { }
    nesting as it scans (PyYAML's scanner is quadratic in the flow level: 50k levels take minutes)."""

    def fetch_flow_collection_start(self, token_class: type) -> None:
        if self.flow_level >= MAX_SPEC_NESTING:
            raise _TooDeep(f"the YAML nests more than {MAX_SPEC_NESTING} levels of [ ] / {{ }} (line "
                           f"{self.get_mark().line + 1})")
        super().fetch_flow_collection_start(token_class)


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_spec(path: str | os.PathLike, target: str | None = None, output: str | None = None,
              cache: str | None = None) -> BundleSpec:
    """Read and validate a bundle.yaml; CLI overrides win over the file's values."""
    path = Path(path)
    try:
        text = read_regular(path, MAX_SPEC_BYTES).decode("utf-8")
    except TooLarge as err:
        raise ParamInvalid(f"not a bundle spec: {describe_error(err)}", str(path)) from None
    except OSError as err:
        raise BundleIOError(f"cannot read spec: {describe_error(err)}", str(path)) from None
    except UnicodeDecodeError:
        raise ParamInvalid("not a bundle spec: the file is not UTF-8 text", str(path)) from None
    try:
        raw = _parse_yaml(text, str(path))
    except RecursionError:
        raise ParamInvalid("the YAML nests too deeply to be a bundle spec", str(path)) from None
    except _TooDeep as err:
        raise ParamInvalid(str(err), str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ParamInvalid(f"not valid YAML: {getattr(err, 'problem', err)}", f"{path}{line}") from None
    if not isinstance(raw, dict):
        raise ParamInvalid("a bundle spec must be a mapping with 'name' and 'graphs'", str(path))
    return _build_spec(raw, path, target, output, cache)


def _parse_yaml(text: str, where: str) -> Any:
    """Compose the YAML node graph, refuse it if aliases would expand it past MAX_SPEC_NODES (or into a cycle),
    then construct it: an alias bomb costs its text, never its expansion."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    sizes: dict[int, int] = {}  # id(node) -> nodes it expands to; aliases share the node object
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_SPEC_NODES:
                raise ParamInvalid(f"the YAML expands to more than {MAX_SPEC_NODES} values through aliases "
                                   f"(&anchor / *alias); write the values out", where)
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ParamInvalid("the YAML has a recursive alias (a value that contains itself)", where)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _build_spec(raw: dict, path: Path, target: str | None, output: str | None,
                cache: str | None) -> BundleSpec:
    where = f"{path}:{raw.get('__line__', 1)}"
    _check_keys(raw, TOP_KEYS, where)
    base = path.parent.resolve()
    name = _bundle_name(_text(raw, "name", where, default=path.stem), where)
    graphs_raw = raw.get("graphs")
    if not isinstance(graphs_raw, list) or not graphs_raw:
        raise ParamInvalid("'graphs' must be a non-empty list of {name, role, model, options, assign}", where)
    graphs = tuple(_graph(g, base, path) for g in graphs_raw)
    variables = raw.get("variables")
    if variables is not None and not (isinstance(variables, list) and all(isinstance(v, str) for v in variables)):
        raise ParamInvalid("'variables' must be a list of tensor names", where)
    out = output or _text(raw, "output", where, default=f"build/{name}.bundle")
    cache_dir = cache or _text(raw, "cache", where, default=".bundle-cache")
    check_cache_url(cache_dir, "--cache" if cache else where)
    spec = BundleSpec(
        name=name,
        target=target or _text(raw, "target", where, default="cpu"),
        output=_resolve(base, out),
        cache=cache_dir if "://" in cache_dir else _resolve(base, cache_dir),
        graphs=graphs,
        variables=tuple(variables) if variables is not None else None,
        spec_path=str(path.resolve()),
    )
    check_graph_set(spec.graphs, str(path))
    get_target(spec.target)  # an unknown target fails here, naming the accepted ones
    return spec


def _graph(raw: Any, base: Path, path: Path) -> GraphSpec:
    if not isinstance(raw, dict):
        raise ParamInvalid("each entry of 'graphs' must be a mapping {name, role, model, options, assign}",
                           str(path))
    where = f"{path}:{raw.get('__line__', 1)}"
    _check_keys(raw, GRAPH_KEYS, where)
    model = _text(raw, "model", where)
    name = _text(raw, "name", where, default=Path(model).stem)
    role = _text(raw, "role", where, default="infer")
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise ParamInvalid(f"graph {name}: 'options' must be a mapping", where)
    options = {k: v for k, v in options.items() if k != "__line__"}
    assign = raw.get("assign") or {}
    if not isinstance(assign, dict):
        raise ParamInvalid(f"graph {name}: 'assign' must be a mapping {{OUTPUT: VARIABLE}}", where)
    assign = {k: v for k, v in assign.items() if k != "__line__"}
    return GraphSpec(name=name, role=role, model=_resolve(base, model), options=options, where=where,
                     assign=assign)


def check_graph_set(graphs: tuple[GraphSpec, ...] | list[GraphSpec], where: str) -> None:
    """Roles, unique names, at most one init, at least one infer, valid options only on infer graphs."""
    seen: set[str] = set()
    for g in graphs:
        at = g.where or where
        if g.role not in ROLES:
            raise ParamInvalid(f"graph {g.name}: role {g.role!r} is not one of {', '.join(ROLES)}", at)
        if g.name in seen:
            raise ParamInvalid(f"duplicate graph name {g.name!r}; graph names must be unique", at)
        seen.add(g.name)
        if g.role != "infer" and g.options:
            raise OptionInvalid(f"graph {g.name}: options are accepted only on infer graphs "
                                f"(got {', '.join(sorted(g.options))} on a {g.role} graph)", at)
        if g.role == "infer":
            validate_options(g.options, f"{at}: graph {g.name}")
        check_assign(g, at)
    roles = [g.role for g in graphs]
    if roles.count("init") > 1:
        raise ParamInvalid(f"at most one init graph is allowed, got {roles.count('init')}", where)
    if "infer" not in roles:
        raise ParamInvalid("a bundle needs at least one infer graph", where)


def check_assign(g: GraphSpec, where: str) -> None:
    """``assign`` maps output names to variable names (strings), on init and update graphs only."""
    if not isinstance(g.assign, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                 for k, v in g.assign.items()):
        raise ParamInvalid(f"graph {g.name}: 'assign' must map output names to variable names "
                           f"{{OUTPUT: VARIABLE}}, got {g.assign!r}", where)
    if g.assign and g.role == "infer":
        raise ParamInvalid(f"graph {g.name}: 'assign' is accepted only on init and update graphs (an infer graph "
                           f"writes no variables)", where)


def _check_keys(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(k for k in raw if k != "__line__" and k not in allowed)
    if unknown:
        raise ParamInvalid(f"unknown key {unknown[0]!r}; accepted keys: {', '.join(sorted(allowed))}", where)


def _text(raw: dict, key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if value is None:
        raise ParamInvalid(f"missing required key {key!r}", where)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ParamInvalid(f"key {key!r} must be a string", where)
    return str(value)


def _bundle_name(name: str, where: str) -> str:
    """A bundle name is one path component: the default output is build/<name>.bundle beside the spec."""
    if name in ("", ".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        raise ParamInvalid(f"bundle name {name!r} must be a plain name (no path separators, not '.' or '..', "
                           f"printable)", where)
    return name


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)
