"""``cache gc``: removes temps and entries no kept build reaches, or evicts to a size; stateless.

Reachability (``gc(keep_actions=...)``): a kept action keeps the objects named by the values of
its record's ``"outputs"`` dict (a hash, or a list of hashes). A kept object whose bytes are a JSON
object with a top-level ``"tensors"`` dict (name -> tensor hash) keeps those tensors, and one with a
top-level ``"packs"`` dict (tensor hash -> pack hash, ``packs.py``) keeps those tensor packs. Nothing
else is followed, so a stage output that refers to tensors must list them under ``"tensors"``, and
the packs that hold them under ``"packs"``.
``newest_builds()`` gives the usual roots: every ``last-build`` record the pipeline writes (one per
spec: ``{"identity", "tasks": {task id: action key}}``) and the task records it names. Other
records (kernel-level decisions, memos of external tensors and exported files) are not roots.

Eviction (``gc(max_bytes=N)``): while the cache holds more than N bytes, unreachable entries go
first, then reachable ones, each group least recently used first. An entry's last use is its
newest access or modification time on local disks (atime: reads; with the usual relatime mounts it
moves at most daily), its modification time on object stores; a reachable entry also counts as used
when a kept action reaching it was (every build reads the records of the tasks it hits, while a
re-pack only hard-links tensor chunks, which touches no access time). Evicting a reachable object or tensor
also removes the kept actions that reach it, so no record is left pointing at missing data (a kept
record is never evicted on its own: it frees next to nothing and would orphan its data). gc
reads records with ``O_NOATIME`` where it can, so it does not make everything look recent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache.actions import decode_action
from bundle_pipeline.cache.layout import AREAS, KEY_RE, TEMP_PREFIX, Entry, action_rel, hashes_in, object_rel
from bundle_pipeline.hashing import hash_bytes

if TYPE_CHECKING:
    from bundle_pipeline.cache.backends import Backend
    from bundle_pipeline.cache.statstate import OutputState, StatState


def gc(backend: Backend, stat: StatState, outputs: OutputState, keep_actions: set[str] | None = None,
       older_than_s: float = 0, max_bytes: int | None = None,
       temp_older_than_s: float | None = None) -> dict[str, int]:
    """Remove temp leftovers, then unneeded entries; return counts and bytes freed.

    - ``keep_actions`` (e.g. ``newest_builds()``): without ``max_bytes``, every other action and
      every object or tensor not reachable from the kept actions is removed (module docstring).
    - ``max_bytes``: entries are evicted only while the cache holds more than that many bytes,
      unreachable ones first, then reachable ones, least recently used first (module docstring).
    - ``older_than_s``: only entries last used at least that long ago are removed, so a build
      running concurrently keeps its not-yet-recorded outputs. Temp leftovers use
      ``temp_older_than_s`` (default: the same), since removing a live writer's temp file
      makes its write fail while a removed entry is only rebuilt.
    """
    sweep = _Sweep(backend, time.time())
    temp_age = older_than_s if temp_older_than_s is None else temp_older_than_s
    live = _live_entries(backend, sweep, temp_age)
    reach = _reachable(backend, keep_actions) if keep_actions is not None else None
    if max_bytes is None:
        for area, e in live:
            if reach is not None and e.name not in reach[area] and sweep.old(e, older_than_s):
                sweep.remove(area, e)
    else:
        _evict(sweep, live, reach, max_bytes, older_than_s)
    for area in AREAS:
        backend.prune_empty_dirs(area)
    sweep.freed["temp_removed"] += stat.remove_temps(TEMP_PREFIX, temp_age)
    sweep.freed["stat_entries_pruned"] = stat.prune_missing() + outputs.prune_missing()
    sweep.freed["bytes_freed"] = sweep.nbytes
    return sweep.freed


def _live_entries(backend: Backend, sweep: _Sweep, temp_age: float) -> list[tuple[str, Entry]]:
    """Every entry of the cache's own (area, entry), but temps: those old enough are removed on the way."""
    live: list[tuple[str, Entry]] = []
    for area in AREAS:
        for e in backend.entries(area):
            if not e.is_ours(area):
                continue  # a user's file under an area: never the cache's to remove
            if not e.is_temp:
                live.append((area, e))
            elif sweep.old(e, temp_age):
                sweep.remove("temp", e)
    return live


