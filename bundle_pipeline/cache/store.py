"""Content-addressed build cache on a local directory or any fsspec URL: objects, tensors, actions.

On-disk state
-------------
Everything lives under one root (``.bundle-cache/`` by default, or ``memory://...``, ``s3://...``)::

    objects/<h[:2]>/<h>          bytes whose blake3 hash (``hash_bytes``) is ``h``; stage outputs
                                 (canonical JSON via ``put_json``, msgpack, ...)
    tensors/<h[:2]>/<h>/         a zarr v3 array whose ``tensor_hash`` is ``h`` (see ``tensors.py``)
    actions/<key[:2]>/<key>      canonical JSON ``{"checksum": hash_json(record), "record": record,
                                 "v": 1}`` mapping a task key to its record (output hashes, timing)
    state/stat.json              input-file stat state, local roots only (see ``statstate.py``)
    state/outputs.json           which build wrote each output path of this machine (idem)
    */<xx>/.tmp-<uuid>           a write in progress, or a leftover of a crashed one (``gc`` removes)
    bundle-pipeline-cache.json   the marker: written when the root is created (or first used by a build),
                                 so that ``cache info|verify|gc`` act only on caches (``Cache.require``)

Only entries named as the cache names them (``<area>/<2 hex>/<64 hex>``, actions by key, temps
``.tmp-<32 hex>``) are ever judged or removed: anything else found under the areas is foreign
(a user's file) and left alone, and listed by ``verify``.

Every write goes to a ``.tmp-`` name next to its destination and is then renamed into place:
``os.replace`` on local disks (atomic), ``fs.mv`` on other fsspec filesystems. On object stores
whose single PUT is all-or-nothing (S3, GCS, Azure, ``memory://``) a file is PUT straight to its
name instead: the rename would be a copy + delete there, no more atomic than the PUT. Tensor
directories are always written under a temp name and published file by file, ``zarr.json`` last.
A reader can meet a half-copied tensor directory; that is harmless because an entry only counts
when it verifies: object bytes must hash to their name, a tensor must hash to its name, an
action's checksum must match its record. Anything else is a miss, never a wrong answer, and
corrupt objects/tensors are deleted when found. Nothing here is ever fsync'ed for the same reason:
after a power loss a torn entry fails verification and is rebuilt.

Remote roots (``s3://bucket/prefix``, ...) are opened with fsspec; credentials and endpoints come
from fsspec's configuration, e.g. ``FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000`` (fsspec reads
``FSSPEC_<PROTOCOL>_<OPTION>`` environment variables at import) or ``AWS_ENDPOINT_URL`` and the
usual ``AWS_*`` variables for s3fs, or ``storage_options``. Every process that opens the cache (dask
workers included) rebuilds it from the root URL, so set them in every process's environment.
Listing caches are turned off for object stores: other machines write the same bucket.

Reachability (``gc(keep_actions=...)``): a kept action keeps the objects named by the values of
its record's ``"outputs"`` dict (a hash, or a list of hashes). A kept object whose bytes are a JSON
object with a top-level ``"tensors"`` dict (name -> tensor hash) keeps those tensors, and one with a
top-level ``"packs"`` dict (tensor hash -> pack hash, ``packs.py``) keeps those tensor packs. Nothing
else is followed, so a stage output that refers to tensors must list them under ``"tensors"``, and
the packs that hold them under ``"packs"``.
``newest_builds()`` gives the usual roots: every ``last-build`` record the pipeline writes (one per
spec: ``{"identity", "tasks": {task id: action key}}``) and the task records it names. Other
records (kernel-level decisions, memos of external tensors and exported files) are not roots.

Eviction (``gc(max_bytes=N)``): while the cache holds more than N bytes, unreachable entries go
first, then reachable ones, each group least recently used first. An entry's last use is its
newest access or modification time on local disks (atime: reads; with the usual relatime mounts it
moves at most daily), its modification time on object stores; a reachable entry also counts as used
when a kept action reaching it was (every build reads the records of the tasks it hits, while a
re-pack only hard-links tensor chunks, which touches no access time). Evicting a reachable object or tensor
also removes the kept actions that reach it, so no record is left pointing at missing data (a kept
record is never evicted on its own: it frees next to nothing and would orphan its data). gc
reads records with ``O_NOATIME`` where it can, so it does not make everything look recent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache import statstate
from bundle_pipeline.cache.recent import Recent
from bundle_pipeline.hashing import canonical_json, hash_bytes, hash_json

if TYPE_CHECKING:
    import fsspec
    import numpy as np

# fsspec, numpy and the tensor store (numpy, zarr) are imported where they are used: planning a build on a
# local cache (a no-op run) reads JSON records only.

TEMP_PREFIX = ".tmp-"
AREAS = ("objects", "tensors", "actions")
MARKER = "bundle-pipeline-cache.json"
MARKER_BYTES = b'{"bundle-pipeline-cache": 1}\n'
# What a cache root holds at its top: a directory with only these (and temps) is cache-shaped.
ROOT_NAMES = frozenset({*AREAS, "state", MARKER})
# Object stores where one PUT is atomic (the object appears whole or not at all): no temp + rename.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az", "memory"})
# Object stores with directory-listing caches, which would go stale while other machines write.
LISTING_CACHE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az"})
ACTION_FORMAT = 1
# Tensor entries are content-addressed whole (an edited tensor is a new entry), so chunks bound memory and
# files, not rewrites: 16 MiB keeps a 1 GiB model to a few hundred files (each costs a create, 0.1-0.5 ms).
DEFAULT_CHUNK_BYTES = 16 << 20

_HASH_RE = re.compile(r"[0-9a-f]{64}")
# Stage outputs this process decoded or encoded lately: a build's tasks read each other's outputs (a
# structure is read by four later stages) without reading and decoding the bytes again.
RECENT_JSON = Recent(64 << 20)
# Action keys are usually hashes, but any short file-name-safe word works; a leading "." is
# reserved for temp names and "/" could escape the shard directory.
_KEY_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{1,254}")
_TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}")


class CacheMiss(KeyError):
    """The entry is missing, or was corrupt (and has been removed)."""


def temp_name() -> str:
    """A fresh temp entry name; unique across processes and hosts sharing a cache."""
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}"


def check_hash(h: str) -> str:
    """Return ``h`` if it is a 64-hex-digit content hash, else raise ValueError (never a path)."""
    if not isinstance(h, str) or not _HASH_RE.fullmatch(h):
        raise ValueError(f"not a content hash: {h!r}")
    return h


def check_key(key: str) -> str:
    """Return ``key`` if it is a usable action key, else raise ValueError."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid action key {key!r}: use 2-255 chars of [0-9A-Za-z._-], not starting with '.'")
    return key


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
        return _TEMP_RE.fullmatch(self.name) is not None

    def is_ours(self, area: str) -> bool:
        """Named as the cache names its entries: anything else under an area is a user's file, never touched."""
        if self.is_temp:
            return True
        if area == "actions":
            return _KEY_RE.fullmatch(self.name) is not None and self.shard == self.name[:2]
        return _HASH_RE.fullmatch(self.name) is not None and self.shard == self.name[:2]


