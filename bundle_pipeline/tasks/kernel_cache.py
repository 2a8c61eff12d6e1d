"""Kernel-level cache: tile searches keyed by kernel signature, shared across graphs and bundles.

Like tinygrad's diskcache or TVM's tuning database, small decisions live apart from the big
artifacts: a second graph or bundle with the same layer (op, attributes, shapes, dtypes, formats,
target) reuses the decision without deciding again. Records are ``actions/<key>`` entries keyed by
hash(kind, stage VERSION, target fingerprint, signature); an in-process memo avoids re-reading them.

Every decision asked of it is looked up and, on a miss, recorded: the caller asks only for decisions
that cost more than a lookup and a record (hashing the signature, an open, a 0.1-1 ms file write). The
tiling stage sends its searches of at least ``tiling.MEMO_MIN_CANDIDATES`` candidates (a millisecond or
more) and makes the smaller ones itself, all of a graph's in one vectorised evaluation; recording every
search made cold builds of many distinct small layers slower, not faster. What is recorded is thus a
function of the signatures, not of how busy the machine was.

State kept: the in-process memo of this ``KernelCache`` and its hit/miss counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..cache import Cache
from ..hashing import hash_json


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
                self.memo[key] = decide()
                self.cache.put_action(key, {"kind": self.kind, "value": self.memo[key]})
        return self.memo[key]

    def stats(self) -> dict[str, int]:
        return {"kernel_hits": self.hits, "kernel_misses": self.misses}
