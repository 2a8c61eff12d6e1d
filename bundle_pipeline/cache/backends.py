"""Picks the backend (local disk or fsspec) for a cache root; stateless.

fsspec is imported only for URLs: planning a build on a local cache (a no-op run) reads JSON records only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache.backend_local import LocalBackend
from bundle_pipeline.errors import ParamInvalid

if TYPE_CHECKING:  # the fsspec backend loads with fsspec, for URLs only
    from bundle_pipeline.cache.backend_fsspec import FsspecBackend

    Backend = LocalBackend | FsspecBackend

# Object stores with directory-listing caches, which would go stale while other machines write.
LISTING_CACHE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az"})



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
        raise ParamInvalid(f"cannot open the cache: {err}", given) from None
    if isinstance(fs, LocalFileSystem):
        return LocalBackend(os.path.abspath(path), mark_root=True)
    from bundle_pipeline.cache.backend_fsspec import FsspecBackend

    return FsspecBackend(fs, path, opts)

