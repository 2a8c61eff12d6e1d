"""The glue between the cache and each stage: load input objects, call the stage, store its outputs.

Each step is ``(task, cache, inputs) -> outputs`` where inputs and outputs map names to content
hashes. Only hashes leave a step, so a scheduler moves references, never arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cache import Cache, CacheMiss
from ..cache.packs import SMALL_TENSOR_BYTES, stored_bytes
from ..formats import STANDARD, storage_shape, to_format
from ..hashing import hash_json
from ..ir.external import ExternalRef
from ..stages import codegen, dedupe, formats, pack, parse, tiling
from ..stages.format_pass import FormatPass
from ..targets import get_target
from ..zarr_plain import RawJSON
from .kernel_cache import KernelCache
from .task import Task
from .versions import VERSIONS  # noqa: F401  (steps and their versions, side by side for readers)

Step = Callable[[Task, Cache, dict[str, str]], dict[str, str]]


def step_parse(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """Structure + weight refs: inline weights are stored now (the small ones in one pack), external-data
    ones only located."""
    src = task.context["source"]
    source = src["bytes"] if "bytes" in src else src["path"]
    result = parse.run(source, {**task.params, "graph": task.graph, "where": task.context["where"]})
    inline = {n: w for n, w in result.weights.items() if not isinstance(w, ExternalRef)}
    refs: dict[str, dict] = dict(cache.put_tensors(inline))
    model_dir = Path(src["path"]).parent if "path" in src else Path()
    refs.update({n: {"external": w.to_json(model_dir)} for n, w in result.weights.items() if n not in inline})
    return {"structure": cache.put_json(result.structure), "refs": cache.put_json(dict(sorted(refs.items()))),
            "interface": cache.put_json(dedupe.interface(result.structure))}


def step_weights(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """Weight table ``{"tensors": name -> tensor hash, "packs": tensor hash -> pack}``. An external tensor
    whose file is unchanged is not read again: its reference is remembered per (file content hash, offset,
    dtype, shape)."""
    refs = cache.get_json(inputs["refs"])
    model_dir = Path(task.context["source"].get("path", ".")).parent
    found: dict[str, dict] = {n: r for n, r in refs.items() if "tensor" in r}
    memos: dict[str, str] = {}
    for name, ref in refs.items():
        if name in found:
            continue
        memos[name] = hash_json({"external-tensor": inputs[f"file:{ref['external']['location']}"],
                                 "offset": ref["external"]["offset"], "dtype": ref["external"]["dtype"],
                                 "shape": list(ref["external"]["shape"])})
        record = cache.get_action(memos[name])
        if record is not None and cache.has_tensor(record["tensor"], record.get("pack")):
            found[name] = record
    missing = {n: ExternalRef.from_json(refs[n]["external"], model_dir) for n in sorted(set(refs) - set(found))}
    small = {n: r for n, r in missing.items() if r.nbytes <= SMALL_TENSOR_BYTES}
    stored = cache.put_tensors({n: r.load() for n, r in small.items()})  # one pack
    stored.update(_parallel(lambda r: {"tensor": cache.put_tensor(r.load())},  # one big tensor in memory a thread
                            {n: r for n, r in missing.items() if n not in small}))
    for name, ref in stored.items():
        cache.put_action(memos[name], ref)
    found.update(stored)
    return {"weights": cache.put_json(tensor_table({n: r for n, r in found.items()}))}


def tensor_table(refs: dict[str, dict]) -> dict:
    """``{"tensors": name -> hash, "packs": hash -> pack}`` from tensor references (``Cache.put_tensors``)."""
    return {"tensors": {n: r["tensor"] for n, r in sorted(refs.items())},
            "packs": {r["tensor"]: r["pack"] for _, r in sorted(refs.items()) if "pack" in r}}


def _parallel(fn: Callable, items: dict) -> dict:
    """Map over a dict's values in threads: hashing and file I/O release the GIL."""
    names = sorted(items)
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 2)) as pool:
        return dict(zip(names, pool.map(lambda n: fn(items[n]), names), strict=True))


