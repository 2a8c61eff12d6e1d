"""dedupe: the bundle's variable table (fusion by name, conflicts) and its constant pool (same bytes once)."""

from __future__ import annotations

import re

from ..errors import GraphInvalid, ParamInvalid, VariableConflict

NAME = "dedupe"
VERSION = "1"


def run(graphs: list[dict], params: dict) -> tuple[dict, dict]:
    """graphs: [{name, role, structure, weights: {tensor: hash}}] in spec order; params: {variables}.

    Returns ``(variables, storage)``. ``variables`` is structural only (names, types, readers, writers,
    where the initial value comes from), so format selection keys on it and skips weight-only edits.
    ``storage`` holds the values: the constant pool, each graph's weight bindings and initial values.
    """
    names = _variable_names(graphs, params.get("variables"))
    variables = {name: _variable(name, graphs) for name in sorted(names)}
    return variables, _storage(graphs, variables)


def _reads(g: dict) -> set[str]:
    return set(g["structure"]["inputs"]) | set(g["structure"]["weights"])


def _writes(g: dict) -> set[str]:
    return set(g["structure"]["outputs"]) if g["role"] in ("init", "update") else set()


def _variable_names(graphs: list[dict], declared: list[str] | None) -> set[str]:
    names = set(declared or [])
    everywhere = set().union(*(_reads(g) | set(g["structure"]["outputs"]) | set(g["structure"]["consts"])
                               for g in graphs))
    for name in sorted(names - everywhere):
        raise ParamInvalid(f"variable {name!r} is listed in 'variables' but no graph reads or writes it",
                           "variables")
    for g in graphs:
        for name in _writes(g):
            if any(name in _reads(h) for h in graphs if h is not g):
                names.add(name)
    for name in sorted(names):  # a dtype/shape conflict is the real problem, whatever else is wrong with the name
        _same_type_everywhere(name, graphs)
    for g in graphs:
        consts = g["structure"]["consts"]
        for name in sorted(names & set(consts)):
            raise GraphInvalid(f"variable {name!r} is a small integer constant that steers shapes in graph "
                               f"{g['name']}; it cannot be a variable", f"graph {g['name']}")
        if g["role"] == "infer":
            for name in sorted(names & set(g["structure"]["outputs"])):
                raise GraphInvalid(f"infer graph {g['name']} writes variable {name!r}; only init and update "
                                   f"graphs may write variables (rename the output)", f"graph {g['name']}")
    return names


def _same_type_everywhere(name: str, graphs: list[dict]) -> None:
    """VARIABLE_CONFLICT naming both graphs when ``name`` has two types, as a read, a write or a constant."""
    typed = [(g["name"], g["structure"]["types"][name]) for g in graphs if name in g["structure"]["types"]
             and (name in _reads(g) or name in _writes(g) or name in g["structure"]["consts"])]
    for graph, t in typed[1:]:
        if t != typed[0][1]:
            raise VariableConflict(f"variable {name!r} is {_show(typed[0][1])} in graph {typed[0][0]} but {_show(t)} "
                                   f"in graph {graph}", f"variable {name}")


def _variable(name: str, graphs: list[dict]) -> dict:
    readers = [g["name"] for g in graphs if name in _reads(g)]
    writers = [g["name"] for g in graphs if name in _writes(g)]
    typed = [(g["name"], g["structure"]["types"][name]) for g in graphs
             if name in g["structure"]["types"] and (name in _reads(g) or name in _writes(g))]
    first_graph, first_type = typed[0]
    for graph, t in typed[1:]:
        if t != first_type:
            raise VariableConflict(
                f"variable {name!r} is {_show(first_type)} in graph {first_graph} but {_show(t)} in graph {graph}",
                f"variable {name}")
    roles = {g["name"]: g["role"] for g in graphs}
    has_initializer = [g["name"] for g in graphs if name in g["structure"]["weights"]]
    if any(roles[w] == "init" for w in writers):
        source = "init"
    elif has_initializer:
        source = "initializer"
    elif writers:
        source = "none"  # unset until an update graph runs
    else:
        raise GraphInvalid(f"variable {name!r} is read by {', '.join(readers)} but never written by an init or "
                           f"update graph nor given an initializer value", f"variable {name}")
    return {"shape": first_type["shape"], "dtype": first_type["dtype"], "readers": readers, "writers": writers,
            "source": source}


def _storage(graphs: list[dict], variables: dict) -> dict:
    """Pool every distinct tensor once, named after its first user so names survive weight edits."""
    constants: dict[str, dict] = {}
    by_hash: dict[str, str] = {}
    used_ids: set[str] = set()

    def pool(graph: str, tensor: str, digest: str, ttype: dict) -> str:
        if digest not in by_hash:
            cid = _unique_id(f"{graph}.{tensor}", used_ids)
            by_hash[digest] = cid
            constants[cid] = {"hash": digest, "shape": ttype["shape"], "dtype": ttype["dtype"]}
        return by_hash[digest]

    bindings: dict[str, dict[str, str]] = {}
    initial: dict[str, str] = {}
    ordered = sorted(graphs, key=lambda g: g["role"] != "infer")  # infer initializers win as initial values
    for g in ordered:
        types = g["structure"]["types"]
        for tensor, digest in sorted(g["weights"].items()):
            if tensor in variables:
                if variables[tensor]["source"] == "initializer" and tensor not in initial:
                    initial[tensor] = pool(g["name"], tensor, digest, types[tensor])
            else:
                bindings.setdefault(g["name"], {})[tensor] = pool(g["name"], tensor, digest, types[tensor])
    return {"constants": dict(sorted(constants.items())), "bindings": bindings, "initial": initial}


def _unique_id(raw: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip("._") or "t"
    cid, n = base, 1
    while cid in used:
        n += 1
        cid = f"{base}~{n}"
    used.add(cid)
    return cid


def _show(t: dict) -> str:
    return f"{t['dtype']}[{','.join(map(str, t['shape']))}]"
