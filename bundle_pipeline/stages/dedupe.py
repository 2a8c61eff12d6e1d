"""dedupe: the bundle's variable table (fusion by name, conflicts); ``dedupe.storage`` pools its constants."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import GraphInvalid, ParamInvalid, VariableConflict
from ..ir.steering import ir_steering
from .stage import BUNDLE, Input, Stage, StageContext

VERSION = "6"  # 2: steering variables refused / writes by assign / type conflicts first; 3, 4: merges of those;
# 5: reads graph interfaces; 6: the variable table alone (the constant pool is dedupe.storage's)


def interface(structure: dict) -> dict:
    """All dedupe reads of a graph's structure: its inputs, outputs, weights and small constants with their
    types, and why an input steers shapes. ``parse`` stores it apart from the structure, so dedupe reads a few
    kilobytes a graph, and is not re-run by an edit inside a graph that keeps its interface."""
    names = [*structure["inputs"], *structure["outputs"], *structure["weights"], *structure["consts"]]
    inputs = set(structure["inputs"])
    steering = ir_steering(structure) if inputs else {}
    return {"inputs": structure["inputs"], "outputs": structure["outputs"], "weights": structure["weights"],
            "consts": sorted(structure["consts"]),
            "types": {n: structure["types"][n] for n in sorted(set(names)) if n in structure["types"]},
            "steering": {n: why for n, why in sorted(steering.items()) if n in inputs}}


def run(graphs: list[dict], params: dict) -> tuple[dict, dict]:
    """graphs: [{name, role, interface, weights: {tensor: hash}}] in spec order (``structure`` in place of
    ``interface``: its interface is taken); params: {variables, assign} (``assign``: graph name ->
    {output: variable}, the spec's read-modify-write mappings).

    Returns ``(variables, storage)``. ``variables`` is structural only (names, types, readers, writers,
    where the initial value comes from), so format selection keys on it and skips weight-only edits.
    ``storage`` holds the values: the constant pool, each graph's weight bindings and initial values.
    """
    variables = variable_table(graphs, params)
    return variables, storage(graphs, variables)


def variable_table(graphs: list[dict], params: dict) -> dict:
    """``run``'s variables: what the graphs' interfaces and the spec say (weights need not be known yet)."""
    assign = params.get("assign") or {}
    graphs = [_indexed(g) for g in graphs]
    writes = {g["name"]: _write_map(g, assign.get(g["name"], {})) for g in graphs}
    touching = _touching(graphs, writes)
    names = _variable_names(graphs, writes, params.get("variables"), touching)
    _check_assigned(graphs, assign, names)
    return {name: _variable(name, touching.get(name, []), writes) for name in sorted(names)}


def _touching(graphs: list[dict], writes: dict[str, dict[str, str]]) -> dict[str, list[dict]]:
    """name -> the graphs that read, write or hold it as a small constant, in spec order: what a variable's checks
    look at, so they cost the graphs that use a name, not every graph of the bundle for every name."""
    touching: dict[str, list[dict]] = {}
    for g in graphs:
        for name in _reads(g) | set(g["structure"]["consts"]) | set(writes[g["name"]]):
            touching.setdefault(name, []).append(g)
    return touching


def _indexed(g: dict) -> dict:
    """``g`` with the sets the checks below look names up in, built once (a bundle has thousands of names)."""
    face = g["interface"] if "interface" in g else interface(g["structure"])
    return {**g, "structure": face, "reads": set(face["inputs"]) | set(face["weights"]),
            "weight_names": set(face["weights"])}


def _reads(g: dict) -> set[str]:
    return g["reads"]


def _write_map(g: dict, assign: dict[str, str]) -> dict[str, str]:
    """variable -> the graph output that writes it. An init/update graph writes each output to the variable
    of that name, or to the one ``assign`` maps it to (ONNX forbids an input and an output of one name, so a
    graph that reads ``W`` and writes its new value maps an output to it). Infer graphs write nothing."""
    where = f"graph {g['name']}"
    outputs = g["structure"]["outputs"]
    if assign and g["role"] == "infer":
        raise GraphInvalid("an infer graph cannot have 'assign'; only init and update graphs write variables", where)
    for output in sorted(set(assign) - set(outputs)):
        raise GraphInvalid(f"assign names output {output!r}, which the graph does not have "
                           f"(outputs: {', '.join(outputs) or 'none'})", where)
    if g["role"] == "infer":
        return {}
    writes: dict[str, str] = {}
    for output in outputs:
        variable = assign.get(output, output)
        if variable in writes:
            raise VariableConflict(f"outputs {writes[variable]!r} and {output!r} both write variable {variable!r}; "
                                   f"a graph writes a variable from one output", where)
        writes[variable] = output
    return writes


def _variable_names(graphs: list[dict], writes: dict[str, dict[str, str]], declared: list[str] | None,
                    touching: dict[str, list[dict]]) -> set[str]:
    """The declared names, and every name an init/update graph writes and any graph (itself too) reads."""
    names = set(declared or [])
    everywhere = set().union(*(_reads(g) | set(g["structure"]["outputs"]) | set(g["structure"]["consts"])
                               | set(writes[g["name"]]) for g in graphs))
    for name in sorted(names - everywhere):
        raise ParamInvalid(f"variable {name!r} is listed in 'variables' but no graph reads or writes it",
                           "variables")
    read_anywhere = set().union(*(_reads(g) for g in graphs))
    for g in graphs:
        names.update(name for name in writes[g["name"]] if name in read_anywhere)
    for name in sorted(names):  # a dtype/shape conflict is the real problem, whatever else is wrong with the name
        _same_type_everywhere(name, touching.get(name, []), writes)
    for g in graphs:
        consts = g["structure"]["consts"]
        for name in sorted(names & set(consts)):
            raise GraphInvalid(f"variable {name!r} is a small integer constant that steers shapes in graph "
                               f"{g['name']}; it cannot be a variable", f"graph {g['name']}")
        _check_not_steering(g, names)
        if g["role"] == "infer":
            for name in sorted(names & set(g["structure"]["outputs"])):
                raise GraphInvalid(f"infer graph {g['name']} writes variable {name!r}; only init and update "
                                   f"graphs may write variables (rename the output)", f"graph {g['name']}")
    return names


def _check_not_steering(g: dict, names: set[str]) -> None:
    """Variables do not change shapes: a variable a graph reads where a value must be known to size the graph
    (an STFT frame step, a Range limit, a Reshape target, ...) is an error; the tensor must stay a constant."""
    read = names & set(g["structure"]["inputs"])
    if not read:
        return
    steering = g["structure"]["steering"]
    for name in sorted(read & set(steering)):
        raise GraphInvalid(f"variable {name!r} steers shapes in graph {g['name']}: {steering[name]}; a value that "
                           f"steers shapes must be known at build time, keep it a constant (leave it out of "
                           f"'variables' / const_names)", f"graph {g['name']}")


def _check_assigned(graphs: list[dict], assign: dict[str, dict[str, str]], names: set[str]) -> None:
    """An ``assign`` target must be a variable: read by some graph, or listed in ``variables``."""
    for g in graphs:
        for output, variable in sorted(assign.get(g["name"], {}).items()):
            if variable not in names:
                raise GraphInvalid(f"assign writes output {output!r} to {variable!r}, which no graph reads; "
                                   f"read it in some graph or list it under 'variables'", f"graph {g['name']}")


def _typed(name: str, graphs: list[dict], writes: dict[str, dict[str, str]]) -> list[tuple[str, dict]]:
    """(where, type) of every read, write and small constant of ``name`` in ``graphs`` (those touching it), in
    spec order."""
    typed = []
    for g in graphs:
        types = g["structure"]["types"]
        if (name in _reads(g) or name in g["structure"]["consts"]) and name in types:
            typed.append((f"graph {g['name']}", types[name]))
        output = writes[g["name"]].get(name)
        if output is not None:
            typed.append((f"graph {g['name']}" + (f" (output {output!r})" if output != name else ""), types[output]))
    return typed


def _same_type_everywhere(name: str, graphs: list[dict], writes: dict[str, dict[str, str]]) -> None:
    """VARIABLE_CONFLICT naming both graphs when ``name`` has two types, as a read, a write or a constant."""
    typed = _typed(name, graphs, writes)
    for where, t in typed[1:]:
        if t != typed[0][1]:
            raise VariableConflict(f"variable {name!r} is {_show(typed[0][1])} in {typed[0][0]} but {_show(t)} "
                                   f"in {where}", f"variable {name}")


def _variable(name: str, graphs: list[dict], writes: dict[str, dict[str, str]]) -> dict:
    """The variable table entry of ``name``; ``graphs``: those touching it (``_touching``), in spec order."""
    readers = [g["name"] for g in graphs if name in _reads(g)]
    writers = [g["name"] for g in graphs if name in writes[g["name"]]]
    first_type = _typed(name, graphs, writes)[0][1]  # one type everywhere (_same_type_everywhere)
    roles = {g["name"]: g["role"] for g in graphs}
    has_initializer = [g["name"] for g in graphs if name in g["weight_names"]]
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


def storage(graphs: list[dict], variables: dict) -> dict:
    """``run``'s storage: every distinct tensor pooled once, named after its first user so names survive weight
    edits; ``graphs`` as ``run`` takes them, weights included."""
    graphs = [{**g, "structure": g["interface"] if "interface" in g else interface(g["structure"])} for g in graphs]
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


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")  # compiled once: a bundle names thousands of constants


def _unique_id(raw: str, used: set[str]) -> str:
    base = _UNSAFE.sub("_", raw).lstrip("._") or "t"
    cid, n = base, 1
    while cid in used:
        n += 1
        cid = f"{base}~{n}"
    used.add(cid)
    return cid


def _show(t: dict) -> str:
    return f"{t['dtype']}[{','.join(map(str, t['shape']))}]"


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """``variable_table`` over every graph's interface: no weight is read, so a weight edit leaves it cached and
    the per-graph stages after it start without waiting for the constant pool."""
    graphs = [{"name": g["name"], "role": g["role"], "interface": inputs["interface"][g["name"]]}
              for g in params["graphs"]]
    return {"variables": variable_table(graphs, params)}


STAGE = Stage("dedupe", VERSION, compute, outputs=("variables",), inputs=(Input("parse", "interface"),),
              params=("graph roles", "variables", "assigns"), scope=BUNDLE)
