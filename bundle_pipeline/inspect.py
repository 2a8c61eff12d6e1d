"""Describe a bundle from its manifest without running it (the data behind ``bundle-pipeline inspect``)."""

from __future__ import annotations

import math

import numpy as np

from .errors import BundleCorrupt
from .runtime.bundle import open_constant, open_group, open_packed
from .runtime.formats import storage_shape
from .runtime.storage import PACKED_ARRAY, accounted_bytes, digest, inventory
from .runtime.validate import validate_manifest


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


def render(info: dict, path: str) -> None:
    """``inspect`` for people: rich tables of graphs, kernels' tiling, variables and the constant pool."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"bundle {path}  target {info['target']}  digest {info['digest'][:16]}")
    graphs = Table("graph", "role", "steps", "native", "TransData", "TransData bytes", "arena (reuse on)",
                   "arena (reuse off)", "options", title="graphs")
    for g in info["graphs"]:
        by_reuse = g.get("arena_bytes_by_reuse") or {}
        options = ", ".join(f"{k}={v}" for k, v in g["options"].items() if v not in NON_DEFAULT_SKIP)
        bodies = f" + {_bytes(g['body_arena_bytes'])} in bodies" if g.get("body_arena_bytes") else ""
        graphs.add_row(g["name"], g["role"], str(g["steps"]), str(g["native_steps"]), str(g["transdata"]),
                       _bytes(g["transdata_bytes"]), _bytes(by_reuse.get("on", g["arena_bytes"])) + bodies,
                       _bytes(by_reuse.get("off", g["arena_bytes"])) + bodies, options or "-")
    console.print(graphs)
    executors = Table("graph", "executor (load_bundle auto)", "why", title="executors")
    for g in info["graphs"]:
        executors.add_row(g["name"], g["executor"], g["executor_reason"])
    console.print(executors)
    kernels = Table("graph", "node", "op", "kernel", "tiling", title="tiling per kernel")
    for g in info["graphs"]:
        for k in g["kernels"]:
            kernels.add_row(g["name"], k["node"], k["op"], "native" if k["native"] else "portable",
                            " ".join(f"{key}={value}" for key, value in sorted(k["tiling"].items())))
    if kernels.row_count:
        console.print(kernels)
    variables = Table("variable", "shape", "dtype", "format", "bytes", "readers", "writers", title="variables")
    writes = {g["name"]: g["writes"] for g in info["graphs"]}
    for v in info["variables"]:
        outputs = {w: writes.get(w, {}).get(v["name"], v["name"]) for w in v["writers"]}
        # "update (W_next)": the output that writes the variable, when assign maps another name to it
        writers = [w if out == v["name"] else f"{w} ({out})" for w, out in outputs.items()]
        variables.add_row(v["name"], str(v["shape"]), v["dtype"], v["format"], _bytes(v["nbytes"]),
                          ", ".join(v["readers"]), ", ".join(writers) or "-")
    console.print(variables)
    c = info["constants"]
    console.print(f"constants: {c['count']} stored once each ({_bytes(c['nbytes'])}) for {c['references']} "
                  f"references, {_bytes(c['bytes_saved'])} saved by deduplication; {c['converted']} stored in a "
                  f"target format")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