class NotACache(Exception):
    """A path that cache commands must not touch: it is no cache (no marker, not a cache's layout)."""


class LocalBackend:
    """File operations on a local directory: plain ``os`` calls, atomic ``os.replace``."""

    is_local = True

    def __init__(self, root: str, mark_root: bool = False):
        self.root = root
        self.mark_root = mark_root  # a cache root (not a state directory): it gets the marker when created

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read()

    def read_quiet(self, rel: str) -> bytes:
        """``read`` without updating the access time (O_NOATIME, allowed to the owner and root)."""
        path = self.path(rel)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
        except PermissionError:  # not the file's owner: O_NOATIME is refused, read normally
            fd = os.open(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """The bytes of each readable entry of ``rels`` (missing ones are left out), atime untouched."""
        out = {}
        for rel in rels:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                out[rel] = self.read_quiet(rel)
        return out

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def write_atomic(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        folder = os.path.dirname(final)
        tmp = os.path.join(folder, temp_name())
        try:
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
            except FileNotFoundError:  # directories are created lazily, on the first write into them
                self._create_root()
                os.makedirs(folder, exist_ok=True)
                with open(tmp, "xb") as f:
                    f.write(data)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))

    def remove_tree(self, rel: str) -> None:
        path = self.path(rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            self.remove(rel)

    def new_dir(self, rel: str) -> None:
        self._create_root()
        os.makedirs(self.path(rel), exist_ok=True)

    def write_new(self, rel: str, data: bytes | memoryview) -> None:
        """Write a file inside a temp directory made by ``new_dir`` (the directory is published whole)."""
        with open(self.path(rel), "xb") as f:
            f.write(data)

    def _create_root(self) -> None:
        """A cache root this process creates gets the marker (``Cache.claim`` marks existing roots)."""
        if not self.mark_root or os.path.isdir(self.root):
            return
        os.makedirs(self.root, exist_ok=True)
        self.write_atomic(MARKER, MARKER_BYTES)

    def top_names(self) -> set[str] | None:
        """Names at the root, None when there is no root (NotADirectoryError when it is a file)."""
        try:
            return set(os.listdir(self.root))
        except FileNotFoundError:
            return None

    def publish_dir(self, tmp_rel: str, final_rel: str) -> bool:
        """Rename a finished temp directory into place; False when the destination already exists."""
        try:
            os.replace(self.path(tmp_rel), self.path(final_rel))
        except OSError:
            # rename(2) refuses to replace a non-empty directory: someone else published it first
            if os.path.isdir(self.path(final_rel)):
                return False
            raise
        return True

    def entries(self, area: str) -> Iterator[Entry]:
        top = self.path(area)
        for shard in _scandir(top):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for e in _scandir(shard.path):
                try:
                    if e.is_dir(follow_symlinks=False):
                        size, mtime, used = _tree_stats(e.path)
                    else:
                        st = e.stat(follow_symlinks=False)
                        size, mtime, used = st.st_size, st.st_mtime, max(st.st_atime, st.st_mtime)
                except FileNotFoundError:  # removed by someone else while listing
                    continue
                yield Entry(f"{area}/{shard.name}/{e.name}", shard.name, e.name, size, mtime, used)

    def prune_empty_dirs(self, area: str) -> None:
        for shard in _scandir(self.path(area)):
            if len(shard.name) != 2:
                continue  # not a shard this cache made
            with contextlib.suppress(OSError):  # not empty, or raced with a writer: keep it
                os.rmdir(shard.path)

    def export_tree(self, rel: str, dest: str, skip: tuple[str, ...] = ()) -> None:
        """Materialise the tree at ``rel`` (but files named in ``skip``) under local ``dest``: hard links
        (no bytes copied), else copies."""
        top = self.path(rel)
        for dirpath, _, files in os.walk(top):
            target = os.path.join(dest, os.path.relpath(dirpath, top))
            os.makedirs(target, exist_ok=True)
            for name in files:
                if name in skip:
                    continue
                _link_or_copy(os.path.join(dirpath, name), os.path.join(target, name))

    def zarr_store(self, rel: str, read_only: bool) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(self.path(rel), read_only=read_only)


class FsspecBackend:
    """File operations through an fsspec filesystem; ``fs.mv`` is not atomic on object stores."""

    is_local = False

    def __init__(self, fs: fsspec.AbstractFileSystem, root_path: str, storage_options: dict[str, Any]):
        self.fs = fs
        self.root = root_path.rstrip("/")
        self.storage_options = storage_options

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    @property
    def atomic_put(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple | list) else (self.fs.protocol,)
        return any(p in ATOMIC_PUT_PROTOCOLS for p in protocols)

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    read_quiet = read  # object stores keep no access times

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """The bytes of each readable entry of ``rels``, fetched concurrently where fsspec can."""
        if not rels:
            return {}
        paths = {self.path(rel): rel for rel in rels}
        found = self.fs.cat(list(paths), on_error="omit")
        return {paths[p]: data for p, data in found.items() if p in paths and isinstance(data, bytes)}

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def write_atomic(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        if self.atomic_put:
            self.fs.pipe_file(final, data)
            return
        tmp = f"{final.rsplit('/', 1)[0]}/{temp_name()}"
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, final)
        except BaseException:
            self._rm(tmp)
            raise

    def remove(self, rel: str) -> None:
        self._rm(self.path(rel))

    def _staging(self, rel: str, create: bool = False) -> str | None:
        """Where a temp directory (a tensor being written by this process) is staged on local disk, on
        stores with atomic PUTs: writing it there and uploading each file once beats writing it remotely
        and then copying and deleting every file (an object store's "rename"). None for other entries,
        other stores, and remote temp leftovers (gc removes those remotely)."""
        if not (self.atomic_put and rel.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)):
            return None
        staged = os.path.join(tempfile.gettempdir(), f"bundle-pipeline-staging-{os.getpid()}", rel.replace("/", "_"))
        if create:
            os.makedirs(staged, exist_ok=True)
        return staged if os.path.isdir(staged) else None

    def remove_tree(self, rel: str) -> None:
        staged = self._staging(rel)
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
            with contextlib.suppress(OSError):  # the per-process staging directory, once empty
                os.rmdir(os.path.dirname(staged))
            return
        self._rm(self.path(rel), recursive=True)

    def new_dir(self, rel: str) -> None:
        if self._staging(rel, create=True) is None:
            self.fs.makedirs(self.path(rel), exist_ok=True)

    def write_new(self, rel: str, data: bytes | memoryview) -> None:
        """Write a file inside a temp directory made by ``new_dir``: on local disk when it is staged there."""
        folder, name = rel.rsplit("/", 1)
        staged = self._staging(folder)
        if staged is not None:
            with open(os.path.join(staged, name), "xb") as f:
                f.write(data)
            return
        self.fs.pipe_file(self.path(rel), bytes(data))

    def publish_dir(self, tmp_rel: str, final_rel: str) -> bool:
        """Move a finished temp tree into place, ``zarr.json`` last so its presence marks a
        fully copied entry for ``has_tensor``; False when the destination already exists."""
        src, dst = self.path(tmp_rel), self.path(final_rel)
        staged = self._staging(tmp_rel)
        if staged is not None:
            return self._upload_dir(staged, dst)
        if self.fs.exists(f"{dst}/zarr.json"):
            self._rm(src, recursive=True)
            return False
        files = sorted(self.fs.find(src), key=lambda p: p.endswith("/zarr.json"))
        moves = [(p, dst + p[len(src) :]) for p in files]
        body, marker = moves[:-1], moves[-1:]
        for group in (body, marker):
            if group:
                self.fs.mv([s for s, _ in group], [d for _, d in group])
        self._rm(src, recursive=True)
        return True

    def _upload_dir(self, local: str, dst: str) -> bool:
        if self.fs.exists(f"{dst}/zarr.json"):
            return False
        files = sorted((os.path.relpath(os.path.join(d, f), local).replace(os.sep, "/")
                        for d, _, names in os.walk(local) for f in names), key=lambda r: r == "zarr.json")
        body, marker = files[:-1], files[-1:]
        for group in (body, marker):  # one concurrent batch of PUTs, then the marker
            if group:
                self.fs.put([os.path.join(local, *r.split("/")) for r in group], [f"{dst}/{r}" for r in group])
        return True

    def entries(self, area: str) -> Iterator[Entry]:
        top = self.path(area)
        try:
            found = self.fs.find(top, detail=True)
        except FileNotFoundError:
            return
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for path, info in found.items():
            parts = path[len(top) + 1 :].split("/")
            if len(parts) >= 2:
                grouped.setdefault((parts[0], parts[1]), []).append(info)
        for (shard, name), infos in sorted(grouped.items()):
            mtimes = [m for m in (_info_mtime(i) for i in infos) if m is not None]
            size = sum(int(i.get("size") or 0) for i in infos)
            newest = max(mtimes) if mtimes else None
            yield Entry(f"{area}/{shard}/{name}", shard, name, size, newest, newest)

    def prune_empty_dirs(self, area: str) -> None:
        """Object stores have no real directories; nothing to prune."""

    def top_names(self) -> set[str] | None:
        """Names at the root, None when nothing is stored under it."""
        try:
            found = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return None
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in found} or None

    def export_tree(self, rel: str, dest: str) -> None:
        """Download the tree at ``rel`` under local ``dest`` (one batched, concurrent ``get``)."""
        top = self.path(rel)
        remote = self.fs.find(top)
        local = [os.path.join(dest, *path[len(top) + 1 :].split("/")) for path in remote]
        for target in local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
        if remote:
            self.fs.get(remote, local)

    def zarr_store(self, rel: str, read_only: bool) -> Any:
        staged = self._staging(rel)
        if staged is not None:
            from zarr.storage import LocalStore

            return LocalStore(staged, read_only=read_only)
        from zarr.storage import FsspecStore

        url = self.fs.unstrip_protocol(self.path(rel))
        return FsspecStore.from_url(url, storage_options=self.storage_options, read_only=read_only)

    def _rm(self, path: str, recursive: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=recursive)


