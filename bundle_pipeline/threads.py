"""Work on threads for what releases the GIL (hashing, file I/O): a map over a dict's values, one call beside."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one: a container's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def map_values(fn: Callable[[Any], Any], items: dict[str, Any]) -> dict[str, Any]:
    """``{name: fn(value)}`` in name order, on up to one thread a core; one item (or none) runs on this thread."""
    names = sorted(items)
    if len(names) < 2:
        return {n: fn(items[n]) for n in names}
    from concurrent.futures import ThreadPoolExecutor  # not at import: a no-op maps nothing

    with ThreadPoolExecutor(max_workers=min(len(names), cores())) as pool:
        return dict(zip(names, pool.map(lambda n: fn(items[n]), names), strict=True))


class Beside:
    """``fn(*args)`` on a thread of its own while the caller goes on (a hash beside a write: both let go of the GIL);
    ``result()`` waits and returns its value or raises what it raised, ``join()`` only waits."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str) -> None:
        import threading  # not at import: a no-op starts no thread

        self._fn, self._args, self._value, self._error = fn, args, None, None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as err:  # noqa: BLE001  (re-raised by ``result`` in the caller's thread)
            self._error = err

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value
