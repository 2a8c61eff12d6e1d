"""Build cache: content-addressed objects, zarr tensors, task actions and input stat state.

On-disk state: see ``store.py`` (layout of the root: objects/, tensors/, actions/, state/),
``tensors.py`` (one zarr v3 array per tensor) and ``statstate.py`` (state/stat.json).
"""

from bundle_pipeline.cache.store import Cache, CacheMiss
from bundle_pipeline.cache.tensors import SUPPORTED_DTYPES, chunk_shape

__all__ = ["SUPPORTED_DTYPES", "Cache", "CacheMiss", "chunk_shape"]
