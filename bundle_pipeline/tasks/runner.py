"""Run one task against the cache: compute its key, return the recorded outputs on a hit, else run the step.

Faults
------
- **A lost cache entry.** A task's inputs are content hashes of upstream outputs, and those outputs may
  name more entries (a weight table names tensors). If one of them is missing or corrupt when the task
  reads it (the cache verifies every read and deletes what fails), the task does not raise: it returns
  a result with status ``"lost"`` and ``extra["missing"]`` = the hash, and every task downstream of it
  returns ``"blocked"`` without running. Nothing is recorded for them. The build (``pipeline/build.py``)
  then calls ``forget_holders``: among the upstream results it forgets the action record of every task
  whose outputs name that hash, directly or inside an output object, and builds again; those tasks
  re-run and write the entry anew (a re-run parse puts the tensor back), early cutoff spares the
  rest, and the build report lists the repair under ``cache_repairs``. When no upstream output names
  it any more (their objects are gone too), every upstream record is forgotten (``forget_records``).
  A missing *direct* output is simpler still: ``_still_valid`` already refuses a record whose outputs
  are gone, so the next plan re-runs its task. Rounds are bounded (``MAX_REPAIR_ROUNDS`` in the
  build); a cache that keeps losing entries ends the build with an ``IO_ERROR``. The same holds when
  the entry is lost while the plan computes a key (``LostEntry``, raised by ``lookup``).
- **A malformed model** that the importer's checks miss still ends as ``GRAPH_INVALID`` naming the
  file: exceptions from data in the stages that read the user's files (``Stage.reads``: parse,
  parse.weights) are converted.
- **Disk full, permission denied, network errors** (``OSError``) while a task reads or writes the cache
  or a file become one ``IO_ERROR`` naming the path and whether it is in the cache. Cache writes are
  atomic and the bundle is staged and renamed (``stages/pack.py``), so the previous bundle and every
  recorded entry stay intact.
- **Shared caches.** Whether pack's output is still the bundle a record describes is this machine's
  business: ``_still_valid`` checks the cache's local output state (``cache/statstate.py``), so two
  machines or two output paths building one bundle from one cache do not invalidate each other.
- **A killed build or worker** leaves at worst temp files (``.tmp-*``, which no reader looks at and
  ``cache gc`` removes) and outputs without an action record (harmless: they are content-addressed).
  A task's record is written last, after its outputs, so a record never names an unwritten output.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ..cache import Cache, CacheMiss
from ..errors import BundleIOError, GraphInvalid
from ..files import tree_stamp
from ..hashing import hash_json
from ..stages import order
from ..stages.stage import OUTPUT_STAMP
from ..targets import get_target
from .sources import file_inputs
from .task import Task, TaskResult, input_hashes, task_key, timed


@dataclass(frozen=True)
class BuildContext:
    """What every task of one bundle needs besides its inputs; small and picklable so any scheduler can ship it."""

    cache_root: str
    target: str
    force: bool = False


LOST = "lost"  # status of a task that found a cache entry missing or corrupt (see the module docstring)
BLOCKED = "blocked"  # status of a task downstream of a lost one: it did not run


class LostEntry(Exception):
    """Cache entry ``missing`` (a content hash) was missing or corrupt while computing ``task``'s key."""

    def __init__(self, task: str, missing: str):
        super().__init__(task, missing)
        self.task, self.missing = task, missing

    def __str__(self) -> str:
        return f"{self.task}: cache entry {self.missing} is missing or corrupt"


@dataclass
class Lookup:
    key: str
    inputs: dict[str, str]
    record: dict | None  # the cached record when it is a valid hit


def lookup(task: Task, ctx: BuildContext, upstream: dict[str, TaskResult], cache: Cache,
           recorded: Mapping[str, dict] | None = None) -> Lookup:
    """The task's key from its inputs' content hashes, and its cached record if still valid.

    ``recorded``: records by key that the caller already holds (the last build's, ``pipeline/rebuild.py``): a key
    found there is not read from the cache again (still checked by ``_still_valid``).
    LostEntry when an entry the key depends on is missing or corrupt; IO_ERROR on an OSError.
    """
    try:
        return _lookup(task, ctx, upstream, cache, recorded or {})
    except CacheMiss as miss:
        raise LostEntry(task.id, str(miss.args[0])) from None
    except OSError as err:
        raise io_error(err, task, cache) from None


