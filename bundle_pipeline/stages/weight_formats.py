"""formats.weights: constants and variable initial values converted to the formats their readers store them in.

A conversion is remembered per (tensor hash, format), so after a weight edit only the changed tensors are
converted again; the converted small ones go into one pack. Standard layouts (ND/NCHW) are the parsed bytes
themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hashing import hash_json
from ..layouts import STANDARD, storage_shape
from .parse_weights import tensor_table
from .stage import BUNDLE, Input, Stage, StageContext, Store

VERSION = "4"  # the version formats had when this was its bundle-level step: keys and conversion records stay


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    storage, var_formats, wanted = inputs["storage"], inputs["var_formats"], inputs["weight_formats"]
    placed: dict[str, tuple[str, str]] = {}  # stored id -> (constant id, format)
    bindings = {graph: {w: _stored_id(placed, cid, wanted[graph].get(w, "ND")) for w, cid in sorted(bound.items())}
                for graph, bound in storage["bindings"].items()}
    initial = {var: _stored_id(placed, cid, var_formats.get(var, "ND"))
               for var, cid in sorted(storage["initial"].items())}
    refs = converted(ctx.cache, storage, {(storage["constants"][cid]["hash"], fmt) for cid, fmt in placed.values()})
    stored = {}
    for sid, (cid, fmt) in sorted(placed.items()):
        const, shape = storage["constants"][cid], tuple(storage["constants"][cid]["shape"])
        stored[sid] = {**const, "hash": refs[const["hash"], fmt]["tensor"],
                       **({"format": fmt, "storage": list(storage_shape(fmt, shape))} if fmt not in STANDARD else {})}
    table = tensor_table({f"{h}@{fmt}": ref for (h, fmt), ref in refs.items()})
    return {"stored": {"constants": stored, "bindings": bindings, "initial": initial,
                       "tensors": {c["hash"]: c["hash"] for c in stored.values()}, "packs": table["packs"]}}


def _stored_id(placed: dict[str, tuple[str, str]], cid: str, fmt: str) -> str:
    sid = cid if fmt in STANDARD else f"{cid}@{fmt}"
    placed[sid] = (cid, fmt)
    return sid


def converted(cache: Store, storage: dict, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """(tensor hash, format) -> reference of the tensor in that format: the tensor itself for standard layouts,
    else a remembered conversion, else one made now (the small ones stored in one pack).

    A conversion is remembered per big tensor, and per (source pack, format) for the small ones: after a weight
    edit only the changed tensors, or the pack that changed, are converted again, at one record a pack rather
    than one a tensor."""
    from ..formats import to_format  # numpy

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
            key = hash_json({"transform": batch, "pack": pack_hash, "format": fmt, "version": VERSION})
            record = cache.get_action(key)
            if record is not None and all(cache.has_tensor(r["tensor"], r.get("pack")) for r in record["refs"]):
                refs.update({(h, fmt): r for h, r in zip(batch, record["refs"], strict=True)})
            else:
                memos[key] = (pack_hash, fmt, batch)
    todo = [(h, fmt) for _, fmt, batch in memos.values() for h in batch]
    sources = cache.get_tensors({h: packs.get(h) for h, _ in todo})
    made = cache.put_tensors({f"{h}@{fmt}": to_format(sources[h], fmt) for h, fmt in todo})
    for key, (_, fmt, batch) in memos.items():
        done = [made[f"{h}@{fmt}"] for h in batch]
        refs.update({(h, fmt): r for h, r in zip(batch, done, strict=True)})
        cache.put_action(key, {"refs": done})
    return refs


STAGE = Stage("formats.weights", VERSION, compute, outputs=("stored",),
              inputs=(Input("formats", "weight_formats"), Input("dedupe", "storage"),
                      Input("formats.assign", "var_formats")),
              params=("graph names",), scope=BUNDLE, preload=("bundle_pipeline.formats",))
