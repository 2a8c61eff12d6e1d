"""The glue between the cache and each stage: load input objects, call the stage, store its outputs.

Each step is ``(task, cache, inputs) -> outputs`` where inputs and outputs map names to content
hashes. Only hashes leave a step, so a scheduler moves references, never arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cache import Cache
from ..ir.external import ExternalRef
from ..ir.hashing import hash_json
from ..runtime.formats import STANDARD, storage_shape, to_format
from ..stages import codegen, dedupe, formats, pack, parse, tiling
from ..targets import get_target
from .kernel_cache import KernelCache
from .task import Task

Step = Callable[[Task, Cache, dict[str, str]], dict[str, str]]


def step_parse(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """Structure + weight refs: inline weights are stored now, external-data ones only located."""
    src = task.context["source"]
    source = src["bytes"] if "bytes" in src else src["path"]
    result = parse.run(source, {**task.params, "graph": task.graph, "where": task.context["where"]})
    inline = {n: w for n, w in result.weights.items() if not isinstance(w, ExternalRef)}
    refs = {n: {"tensor": h} for n, h in _parallel(lambda w: cache.put_tensor(w), inline).items()}
    model_dir = Path(src["path"]).parent if "path" in src else Path()
    refs.update({n: {"external": w.to_json(model_dir)} for n, w in result.weights.items() if n not in inline})
    return {"structure": cache.put_json(result.structure), "refs": cache.put_json(dict(sorted(refs.items())))}


def step_weights(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """Weight table name -> tensor hash. An external tensor whose file is unchanged is not read again:
    its hash is remembered per (file content hash, offset, dtype, shape)."""
    refs = cache.get_json(inputs["refs"])
    model_dir = Path(task.context["source"].get("path", ".")).parent

    def resolve(ref: dict) -> str:
        if "tensor" in ref:
            return ref["tensor"]
        external = ExternalRef.from_json(ref["external"], model_dir)
        memo = hash_json({"external-tensor": inputs[f"file:{ref['external']['location']}"],
                          "offset": external.offset, "dtype": external.dtype, "shape": list(external.shape)})
        record = cache.get_action(memo)
        if record is not None and cache.has_tensor(record["tensor"]):
            return record["tensor"]
        digest = cache.put_tensor(external.load())
        cache.put_action(memo, {"tensor": digest})
        return digest

    return {"weights": cache.put_json({"tensors": _parallel(resolve, refs)})}


def _parallel(fn: Callable, items: dict) -> dict[str, str]:
    """Map over a dict's values in threads: hashing and file I/O release the GIL."""
    names = sorted(items)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(names, pool.map(lambda n: fn(items[n]), names), strict=True))


