"""parse.weights: a graph's weight table; reads external-data files only when they changed.

The table is ``{"tensors": name -> tensor hash, "packs": tensor hash -> pack}``. An external tensor whose file
is unchanged is not read again: its reference is remembered per (file content hash, offset, dtype, shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..hashing import hash_json
from . import parse
from .stage import EXTERNAL_DATA, GRAPH, Input, Stage, StageContext

VERSION = parse.VERSION  # one version with parse since the two were split: keys stayed as they were


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    from ..ir.external import ExternalRef  # numpy
    from ..ir.external_map import MappedExternal

    refs = inputs["refs"]
    model_dir = Path(ctx.source.get("path", ".")).parent
    found: dict[str, dict] = {n: r for n, r in refs.items() if "tensor" in r}
    memos: dict[str, str] = {}
    for name, ref in refs.items():
        if name in found:
            continue
        memos[name] = hash_json({"external-tensor": ctx.hashes[f"file:{ref['external']['location']}"],
                                 "offset": ref["external"]["offset"], "dtype": ref["external"]["dtype"],
                                 "shape": list(ref["external"]["shape"])})
        record = ctx.cache.get_action(memos[name])
        if record is not None and ctx.cache.has_tensor(record["tensor"], record.get("pack")):
            found[name] = record
    missing = {n: MappedExternal(ExternalRef.from_json(refs[n]["external"], model_dir))
               for n in sorted(set(refs) - set(found))}
    stored = ctx.store_tensors(missing)
    for name, ref in stored.items():
        ctx.cache.put_action(memos[name], ref)
    found.update(stored)
    return {"weights": tensor_table(found)}


def tensor_table(refs: dict[str, dict]) -> dict:
    """``{"tensors": name -> hash, "packs": hash -> pack}`` from tensor references (``Cache.put_tensors``)."""
    return {"tensors": {n: r["tensor"] for n, r in sorted(refs.items())},
            "packs": {r["tensor"]: r["pack"] for _, r in sorted(refs.items()) if "pack" in r}}


STAGE = Stage("parse.weights", VERSION, compute, outputs=("weights",), inputs=(Input("parse", "refs"),),
              scope=GRAPH, reads=EXTERNAL_DATA)
