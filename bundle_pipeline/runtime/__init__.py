"""Runtime: load a bundle and run its graphs with the NumPy kernel library."""

from .bundle import LoadedBundle, load_bundle

__all__ = ["LoadedBundle", "load_bundle"]
