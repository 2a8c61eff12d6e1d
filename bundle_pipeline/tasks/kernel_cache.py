"""Kernel-level cache: tiling and codegen decisions keyed by kernel signature, shared across graphs and bundles.

Like tinygrad's diskcache or TVM's tuning database, small decisions live apart from the big
artifacts: a second graph or bundle with the same layer (op, attributes, shapes, dtypes, formats,
target) reuses the decision without deciding again. Records are ``actions/<key>`` entries keyed by
hash(kind, stage VERSION, target fingerprint, signature); an in-process memo avoids re-reading them.
A decision is recorded only when making it took at least ``RECORD_MIN_SECONDS``: a record costs a file
write (0.1-1 ms), more than a vectorised tile search over a small layer, so recording every decision
made cold builds of many distinct layers slower, not faster. Lookups always happen (a miss is one
failed open, microseconds), so a recorded search is reused wherever the same layer appears.

State kept: the in-process memo of this ``KernelCache`` and its hit/miss counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..cache import Cache
from ..hashing import hash_json

RECORD_MIN_SECONDS = 1e-3


class KernelCache:
    def __init__(self, cache: Cache, kind: str, version: str, target_fingerprint: str):
        self.cache, self.kind, self.version, self.target = cache, kind, version, target_fingerprint
        self.memo: dict[str, Any] = {}
        self.hits = self.misses = 0

    def get(self, signature: dict, decide: Callable[[], Any]) -> Any:
        """The recorded decision for this kernel signature, or ``decide()`` recorded for next time."""
        key = hash_json({"kernel": self.kind, "version": self.version, "target": self.target, "signature": signature})
        if key not in self.memo:
            record = self.cache.get_action(key)
            if record is not None:
                self.hits += 1
                self.memo[key] = record["value"]
            else:
                self.misses += 1
                start = time.perf_counter()
                self.memo[key] = decide()
                if time.perf_counter() - start >= RECORD_MIN_SECONDS:
                    self.cache.put_action(key, {"kind": self.kind, "value": self.memo[key]})
        return self.memo[key]

    def stats(self) -> dict[str, int]:
        return {"kernel_hits": self.hits, "kernel_misses": self.misses}
