"""The plain zarr v3 layout this project writes and reads itself: no compression, little-endian ``bytes``
codec, a regular chunk grid, flat ``c.0.1`` chunk keys, every chunk written (edge chunks padded with 0).

Cache tensor entries and bundles use exactly this layout, so their files are written and read with plain
file I/O: importing and driving zarr costs more than the I/O itself (0.3 s to import, milliseconds a
tiny array). The metadata documents are byte-identical to what zarr 3 writes for the same array or group
(``json.dumps(..., indent=2)``, zarr's key order), so zarr opens everything written here, and entries
written by zarr before are read here too.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import uuid
from collections.abc import Iterator
from typing import Any

PLAIN_KEYS = {"name": "default", "configuration": {"separator": "."}}
MAX_RANK = 32


def array_meta(shape: tuple[int, ...], dtype: str, itemsize: int, chunks: tuple[int, ...],
               attributes: dict[str, Any]) -> dict[str, Any]:
    """zarr.json of a plain array of numpy dtype name ``dtype`` (a zarr v3 core data type)."""
    if dtype == "bool":
        fill: Any = False
    elif dtype.startswith("complex"):
        fill = [0.0, 0.0]
    elif dtype.startswith("float"):
        fill = 0.0
    else:
        fill = 0
    codec = {"name": "bytes", **({"configuration": {"endian": "little"}} if itemsize > 1 else {})}
    return {"shape": list(shape), "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": PLAIN_KEYS, "fill_value": fill, "codecs": [codec], "attributes": attributes,
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def group_meta(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": attributes, "zarr_format": 3, "node_type": "group"}


def dumps(meta: dict[str, Any]) -> bytes:
    """The bytes of a zarr.json, as zarr writes them."""
    return json.dumps(meta, indent=2).encode()


class RawJSON:
    """A value already encoded as canonical JSON (sorted keys, no whitespace, UTF-8 text): ``group_document``
    writes its text as it is, so a large stored object (a graph's program in the cache) is copied into the
    manifest without being decoded and encoded again."""

    __slots__ = ("text",)

    def __init__(self, text: str | bytes):
        self.text = text  # bytes as the cache holds them (UTF-8): never decoded on the way to the manifest


def group_document(attributes: dict[str, Any]) -> bytes:
    """A group's zarr.json without indentation, for a large document (a bundle's manifest): ``group_pieces``
    joined."""
    return b"".join(group_pieces(attributes))


def group_pieces(attributes: dict[str, Any]) -> list[bytes]:
    """``group_document``'s bytes as consecutive pieces, for a writer that takes them in turn (no copy of a
    manifest-sized buffer: new memory costs a page fault every 4 KiB on the development VM). Zarr's key order
    outside, the attributes' own top-level order (pack puts ``format_version`` and ``name`` first:
    ``guard.is_bundle`` reads them from the first bytes), everything below sorted, so the bytes never depend on
    the order nested dicts were built in. ``RawJSON`` values anywhere below are written verbatim.

    orjson writes it (a 2.9 MB manifest of 32 graphs: 2 ms, against 11-17 ms for json's C encoder); a value orjson
    cannot write (an int beyond 64 bits, a non-string key) sends the whole document through ``json``."""
    import orjson

    pieces = [b'{"attributes":{']
    try:
        for i, (k, v) in enumerate(attributes.items()):
            pieces += [b"," if i else b"", orjson.dumps(k), b":",
                       orjson.dumps(v, default=_fragment, option=orjson.OPT_SORT_KEYS)]
    except TypeError:
        pieces[1:] = [_json_body(attributes).encode()]
    return [*pieces, b'},"zarr_format":3,"node_type":"group"}']


def _fragment(o: Any) -> Any:
    import orjson

    if isinstance(o, RawJSON):
        return orjson.Fragment(o.text)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _json_body(attributes: dict[str, Any]) -> str:
    """``group_document``'s body by ``json``: each ``RawJSON`` is written as a unique placeholder string, then
    replaced by its text."""
    raws: list[str] = []
    token = uuid.uuid4().hex

    def placeholder(o: Any) -> str:
        if not isinstance(o, RawJSON):
            raise TypeError(f"{type(o).__name__} is not JSON serializable")
        raws.append(o.text if isinstance(o.text, str) else o.text.decode())
        return f"\0{token}:{len(raws) - 1}"

    body = ",".join(f"{json.dumps(k, ensure_ascii=False)}:"
                    f"{json.dumps(v, separators=(',', ':'), sort_keys=True, ensure_ascii=False, default=placeholder)}"
                    for k, v in attributes.items())
    if raws:  # the encoder escapes the NUL, so the quoted placeholder reads '"\u0000<token>:<i>"'
        body = re.sub(rf'"\\u0000{token}:(\d+)"', lambda m: raws[int(m[1])], body)
    return body


def is_plain(meta: dict[str, Any]) -> bool:
    """Whether an array's zarr.json describes the plain layout (anything else is read through zarr)."""
    codecs = meta.get("codecs")
    return (meta.get("zarr_format") == 3 and meta.get("node_type") == "array"
            and isinstance(codecs, list) and len(codecs) == 1 and isinstance(codecs[0], dict)
            and codecs[0].get("name") == "bytes" and codecs[0].get("configuration", {"endian": "little"})
            == {"endian": "little"} and meta.get("chunk_key_encoding") == PLAIN_KEYS
            and isinstance(meta.get("chunk_grid"), dict) and meta["chunk_grid"].get("name") == "regular"
            and not meta.get("storage_transformers"))


def chunk_counts(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[int]:
    return [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]


def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """(chunk file name, region of the array) for every chunk, in C order (zarr's order)."""
    for idx in itertools.product(*(range(n) for n in chunk_counts(shape, chunks))):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape, strict=True))
        yield "c" + "".join(f".{i}" for i in idx), region


def chunk_shape(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> tuple[int, ...]:
    """Chunk shape for an array: slabs of whole rows along axis 0 of at most ``chunk_bytes``, as few as that
    allows and of equal size (the last chunk is padded to the full chunk: balancing keeps the padding under a
    row a chunk).

    When a single row is already larger than ``chunk_bytes`` the slab moves to the first axis whose
    trailing block fits (leading axes get chunk size 1), so huge rows are still split.
    """
    if not shape:
        return ()
    for axis in range(len(shape)):
        block = itemsize * math.prod(shape[axis + 1 :])
        if block <= chunk_bytes or axis == len(shape) - 1:
            most = min(shape[axis], max(1, chunk_bytes // max(block, 1)))
            rows = -(-shape[axis] // -(-shape[axis] // most)) if shape[axis] else 1
            chunks = (1,) * axis + (rows,) + tuple(shape[axis + 1 :])
            return tuple(max(1, c) for c in chunks)  # zarr needs positive chunk sizes
    raise AssertionError("unreachable")