Backend = LocalBackend | FsspecBackend


def _file_stats(root: str, skip: tuple[str, ...] = ()) -> dict[str, tuple[list[int], str]]:
    """rel path -> ([size, mtime_ns, inode], absolute path) for every file under ``root`` (but ``skip``)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name in skip:
                continue
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            out[rel] = ([st.st_size, st.st_mtime_ns, st.st_ino], path)
    return out


def _sha256_file(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed: copy the bytes instead
        shutil.copyfile(src, dst)


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _tree_stats(path: str) -> tuple[int, float, float]:
    """Total size, newest mtime (the newest file tells if a writer is alive) and newest use (atime or
    mtime) under a directory."""
    st = os.stat(path)
    size, mtime, used = 0, st.st_mtime, st.st_mtime
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                size += st.st_size
                mtime = max(mtime, st.st_mtime)
                used = max(used, st.st_atime, st.st_mtime)
    return size, mtime, used


def _info_mtime(info: dict[str, Any]) -> float | None:
    """Modification time from an fsspec info dict; each filesystem names it differently."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def open_backend(root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Backend:
    """Pick the backend for ``root``: plain ``os`` for local paths and ``file://`` URLs, fsspec otherwise."""
    given = os.fspath(root)
    if "://" not in given and not storage_options:  # a plain local path: no fsspec needed
        return LocalBackend(os.path.abspath(given), mark_root=True)
    from fsspec.core import split_protocol, url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    opts = dict(storage_options or {})
    protocol = split_protocol(given)[0]
    if protocol in LISTING_CACHE_PROTOCOLS:
        opts.setdefault("use_listings_cache", False)
    try:
        fs, path = url_to_fs(given, **opts)
    except (ValueError, ImportError) as err:  # an unknown protocol, or its package is not installed
        from bundle_pipeline.errors import ParamInvalid

        raise ParamInvalid(f"cannot open the cache: {err}", given) from None
    if isinstance(fs, LocalFileSystem):
        return LocalBackend(os.path.abspath(path), mark_root=True)
    return FsspecBackend(fs, path, opts)


