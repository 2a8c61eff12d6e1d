"""Recent: what this process decoded lately, by content hash, bounded by bytes (least recently used dropped).

Content-addressed entries never change, so a value decoded once (a tensor pack, a stage output's JSON) can be
handed to the next task of the same build without reading and decoding it again. Callers treat the values as
read-only: they are shared. A caller must still check that the entry exists in *its* cache before trusting a
value from here (this process may have seen it in another cache, or before gc removed it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class Recent:
    """A thread-safe LRU of decoded values keyed by content hash, holding at most ``budget`` (encoded) bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self._items: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found[1] if found else None

    def put(self, key: str, size: int, value: Any) -> None:
        with self._lock:
            if key in self._items or size > self.budget:
                return
            self._items[key] = (size, value)
            self._bytes += size
            while self._bytes > self.budget:
                _, (dropped, _) = self._items.popitem(last=False)
                self._bytes -= dropped

    def forget(self, key: str) -> None:
        with self._lock:
            found = self._items.pop(key, None)
            if found:
                self._bytes -= found[0]
