"""Owns the root's marker file ``bundle-pipeline-cache.json``, which tells a cache from a user's directory.

A root gets the marker when this process creates it (``LocalBackend``), when a build first uses it (``claim``)
or when ``cache info|verify|gc`` adopt a cache made before markers existed (``require``). Commands that
delete act only on marked or adopted roots, so a mistyped ``--cache`` never empties a user's directory.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from bundle_pipeline.cache.actions import decode_action
from bundle_pipeline.cache.layout import MARKER, MARKER_BYTES, NotACache, cache_shaped

if TYPE_CHECKING:
    from bundle_pipeline.cache.backends import Backend


def is_marked(backend: Backend) -> bool:
    return backend.exists(MARKER)


def claim(backend: Backend) -> None:
    """Before a build: the root must be a cache, nothing yet, an empty directory, or hold nothing but cache
    areas (a cache made before markers existed, or one a remote writer started); it gets the marker.
    NotACache otherwise. (A build only adds entries; ``require`` asks more before anything is deleted.)"""
    if not may_claim(backend):
        backend.write_atomic(MARKER, MARKER_BYTES)


def may_claim(backend: Backend) -> bool:
    """``claim``'s check alone, writing nothing: True when already marked; NotACache when not claimable."""
    if is_marked(backend):
        return True
    names = _top_names(backend)
    if names and not cache_shaped(names):
        raise NotACache(f"not empty and not a bundle-pipeline cache (it has no {MARKER}); point the cache at "
                        f"a new directory or at an existing cache")
    return False


def require(backend: Backend) -> str:
    """Before ``cache info|verify|gc``: "marked", or "adopted" for a cache made before markers existed (it
    gets the marker now). NotACache, with nothing touched, for anything else."""
    if is_marked(backend):
        return "marked"
    names = _top_names(backend)
    if names is None:
        raise NotACache("there is no cache here")
    if not _is_legacy(backend, names):
        raise NotACache(f"not a bundle-pipeline cache (no {MARKER}, and not a cache's layout: only objects/, "
                        f"tensors/, actions/, state/ and at least one intact task record); nothing was touched")
    backend.write_atomic(MARKER, MARKER_BYTES)
    return "adopted"


def _top_names(backend: Backend) -> set[str] | None:
    try:
        return backend.top_names()
    except NotADirectoryError:
        raise NotACache("a file, not a cache directory") from None


def _is_legacy(backend: Backend, names: set[str]) -> bool:
    """A cache written before the marker existed: nothing but cache areas at its top, and at least one
    intact action record (its blake3 checksum matches: no file of a user's does by chance)."""
    if not cache_shaped(names):
        return False
    for e in backend.entries("actions"):
        if e.is_ours("actions") and not e.is_temp:
            with contextlib.suppress(OSError):
                if decode_action(backend.read_quiet(e.rel)) is not None:
                    return True
    return False