def step_dedupe(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    graphs = [{"name": g["name"], "role": g["role"],
               "structure": cache.get_json(inputs[f"structure:{g['name']}"]),
               "weights": cache.get_json(inputs[f"weights:{g['name']}"])["tensors"]}
              for g in task.params["graphs"]]
    variables, storage = dedupe.run(graphs, task.params)
    tensors = {c["hash"]: c["hash"] for c in storage["constants"].values()}
    return {"variables": cache.put_json(variables), "storage": cache.put_json({**storage, "tensors": tensors})}


def step_formats_assign(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    structures = {g: cache.get_json(inputs[f"structure:{g}"]) for g in task.params["graphs"]}
    chosen = formats.assign(structures, cache.get_json(inputs["variables"]), get_target(task.params["target"]))
    return {"var_formats": cache.put_json(chosen)}


def step_formats(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    structure = formats.insert(cache.get_json(inputs["structure"]), cache.get_json(inputs["var_formats"]),
                               get_target(task.params["target"]), task.params.get("assign"))
    return {"structure": cache.put_json(structure)}


def step_weight_formats(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """Constants and variable initial values converted to the formats their readers store them in.

    A conversion is remembered per (tensor hash, format), so after a weight edit only the changed
    tensors are converted again. Standard layouts (ND/NCHW) are the parsed bytes themselves.
    """
    storage = cache.get_json(inputs["storage"])
    var_formats = cache.get_json(inputs["var_formats"])
    wanted = {g: formats.weight_formats(cache.get_json(inputs[f"structure:{g}"])) for g in task.params["graphs"]}
    stored, bindings, initial = {}, {}, {}

    def place(cid: str, fmt: str) -> str:
        sid = cid if fmt in STANDARD else f"{cid}@{fmt}"
        if sid not in stored:
            const = storage["constants"][cid]
            digest = _transformed(cache, const["hash"], fmt)
            shape = tuple(const["shape"])
            stored[sid] = {**const, "hash": digest, **({"format": fmt, "storage": list(storage_shape(fmt, shape))}
                                                       if fmt not in STANDARD else {})}
        return sid

    for graph, bound in storage["bindings"].items():
        bindings[graph] = {w: place(cid, wanted[graph].get(w, "ND")) for w, cid in sorted(bound.items())}
    for var, cid in sorted(storage["initial"].items()):
        initial[var] = place(cid, var_formats.get(var, "ND"))
    result = {"constants": dict(sorted(stored.items())), "bindings": bindings, "initial": initial,
              "tensors": {c["hash"]: c["hash"] for c in stored.values()}}
    return {"stored": cache.put_json(result)}


def _transformed(cache: Cache, digest: str, fmt: str) -> str:
    if fmt in STANDARD:
        return digest
    memo = hash_json({"transform": digest, "format": fmt, "version": formats.VERSION})
    record = cache.get_action(memo)
    if record is not None and cache.has_tensor(record["tensor"]):
        return record["tensor"]
    converted = cache.put_tensor(to_format(cache.get_tensor(digest), fmt))
    cache.put_action(memo, {"tensor": converted})
    return converted


def step_tiling(task: Task, cache: Cache, inputs: dict[str, str]) -> dict:
    target = get_target(task.params["target"])
    kernels = KernelCache(cache, "tiling", tiling.VERSION, target.fingerprint)
    plan = tiling.run(cache.get_json(inputs["structure"]), target, kernels.get)
    return {"tiling": cache.put_json(plan), "_extra": kernels.stats()}


def step_codegen(task: Task, cache: Cache, inputs: dict[str, str]) -> dict:
    kernels = KernelCache(cache, "codegen", codegen.VERSION, get_target(task.params["target"]).fingerprint)
    program = codegen.run(cache.get_json(inputs["structure"]), cache.get_json(inputs["tiling"]),
                          cache.get_json(inputs["variables"]), task.params["role"], task.params["options"],
                          kernels.get, task.params.get("assign"))
    return {"program": cache.put_json(program), "_extra": kernels.stats()}


def step_pack(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    graphs = [{**g, "program": cache.get_json(inputs[f"program:{g['name']}"])} for g in task.params["graphs"]]
    storage = cache.get_json(inputs["stored"])
    meta = pack.manifest(task.params["name"], task.params["target"], graphs, cache.get_json(inputs["variables"]),
                         cache.get_json(inputs["var_formats"]), storage)
    digest = pack.run(meta, cache.export_tensor, task.context["out"])
    return {"digest": digest, "manifest": cache.put_json(meta)}


STEPS: dict[str, Step] = {
    "parse": step_parse, "parse.weights": step_weights, "dedupe": step_dedupe, "formats.assign": step_formats_assign,
    "formats.weights": step_weight_formats,
    "formats": step_formats, "tiling": step_tiling, "codegen": step_codegen, "pack": step_pack,
}
VERSIONS = {"parse": parse.VERSION, "parse.weights": parse.VERSION, "dedupe": dedupe.VERSION,
            "formats.assign": formats.VERSION, "formats.weights": formats.VERSION, "formats": formats.VERSION,
            "tiling": tiling.VERSION, "codegen": codegen.VERSION, "pack": pack.VERSION}
