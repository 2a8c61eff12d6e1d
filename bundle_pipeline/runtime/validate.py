"""Reject a malformed bundle manifest before anything runs: programs are data, checked against the kernel table."""

from __future__ import annotations

import numpy as np

from ..errors import BundleCorrupt
from .kernels import SUPPORTED_OPS
from .npu import NPU_FORMAT_OPS

FORMAT_VERSIONS = (1,)
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                    "uint32", "uint64", "bool"})
EXECUTOR_OPS = frozenset({"TransData"})


def validate_manifest(manifest: dict, path: str) -> None:
    problem = _first_problem(manifest)
    if problem:
        raise BundleCorrupt(f"malformed bundle: {problem}", path)


def _first_problem(m: dict) -> str | None:
    for key in ("format_version", "graphs", "variables", "constants", "target"):
        if key not in m:
            return f"the manifest has no {key!r} (is this a bundle-pipeline bundle?)"
    if m["format_version"] not in FORMAT_VERSIONS:
        return f"format_version {m['format_version']} is not supported (supported: {FORMAT_VERSIONS})"
    for cid, c in m["constants"].items():
        if not _type_ok(c):
            return f"constant {cid!r} has a bad shape or dtype"
    variables = {v["name"]: v for v in m["variables"]}
    for v in variables.values():
        if not _type_ok(v) or (v["initial"] is not None and v["initial"] not in m["constants"]):
            return f"variable {v['name']!r} has a bad type or initial value reference"
    for g in m["graphs"]:
        problem = _program_problem(g, variables, m["constants"])
        if problem:
            return f"graph {g.get('name')!r}: {problem}"
    return None


def _type_ok(t: dict) -> bool:
    shape = t.get("shape")
    return (t.get("dtype") in DTYPES and isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape))


def _program_problem(g: dict, variables: dict, constants: dict) -> str | None:
    if g.get("role") not in ("init", "update", "infer") or "program" not in g:
        return "bad role or no program"
    p = g["program"]
    for w, cid in g.get("bindings", {}).items():
        if cid not in constants:
            return f"weight {w!r} is bound to a missing constant {cid!r}"
    defined = {f["name"] for f in p["feeds"]} | set(p["consts"]) | set(g.get("bindings", {}))
    if any(r not in variables for r in p["reads"]):
        return "it reads an unknown variable"
    defined |= set(p["reads"])
    missing_weights = [w for w in p["weights"] if w not in g.get("bindings", {})]
    if missing_weights:
        return f"weight {missing_weights[0]!r} has no bound constant"
    arena = int(p["arena_bytes"])
    for step in p["steps"]:
        if step["op"] not in SUPPORTED_OPS and step["op"] not in EXECUTOR_OPS:
            return f"node {step.get('node')!r} uses op {step['op']!r}, which the kernel library does not have"
        if step.get("native") and step["op"] not in NPU_FORMAT_OPS:
            return f"node {step.get('node')!r} asks for a native {step['op']!r} kernel, which the runtime does not have"
        undefined = [i for i in step["inputs"] if i and i not in defined]
        if undefined:
            return f"node {step['node']!r} reads undefined value {undefined[0]!r}"
        for out in filter(None, step["outputs"]):
            plan = p["values"].get(out)
            if plan is None or not _type_ok(plan) or not _fits(plan, arena):
                return f"value {out!r} has no valid buffer in the arena"
            defined.add(out)
    for out in p["outputs"]:
        if out["name"] not in defined or (out["variable"] and out["name"] not in variables):
            return f"output {out['name']!r} is not produced or writes an unknown variable"
    return None


def _fits(plan: dict, arena: int) -> bool:
    storage = plan.get("storage", plan["shape"])
    if not isinstance(storage, list) or not all(isinstance(d, int) and d >= 0 for d in storage):
        return False
    nbytes = int(np.prod(storage, dtype=np.int64)) * np.dtype(plan["dtype"]).itemsize
    return isinstance(plan.get("offset"), int) and plan["offset"] >= 0 and plan["offset"] + nbytes <= arena
