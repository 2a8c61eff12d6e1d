"""The names on a cache root (areas, entries, temps, the marker) and the checks on them; stateless.

On-disk state
-------------
Everything lives under one root (``.bundle-cache/`` by default, or ``memory://...``, ``s3://...``)::

    objects/<h[:2]>/<h>          bytes whose blake3 hash (``hash_bytes``) is ``h``; stage outputs
                                 (canonical JSON via ``put_json``, msgpack, ...)  (``objects.py``)
    tensors/<h[:2]>/<h>/         a zarr v3 array whose ``tensor_hash`` is ``h`` (see ``tensors.py``)
    actions/<key[:2]>/<key>      canonical JSON ``{"checksum": hash_json(record), "record": record,
                                 "v": 1}`` mapping a task key to its record (output hashes, timing)
                                 (``actions.py``)
    state/stat.json              input-file stat state, local roots only (see ``statstate.py``)
    state/outputs.json           which build wrote each output path of this machine (idem)
    state/spares/<h[:32]>/       the bundle tree a re-pack of an output path replaced, kept for that output's
                                 next pack to update (``stages/pack_spare.py``); ``gc`` empties them
    */<xx>/.tmp-<uuid>           a write in progress, or a leftover of a crashed one (``gc`` removes)
    bundle-pipeline-cache.json   the marker: written when the root is created (or first used by a build),
                                 so that ``cache info|verify|gc`` act only on caches (``marker.py``)

Only entries named as the cache names them (``<area>/<2 hex>/<64 hex>``, actions by key, temps
``.tmp-<32 hex>``) are ever judged or removed: anything else found under the areas is foreign
(a user's file) and left alone, and listed by ``verify``.

How entries are written and why a reader never takes a torn one: ``backend_local.py``,
``backend_fsspec.py``. What ``gc`` keeps and evicts: ``gc.py``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TEMP_PREFIX = ".tmp-"
AREAS = ("objects", "tensors", "actions")
MARKER = "bundle-pipeline-cache.json"
MARKER_BYTES = b'{"bundle-pipeline-cache": 1}\n'
# What a cache root holds at its top: a directory with only these (and temps) is cache-shaped.
ROOT_NAMES = frozenset({*AREAS, "state", MARKER})

HASH_RE = re.compile(r"[0-9a-f]{64}")
# Action keys are usually hashes, but any short file-name-safe word works; a leading "." is
# reserved for temp names and "/" could escape the shard directory.
KEY_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{1,254}")
TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}")


class CacheMiss(KeyError):
    """The entry is missing, or was corrupt (and has been removed)."""


class NotACache(Exception):
    """A path that cache commands must not touch: it is no cache (no marker, not a cache's layout)."""


def temp_name() -> str:
    """A fresh temp entry name; unique across processes and hosts sharing a cache."""
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}"


def check_hash(h: str) -> str:
    """Return ``h`` if it is a 64-hex-digit content hash, else raise ValueError (never a path)."""
    if not isinstance(h, str) or not HASH_RE.fullmatch(h):
        raise ValueError(f"not a content hash: {h!r}")
    return h


def check_key(key: str) -> str:
    """Return ``key`` if it is a usable action key, else raise ValueError."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValueError(f"invalid action key {key!r}: use 2-255 chars of [0-9A-Za-z._-], not starting with '.'")
    return key


def object_rel(h: str) -> str:
    return f"objects/{h[:2]}/{h}"


def action_rel(key: str) -> str:
    return f"actions/{key[:2]}/{key}"


def cache_shaped(names: set[str]) -> bool:
    """Nothing at a root but what a cache puts there."""
    return all(n in ROOT_NAMES or TEMP_RE.fullmatch(n) for n in names)


def hashes_in(values: Iterable[Any]) -> set[str]:
    """The content hashes among ``values``, each a hash or a list of hashes (the gc convention)."""
    out: set[str] = set()
    for v in values:
        items = v if isinstance(v, list | tuple) else [v]
        out.update(x for x in items if isinstance(x, str) and HASH_RE.fullmatch(x))
    return out


@dataclass(frozen=True)
class Entry:
    """One listed cache entry: a file (objects, actions) or a directory (tensors, temp dirs)."""

    rel: str  # path relative to the cache root, "<area>/<shard>/<name>"
    shard: str
    name: str
    size: int  # bytes, summed over the tree for directories
    mtime: float | None  # newest modification time (epoch seconds), None when the fs doesn't say
    used: float | None = None  # newest of atime and mtime (local disks); mtime elsewhere

    @property
    def is_temp(self) -> bool:
        return TEMP_RE.fullmatch(self.name) is not None

    def is_ours(self, area: str) -> bool:
        """Named as the cache names its entries: anything else under an area is a user's file, never touched."""
        if self.is_temp:
            return True
        if area == "actions":
            return KEY_RE.fullmatch(self.name) is not None and self.shard == self.name[:2]
        return HASH_RE.fullmatch(self.name) is not None and self.shard == self.name[:2]
