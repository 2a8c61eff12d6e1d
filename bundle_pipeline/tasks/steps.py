"""The glue between the cache and each stage: load input objects, call the stage, store its outputs.

Each step is ``(task, cache, inputs) -> outputs`` where inputs and outputs map names to content
hashes. Only hashes leave a step, so a scheduler moves references, never arrays.
"""

from __future__ import annotations

from collections.abc import Callable

from ..cache import Cache
from ..stages import codegen, dedupe, formats, pack, parse, tiling
from ..targets import get_target
from .task import Task

Step = Callable[[Task, Cache, dict[str, str]], dict[str, str]]


def step_parse(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    src = task.context["source"]
    source = src["bytes"] if "bytes" in src else src["path"]
    result = parse.run(source, {**task.params, "graph": task.graph, "where": task.context["where"]})
    tensors = {name: cache.put_tensor(arr) for name, arr in sorted(result.weights.items())}
    return {"structure": cache.put_json(result.structure), "weights": cache.put_json({"tensors": tensors})}


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
                               get_target(task.params["target"]))
    return {"structure": cache.put_json(structure)}


def step_tiling(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    plan = tiling.run(cache.get_json(inputs["structure"]), get_target(task.params["target"]))
    return {"tiling": cache.put_json(plan)}


def step_codegen(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    program = codegen.run(cache.get_json(inputs["structure"]), cache.get_json(inputs["tiling"]),
                          cache.get_json(inputs["variables"]), task.params["role"], task.params["options"])
    return {"program": cache.put_json(program)}


def step_pack(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    graphs = [{**g, "program": cache.get_json(inputs[f"program:{g['name']}"])} for g in task.params["graphs"]]
    storage = cache.get_json(inputs["storage"])
    meta = pack.manifest(task.params["name"], task.params["target"], graphs, cache.get_json(inputs["variables"]),
                         cache.get_json(inputs["var_formats"]), storage)
    digest = pack.run(meta, lambda h: cache.get_tensor(h), task.context["out"])
    return {"digest": digest, "manifest": cache.put_json(meta)}


STEPS: dict[str, Step] = {
    "parse": step_parse, "dedupe": step_dedupe, "formats.assign": step_formats_assign,
    "formats": step_formats, "tiling": step_tiling, "codegen": step_codegen, "pack": step_pack,
}
VERSIONS = {"parse": parse.VERSION, "dedupe": dedupe.VERSION, "formats.assign": formats.VERSION,
            "formats": formats.VERSION, "tiling": tiling.VERSION, "codegen": codegen.VERSION, "pack": pack.VERSION}
