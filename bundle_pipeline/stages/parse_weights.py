"""parse.weights: a graph's weight table; reads external-data files only when they changed.

The table is ``{"tensors": name -> tensor hash, "packs": tensor hash -> pack}``. An external tensor whose file
is unchanged is not read again: a large one is found by the range hash the stat state remembers (the name it
is stored under), a small one by its reference, remembered per (file digest, offset, dtype, shape) (it is in a
pack). A large one
that is read is mapped, not copied (``ir/external_map.py``), and stored under the tensor hash the file digest
was made of (``tasks/sources.py``) while the file keeps the stat signature it was hashed at: hashed once.
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

    refs = inputs["refs"]
    model_dir = Path(ctx.source.get("path", ".")).parent
    found: dict[str, dict] = {n: r for n, r in refs.items() if "tensor" in r}
    by_file: dict[str, dict[str, dict]] = {}
    for name, ref in refs.items():
        if name not in found:
            by_file.setdefault(ref["external"]["location"], {})[name] = ref["external"]
    for location, externals in sorted(by_file.items()):  # large ones from unchanged files: no memo to read
        found.update(ctx.stored_ranges(model_dir / location, externals))
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
    missing = {n: _mapped(ExternalRef.from_json(refs[n]["external"], model_dir), refs[n]["external"], ctx)
               for n in sorted(set(refs) - set(found))}
    stored = ctx.store_tensors(missing)
    for location, externals in sorted(by_file.items()):  # before anything is recorded under this key
        read = {n: stored[n]["tensor"] for n in externals if n in stored}
        if read:
            ctx.check_read(location, model_dir / location, externals, read)
    for name, ref in stored.items():
        ctx.cache.put_action(memos[name], ref)
    found.update(stored)
    return {"weights": tensor_table(found)}


def _mapped(ref: Any, external: dict, ctx: StageContext) -> Any:
    """A loader of ``ref`` that maps a large tensor and carries the tensor hash the source digest remembered for
    its range (``tasks/sources.py``): storing it then hashes nothing, if the file still has that stat."""
    from ..ir.external_map import MappedExternal
    from ..ir.external_ranges import range_key

    remembered = ctx.cache.known_ranges(ref.path)
    h = None if remembered is None else remembered[1].get(
        range_key(external["offset"], external["dtype"], external["shape"]))
    return MappedExternal(ref, None if h is None else (remembered[0], h))


def tensor_table(refs: dict[str, dict]) -> dict:
    """``{"tensors": name -> hash, "packs": hash -> pack}`` from tensor references (``Cache.put_tensors``)."""
    return {"tensors": {n: r["tensor"] for n, r in sorted(refs.items())},
            "packs": {r["tensor"]: r["pack"] for _, r in sorted(refs.items()) if "pack" in r}}


STAGE = Stage("parse.weights", VERSION, compute, outputs=("weights",),
              inputs=(Input("parse", "refs"), Input("parse", "sources")),  # sources: the key's external files
              scope=GRAPH, reads=EXTERNAL_DATA,  # the tensor store's arrays; mapping and writing a large tensor
              preload=("bundle_pipeline.cache.tensors", "bundle_pipeline.ir.external_map",
                       "bundle_pipeline.cache.direct_io"))
