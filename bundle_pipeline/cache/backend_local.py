"""File operations on a local cache root with plain ``os`` calls; holds the root path only.

Every write goes to a ``.tmp-`` name next to its destination and is then renamed into place with
``os.replace`` (atomic); tensor directories are written under a temp name and renamed whole. A reader
therefore sees a whole entry or none; an entry only counts when it verifies anyway (object bytes must
hash to their name, a tensor must hash to its name, an action's checksum must match its record), so
anything else is a miss, never a wrong answer. Nothing is ever fsync'ed for the same reason: after a
power loss a torn entry fails verification and is rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

from bundle_pipeline.cache.layout import MARKER, MARKER_BYTES, Entry, temp_name


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

    def write_new_file(self, rel: str, data: memoryview, size: int) -> str:
        """``write_new`` of a large file: ``data`` then zeros up to ``size`` bytes, written with O_DIRECT where the
        file system allows (``direct_io``: no page cache filled); returns the file's sha256."""
        from bundle_pipeline.cache.direct_io import write_new_file  # not on a no-op: it stores nothing

        return write_new_file(self.path(rel), data, size)

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
                link_or_copy(os.path.join(dirpath, name), os.path.join(target, name))

    def zarr_store(self, rel: str, read_only: bool) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(self.path(rel), read_only=read_only)


def link_or_copy(src: str, dst: str) -> None:
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

