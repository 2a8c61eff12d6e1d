"""Build cache: content-addressed objects, zarr tensors, task actions and input stat state.

On-disk state: see ``store.py`` (layout of the root: objects/, tensors/, actions/, state/),
``tensors.py`` (one zarr v3 array per tensor) and ``statstate.py`` (state/stat.json).
"""

from bundle_pipeline.cache.store import Cache, CacheMiss

__all__ = ["SUPPORTED_DTYPES", "Cache", "CacheMiss", "chunk_shape"]


def __getattr__(name: str):
    """The tensor store's names load it (numpy) on first use: planning a build needs only the Cache."""
    if name in ("SUPPORTED_DTYPES", "chunk_shape"):
        import bundle_pipeline.cache.tensors as tensors

        return getattr(tensors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