def _default_state_dir(root: str) -> str:
    """Where a remote cache keeps this machine's stat state: under the user's local cache dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bundle-pipeline", "state", hash_bytes(root.encode())[:16])


def _entry_memo_key(h: str) -> str:
    """The action key of the memo of a tensor entry's file digests (see ``Cache._entry_sha256``)."""
    return hash_json({"entry-sha256": h})


def _tensors():
    from bundle_pipeline.cache import tensors

    return tensors


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
        self._stat = statstate.StatState(state, f"{prefix}stat.json")
        self._outputs = statstate.OutputState(state, f"{prefix}outputs.json")

    def __repr__(self) -> str:
        return f"Cache({self.root!r})"

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        return _rebuild_cache, (self.root, self._options)

    # -- objects ---------------------------------------------------------------------------------

    def put_object(self, data: bytes) -> str:
        """Store ``data`` under its hash and return the hash; a no-op when already stored."""
        data = bytes(data)
        h = hash_bytes(data)
        rel = _object_rel(h)
        if not self._backend.exists(rel):
            self._backend.write_atomic(rel, data)
        return h

    def get_object(self, h: str) -> bytes:
        """The bytes stored under ``h``; CacheMiss when missing or corrupt (a corrupt entry is deleted)."""
        rel = _object_rel(check_hash(h))
        try:
            data = self._backend.read(rel)
        except FileNotFoundError:
            raise CacheMiss(h) from None
        if hash_bytes(data) != h:
            self._backend.remove(rel)
            raise CacheMiss(h)
        return data

    def has_object(self, h: str) -> bool:
        """Whether an entry exists (unverified: ``get_object`` may still miss)."""
        return self._backend.exists(_object_rel(check_hash(h)))

    def place_object(self, h: str, dest: str | os.PathLike[str], data: bytes | None = None) -> str:
        """Put object ``h``'s bytes at local file ``dest`` and return their sha256 (a bundle lists it).

        A local cache hard-links the object (``dest`` must not be modified: it is the cache's own file) and
        remembers its sha256 per file stat, as ``export_tensor`` does for tensor entries: a changed stat makes
        us read and verify the object again. ``data``: its bytes, when the caller just stored them.
        """
        if not self._backend.is_local:
            data = self.get_object(h)
            with open(dest, "wb") as f:
                f.write(data)
            return hashlib.sha256(data).hexdigest()
        path = self._backend.path(_object_rel(check_hash(h)))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CacheMiss(h) from None
        stat, memo = [st.st_size, st.st_mtime_ns, st.st_ino], hash_json({"object-sha256": h})
        record = self.get_action(memo)
        if record is not None and record.get("stat") == stat:
            digest = record["sha256"]
        else:
            digest = hashlib.sha256(data if data is not None else self.get_object(h)).hexdigest()
            self.put_action(memo, {"stat": stat, "sha256": digest})
        _link_or_copy(path, os.fspath(dest))
        return digest

    def put_json(self, obj: Any) -> str:
        """Store the canonical JSON of ``obj`` as an object; equal values give equal hashes. ``obj`` must not be
        changed afterwards: this process hands it to the next ``get_json`` of its hash (``RECENT_JSON``)."""
        data = canonical_json(obj)
        h = self.put_object(data)
        RECENT_JSON.put(h, len(data), (self._stamp(h), obj))
        return h

    def get_json(self, h: str) -> Any:
        """The value of a JSON object stored by ``put_json``; CacheMiss like ``get_object``. Read-only: the
        value may be shared with other tasks of this process (``RECENT_JSON``)."""
        found = RECENT_JSON.get(check_hash(h))
        if found is not None and found[0] is not None and found[0] == self._stamp(h):
            return found[1]  # this cache's entry, untouched since this process verified it
        data = self.get_object(h)
        obj = json.loads(data)
        RECENT_JSON.put(h, len(data), (self._stamp(h), obj))
        return obj

    def _stamp(self, h: str) -> tuple[str, int, int, int] | None:
        """Which file object ``h`` is (root, size, mtime_ns, inode): a decoded copy kept in this process is
        reused only while the file is the one it came from (not rewritten, not another cache's). None on
        object stores, where nothing decoded is reused."""
        if not self._backend.is_local:
            return None
        try:
            st = os.stat(self._backend.path(_object_rel(h)))
        except FileNotFoundError:
            return None
        return (self.root, st.st_size, st.st_mtime_ns, st.st_ino)

    # -- tensors ---------------------------------------------------------------------------------

    def put_tensor(self, arr: np.ndarray) -> str:
        """Store an array as a zarr array under its ``tensor_hash`` and return the hash; idempotent.

        A local entry written here has its files' sha256 recorded at once (``_entry_sha256``'s memo), so the
        first bundle that links it hashes nothing: the bytes were just written from memory.
        """
        h, digests = _tensors().put_tensor(self._backend, arr, self.chunk_bytes, temp_name())
        if digests is not None and self._backend.is_local:
            files = _file_stats(self._backend.path(_tensors().tensor_rel(h)), skip=("zarr.json",))
            if set(files) == set(digests):  # else someone else's copy won the race to publish: verify later
                self.put_action(_entry_memo_key(h), {"stats": {rel: st for rel, (st, _) in files.items()},
                                                      "sha256": digests})
        return h

    def get_tensor(self, h: str, verify: bool = True, pack: str | None = None) -> np.ndarray:
        """The array stored under ``h`` (verified unless ``verify=False``), from its own entry or, given
        ``pack``, from that pack (verified whole; the array is then a read-only view). CacheMiss when missing
        or corrupt (the missing hash is the pack's when the pack is)."""
        if pack is not None:
            found = self._pack(pack).get(check_hash(h))
            if found is None:
                raise CacheMiss(h)
            return found
        arr = _tensors().get_tensor(self._backend, check_hash(h), verify=verify)
        if arr is None:
            raise CacheMiss(h)
        return arr

    def has_tensor(self, h: str, pack: str | None = None) -> bool:
        """Whether a published entry, or the pack said to hold it, exists (unverified)."""
        if pack is not None:
            return self.has_object(pack)
        return self._backend.exists(f"{_tensors().tensor_rel(check_hash(h))}/zarr.json")

    def put_tensors(self, arrays: Mapping[str, Any]) -> dict[str, dict[str, str]]:
        """Store many tensors at once: the small ones (``packs.SMALL_TENSOR_BYTES``) in one pack, each larger
        one as its own entry (in threads). Returns name -> ``{"tensor": hash}``, plus ``"pack": pack hash``
        for a packed one: the reference ``get_tensor``/``has_tensor`` take (see ``packs.py``)."""
        from bundle_pipeline.cache import packs
        from bundle_pipeline.hashing import tensor_hash

        tensors = _tensors()
        normal = {name: tensors.normalise(a) for name, a in arrays.items()}
        small = {name: a for name, a in normal.items() if a.nbytes <= packs.SMALL_TENSOR_BYTES}
        refs: dict[str, dict[str, str]] = {}
        if small:
            hashes = {name: tensor_hash(a) for name, a in small.items()}
            blob = packs.encode({hashes[name]: a for name, a in small.items()})
            pack = self.put_object(blob)
            refs.update({name: {"tensor": h, "pack": pack} for name, h in hashes.items()})
        big = sorted(set(normal) - set(small))
        if big:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(len(big), os.cpu_count() or 2)) as pool:
                refs.update({name: {"tensor": h} for name, h in zip(big, pool.map(
                    lambda n: self.put_tensor(normal[n]), big), strict=True)})
        return refs

    def _pack(self, pack: str) -> dict[str, np.ndarray]:
        """A pack's tensors, verified; this process keeps recently read packs decoded (``packs.DECODED``)."""
        from bundle_pipeline.cache import packs

        found = packs.DECODED.get(check_hash(pack))
        if found is not None and found[0] is not None and found[0] == self._stamp(pack):
            return found[1]  # this cache's entry, untouched since this process verified it
        blob = self.get_object(pack)
        try:
            tensors = packs.decode(blob)
        except (ValueError, TypeError, KeyError, struct.error) as err:  # verified bytes, bad layout: not ours
            self._backend.remove(_object_rel(pack))
            raise CacheMiss(pack) from err
        packs.DECODED.put(pack, len(blob), (self._stamp(pack), tensors))
        return tensors

    def export_tensor(self, h: str, dest: str | os.PathLike[str], pack: str | None = None) -> dict[str, str]:
        """Place tensor ``h`` (held by ``pack``, if given) as a plain zarr array at local directory ``dest``;
        return the sha256 of each placed file by its path relative to ``dest`` (posix separators).

        A local entry's chunk files are hard-linked, so a bundle re-pack writes no tensor bytes (the entry
        must not be modified through ``dest``: it is the cache's own file; readers verify hashes, so such
        damage would read as a miss, never as a wrong value). A remote entry is read (verified) and its
        chunks written. ``zarr.json`` is always written from the entry's metadata, so the placed bytes do
        not depend on how or when the cache entry was written.
        """
        tensors = _tensors()
        dest = os.fspath(dest)
        if pack is not None:
            arr = self.get_tensor(h, pack=pack)
            chunks = tensors.chunk_shape(arr.shape, arr.dtype.itemsize, self.chunk_bytes)
            digests = tensors.write_chunks(arr, chunks, dest)
            doc = tensors.entry_document(h, arr.dtype, arr.shape, chunks, digests)
            with open(os.path.join(dest, "zarr.json"), "wb") as f:
                f.write(doc)
            return {**digests, "zarr.json": hashlib.sha256(doc).hexdigest()}
        meta = tensors.entry_meta(self._backend, check_hash(h))
        if meta is None:
            raise CacheMiss(h)
        canonical = tensors.chunk_shape(meta.shape, meta.dtype.itemsize, self.chunk_bytes) if meta.plain else None
        if self._backend.is_local and meta.plain and meta.chunks == canonical:
            self._backend.export_tree(tensors.tensor_rel(h), dest, skip=("zarr.json",))
            digests = self._entry_sha256(h, dest, meta)
            dtype = meta.logical if meta.logical is not None else meta.dtype
        else:  # a remote entry, or one written with other chunks: the bundle gets this version's chunks
            arr = self.get_tensor(h)
            chunks = tensors.chunk_shape(arr.shape, arr.dtype.itemsize, self.chunk_bytes)
            digests, dtype = tensors.write_chunks(arr, chunks, dest), arr.dtype
            meta = dataclasses.replace(meta, chunks=chunks)
        doc = tensors.entry_document(h, dtype, meta.shape, meta.chunks, digests)
        with open(os.path.join(dest, "zarr.json"), "wb") as f:
            f.write(doc)
        return {**digests, "zarr.json": hashlib.sha256(doc).hexdigest()}

    def _entry_sha256(self, h: str, exported: str, meta: Any) -> dict[str, str]:
        """sha256 of each chunk file of tensor entry ``h`` (bundle digests list them), remembered per file stat.

        Entries are immutable, so a file whose (size, mtime_ns, inode) is unchanged still has the
        remembered digest (ctime is no use: every new hard link changes it); ``put_tensor`` remembers the
        files it writes. A changed stat (an entry written elsewhere, or a write through a hard link) makes
        us hash the files again and check them against the entry's recorded chunk sha256 (entries written
        before those were recorded: against ``h``), CacheMiss when damaged.
        """
        memo_key = _entry_memo_key(h)
        files = _file_stats(exported)
        stats = {rel: st for rel, (st, _) in files.items()}
        record = self.get_action(memo_key)
        if record is not None and record.get("stats") == stats:
            return dict(record["sha256"])
        digests = {rel: _sha256_file(path) for rel, (_, path) in files.items()}
        names = [name for name, _ in _tensors().chunk_grid(meta.shape, meta.chunks)]
        intact = ([digests.get(n) for n in names] == meta.chunk_sha256 and len(digests) == len(names)
                  if meta.chunk_sha256 is not None else self._verified(h))
        if not intact:
            self._backend.remove_tree(_tensors().tensor_rel(h))
            raise CacheMiss(h)
        self.put_action(memo_key, {"stats": stats, "sha256": digests})
        return digests

    def _verified(self, h: str) -> bool:
        try:
            self.get_tensor(h, verify=True)
        except CacheMiss:
            return False
        return True

    def tensor_chunks(self, h: str) -> list[str]:
        """The sha256 of each stored chunk file, in chunk (C) order; CacheMiss when missing or damaged."""
        hashes = _tensors().chunk_sha256(self._backend, check_hash(h))
        if hashes is None:
            raise CacheMiss(h)
        return hashes

    # -- actions ---------------------------------------------------------------------------------

    def put_action(self, key: str, record: dict[str, Any]) -> None:
        """Store (or replace) the record of task ``key``, checksummed so truncation is detected."""
        if not isinstance(record, dict):
            raise TypeError(f"an action record must be a dict, got {type(record).__name__}")
        body = canonical_json(record)  # encoded once: the payload is canonical_json of {checksum, record, v}
        payload = b'{"checksum":"%s","record":%s,"v":%d}' % (hash_bytes(body).encode(), body, ACTION_FORMAT)
        self._backend.write_atomic(_action_rel(check_key(key)), payload)

    def get_action(self, key: str) -> dict[str, Any] | None:
        """The record of task ``key``, or None when missing or corrupt; never raises on bad data."""
        try:
            data = self._backend.read(_action_rel(check_key(key)))
        except FileNotFoundError:
            return None
        return _decode_action(data)

    def remove_action(self, key: str) -> None:
        """Forget the record of ``key`` (its task runs again next time); a no-op when absent."""
        self._backend.remove(_action_rel(check_key(key)))

    # -- input files -----------------------------------------------------------------------------

    def file_hash(self, path: str | os.PathLike[str]) -> str:
        """``hash_bytes`` of a local file's content, re-hashed only when its stat changed."""
        return self._stat.file_hash(path)

    def output_record(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """What this machine recorded about output ``path`` (see ``statstate.OutputState``)."""
        return self._outputs.get(path)

    def record_output(self, path: str | os.PathLike[str], record: dict[str, Any]) -> None:
        self._outputs.put(path, record)

    # -- the marker ------------------------------------------------------------------------------

    def is_marked(self) -> bool:
        return self._backend.exists(MARKER)

    def claim(self) -> None:
        """Before a build: the root must be a cache, nothing yet, an empty directory, or hold nothing but cache
        areas (a cache made before markers existed, or one a remote writer started); it gets the marker.
        NotACache otherwise. (A build only adds entries; ``require`` asks more before anything is deleted.)"""
        if not self.may_claim():
            self._backend.write_atomic(MARKER, MARKER_BYTES)

    def may_claim(self) -> bool:
        """``claim``'s check alone, writing nothing: True when already marked; NotACache when not claimable."""
        if self.is_marked():
            return True
        names = self._top_names()
        if names and not _cache_shaped(names):
            raise NotACache(f"not empty and not a bundle-pipeline cache (it has no {MARKER}); point the cache at "
                            f"a new directory or at an existing cache")
        return False

    def require(self) -> str:
        """Before ``cache info|verify|gc``: "marked", or "adopted" for a cache made before markers existed (it
        gets the marker now). NotACache, with nothing touched, for anything else."""
        if self.is_marked():
            return "marked"
        names = self._top_names()
        if names is None:
            raise NotACache("there is no cache here")
        if not self._is_legacy(names):
            raise NotACache(f"not a bundle-pipeline cache (no {MARKER}, and not a cache's layout: only objects/, "
                            f"tensors/, actions/, state/ and at least one intact task record); nothing was touched")
        self._backend.write_atomic(MARKER, MARKER_BYTES)
        return "adopted"

    def _top_names(self) -> set[str] | None:
        try:
            return self._backend.top_names()
        except NotADirectoryError:
            raise NotACache("a file, not a cache directory") from None

    def _is_legacy(self, names: set[str]) -> bool:
        """A cache written before the marker existed: nothing but cache areas at its top, and at least one
        intact action record (its blake3 checksum matches: no file of a user's does by chance)."""
        if not _cache_shaped(names):
            return False
        for e in self._backend.entries("actions"):
            if e.is_ours("actions") and not e.is_temp:
                with contextlib.suppress(OSError):
                    if _decode_action(self._backend.read_quiet(e.rel)) is not None:
                        return True
        return False

    # -- maintenance -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Entry counts and bytes per area, plus temp leftovers."""
        out: dict[str, Any] = {"root": self.root}
        temp = {"count": 0, "bytes": 0}
        for area in AREAS:
            stats = {"count": 0, "bytes": 0}
            for e in self._backend.entries(area):
                bucket = temp if e.is_temp else stats
                bucket["count"] += 1
                bucket["bytes"] += e.size
            out[area] = stats
        out["temp"] = temp
        out["total_bytes"] = sum(out[area]["bytes"] for area in AREAS) + temp["bytes"]
        return out

    def verify(self) -> dict[str, Any]:
        """Re-hash every object and tensor (and check every action); delete and list the corrupt ones.
        Files not named as cache entries are foreign: listed, never deleted."""
        checked, corrupt, foreign = 0, [], []
        for area in AREAS:
            for e in self._backend.entries(area):
                if e.is_temp:
                    continue
                if not e.is_ours(area):
                    foreign.append(self._backend.path(e.rel))
                    continue
                checked += 1
                if not self._entry_ok(area, e):
                    self._backend.remove_tree(e.rel)
                    corrupt.append(self._backend.path(e.rel))
        return {"checked": checked, "corrupt": corrupt, "foreign": foreign}

    def _entry_ok(self, area: str, e: Entry) -> bool:
        if area == "actions":
            try:
                return (
                    _KEY_RE.fullmatch(e.name) is not None
                    and e.shard == e.name[:2]
                    and (_decode_action(self._backend.read(e.rel)) is not None)
                )
            except FileNotFoundError:
                return True  # replaced or removed by someone else meanwhile: nothing to judge
            except (IsADirectoryError, NotADirectoryError):
                return False
        if not _HASH_RE.fullmatch(e.name) or e.shard != e.name[:2]:
            return False
        if area == "tensors":
            return _tensors().get_tensor(self._backend, e.name, verify=True, missing_is_corrupt=True) is not None
        try:
            self.get_object(e.name)
        except (CacheMiss, IsADirectoryError, NotADirectoryError):
            return False
        return True

    def gc(self, keep_actions: set[str] | None = None, older_than_s: float = 0,
           max_bytes: int | None = None, temp_older_than_s: float | None = None) -> dict[str, int]:
        """Remove temp leftovers, then unneeded entries; return counts and bytes freed.

        - ``keep_actions`` (e.g. ``newest_builds()``): without ``max_bytes``, every other action and
          every object or tensor not reachable from the kept actions is removed (module docstring).
        - ``max_bytes``: entries are evicted only while the cache holds more than that many bytes,
          unreachable ones first, then reachable ones, least recently used first (module docstring).
        - ``older_than_s``: only entries last used at least that long ago are removed, so a build
          running concurrently keeps its not-yet-recorded outputs. Temp leftovers use
          ``temp_older_than_s`` (default: the same), since removing a live writer's temp file
          makes its write fail while a removed entry is only rebuilt.
        """
        sweep = _Sweep(self._backend, time.time())
        temp_age = older_than_s if temp_older_than_s is None else temp_older_than_s
        live: list[tuple[str, Entry]] = []
        for area in AREAS:
            for e in self._backend.entries(area):
                if not e.is_ours(area):
                    continue  # a user's file under an area: never the cache's to remove
                if not e.is_temp:
                    live.append((area, e))
                elif sweep.old(e, temp_age):
                    sweep.remove("temp", e)
        reach = self._reachable(keep_actions) if keep_actions is not None else None

        def reachable(area: str, e: Entry) -> bool:
            return reach is not None and e.name in reach[area]

        if max_bytes is None:
            for area, e in live:
                if reach is not None and not reachable(area, e) and sweep.old(e, older_than_s):
                    sweep.remove(area, e)
        else:
            actions = {e.name: e for area, e in live if area == "actions"}
            reached_by = reach["reached_by"] if reach is not None else {}

            def last_use(area: str, e: Entry) -> float:
                stamps = [e.used or e.mtime or 0.0]
                if reachable(area, e):  # a hit on a record that reaches it is a use of it
                    stamps += [actions[k].used or 0.0 for k in reached_by.get(e.name, ()) if k in actions]
                return max(stamps)

            total = sum(e.size for _, e in live)
            for area, e in sorted(live, key=lambda ae: (reachable(*ae), last_use(*ae), ae[1].rel)):
                if total <= max_bytes:
                    break
                if not sweep.old(e, older_than_s) or (area == "actions" and reachable(area, e)):
                    continue  # a needed record goes only with the data it reaches, below
                total -= sweep.remove(area, e)
                if reachable(area, e) and area != "actions":  # no record may point at missing data
                    for key in reached_by.get(e.name, ()):
                        if key in actions:
                            total -= sweep.remove("actions", actions[key])
        for area in AREAS:
            self._backend.prune_empty_dirs(area)
        sweep.freed["temp_removed"] += self._stat.remove_temps(TEMP_PREFIX, temp_age)
        sweep.freed["stat_entries_pruned"] = self._stat.prune_missing() + self._outputs.prune_missing()
        sweep.freed["bytes_freed"] = sweep.nbytes
        return sweep.freed

    def newest_builds(self) -> set[str]:
        """gc roots: the key of every ``last-build`` record and of each task record it names."""
        keep: set[str] = set()
        for key, record in self._action_records():
            if _is_last_build(record):
                keep.add(key)
                keep.update(v for v in record["tasks"].values() if isinstance(v, str) and _KEY_RE.fullmatch(v))
        return keep

    def _action_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every intact action record (read without touching access times)."""
        rels = [e.rel for e in self._backend.entries("actions") if not e.is_temp]
        for rel, data in self._backend.read_many(rels).items():
            record = _decode_action(data)
            if record is not None:
                yield rel.rsplit("/", 1)[1], record

    def _reachable(self, keep_actions: Iterable[str]) -> dict[str, Any]:
        """Kept actions, the objects and tensors they reach, and ``reached_by``: entry name -> the kept
        actions that reach it (gc evicts those records with the entry)."""
        kept = {k for k in keep_actions if isinstance(k, str) and _KEY_RE.fullmatch(k)}
        records = self._backend.read_many([_action_rel(k) for k in sorted(kept)])
        reached_by: dict[str, set[str]] = {}
        objects: set[str] = set()
        for rel, data in records.items():
            record = _decode_action(data)
            outputs = record.get("outputs") if record else None
            if isinstance(outputs, dict):
                key = rel.rsplit("/", 1)[1]
                for h in _hashes_in(outputs.values()):
                    objects.add(h)
                    reached_by.setdefault(h, set()).add(key)
        tensor_set: set[str] = set()
        for h in sorted(objects):
            tensors, packs = self._named_by(h)
            for t in tensors:
                tensor_set.add(t)
                reached_by.setdefault(t, set()).update(reached_by[h])
            for p in packs:  # tensor packs are objects
                reached_by.setdefault(p, set()).update(reached_by[h])
            objects |= packs
        return {"actions": kept, "objects": objects, "tensors": tensor_set, "reached_by": reached_by}

    def _named_by(self, h: str) -> tuple[set[str], set[str]]:
        """Tensor hashes listed under a top-level "tensors" dict of a JSON object, and the tensor packs under
        its "packs" dict (the gc convention; ``packs.py``)."""
        try:
            data = self._backend.read_quiet(_object_rel(h))
        except (FileNotFoundError, IsADirectoryError):
            return set(), set()
        if hash_bytes(data) != h or not data.startswith(b"{"):
            return set(), set()  # msgpack or other binary output: never refers to tensors
        try:
            obj = json.loads(data)
        except ValueError:
            return set(), set()
        if not isinstance(obj, dict):
            return set(), set()
        named = [obj.get(key) for key in ("tensors", "packs")]
        tensors, packs = (_hashes_in(m.values()) if isinstance(m, dict) else set() for m in named)
        return tensors, packs


def _cache_shaped(names: set[str]) -> bool:
    """Nothing at a root but what a cache puts there."""
    return all(n in ROOT_NAMES or _TEMP_RE.fullmatch(n) for n in names)


def _hashes_in(values: Iterable[Any]) -> set[str]:
    out: set[str] = set()
    for v in values:
        items = v if isinstance(v, list | tuple) else [v]
        out.update(x for x in items if isinstance(x, str) and _HASH_RE.fullmatch(x))
    return out


class _Sweep:
    """What one gc pass removed: each entry at most once, counted per area, bytes summed."""

    def __init__(self, backend: Backend, now: float):
        self.backend, self.now = backend, now
        self.freed = {"temp_removed": 0, "actions_removed": 0, "objects_removed": 0, "tensors_removed": 0}
        self.nbytes = 0
        self.done: set[str] = set()

    def old(self, e: Entry, age: float) -> bool:
        if age <= 0:
            return True
        stamp = e.used if e.used is not None else e.mtime
        return stamp is not None and self.now - stamp >= age

    def remove(self, area: str, e: Entry) -> int:
        """Remove ``e`` unless already removed; return the bytes freed."""
        if e.rel in self.done:
            return 0
        self.done.add(e.rel)
        self.backend.remove_tree(e.rel)
        self.freed[f"{area}_removed"] += 1
        self.nbytes += e.size
        return e.size


def _is_last_build(record: dict[str, Any]) -> bool:
    """The pipeline's per-spec record of its newest build: ``{"identity": ..., "tasks": {id: key}}``."""
    return isinstance(record.get("identity"), str) and isinstance(record.get("tasks"), dict)


def _object_rel(h: str) -> str:
    return f"objects/{h[:2]}/{h}"


def _action_rel(key: str) -> str:
    return f"actions/{key[:2]}/{key}"


def _decode_action(data: bytes) -> dict[str, Any] | None:
    """The record inside an action file, or None when the file is not an intact action."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # includes UnicodeDecodeError from truncated UTF-8
        return None
    if not isinstance(payload, dict) or payload.get("v") != ACTION_FORMAT:
        return None
    record = payload.get("record")
    if not isinstance(record, dict):
        return None
    try:
        ok = payload.get("checksum") == hash_json(record)
    except ValueError:  # a NaN smuggled in by hand: canonical_json refuses it
        return None
    return record if ok else None