def step_dedupe(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    tables = {g["name"]: cache.get_json(inputs[f"weights:{g['name']}"]) for g in task.params["graphs"]}
    graphs = [{"name": g["name"], "role": g["role"],
               "interface": cache.get_json(inputs[f"interface:{g['name']}"]),
               "weights": tables[g["name"]]["tensors"]}
              for g in task.params["graphs"]]
    variables, storage = dedupe.run(graphs, task.params)
    packs = {h: p for t in tables.values() for h, p in t.get("packs", {}).items()}
    tensors = {c["hash"]: c["hash"] for c in storage["constants"].values()}
    storage = {**storage, "tensors": tensors, "packs": {h: packs[h] for h in sorted(tensors) if h in packs}}
    return {"variables": cache.put_json(variables), "storage": cache.put_json(storage)}


def step_format_costs(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """What each variable this graph reads would cost it in each format; a graph that reads none is not parsed."""
    variables = cache.get_json(inputs["variables"])
    if not any(task.graph in v["readers"] for v in variables.values()):
        return {"costs": cache.put_json({})}
    target = get_target(task.params["target"])
    fp = FormatPass.shared(inputs["structure"], cache.get_json(inputs["structure"]), target)
    return {"costs": cache.put_json(formats.costs(fp, task.graph, variables, target))}


def step_formats_assign(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    costs = {g: cache.get_json(inputs[f"costs:{g}"]) for g in task.params["graphs"]}
    chosen = formats.choose(costs, cache.get_json(inputs["variables"]), get_target(task.params["target"]))
    return {"var_formats": cache.put_json(chosen)}


def step_formats(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    target = get_target(task.params["target"])
    fp = FormatPass.shared(inputs["structure"], cache.get_json(inputs["structure"]), target)
    structure = formats.insert(fp, cache.get_json(inputs["var_formats"]), target, task.params.get("assign"))
    return {"structure": cache.put_json(structure),
            "weight_formats": cache.put_json(formats.weight_formats(structure))}  # all formats.weights reads


def step_weight_formats(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """Constants and variable initial values converted to the formats their readers store them in.

    A conversion is remembered per (tensor hash, format), so after a weight edit only the changed
    tensors are converted again; the converted small ones go into one pack. Standard layouts (ND/NCHW)
    are the parsed bytes themselves.
    """
    storage = cache.get_json(inputs["storage"])
    var_formats = cache.get_json(inputs["var_formats"])
    wanted = {g: cache.get_json(inputs[f"weight_formats:{g}"]) for g in task.params["graphs"]}
    placed: dict[str, tuple[str, str]] = {}  # stored id -> (constant id, format)
    bindings = {graph: {w: _stored_id(placed, cid, wanted[graph].get(w, "ND")) for w, cid in sorted(bound.items())}
                for graph, bound in storage["bindings"].items()}
    initial = {var: _stored_id(placed, cid, var_formats.get(var, "ND"))
               for var, cid in sorted(storage["initial"].items())}
    refs = _converted(cache, storage, {(storage["constants"][cid]["hash"], fmt) for cid, fmt in placed.values()})
    stored = {}
    for sid, (cid, fmt) in sorted(placed.items()):
        const, shape = storage["constants"][cid], tuple(storage["constants"][cid]["shape"])
        stored[sid] = {**const, "hash": refs[const["hash"], fmt]["tensor"],
                       **({"format": fmt, "storage": list(storage_shape(fmt, shape))} if fmt not in STANDARD else {})}
    table = tensor_table({f"{h}@{fmt}": ref for (h, fmt), ref in refs.items()})
    result = {"constants": stored, "bindings": bindings, "initial": initial,
              "tensors": {c["hash"]: c["hash"] for c in stored.values()}, "packs": table["packs"]}
    return {"stored": cache.put_json(result)}


def _stored_id(placed: dict[str, tuple[str, str]], cid: str, fmt: str) -> str:
    sid = cid if fmt in STANDARD else f"{cid}@{fmt}"
    placed[sid] = (cid, fmt)
    return sid


def _converted(cache: Cache, storage: dict, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """(tensor hash, format) -> reference of the tensor in that format: the tensor itself for standard layouts,
    else a remembered conversion, else one made now (the small ones stored in one pack).

    A conversion is remembered per big tensor, and per (source pack, format) for the small ones: after a weight
    edit only the changed tensors, or the pack that changed, are converted again, at one record a pack rather
    than one a tensor."""
    packs = storage.get("packs", {})
    refs: dict[tuple[str, str], dict] = {}
    groups: dict[tuple[str | None, str], list[str]] = {}  # (source pack or None, format) -> tensor hashes
    for h, fmt in sorted(wanted):
        if fmt in STANDARD:
            refs[h, fmt] = {"tensor": h, **({"pack": packs[h]} if h in packs else {})}
        else:
            groups.setdefault((packs.get(h), fmt), []).append(h)
    memos: dict[str, tuple[str | None, str, list[str]]] = {}
    for (pack_hash, fmt), hashes in groups.items():
        for batch in ([hashes] if pack_hash else [[h] for h in hashes]):
            key = hash_json({"transform": batch, "pack": pack_hash, "format": fmt, "version": formats.VERSION})
            record = cache.get_action(key)
            if record is not None and all(cache.has_tensor(r["tensor"], r.get("pack")) for r in record["refs"]):
                refs.update({(h, fmt): r for h, r in zip(batch, record["refs"], strict=True)})
            else:
                memos[key] = (pack_hash, fmt, batch)
    todo = [(h, fmt) for _, fmt, batch in memos.values() for h in batch]
    made = cache.put_tensors({f"{h}@{fmt}": to_format(cache.get_tensor(h, pack=packs.get(h)), fmt) for h, fmt in todo})
    for key, (_, fmt, batch) in memos.items():
        converted = [made[f"{h}@{fmt}"] for h in batch]
        refs.update({(h, fmt): r for h, r in zip(batch, converted, strict=True)})
        cache.put_action(key, {"refs": converted})
    return refs


def step_tiling(task: Task, cache: Cache, inputs: dict[str, str]) -> dict:
    target = get_target(task.params["target"])
    kernels = KernelCache(cache, "tiling", tiling.VERSION, target.fingerprint)
    plan = tiling.run(cache.get_json(inputs["structure"]), target, kernels.get)
    return {"tiling": cache.put_json(plan), "_extra": kernels.stats()}


def step_codegen(task: Task, cache: Cache, inputs: dict[str, str]) -> dict:
    program = codegen.run(cache.get_json(inputs["structure"]), cache.get_json(inputs["tiling"]),
                          cache.get_json(inputs["variables"]), task.params["role"], task.params["options"],
                          task.params.get("assign"))
    return {"program": cache.put_json(program)}


def step_pack(task: Task, cache: Cache, inputs: dict[str, str]) -> dict[str, str]:
    """The programs go into the manifest as the canonical JSON the cache holds, never decoded (``RawJSON``)."""
    graphs = [{**g, "program": RawJSON(cache.get_object(inputs[f"program:{g['name']}"]).decode())}
              for g in task.params["graphs"]]
    storage = cache.get_json(inputs["stored"])
    meta = pack.manifest(task.params["name"], task.params["target"], graphs, cache.get_json(inputs["variables"]),
                         cache.get_json(inputs["var_formats"]), storage)
    return {"digest": pack.run(meta, CachePlacer(cache, storage.get("packs", {})), task.context["out"])}


class CachePlacer:
    """pack's tensor bytes from the cache: entries' chunk files hard-linked, the packed array's chunks
    remembered by what they hold (tensor hashes and byte ranges), so after an edit only the chunks that
    changed are built."""

    def __init__(self, cache: Cache, packs: dict[str, str]):
        self.cache, self.packs = cache, packs  # packs: tensor hash -> the cache pack holding it

    def tensor(self, h: str, dest: Path) -> dict[str, str]:
        return self.cache.export_tensor(h, dest, pack=self.packs.get(h))

    def chunk(self, pieces: list[pack.Piece], size: int, dest: Path) -> str:
        key = hash_json({"packed-chunk": [[p.tensor, p.start, p.length, p.at] for p in pieces], "size": size})
        record = self.cache.get_action(key)
        if record is not None:
            try:
                return self.cache.place_object(record["object"], dest)
            except CacheMiss:
                pass  # gone since (gc): build it again
        buf = bytearray(size)
        for p in pieces:
            raw = stored_bytes(self.cache.get_tensor(p.tensor, pack=self.packs.get(p.tensor)))
            buf[p.at : p.at + p.length] = raw[p.start : p.start + p.length]
        data = bytes(buf)
        obj = self.cache.put_object(data)
        self.cache.put_action(key, {"object": obj})
        return self.cache.place_object(obj, dest, data)


STEPS: dict[str, Step] = {
    "parse": step_parse, "parse.weights": step_weights, "dedupe": step_dedupe, "formats.cost": step_format_costs,
    "formats.assign": step_formats_assign,
    "formats.weights": step_weight_formats,
    "formats": step_formats, "tiling": step_tiling, "codegen": step_codegen, "pack": step_pack,
}
