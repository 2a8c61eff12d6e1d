"""The bundle's packed array (``pack.PACKED_ARRAY``), built where the small constants are converted.

Each small constant is converted into its stored format and its bytes copied straight into the chunk the bundle
hard-links (a cache object), so they are written once: not as a pack of converted tensors and then again as the
bundle's chunk. ``formats.weights`` lays the constants out (``pack.constant_table``, the same offsets the manifest
records) and calls ``build``; ``pack`` links the chunks it lists.

A chunk is remembered by what it holds: the (source tensor hash @ format, byte range, position) of each of its
pieces. After a weight edit only the chunks holding a changed constant are built again; each other chunk is found
by its record, which also names the content hash of every converted constant it holds (the manifest lists them).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ..dtypes import stored_bytes
from ..hashing import hash_json
from ..layouts import STANDARD
from . import pack
from .stage import Store

VERSION = "1"  # bump when a chunk's bytes change for the same pieces


def source_name(h: str, fmt: str) -> str:
    """What a piece of the packed array is called: its source tensor and the format it is stored in."""
    return f"{h}@{fmt}"


def build(cache_: Store, table: Mapping[str, dict], packs: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The packed array's chunk objects, in order, for ``table`` (``pack.constant_table`` whose ``hash`` is
    ``source_name``), and the content hash of each constant in it by source name. ``packs``: source tensor hash
    -> the cache pack holding it."""
    size, chunks = pack.packed_chunks({"constants": table})
    objects: list[str] = []
    hashes: dict[str, str] = {}
    todo: dict[int, str] = {}
    for i, pieces in enumerate(chunks):
        key = hash_json({"weights-chunk": [[p.tensor, p.start, p.length, p.at] for p in pieces], "size": size,
                         "version": VERSION})
        record = cache_.get_action(key)
        if record is not None and cache_.has_object(record["object"]):
            objects.append(record["object"])
            hashes.update(record["tensors"])
        else:
            objects.append("")
            todo[i] = key
    converter = _Converter(cache_, {p.tensor for i in todo for p in chunks[i]}, packs)
    for i, key in todo.items():
        data, held = _chunk_bytes(chunks[i], size, converter)
        objects[i] = cache_.put_object(data, placed=True)
        cache_.put_action(key, {"object": objects[i], "tensors": held})
        hashes.update(held)
    unplaced = {c["hash"] for c in table.values() if c["array"] == pack.PACKED_ARRAY and c["hash"] not in hashes}
    hashes.update(_Converter(cache_, unplaced, packs).hashes(unplaced))  # empty tensors: in no chunk
    return objects, hashes


class _Converter:
    """Source tensors read once (each pack once), converted on first use; the last chunk's kept for the next."""

    def __init__(self, cache_: Store, names: set[str], packs: Mapping[str, str]):
        sources = {n.rsplit("@", 1)[0] for n in names}
        self.arrays = cache_.get_tensors({h: packs.get(h) for h in sorted(sources)}) if sources else {}
        self.done: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self.done:
            from ..formats import to_format  # numpy

            h, fmt = name.rsplit("@", 1)
            self.done[name] = to_format(self.arrays[h], fmt)
        return self.done[name]

    def keep_only(self, names: set[str]) -> None:
        self.done = {n: a for n, a in self.done.items() if n in names}

    def hashes(self, names: set[str]) -> dict[str, str]:
        """Content hash of each converted constant (a standard layout's is its source's)."""
        from ..hashing import tensor_hash

        return {n: n.rsplit("@", 1)[0] if n.rsplit("@", 1)[1] in STANDARD else tensor_hash(self.get(n))
                for n in sorted(names)}


def _chunk_bytes(pieces: list[pack.Piece], size: int, converter: _Converter) -> tuple[bytes, dict[str, str]]:
    """One chunk's bytes (the pieces, zeros elsewhere) in one copy, and the hash of each constant it holds."""
    names = {p.tensor for p in pieces}
    converter.keep_only(names)  # a constant that straddles two chunks is converted once
    parts: list[Any] = []
    pos = 0
    for p in pieces:
        if p.at > pos:
            parts.append(_zeros(size)[: p.at - pos])
        parts.append(stored_bytes(converter.get(p.tensor))[p.start : p.start + p.length])
        pos = p.at + p.length
    if pos < size:
        parts.append(_zeros(size)[: size - pos])
    return b"".join(parts), converter.hashes(names)


@lru_cache(maxsize=2)
def _zeros(size: int) -> memoryview:
    return memoryview(bytes(size))  # calloc'd: pages no one writes stay the shared zero page
