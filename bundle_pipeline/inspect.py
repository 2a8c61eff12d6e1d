"""Describe a bundle from its manifest without running it (the data behind ``bundle-pipeline inspect``)."""

from __future__ import annotations

import math
import re
import sys
from typing import TextIO

import numpy as np

from .errors import BundleCorrupt
from .formats import storage_shape
from .runtime.bundle import open_constant, open_group, open_packed
from .runtime.storage import PACKED_ARRAY, accounted_bytes, digest, inventory
from .runtime.validate import validate_manifest
from .tables import Cell, Table, cell, listed, show


def describe(path: str) -> dict:
    """Read the manifest only (after ``inventory`` vetted the entries: no link followed, no special file read, no
    compressed entry); the digest streams every entry, so memory stays small whatever the bundle holds."""
    inv = inventory(path)
    group = open_group(path, inv)
    manifest = dict(group.attrs)
    validate_manifest(manifest, path)
    accounted_bytes(inv, manifest["constants"])  # every file under constants/ belongs to a constant
    for cid, const in manifest["constants"].items():  # and has the size its array's metadata implies
        if const["array"] != PACKED_ARRAY:
            open_constant(group, cid, const, inv)
    packed = [c for c in manifest["constants"].values() if c["array"] == PACKED_ARRAY and c["nbytes"]]
    if packed:
        size = open_packed(group, inv).shape[0]
        outside = next((cid for cid, c in manifest["constants"].items() if c in packed
                        and c["offset"] + c["nbytes"] > size), None)
        if outside is not None:
            raise BundleCorrupt(f"constant {outside!r} lies outside {PACKED_ARRAY}", path)
    graphs = [{**_graph(g), **_executor(g, manifest)} for g in manifest["graphs"]]
    variables = [{k: v[k] for k in ("name", "shape", "dtype", "format", "nbytes", "readers", "writers")}
                 for v in manifest["variables"]]
    constants = manifest["constants"]
    stored = sum(_nbytes(c) for c in constants.values())
    # every weight reference of every graph, plus variable initial values, as if each kept its own copy
    references = [cid for g in manifest["graphs"] for cid in g.get("bindings", {}).values()]
    references += [v["initial"] for v in manifest["variables"] if v.get("initial")]
    referenced = sum(_nbytes(constants[cid]) for cid in references)
    return {"target": manifest["target"], "digest": digest(inv), "graphs": graphs, "variables": variables,
            "constants": {"count": len(constants), "nbytes": stored,
                          "converted": sum(1 for c in constants.values() if "format" in c),
                          "references": len(references), "bytes_saved": max(0, referenced - stored)}}


def _graph(g: dict) -> dict:
    program = g["program"]
    steps = list(_all_steps(program["steps"]))  # control-flow bodies' steps too
    return {"name": g["name"], "role": g["role"], "writes": _writes(program),
            "transdata": sum(s["op"] == "TransData" for s in steps),
            "transdata_bytes": sum(_transdata_bytes(s, program) for s in steps if s["op"] == "TransData"),
            "native_steps": sum(bool(s.get("native")) for s in steps),
            "arena_bytes": program["arena_bytes"], "reuse_memory": program.get("reuse_memory", True),
            "arena_bytes_by_reuse": program.get("arena_bytes_by_reuse"), "steps": len(steps),
            "body_arena_bytes": sum(b["arena_bytes"] for s in steps for b in s.get("bodies", {}).values()),
            "options": g["options"],
            "kernels": [{"node": s["node"], "op": s["op"], "native": bool(s.get("native")),
                         "tiling": {k: v for k, v in s["tiling"].items() if k != "cost"}}
                        for s in steps if s.get("tiling")]}


def _executor(graph: dict, manifest: dict) -> dict:
    """What ``load_bundle`` (executor auto) runs the graph with, and why."""
    from .runtime.ort_executor import planned_executor

    executor, why = planned_executor(graph, manifest)
    return {"executor": executor, "executor_reason": why}


def _writes(program: dict) -> dict[str, str]:
    """variable -> the output that writes it (the variable's own name unless ``assign`` mapped another)."""
    return {out.get("writes", out["name"]): out["name"] for out in program["outputs"] if out.get("variable")}


def _all_steps(steps: list[dict]):
    """Every step, those of If/Loop/Scan bodies included (depth first)."""
    for step in steps:
        yield step
        for body in step.get("bodies", {}).values():
            yield from _all_steps(body["steps"])


