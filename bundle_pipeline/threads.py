"""Map a function over a dict's values on threads, for work that releases the GIL (hashing, file I/O)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def map_values(fn: Callable[[Any], Any], items: dict[str, Any]) -> dict[str, Any]:
    """``{name: fn(value)}`` in name order, on up to one thread a core; one item (or none) runs on this thread."""
    names = sorted(items)
    if len(names) < 2:
        return {n: fn(items[n]) for n in names}
    from concurrent.futures import ThreadPoolExecutor  # not at import: a no-op maps nothing

    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 2)) as pool:
        return dict(zip(names, pool.map(lambda n: fn(items[n]), names), strict=True))
