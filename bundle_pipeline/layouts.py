"""Storage layouts by name and their physical shapes: what the build side and the runtime both need.

Pure Python (no numpy), so planning and format selection load nothing heavy. The layouts themselves (how
elements move, zero padding, TransData) are in ``formats.py``, which imports these names.
"""

from __future__ import annotations

from functools import lru_cache

C0 = 16  # lanes per fractal edge: C0 = N0 = M0 = K0 on this core
FORMATS = ("ND", "NCHW", "NC1HWC0", "FRACTAL_Z", "FRACTAL_NZ")
STANDARD = ("ND", "NCHW")  # the layouts users feed and read; same row-major bytes


class FormatError(ValueError):
    """A format name, rank or physical shape that cannot represent the given logical tensor."""


def c0_blocks(x: int) -> int:
    """ceil(x / C0): how many 16-lane blocks hold x elements."""
    return -(-x // C0)


def check_layout(fmt: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(map(int, shape))
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if not accepts(fmt, shape):
        raise FormatError(f"format {fmt} cannot hold a tensor of shape {shape}")
    return shape


def accepts(fmt: str, shape: tuple[int, ...]) -> bool:
    """Whether a logical tensor of ``shape`` can be held in ``fmt``."""
    rank = len(shape)
    if fmt == "ND":
        return True
    if fmt in ("NCHW", "NC1HWC0", "FRACTAL_Z"):
        return rank == 4
    if fmt == "FRACTAL_NZ":
        return rank >= 2
    return False


def storage_shape(fmt: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Physical shape of a logical tensor of ``shape`` stored in ``fmt``."""
    return _storage_shape(fmt, tuple(map(int, shape)))


@lru_cache(maxsize=4096)  # format selection and weight conversion ask for the same few shapes many times
def _storage_shape(fmt: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    check_layout(fmt, shape)
    if fmt in STANDARD:
        return shape
    if fmt == "NC1HWC0":
        n, c, h, w = shape
        return (n, c0_blocks(c), h, w, C0)
    if fmt == "FRACTAL_Z":
        o, i, kh, kw = shape
        return (c0_blocks(i) * kh * kw, c0_blocks(o), C0, C0)
    *batch, m, n = shape
    return (*batch, c0_blocks(n), c0_blocks(m), C0, C0)
