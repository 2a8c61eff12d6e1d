"""``cache info`` and ``cache verify``: count and re-hash a root's entries, deleting corrupt ones; stateless."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache.actions import decode_action
from bundle_pipeline.cache.layout import AREAS, HASH_RE, KEY_RE, CacheMiss, Entry
from bundle_pipeline.cache.objects import get_object
from bundle_pipeline.cache.tensor_store import entry_intact

if TYPE_CHECKING:
    from bundle_pipeline.cache.backends import Backend


def info(backend: Backend, root: str) -> dict[str, Any]:
    """Entry counts and bytes per area, plus temp leftovers."""
    out: dict[str, Any] = {"root": root}
    temp = {"count": 0, "bytes": 0}
    for area in AREAS:
        stats = {"count": 0, "bytes": 0}
        for e in backend.entries(area):
            bucket = temp if e.is_temp else stats
            bucket["count"] += 1
            bucket["bytes"] += e.size
        out[area] = stats
    out["temp"] = temp
    out["total_bytes"] = sum(out[area]["bytes"] for area in AREAS) + temp["bytes"]
    return out


def verify(backend: Backend) -> dict[str, Any]:
    """Re-hash every object and tensor (and check every action); delete and list the corrupt ones.
    Files not named as cache entries are foreign: listed, never deleted."""
    checked, corrupt, foreign = 0, [], []
    for area in AREAS:
        for e in backend.entries(area):
            if e.is_temp:
                continue
            if not e.is_ours(area):
                foreign.append(backend.path(e.rel))
                continue
            checked += 1
            if not _entry_ok(backend, area, e):
                backend.remove_tree(e.rel)
                corrupt.append(backend.path(e.rel))
    return {"checked": checked, "corrupt": corrupt, "foreign": foreign}


def _entry_ok(backend: Backend, area: str, e: Entry) -> bool:
    if area == "actions":
        try:
            return (
                KEY_RE.fullmatch(e.name) is not None
                and e.shard == e.name[:2]
                and (decode_action(backend.read(e.rel)) is not None)
            )
        except FileNotFoundError:
            return True  # replaced or removed by someone else meanwhile: nothing to judge
        except (IsADirectoryError, NotADirectoryError):
            return False
    if not HASH_RE.fullmatch(e.name) or e.shard != e.name[:2]:
        return False
    if area == "tensors":
        return entry_intact(backend, e.name)
    try:
        get_object(backend, e.name)
    except (CacheMiss, IsADirectoryError, NotADirectoryError):
        return False
    return True
