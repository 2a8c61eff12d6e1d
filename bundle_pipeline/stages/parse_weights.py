"""parse.weights: a graph's weight table; reads external-data files only when they changed.

The table is ``{"tensors": name -> tensor hash, "packs": tensor hash -> pack}``. An external tensor whose bytes
are unchanged is not read again: a large one is found by the range hash the stat state remembers (the name it
is stored under), a small one by its reference (it is in a pack), remembered per range hash, or per (file
digest, offset, dtype, shape) when the file's digest is not made of range hashes. A large one
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
    remembered: dict[str, str] = {}  # name -> the range hash the file's digest was made of, when remembered
    for location, externals in sorted(by_file.items()):  # large ones from unchanged ranges: no memo to read
        stored, remembered_here = ctx.stored_ranges(location, model_dir / location, externals)
        found.update(stored)
        remembered.update(remembered_here)
    memos: dict[str, str] = {}
    for name, ref in refs.items():
        if name in found:
            continue
        memos[name] = _memo_key(ref["external"], ctx.hashes[f"file:{ref['external']['location']}"],
                                remembered.get(name))
        record = ctx.cache.get_action(memos[name])
        if (record is not None and record["tensor"] == remembered.get(name, record["tensor"])
                and ctx.cache.has_tensor(record["tensor"], record.get("pack"))):
            found[name] = record
    missing = {n: _mapped(ExternalRef.from_json(refs[n]["external"], model_dir), refs[n]["external"], ctx)
               for n in sorted(set(refs) - set(found))}
    stored = ctx.store_tensors(missing)
    for location, externals in sorted(by_file.items()):  # before anything is recorded under this key
        read = {n: stored[n]["tensor"] for n in externals if n in stored}
        if read:
            ctx.check_read(location, model_dir / location, externals, read)
    for name, ref in stored.items():
        if ref["tensor"] == remembered.get(name, ref["tensor"]):  # else the file changed since: the next build's
            ctx.cache.put_action(memos[name], ref)
    found.update(stored)
    return {"weights": tensor_table(found)}


def _memo_key(external: dict, file_digest: str, range_hash: str | None) -> str:
    """Where the reference of a small tensor (in a pack) is remembered: by its range hash, which names its bytes
    wherever they lie, so an edit of another weight of a one-file model (onnx's default external-data layout)
    finds it again; by the file's digest and the range when the file's digest is not made of range hashes."""
    if range_hash is not None:
        return hash_json({"stored-tensor": range_hash})
    return hash_json({"external-tensor": file_digest, "offset": external["offset"], "dtype": external["dtype"],
                      "shape": list(external["shape"])})


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