def _lookup(task: Task, ctx: BuildContext, upstream: dict[str, TaskResult], cache: Cache,
            recorded: Mapping[str, dict]) -> Lookup:
    inputs = input_hashes(task, upstream)
    reads = order.named(task.step).reads
    if reads is not None:
        inputs.update(file_inputs(reads, task.context, inputs, cache))
    key = task_key(task, inputs, get_target(ctx.target).fingerprint)
    record = None if ctx.force else recorded.get(key) or cache.get_action(key)
    if record is not None and not _still_valid(task, key, record, cache):
        record = None
    return Lookup(key, inputs, record)


def cached_result(task: Task, found: Lookup) -> TaskResult:
    return TaskResult(task.id, task.stage, task.graph, found.key, found.record["outputs"], "cached", 0.0,
                      {"recorded_seconds": found.record.get("seconds", 0.0)})


def execute_task(task: Task, ctx: BuildContext, *upstream_results: TaskResult,
                 recorded: Mapping[str, dict] | None = None) -> TaskResult:
    """Constructive trace with early cutoff: the key reads input content hashes, never upstream keys.

    Returns a "lost" result when a cache entry it needs is missing or corrupt, "blocked" when an
    upstream task was lost or blocked (see the module docstring); raises IO_ERROR on an OSError.
    """
    start = time.time()
    cache = Cache(ctx.cache_root)
    known, found = _settle(task, ctx, upstream_results, cache, start, recorded)
    if known is not None:
        return known
    try:
        from .steps import run_stage  # the cache glue and what it imports load only when a task really runs

        stage = order.named(task.step)
        (outputs, extra), seconds = timed(run_stage, stage, task, cache, found.inputs)
        record = {"task": task.id, "outputs": outputs, "seconds": seconds, "inputs": found.inputs,
                  "params": task.params, "version": task.version, "target": get_target(ctx.target).fingerprint}
        cache.put_action(found.key, record)
        if stage.writes_bundle:  # this machine's output: recorded locally, not in the shared record
            out = task.context["out"]  # pack knows the stamp of the tree it wrote when it described it: no walk
            cache.record_output(out, {"key": found.key, "stamp": extra.pop(OUTPUT_STAMP, None) or output_stamp(out)})
    except (CacheMiss, LostEntry) as lost:
        missing = lost.missing if isinstance(lost, LostEntry) else str(lost.args[0])
        return _stamped(TaskResult(task.id, task.stage, task.graph, "", {}, LOST, 0.0, {"missing": missing}), start)
    except OSError as err:
        raise io_error(err, task, cache) from None
    except _MODEL_DATA_ERRORS as err:
        _raise_model_error(err, task)
    return _stamped(TaskResult(task.id, task.stage, task.graph, found.key, outputs, "ran", seconds, extra), start)


def settled(task: Task, ctx: BuildContext, *upstream_results: TaskResult,
            recorded: Mapping[str, dict] | None = None) -> TaskResult | None:
    """The task's result when it needs no run (blocked, lost, or a valid cached record), else None."""
    return _settle(task, ctx, upstream_results, Cache(ctx.cache_root), time.time(), recorded)[0]


def _settle(task: Task, ctx: BuildContext, upstream_results: tuple[TaskResult, ...], cache: Cache,
            start: float, recorded: Mapping[str, dict] | None = None) -> tuple[TaskResult | None, Lookup | None]:
    for r in upstream_results:
        if r.status in (LOST, BLOCKED):
            return TaskResult(task.id, task.stage, task.graph, "", {}, BLOCKED, 0.0, {"blocked_by": r.id}), None
    try:
        found = lookup(task, ctx, {r.id: r for r in upstream_results}, cache, recorded)
    except LostEntry as lost:
        return _stamped(TaskResult(task.id, task.stage, task.graph, "", {}, LOST, 0.0, {"missing": lost.missing}),
                        start), None
    except _MODEL_DATA_ERRORS as err:
        _raise_model_error(err, task)
    if found.record is not None:
        return _stamped(cached_result(task, found), start), found
    return None, found


