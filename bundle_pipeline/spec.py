"""bundle.yaml -> validated BundleSpec; errors name the file, key and line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleIOError, OptionInvalid, ParamInvalid
from .files import TooLarge, describe_error, read_regular
from .guard import check_cache_url
from .options import validate_options
from .targets import get_target
from .yaml_memo import remembered

ROLES = ("init", "update", "infer")
TOP_KEYS = {"name", "target", "output", "cache", "variables", "graphs"}
GRAPH_KEYS = {"name", "role", "model", "options", "assign"}
MAX_SPEC_BYTES = 16 << 20  # a spec is a few lines; this bounds what reading a wrong file costs


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
    raw = _parsed(text, path)
    if not isinstance(raw, dict):
        raise ParamInvalid("a bundle spec must be a mapping with 'name' and 'graphs'", str(path))
    return _build_spec(raw, path, target, output, cache)


def _parsed(text: str, path: Path) -> Any:
    """The YAML's value, remembered per text (``yaml_memo``): the remembered value goes through the same checks."""

    def parse(text: str) -> Any:
        from .spec_yaml import parse  # PyYAML: only for a spec text this machine has not parsed before

        return parse(text, str(path))

    return remembered("spec", text, parse)


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
