"""The ``Cache`` facade: holds one root's backend, its options and this machine's stat and output state.

The jobs live in their own modules; this one wires them to a root and is what other packages import:

    layout.py          the names on a root (areas, entries, temps, the marker) -- the on-disk layout
    backend_local.py   local-disk file operations (atomic ``os.replace``)
    backend_fsspec.py  fsspec file operations (S3, GCS, memory://; atomic PUTs), remote-root configuration
    backends.py        which backend a root gets
    objects.py         content-addressed bytes and JSON
    actions.py         checksummed task records
    tensor_store.py    tensors: entries (``tensors.py``, zarr) and packs (``packs.py``), placed into bundles
    marker.py          telling a cache from a user's directory
    verify.py, gc.py   ``cache info|verify`` and ``cache gc`` (reachability, eviction)
    statstate.py       input stat state and output records of this machine
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import bundle_pipeline.cache.actions as actions
import bundle_pipeline.cache.marker as marker
import bundle_pipeline.cache.objects as objects
import bundle_pipeline.cache.tensor_store as tensor_store
from bundle_pipeline.cache.backend_local import LocalBackend
from bundle_pipeline.cache.backends import open_backend
from bundle_pipeline.cache.layout import AREAS, MARKER, CacheMiss, NotACache
from bundle_pipeline.cache.statstate import OutputState, RangeHash, StatState
from bundle_pipeline.cache.tensor_store import DEFAULT_CHUNK_BYTES
from bundle_pipeline.hashing import hash_bytes

if TYPE_CHECKING:
    import contextlib

    import numpy as np

# The names other packages and tests take from here; the layout names are the on-disk contract.
__all__ = ["AREAS", "DEFAULT_CHUNK_BYTES", "MARKER", "Cache", "CacheMiss", "NotACache"]


def _default_state_dir(root: str) -> str:
    """Where a remote cache keeps this machine's stat state: under the user's local cache dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bundle-pipeline", "state", hash_bytes(root.encode())[:16])


def _rebuild_cache(root: str, options: dict[str, Any]) -> Cache:
    return Cache(root, **options)


