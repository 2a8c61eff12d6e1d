"""Tensor entries written behind the task that named them, while a build runs its tasks in this process.

A weight file edited just before a build holds a tensor the cache does not have. ``parse.weights`` must hash it to
name it (blake3: 1.5-2 ms for 4 MiB on the development VM), but its chunk files and their sha256 (what a bundle
lists: 3-8 ms for 4 MiB beside the write) are needed only when the entry is read or placed, by ``pack``, tasks
later. While a build runs its tasks in this process (``allowed``), such a write goes on a thread of its own
(``start``) and ``dedupe.storage`` and ``formats.weights`` run beside it.

State kept, per process: the writes in flight by (cache root, tensor hash), and the records waiting for them.

- Every read of a local entry (``tensor_store``: has, get, export, place, verify) first ``wait``s for its write and
  raises the write's error (a ``BundleIOError``).
- A task that started writes has its action record written once they succeeded (``after``): a record never names an
  unwritten entry; a build that fails or is killed mid-write leaves a tensor to store again, not a record naming
  nothing.
- ``allowed()`` waits for every write and record before it returns, so nothing is in flight once a build's tasks
  are done. Outside it (cluster workers, whose readers run in other processes) every entry is written before the
  task that stored it returns, as before.
- At most ``MAX_IN_FLIGHT`` writes run behind; past that, the caller writes its entry itself (a cold build that
  stores hundreds of new tensors keeps the parallelism ``store_tensors`` gives it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bundle_pipeline.errors import BundleIOError
from bundle_pipeline.files import describe_error
from bundle_pipeline.threads import Beside, cores

_LOCK = threading.Lock()
_allowed = 0  # callers of ``allowed()`` now inside it
_writes: dict[tuple[str, str], Beside] = {}  # (cache root, tensor hash) -> its write, until drained
_records: list[Beside] = []  # records waiting for their task's writes


def max_in_flight() -> int:
    """Writes that may run behind at once: one a core (each is a write and a sha256 on a thread of its own)."""
    return cores()


@contextmanager
def allowed() -> Iterator[None]:
    """Let entries be written behind inside the block; on leaving, wait for them all and for the records waiting
    on them, and raise the first write's error (after the block's own error, if it raised one)."""
    global _allowed
    with _LOCK:
        _allowed += 1
    try:
        yield
    except BaseException:
        _leave()
        drain(quiet=True)  # the block's error is the one to report; the writes are finished or failed
        raise
    _leave()
    drain()


def _leave() -> None:
    global _allowed
    with _LOCK:
        _allowed -= 1


def enabled() -> bool:
    """Whether a caller of ``allowed()`` is running: entries may go behind now."""
    return _allowed > 0


def start(root: str, h: str, write: Callable[[], None]) -> Beside | None:
    """Run ``write`` (which stores entry ``h`` of cache ``root``) on a thread of its own when writes may go behind
    and fewer than ``max_in_flight()`` do; the job, or None when the caller must write now."""
    with _LOCK:
        busy = sum(1 for job in _writes.values() if job.running())
        if not _allowed or busy >= max_in_flight():
            return None
        job = Beside(_reported(write, f"tensor {h}"), name="bundle-pipeline-write-behind")
        _writes[root, h] = job
        return job


def writing(root: str, h: str) -> Beside | None:
    """The write of entry ``h`` of cache ``root`` when it went behind and is not drained yet, else None."""
    return _writes.get((root, h))


def wait(root: str, h: str) -> None:
    """Wait for the write of entry ``h`` of cache ``root`` when one is behind; raise its error if it failed."""
    job = _writes.get((root, h))
    if job is not None:
        job.result()


def after(jobs: list[Beside], then: Callable[[], None]) -> None:
    """``then()`` once every job succeeded: now when there are none, else on a thread of its own (``drain``
    waits for it); never when one failed (its error is raised where the entry is read, and by ``drain``)."""
    if not jobs:
        then()
        return

    def once_written() -> None:
        for job in jobs:
            job.result()
        _reported(then, "record")()

    with _LOCK:
        _records.append(Beside(once_written, name="bundle-pipeline-record-behind"))


def drain(quiet: bool = False) -> None:
    """Wait for every write and waiting record; forget them; raise the first error unless ``quiet``."""
    with _LOCK:
        jobs = [*_writes.values(), *_records]
        _writes.clear()
        _records.clear()
    first: BaseException | None = None
    for job in jobs:
        try:
            job.result()
        except BaseException as err:  # noqa: BLE001  (every job is waited for before the first error is raised)
            first = first or err
    if first is not None and not quiet:
        raise first


def _reported(write: Callable[[], None], what: str) -> Callable[[], None]:
    """``write`` with an OSError turned into the IO_ERROR a build reports (readers and ``drain`` re-raise it)."""

    def run() -> None:
        try:
            write()
        except OSError as err:
            raise BundleIOError(f"cannot write {what} to the cache: {describe_error(err)}",
                                str(err.filename or "the cache")) from None

    return run
