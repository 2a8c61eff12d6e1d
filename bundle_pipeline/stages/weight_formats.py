"""formats.weights: constants and variable initial values converted to the formats their readers store them in.

The small ones (``pack.PACKED_MAX_BYTES``) are converted straight into the chunks of the bundle's packed array
(``weight_chunks``: their bytes are written once, and ``pack`` links the chunks); each larger one becomes a tensor
entry of its own, its conversion remembered per (tensor hash, format). After a weight edit only the changed chunks
and tensors are built again. Standard layouts (ND/NCHW) are the parsed bytes themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hashing import hash_json
from ..layouts import STANDARD, storage_shape
from . import pack, weight_chunks
from .parse_weights import tensor_table
from .stage import BUNDLE, Input, Stage, StageContext, Store

VERSION = "7"  # 5: small constants go straight into the packed array's chunks (no pack of converted tensors);
# 6: the constants come laid out (``pack.constant_table``'s array, offset, nbytes), so pack does not lay them out again;
# 7: the laid-out table is an output of its own (``constants``), which pack copies into the manifest undecoded


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    storage, var_formats, wanted = inputs["storage"], inputs["var_formats"], inputs["weight_formats"]
    placed: dict[str, tuple[str, str]] = {}  # stored id -> (constant id, format)
    bindings = {graph: {w: _stored_id(placed, cid, wanted[graph].get(w, "ND")) for w, cid in sorted(bound.items())}
                for graph, bound in storage["bindings"].items()}
    initial = {var: _stored_id(placed, cid, var_formats.get(var, "ND"))
               for var, cid in sorted(storage["initial"].items())}
    layout = pack.constant_table({sid: _entry(storage["constants"][cid], fmt) for sid, (cid, fmt) in placed.items()})
    small = {sid for sid, c in layout.items() if c["array"] == pack.PACKED_ARRAY}
    packs = storage.get("packs", {})
    chunks, small_hashes = weight_chunks.build(ctx.cache, layout, packs)
    refs = converted(ctx.cache, storage, {(storage["constants"][cid]["hash"], fmt)
                                          for sid, (cid, fmt) in placed.items() if sid not in small})
    stored = {}
    for sid, (cid, fmt) in sorted(placed.items()):
        const = storage["constants"][cid]
        h = small_hashes[layout[sid]["hash"]] if sid in small else refs[const["hash"], fmt]["tensor"]
        stored[sid] = {**layout[sid], "hash": h}  # where it lives, as pack writes it into the manifest
    table = tensor_table({f"{h}@{fmt}": ref for (h, fmt), ref in refs.items()})
    # gc keeps what "tensors" (entries) and "packs" (objects) name: the big constants, the packed array's chunks
    chunk_names = {f"{pack.PACKED_ARRAY}/c.{i}": obj for i, obj in enumerate(chunks)}
    return {"stored": {"layout": pack.Layout.of(stored).to_json(), "bindings": bindings, "initial": initial,
                       "chunks": chunks, "tensors": {r["tensor"]: r["tensor"] for r in refs.values()},
                       "packs": {**table["packs"], **chunk_names}},
            "constants": stored}  # the manifest's table (thousands of entries): pack reads it as stored text


def _entry(const: dict, fmt: str) -> dict:
    """A stored constant without its content hash yet: ``hash`` names its source and format (the packed array's
    layout and chunk records use that), ``format`` and ``storage`` shape when not a standard layout."""
    return {**const, "hash": weight_chunks.source_name(const["hash"], fmt),
            **({"format": fmt, "storage": list(storage_shape(fmt, tuple(const["shape"])))}
               if fmt not in STANDARD else {})}


def _stored_id(placed: dict[str, tuple[str, str]], cid: str, fmt: str) -> str:
    sid = cid if fmt in STANDARD else f"{cid}@{fmt}"
    placed[sid] = (cid, fmt)
    return sid


def converted(cache: Store, storage: dict, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """(tensor hash, format) -> reference of the tensor in that format: the tensor itself for standard layouts,
    else a remembered conversion, else one made now (``compute`` asks this for the constants too big for the
    packed array: each is stored as an entry of its own).

    A conversion is remembered per tensor, and per (source pack, format) for tensors read from a pack: after a
    weight edit only the changed tensors, or the pack that changed, are converted again."""
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


STAGE = Stage("formats.weights", VERSION, compute, outputs=("stored", "constants"),
              inputs=(Input("formats", "weight_formats"), Input("dedupe.storage", "storage"),
                      Input("formats.assign", "var_formats")),
              params=("graph names",), scope=BUNDLE, preload=("bundle_pipeline.formats",))