def _evict(sweep: _Sweep, live: list[tuple[str, Entry]], reach: dict[str, Any] | None, max_bytes: int,
           older_than_s: float) -> None:
    """Remove entries while more than ``max_bytes`` are held: unreachable first, least recently used first."""
    actions = {e.name: e for area, e in live if area == "actions"}
    reached_by = reach["reached_by"] if reach is not None else {}

    def reachable(area: str, e: Entry) -> bool:
        return reach is not None and e.name in reach[area]

    def last_use(area: str, e: Entry) -> float:
        stamps = [e.used or e.mtime or 0.0]
        if reachable(area, e):  # a hit on a record that reaches it is a use of it
            stamps += [actions[k].used or 0.0 for k in reached_by.get(e.name, ()) if k in actions]
        return max(stamps)

    total = sum(e.size for _, e in live)
    for area, e in sorted(live, key=lambda ae: (reachable(*ae), last_use(*ae), ae[1].rel)):
        if total <= max_bytes:
            break
        if not sweep.old(e, older_than_s) or (area == "actions" and reachable(area, e)):
            continue  # a needed record goes only with the data it reaches, below
        total -= sweep.remove(area, e)
        if reachable(area, e) and area != "actions":  # no record may point at missing data
            for key in reached_by.get(e.name, ()):
                if key in actions:
                    total -= sweep.remove("actions", actions[key])


def newest_builds(backend: Backend) -> set[str]:
    """gc roots: the key of every ``last-build`` record and of each task record it names."""
    keep: set[str] = set()
    for key, record in _action_records(backend):
        if _is_last_build(record):
            keep.add(key)
            keep.update(v for v in record["tasks"].values() if isinstance(v, str) and KEY_RE.fullmatch(v))
    return keep


def _action_records(backend: Backend) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every intact action record (read without touching access times)."""
    rels = [e.rel for e in backend.entries("actions") if not e.is_temp]
    for rel, data in backend.read_many(rels).items():
        record = decode_action(data)
        if record is not None:
            yield rel.rsplit("/", 1)[1], record


def _reachable(backend: Backend, keep_actions: Iterable[str]) -> dict[str, Any]:
    """Kept actions, the objects and tensors they reach, and ``reached_by``: entry name -> the kept
    actions that reach it (gc evicts those records with the entry)."""
    kept = {k for k in keep_actions if isinstance(k, str) and KEY_RE.fullmatch(k)}
    records = backend.read_many([action_rel(k) for k in sorted(kept)])
    reached_by: dict[str, set[str]] = {}
    objects: set[str] = set()
    for rel, data in records.items():
        record = decode_action(data)
        outputs = record.get("outputs") if record else None
        if isinstance(outputs, dict):
            key = rel.rsplit("/", 1)[1]
            for h in hashes_in(outputs.values()):
                objects.add(h)
                reached_by.setdefault(h, set()).add(key)
    tensor_set: set[str] = set()
    for h in sorted(objects):
        tensors, packs = _named_by(backend, h)
        for t in tensors:
            tensor_set.add(t)
            reached_by.setdefault(t, set()).update(reached_by[h])
        for p in packs:  # tensor packs are objects
            reached_by.setdefault(p, set()).update(reached_by[h])
        objects |= packs
    return {"actions": kept, "objects": objects, "tensors": tensor_set, "reached_by": reached_by}


def _named_by(backend: Backend, h: str) -> tuple[set[str], set[str]]:
    """Tensor hashes listed under a top-level "tensors" dict of a JSON object, and the tensor packs under
    its "packs" dict (the gc convention; ``packs.py``)."""
    try:
        data = backend.read_quiet(object_rel(h))
    except (FileNotFoundError, IsADirectoryError):
        return set(), set()
    if hash_bytes(data) != h or not data.startswith(b"{"):
        return set(), set()  # msgpack or other binary output: never refers to tensors
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return set(), set()
    if not isinstance(obj, dict):
        return set(), set()
    named = [obj.get(key) for key in ("tensors", "packs")]
    tensors, packs = (hashes_in(m.values()) if isinstance(m, dict) else set() for m in named)
    return tensors, packs


class _Sweep:
    """What one gc pass removed: each entry at most once, counted per area, bytes summed."""

    def __init__(self, backend: Backend, now: float):
        self.backend, self.now = backend, now
        self.freed = {"temp_removed": 0, "actions_removed": 0, "objects_removed": 0, "tensors_removed": 0}
        self.nbytes = 0
        self.done: set[str] = set()

    def old(self, e: Entry, age: float) -> bool:
        if age <= 0:
            return True
        stamp = e.used if e.used is not None else e.mtime
        return stamp is not None and self.now - stamp >= age

    def remove(self, area: str, e: Entry) -> int:
        """Remove ``e`` unless already removed; return the bytes freed."""
        if e.rel in self.done:
            return 0
        self.done.add(e.rel)
        self.backend.remove_tree(e.rel)
        self.freed[f"{area}_removed"] += 1
        self.nbytes += e.size
        return e.size


def _is_last_build(record: dict[str, Any]) -> bool:
    """The pipeline's per-spec record of its newest build: ``{"identity": ..., "tasks": {id: key}}``."""
    return isinstance(record.get("identity"), str) and isinstance(record.get("tasks"), dict)