# In a stage that decodes the user's files, an exception the importer did not turn into a BundleError
# (a malformed model the checks missed: mismatched tensor sizes, invalid UTF-8 names, ...) is still the
# model's fault, so it becomes GRAPH_INVALID naming the file; elsewhere it is a bug and propagates.
_MODEL_DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError)


def _raise_model_error(err: Exception, task: Task) -> NoReturn:
    if not order.named(task.step).reads_user_input:
        raise err
    raise GraphInvalid(f"cannot import the model: {type(err).__name__}: {err}", task.context["where"]) from None


def forget_holders(missing: str, candidates: list[TaskResult], cache: Cache) -> list[str]:
    """Forget the action record of each candidate whose outputs name ``missing``, directly or inside one
    of its output objects; return their task ids. Those tasks re-run next time and write it anew."""
    needle = missing.encode()
    holders = []
    for r in candidates:
        if r.key and r.status in ("ran", "cached") and (
                missing in r.outputs.values() or any(needle in _object_bytes(cache, h) for h in r.outputs.values())):
            cache.remove_action(r.key)
            holders.append(r.id)
    return sorted(holders)


def forget_records(candidates: list[TaskResult], cache: Cache) -> list[str]:
    """Forget the action record of every candidate that ran or hit; return their task ids."""
    done = [r for r in candidates if r.key and r.status in ("ran", "cached")]
    for r in done:
        cache.remove_action(r.key)
    return sorted(r.id for r in done)


def _object_bytes(cache: Cache, h: str) -> bytes:
    """An output object's verified bytes; empty when it is gone too (its own task re-runs) or not an object."""
    try:
        return cache.get_object(h)
    except (CacheMiss, ValueError):
        return b""


def io_error(err: OSError, task: Task, cache: Cache) -> BundleIOError:
    """One IO_ERROR line for an OSError met while running ``task``: what failed, where, and why."""
    path = str(err.filename) if err.filename else None
    place = "the cache" if path is None or path.startswith(cache.root) else "a file"
    reason = err.strerror or str(err) or type(err).__name__
    return BundleIOError(f"{task.id}: cannot read or write {place}: {reason}", path or cache.root)


def _stamped(result: TaskResult, start: float) -> TaskResult:
    """Where and when a task executed, for build profiles: wall-clock start/stop (epoch seconds) and worker."""
    result.extra.update(start=start, stop=time.time(), worker=worker_name(), pid=os.getpid(),
                        thread=threading.current_thread().name)
    return result


def worker_name() -> str:
    """The dask.distributed worker's address when running on one, else ``host:pid``."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            return str(get_worker().address)
        except ValueError:  # not inside a distributed worker
            pass
    return f"{_host_name()}:{os.getpid()}"


def _host_name() -> str:
    if hasattr(os, "uname"):  # what socket.gethostname() returns, without importing socket (~3 ms) mid-build
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _still_valid(task: Task, key: str, record: dict, cache: Cache) -> bool:
    """A hit needs its outputs in the cache; pack's output must also still be the bundle this key wrote
    on this machine (the cache's local output state, not the shared record: see cache/statstate.py)."""
    if order.named(task.step).writes_bundle:
        out = task.context["out"]
        return cache.output_record(out) == {"key": key, "stamp": output_stamp(out)}
    return all(cache.has_object(h) for h in record["outputs"].values())


def output_stamp(path: str) -> str | None:
    """Stat fingerprint of a written bundle (every entry's path, size, mtime_ns, inode); None when absent."""
    root = Path(path)
    if root.is_file():
        st = root.stat()
        return hash_json([root.name, st.st_size, st.st_mtime_ns, st.st_ino])
    if not root.is_dir():
        return None
    rows: list[list] = []
    _stat_rows(str(root), "", rows)
    return tree_stamp(rows)


def _stat_rows(directory: str, prefix: str, rows: list[list]) -> None:
    """One row per file under ``directory`` (paths relative to the walk's root, as ``os.walk`` without
    following directory links would give them): scandir and string joins, no ``relpath`` (a bundle has
    hundreds of files, and every no-op and pack stamps it)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir():
                if not entry.is_symlink():
                    _stat_rows(entry.path, rel + os.sep, rows)
                continue
            st = os.stat(entry.path)
            rows.append([rel, st.st_size, st.st_mtime_ns, st.st_ino])
