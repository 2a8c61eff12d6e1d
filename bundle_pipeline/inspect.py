"""Describe a bundle from its manifest without running it (the data behind ``bundle-pipeline inspect``)."""

from __future__ import annotations

import math

import numpy as np

from .runtime.bundle import open_group
from .runtime.formats import storage_shape
from .runtime.validate import validate_manifest
from .stages.pack import bundle_digest


def describe(path: str) -> dict:
    manifest = dict(open_group(path).attrs)
    validate_manifest(manifest, path)
    graphs = [_graph(g) for g in manifest["graphs"]]
    variables = [{k: v[k] for k in ("name", "shape", "dtype", "format", "nbytes", "readers", "writers")}
                 for v in manifest["variables"]]
    constants = manifest["constants"].values()
    return {"target": manifest["target"], "digest": bundle_digest(path), "graphs": graphs, "variables": variables,
            "constants": {"count": len(constants), "nbytes": sum(_nbytes(c) for c in constants),
                          "converted": sum(1 for c in constants if "format" in c)}}


def _graph(g: dict) -> dict:
    program = g["program"]
    steps = program["steps"]
    return {"name": g["name"], "role": g["role"],
            "transdata": sum(s["op"] == "TransData" for s in steps),
            "transdata_bytes": sum(_transdata_bytes(s, program) for s in steps if s["op"] == "TransData"),
            "native_steps": sum(bool(s.get("native")) for s in steps),
            "arena_bytes": program["arena_bytes"], "reuse_memory": program.get("reuse_memory", True),
            "arena_bytes_by_reuse": program.get("arena_bytes_by_reuse"), "steps": len(steps),
            "options": g["options"],
            "kernels": [{"node": s["node"], "op": s["op"], "native": bool(s.get("native")),
                         "tiling": {k: v for k, v in s["tiling"].items() if k != "cost"}}
                        for s in steps if s.get("tiling")]}


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