def _transdata_bytes(step: dict, program: dict) -> int:
    """Bytes a TransData reads plus writes, in the storage shapes of its source and destination formats."""
    out = program["values"][step["outputs"][0]]
    itemsize = np.dtype(out["dtype"]).itemsize
    attrs = step["attrs"]
    shape = tuple(out["shape"])
    return itemsize * (math.prod(storage_shape(attrs["src_format"], shape))
                       + math.prod(storage_shape(attrs["dst_format"], shape)))


def _nbytes(t: dict) -> int:
    return int(np.prod(t.get("storage", t["shape"]), dtype=np.int64)) * np.dtype(t["dtype"]).itemsize


# option values not worth a column: the defaults of every option (inspect --json lists them all)
NON_DEFAULT_SKIP = ("", "0", "must_keep_origin_dtype", "NCHW", "high_precision")


def render(info: dict, path: str, stream: TextIO | None = None) -> None:
    """``inspect`` for people: graphs, kernels' tiling, variables and the constant pool, as tables that fit the
    width (``tables.show``: columns, or one ``field: value`` line per field) and never cut a name."""
    c = info["constants"]
    summary = (f"constants: {c['count']} stored once each ({_bytes(c['nbytes'])}) for {c['references']} "
               f"references, {_bytes(c['bytes_saved'])} saved by deduplication; {c['converted']} stored in a "
               f"target format")
    blocks = [cell(f"bundle {path}", f"target {info['target']}", f"digest {info['digest'][:16]}", sep="  "),
              _graphs_table(info["graphs"]), _executors_table(info["graphs"]), _kernels_table(info["graphs"]),
              _variables_table(info),
              Cell(tuple(_words(summary)))]
    show([b for b in blocks if not isinstance(b, Table) or b.rows], stream or sys.stdout)


def _graphs_table(graphs: list[dict]) -> Table:
    rows = []
    for g in graphs:
        by_reuse = g.get("arena_bytes_by_reuse") or {}
        options = [f"{k}={v}" for k, v in g["options"].items() if v not in NON_DEFAULT_SKIP]
        bodies = ("+", _bytes(g["body_arena_bytes"]), "in bodies") if g.get("body_arena_bytes") else ()
        rows.append((cell(g["name"]), cell(g["role"]), cell(str(g["steps"])), cell(str(g["native_steps"])),
                     cell(str(g["transdata"])), cell(_bytes(g["transdata_bytes"])),
                     cell(_bytes(by_reuse.get("on", g["arena_bytes"])), *bodies),
                     cell(_bytes(by_reuse.get("off", g["arena_bytes"])), *bodies), listed(options, empty="-")))
    return Table("graphs", ("graph", "role", "steps", "native", "TransData", "TransData bytes", "arena (reuse on)",
                            "arena (reuse off)", "options"), rows)


def _executors_table(graphs: list[dict]) -> Table:
    rows = [(cell(g["name"]), cell(g["executor"]), cell(*_words(g["executor_reason"]))) for g in graphs]
    return Table("executors", ("graph", "executor (load_bundle auto)", "why"), rows)


def _kernels_table(graphs: list[dict]) -> Table:
    rows = [(cell(g["name"]), cell(k["node"]), cell(k["op"]), cell("native" if k["native"] else "portable"),
             cell(*(f"{key}={value}" for key, value in sorted(k["tiling"].items()))))
            for g in graphs for k in g["kernels"]]
    return Table("tiling per kernel", ("graph", "node", "op", "kernel", "tiling"), rows)


def _variables_table(info: dict) -> Table:
    writes = {g["name"]: g["writes"] for g in info["graphs"]}
    rows = []
    for v in info["variables"]:
        outputs = {w: writes.get(w, {}).get(v["name"], v["name"]) for w in v["writers"]}
        # "update (W_next)": the output that writes the variable, when assign maps another name to it
        writers = [w if out == v["name"] else f"{w} ({out})" for w, out in outputs.items()]
        rows.append((cell(v["name"]), cell(str(v["shape"])), cell(v["dtype"]), cell(v["format"]),
                     cell(_bytes(v["nbytes"])), listed(v["readers"]), listed(writers, empty="-")))
    return Table("variables", ("variable", "shape", "dtype", "format", "bytes", "readers", "writers"), rows)


def _words(text: str) -> list[str]:
    """Words of a sentence, a size's number kept with its unit ("2.1 KiB")."""
    return re.split(r" (?!(?:B|KiB|MiB|GiB)\b)", text)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
