"""Runtime: load a bundle and run its graphs with the NumPy kernel library."""

__all__ = ["LoadedBundle", "load_bundle"]


def __getattr__(name: str):
    """``runtime.load_bundle`` loads the executor and kernels on first use, not when a submodule such as
    ``runtime.storage`` is imported (``inspect`` reads a bundle's files without running it)."""
    if name in __all__:
        from . import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