class Cache:
    """The build cache: content-addressed objects and tensors, task actions, input stat state.

    ``root`` is a local path or an fsspec URL; directories are created on first write.
    ``chunk_bytes`` sets the tensor chunk size. The stat state is ``<root>/state/stat.json`` for
    local roots and ``<state_dir>/stat.json`` for remote ones (default state_dir:
    ``$XDG_CACHE_HOME or ~/.cache`` + ``/bundle-pipeline/state/<hash of root>``), because it records
    paths, inodes and mtimes of *this* machine's files; ``state_dir`` may also be given for a
    local root to keep the state elsewhere.
    Sent to another process (dask), a Cache is rebuilt from its root and options alone.
    Each method's contract is documented where it is implemented (the module named in its docstring).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        storage_options: dict[str, Any] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ):
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self._options: dict[str, Any] = {
            "chunk_bytes": chunk_bytes,
            "storage_options": storage_options,
            "state_dir": None if state_dir is None else os.fspath(state_dir),
        }
        self._backend = open_backend(root, storage_options)
        given = os.fspath(root)
        self.root: str = self._backend.root if self._backend.is_local else given.rstrip("/")
        self.chunk_bytes = chunk_bytes
        if state_dir is not None:
            state, prefix = LocalBackend(os.path.abspath(os.fspath(state_dir))), ""
        elif isinstance(self._backend, LocalBackend):
            state, prefix = self._backend, "state/"
        else:
            state, prefix = LocalBackend(_default_state_dir(self.root)), ""
        self._spares = state.path(f"{prefix}spares") if self._backend.is_local else None
        self._stat = StatState(state, f"{prefix}stat.json")
        self._outputs = OutputState(state, f"{prefix}outputs.json")

    def __repr__(self) -> str:
        return f"Cache({self.root!r})"

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        return _rebuild_cache, (self.root, self._options)

    # -- objects (objects.py) ---------------------------------------------------------------------

    def put_object(self, data: bytes, placed: bool = False) -> str:
        """Store ``data`` under its hash and return the hash; a no-op when already stored. ``placed``: it will be
        placed into a bundle (``place_object``), so a local cache remembers its sha256 now (see objects.py)."""
        return objects.put_object(self._backend, data, placed)

    def get_object(self, h: str) -> bytes:
        """The bytes stored under ``h``; CacheMiss when missing or corrupt (a corrupt entry is deleted)."""
        return objects.get_object(self._backend, h)

    def has_object(self, h: str) -> bool:
        """Whether an entry exists (unverified: ``get_object`` may still miss)."""
        return objects.has_object(self._backend, h)

    def place_object(self, h: str, dest: str | os.PathLike[str], data: bytes | None = None) -> str:
        """Put object ``h``'s bytes at local file ``dest`` (a hard link on local caches); return their sha256."""
        return objects.place_object(self._backend, h, dest, data)

    def put_json(self, obj: Any) -> str:
        """Store the canonical JSON of ``obj`` as an object; ``obj`` must not be changed afterwards."""
        return objects.put_json(self._backend, obj)

    def get_json(self, h: str) -> Any:
        """The value of a JSON object stored by ``put_json``; read-only (shared within this process)."""
        return objects.get_json(self._backend, h)

    # -- tensors (tensor_store.py) ----------------------------------------------------------------

    def put_tensor(self, arr: np.ndarray, known_hash: str | None = None, likely_new: bool = False) -> str:
        """Store an array as a zarr array under its ``tensor_hash`` and return the hash; idempotent. ``known_hash``:
        the caller's ``tensor_hash`` of exactly these bytes (not computed again). ``likely_new``: the caller found
        no entry for them, so a large one is hashed while it is written (``cache/tensors.py``)."""
        return tensor_store.put_tensor(self._backend, arr, self.chunk_bytes, known_hash, likely_new)

    def get_tensor(self, h: str, verify: bool = True, pack: str | None = None) -> np.ndarray:
        """The array stored under ``h`` (in ``pack``, if given); CacheMiss when missing or corrupt."""
        return tensor_store.get_tensor(self._backend, h, verify, pack)

    def get_tensors(self, refs: Mapping[str, str | None]) -> dict[str, np.ndarray]:
        """Many tensors at once (tensor hash -> its pack or None); each pack read once."""
        return tensor_store.get_tensors(self._backend, refs)

    def has_tensor(self, h: str, pack: str | None = None) -> bool:
        """Whether a published entry, or the pack said to hold it, exists (unverified)."""
        return tensor_store.has_tensor(self._backend, h, pack)

    def put_tensors(self, arrays: Mapping[str, Any]) -> dict[str, dict[str, str]]:
        """Store many tensors at once (small ones in one pack); name -> ``{"tensor": h[, "pack": p]}``."""
        return tensor_store.put_tensors(self._backend, arrays, self.chunk_bytes)

    def export_tensor(self, h: str, dest: str | os.PathLike[str], pack: str | None = None) -> dict[str, str]:
        """Place tensor ``h`` as a plain zarr array at local directory ``dest``; the sha256 of each file."""
        return tensor_store.export_tensor(self._backend, h, dest, self.chunk_bytes, pack)

    def placed_tensor(self, h: str, dest: str | os.PathLike[str]) -> dict[str, str] | None:
        """``export_tensor``'s answer when ``dest`` already holds exactly what it would place, else None."""
        return tensor_store.placed_tensor(self._backend, h, dest, self.chunk_bytes)

    def tensor_chunks(self, h: str) -> list[str]:
        """The sha256 of each stored chunk file, in chunk (C) order; CacheMiss when missing or damaged."""
        return tensor_store.tensor_chunks(self._backend, h)

    # -- actions (actions.py) ---------------------------------------------------------------------

    def put_action(self, key: str, record: dict[str, Any]) -> None:
        """Store (or replace) the record of task ``key``, checksummed so truncation is detected."""
        actions.put_action(self._backend, key, record)

    def get_action(self, key: str) -> dict[str, Any] | None:
        """The record of task ``key``, or None when missing or corrupt; never raises on bad data."""
        return actions.get_action(self._backend, key)

    def remove_action(self, key: str) -> None:
        """Forget the record of ``key`` (its task runs again next time); a no-op when absent."""
        actions.remove_action(self._backend, key)

    # -- input files and outputs of this machine (statstate.py) -----------------------------------

    def file_hash(self, path: str | os.PathLike[str]) -> str:
        """``hash_bytes`` of a local file's content, re-hashed only when its stat changed."""
        return self._stat.file_hash(path)

    def deferred_file_hashes(self) -> contextlib.AbstractContextManager[None]:
        """Within: ``file_hash`` saves the stat state once at the end, not once per new file (the planner)."""
        return self._stat.deferred()

    def range_hashes(self, path: str | os.PathLike[str], keys: list[str], hash_ranges: RangeHash,
                     fingerprint: Callable[[int, list[str]], dict[str, str]] | None = None) -> dict[str, str]:
        """Hashes of named byte ranges of a local file, computed by ``hash_ranges(fd, keys, prints)`` only when its
        stat changed and, given ``fingerprint``, only for the ranges whose bytes changed too
        (``statstate.StatState.range_hashes``)."""
        return self._stat.range_hashes(path, keys, hash_ranges, fingerprint)

    def remembered_ranges(self, path: str | os.PathLike[str], keys: list[str]) -> dict[str, str] | None:
        """``range_hashes`` answered from the stat state alone, or None (``statstate.StatState.remembered_ranges``)."""
        return self._stat.remembered_ranges(path, keys)

    def known_ranges(self, path: str | os.PathLike[str]) -> tuple[tuple[int, int, int, int], dict[str, str]] | None:
        """The range hashes remembered for a file and the stat signature they hold for; nothing hashed."""
        return self._stat.known_ranges(path)

    def spare_tree(self, out: str | os.PathLike[str]) -> str | None:
        """The slot where the tree a re-pack of ``out`` replaced waits for the next pack (``stages/pack_spare.py``):
        this machine's state directory; None for a remote cache (its exports are copies, never reused)."""
        if self._spares is None:
            return None
        return os.path.join(self._spares, hash_bytes(os.fspath(out).encode())[:32])

    def output_record(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """What this machine recorded about output ``path`` (see ``statstate.OutputState``)."""
        return self._outputs.get(path)

    def record_output(self, path: str | os.PathLike[str], record: dict[str, Any]) -> None:
        self._outputs.put(path, record)

    # -- the marker (marker.py) -------------------------------------------------------------------

    def is_marked(self) -> bool:
        return marker.is_marked(self._backend)

    def claim(self) -> None:
        """Before a build: mark the root, or NotACache when it holds anything but a cache."""
        marker.claim(self._backend)

    def may_claim(self) -> bool:
        """``claim``'s check alone, writing nothing: True when already marked; NotACache when not claimable."""
        return marker.may_claim(self._backend)

    def require(self) -> str:
        """Before ``cache info|verify|gc``: "marked" or "adopted"; NotACache, nothing touched, otherwise."""
        return marker.require(self._backend)

    # -- maintenance (verify.py, gc.py) -----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Entry counts and bytes per area, plus temp leftovers."""
        from bundle_pipeline.cache import verify  # cache commands only

        return verify.info(self._backend, self.root)

    def verify(self) -> dict[str, Any]:
        """Re-hash every entry; delete and list the corrupt ones, list (never delete) foreign files."""
        from bundle_pipeline.cache import verify

        return verify.verify(self._backend)

    def gc(self, keep_actions: set[str] | None = None, older_than_s: float = 0,
           max_bytes: int | None = None, temp_older_than_s: float | None = None) -> dict[str, int]:
        """Remove temp leftovers, then entries the kept actions do not reach (or evict down to ``max_bytes``)."""
        from bundle_pipeline.cache import gc as collector  # cache commands only

        if self._spares is not None:  # their files are links to entries: kept, they would keep those on disk
            shutil.rmtree(self._spares, ignore_errors=True)
        return collector.gc(self._backend, self._stat, self._outputs, keep_actions, older_than_s, max_bytes,
                            temp_older_than_s)

    def newest_builds(self) -> set[str]:
        """gc roots: the key of every ``last-build`` record and of each task record it names."""
        from bundle_pipeline.cache import gc as collector

        return collector.newest_builds(self._backend)
