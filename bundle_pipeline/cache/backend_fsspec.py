"""File operations on a remote cache root through fsspec (S3, GCS, memory://); holds the fs and root only.

Every write goes to a ``.tmp-`` name next to its destination and is then moved into place with ``fs.mv``,
except on object stores whose single PUT is all-or-nothing (S3, GCS, Azure, ``memory://``): a file is PUT
straight to its name there, since the rename would be a copy + delete, no more atomic than the PUT. Tensor
directories are always written under a temp name and published file by file, ``zarr.json`` last. A reader
can meet a half-copied tensor directory; that is harmless because an entry only counts when it verifies
(``backend_local.py``), and corrupt objects/tensors are deleted when found.

Remote roots (``s3://bucket/prefix``, ...) are opened with fsspec; credentials and endpoints come
from fsspec's configuration, e.g. ``FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000`` (fsspec reads
``FSSPEC_<PROTOCOL>_<OPTION>`` environment variables at import) or ``AWS_ENDPOINT_URL`` and the
usual ``AWS_*`` variables for s3fs, or ``storage_options``. Every process that opens the cache (dask
workers included) rebuilds it from the root URL, so set them in every process's environment.
Listing caches are turned off for object stores (``backends.py``): other machines write the same bucket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache.layout import TEMP_PREFIX, Entry, temp_name

if TYPE_CHECKING:
    import fsspec

# Object stores where one PUT is atomic (the object appears whole or not at all): no temp + rename.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az", "memory"})


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

