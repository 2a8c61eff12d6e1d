"""Describe a bundle from its manifest without running it (the data behind ``bundle-pipeline inspect``)."""

from __future__ import annotations

from .runtime.bundle import open_group
from .runtime.validate import validate_manifest
from .stages.pack import bundle_digest


def describe(path: str) -> dict:
    manifest = dict(open_group(path).attrs)
    validate_manifest(manifest, path)
    graphs = [{"name": g["name"], "role": g["role"],
               "transdata": sum(s["op"] == "TransData" for s in g["program"]["steps"]),
               "arena_bytes": g["program"]["arena_bytes"], "reuse_memory": g["program"].get("reuse_memory", True),
               "arena_bytes_by_reuse": g["program"].get("arena_bytes_by_reuse"), "steps": len(g["program"]["steps"]),
               "options": g["options"]} for g in manifest["graphs"]]
    variables = [{k: v[k] for k in ("name", "shape", "dtype", "format", "nbytes", "readers", "writers")}
                 for v in manifest["variables"]]
    constants = manifest["constants"].values()
    nbytes = sum(_nbytes(c) for c in constants)
    return {"target": manifest["target"], "digest": bundle_digest(path), "graphs": graphs, "variables": variables,
            "constants": {"count": len(constants), "nbytes": nbytes}}


def _nbytes(t: dict) -> int:
    import numpy as np

    return int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(t["dtype"]).itemsize
