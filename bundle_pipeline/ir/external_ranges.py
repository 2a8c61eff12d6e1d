"""The name of a weight's byte range in its external-data file (no numpy: a no-op build computes these)."""

from __future__ import annotations

import json


def range_key(offset: int, dtype: str, shape: list[int] | tuple[int, ...]) -> str:
    """What a weight's tensor hash depends on besides its bytes: JSON ``[offset, dtype, shape]`` (as
    ``ir.external_map.hash_ranges`` reads it back)."""
    return json.dumps([int(offset), dtype, [int(n) for n in shape]], separators=(",", ":"))
