"""Owns ``objects/``: bytes named by their blake3 hash; in memory, ``RECENT_JSON`` (decoded outputs).

State kept: ``RECENT_JSON``, the stage outputs this process decoded or encoded lately, each with the stat of
the file it came from, so a build's tasks read each other's outputs (a structure is read by four later stages)
without reading and decoding the bytes again.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache.actions import get_action, put_action
from bundle_pipeline.cache.backend_local import link_or_copy
from bundle_pipeline.cache.layout import CacheMiss, check_hash, object_rel
from bundle_pipeline.cache.recent import Recent
from bundle_pipeline.hashing import hash_bytes, hash_json, sha256_hex, stored_json

if TYPE_CHECKING:
    from bundle_pipeline.cache.backends import Backend

RECENT_JSON = Recent(64 << 20)


def put_object(backend: Backend, data: bytes, placed: bool = False) -> str:
    """Store ``data`` under its hash and return the hash; a no-op when already stored.

    ``placed``: the object is to be placed into a bundle (``place_object``): when this call writes it to a local
    cache, the sha256 of ``data`` is remembered with the new file's stat now, so placing it reads nothing."""
    data = bytes(data)
    h = hash_bytes(data)
    rel = object_rel(h)
    if not backend.exists(rel):
        backend.write_atomic(rel, data)
        if placed and backend.is_local:
            _remember_sha256(backend, h, sha256_hex(data))
    return h


def _sha256_memo(h: str) -> str:
    return hash_json({"object-sha256": h})


def _file_stat(backend: Backend, h: str) -> list[int]:
    st = os.stat(backend.path(object_rel(h)))
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _remember_sha256(backend: Backend, h: str, digest: str) -> None:
    put_action(backend, _sha256_memo(h), {"stat": _file_stat(backend, h), "sha256": digest})


def get_object(backend: Backend, h: str) -> bytes:
    """The bytes stored under ``h``; CacheMiss when missing or corrupt (a corrupt entry is deleted)."""
    rel = object_rel(check_hash(h))
    try:
        data = backend.read(rel)
    except FileNotFoundError:
        raise CacheMiss(h) from None
    if hash_bytes(data) != h:
        backend.remove(rel)
        raise CacheMiss(h)
    return data


def has_object(backend: Backend, h: str) -> bool:
    """Whether an entry exists (unverified: ``get_object`` may still miss)."""
    return backend.exists(object_rel(check_hash(h)))


def place_object(backend: Backend, h: str, dest: str | os.PathLike[str], data: bytes | None = None) -> str:
    """Put object ``h``'s bytes at local file ``dest`` and return their sha256 (a bundle lists it).

    A local cache hard-links the object (``dest`` must not be modified: it is the cache's own file) and
    remembers its sha256 per file stat, as ``export_tensor`` does for tensor entries: a changed stat makes
    us read and verify the object again. ``data``: its bytes, when the caller just stored them.
    """
    if not backend.is_local:
        data = get_object(backend, h)
        with open(dest, "wb") as f:
            f.write(data)
        return sha256_hex(data)
    try:
        stat = _file_stat(backend, check_hash(h))
    except FileNotFoundError:
        raise CacheMiss(h) from None
    record = get_action(backend, _sha256_memo(h))
    if record is not None and record.get("stat") == stat:
        digest = record["sha256"]
    else:
        digest = sha256_hex(data if data is not None else get_object(backend, h))
        _remember_sha256(backend, h, digest)
    link_or_copy(backend.path(object_rel(h)), os.fspath(dest))
    return digest


def put_json(backend: Backend, obj: Any) -> str:
    """Store the canonical JSON of ``obj`` as an object; equal values give equal hashes. ``obj`` must not be
    changed afterwards: this process hands it to the next ``get_json`` of its hash (``RECENT_JSON``)."""
    data = stored_json(obj)
    h = put_object(backend, data)
    RECENT_JSON.put(h, len(data), (stamp(backend, h), obj))
    return h


def get_json(backend: Backend, h: str) -> Any:
    """The value of a JSON object stored by ``put_json``; CacheMiss like ``get_object``. Read-only: the
    value may be shared with other tasks of this process (``RECENT_JSON``)."""
    found = RECENT_JSON.get(check_hash(h))
    if found is not None and found[0] is not None and found[0] == stamp(backend, h):
        return found[1]  # this cache's entry, untouched since this process verified it
    data = get_object(backend, h)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # the right bytes, but no JSON this tool wrote (nested past the parser's
        raise CacheMiss(h) from None  # depth, or binary): a miss, as a damaged entry is, never a crash
    RECENT_JSON.put(h, len(data), (stamp(backend, h), obj))
    return obj


def stamp(backend: Backend, h: str) -> tuple[str, int, int, int] | None:
    """Which file object ``h`` is (root, size, mtime_ns, inode): a decoded copy kept in this process is
    reused only while the file is the one it came from (not rewritten, not another cache's). None on
    object stores, where nothing decoded is reused."""
    if not backend.is_local:
        return None
    try:
        st = os.stat(backend.path(object_rel(h)))
    except FileNotFoundError:
        return None
    return (backend.root, st.st_size, st.st_mtime_ns, st.st_ino)
