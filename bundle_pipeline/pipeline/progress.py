"""Build progress for ``run``: a rich live display on a terminal, plain lines in a pipe, nothing with ``--json``.

Progress goes to stdout, with the "built ..." lines (a build log, as make and ninja print it); stderr is
left to errors, so a failing ``run`` still prints exactly one ``error: ...`` line there.

Both displays are build observers (``build_many(..., on_event=...)``): they count, per stage, the tasks
resolved from the cache when the build was planned and the tasks the scheduler finished, the cache hits
(planned hits plus tasks that early cutoff spared at run time), which tasks are running and the time
since the build started. Events arrive on the thread that called ``build_many``; the rich display also
redraws from its own refresh thread, so its state is guarded by a lock.

Nothing here imports rich (or anything heavy) until a build actually has tasks to run, so a no-op
``run`` stays cheap.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from ..stages import order
from .events import Event, Observer


class Counts:
    """What a progress display shows, updated from build events."""

    def __init__(self) -> None:
        self.started = time.time()
        self.rounds = 0  # plans seen: a build plans again after repairing a lost cache entry
        self.stage_of: dict[str, str] = {}
        self.total: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.running: dict[str, float] = {}  # task id -> when it was handed to a worker
        self.to_run = 0
        self.finished = 0
        self.last: str | None = None

    def update(self, event: Event) -> None:
        if event.kind == "plan":
            dag, found = event.data["dag"], event.data["plan"]
            if not self.rounds:
                self.started = event.data.get("started", self.started)
            self.rounds += 1
            self.total, self.done, self.hits, self.running, self.finished = {}, {}, {}, {}, 0
            for tid, task in dag.tasks.items():
                stage = task.stage
                self.stage_of[tid] = stage
                self.total[stage] = self.total.get(stage, 0) + 1
                self.done.setdefault(stage, 0)
                self.hits.setdefault(stage, 0)
            for tid in found.resolved:
                self.done[self.stage_of[tid]] += 1
                self.hits[self.stage_of[tid]] += 1
            self.to_run = len(found.stale)
        elif event.kind == "start" and event.task:
            self.running[event.task] = event.at
        elif event.kind == "finish" and event.task:
            self.running.pop(event.task, None)
            stage = self.stage_of.get(event.task, "?")
            self.done[stage] = self.done.get(stage, 0) + 1
            if event.result is not None and event.result.status == "cached":
                self.hits[stage] = self.hits.get(stage, 0) + 1
            self.finished += 1
            self.last = event.task

    def stages(self) -> list[str]:
        known = order.groups()  # the declared stage order
        return sorted(self.total, key=lambda s: (known.index(s) if s in known else len(known), s))

    def elapsed(self) -> float:
        return time.time() - self.started


class PlainProgress:
    """One line when the plan is known and one per finished task, like ninja in a pipe; no ANSI codes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.counts = Counts()

    def __call__(self, event: Event) -> None:
        c = self.counts
        c.update(event)
        if event.kind == "plan" and c.to_run:
            total = sum(c.total.values())
            again = "cache repaired, planning again: " if c.rounds > 1 else ""
            self._line(f"{again}{total} tasks: {total - c.to_run} up to date, {c.to_run} to run")
        elif event.kind == "finish" and event.result is not None:
            r = event.result
            width = len(str(c.to_run))
            how = {"ran": "ran   ", "cached": "cached"}.get(r.status, r.status)  # cached here: early cutoff
            self._line(f"[{c.finished:>{width}}/{c.to_run}] {how} {r.id}  {r.seconds:.2f}s  "
                       f"({c.elapsed():.1f}s elapsed)")

    def close(self, interrupted: bool = False) -> None:
        if interrupted:
            self._line(f"interrupted at {self.counts.elapsed():.1f}s: {self.counts.finished} of "
                       f"{self.counts.to_run} tasks had finished")

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class RichProgress:
    """A live table on the terminal: per stage done/total with a bar and cache hits; running tasks; elapsed."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.counts = Counts()
        self.lock = threading.Lock()
        self.live = None

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.counts.update(event)
        if event.kind == "plan" and self.counts.to_run and self.live is None:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(get_renderable=self.render, console=Console(file=self.stream), refresh_per_second=8,
                             transient=False)
            self.live.start()

    def render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            c = self.counts
            table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
            for name, justify in (("stage", "left"), ("done", "right"), ("", "left"), ("cache hits", "right")):
                table.add_column(name, justify=justify)
            for stage in c.stages():
                done, total = c.done.get(stage, 0), c.total[stage]
                table.add_row(stage, f"{done}/{total}", ProgressBar(total=max(total, 1), completed=done, width=24),
                              str(c.hits.get(stage, 0)))
            now = time.time()
            running = sorted(c.running.items(), key=lambda kv: kv[1])
            shown = ", ".join(f"{tid} ({now - t0:.1f}s)" for tid, t0 in running[:4])
            more = f" +{len(running) - 4} more" if len(running) > 4 else ""
            current = f"running: {shown}{more}" if running else f"last finished: {c.last or '-'}"
            done = sum(c.done.values())
            hits = sum(c.hits.values())
            footer = (f"{done}/{sum(c.total.values())} tasks  {hits} cache hits  "
                      f"{c.finished}/{c.to_run} run  {c.elapsed():.1f}s elapsed")
        return Group(table, Text(current, overflow="ellipsis", no_wrap=True), Text(footer, style="dim"))

    def close(self, interrupted: bool = False) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if interrupted:
            self.stream.write(f"interrupted at {self.counts.elapsed():.1f}s: {self.counts.finished} of "
                              f"{self.counts.to_run} tasks had finished\n")
            self.stream.flush()


def choose(as_json: bool, stream: TextIO) -> str:
    """"none" with --json, "rich" on a terminal, "plain" otherwise (pipes, files, CI logs)."""
    if as_json:
        return "none"
    isatty = getattr(stream, "isatty", None)
    return "rich" if callable(isatty) and isatty() else "plain"


@contextmanager
def show_progress(as_json: bool, stream: TextIO | None = None) -> Iterator[Observer | None]:
    """The observer to pass to ``build_many`` (None with --json); the display is closed on the way out,
    saying how far the build got when it was interrupted."""
    stream = stream or sys.stdout
    mode = choose(as_json, stream)
    if mode == "none":
        yield None
        return
    display = RichProgress(stream) if mode == "rich" else PlainProgress(stream)
    try:
        yield display
    except KeyboardInterrupt:
        display.close(interrupted=True)
        raise
    except BaseException:
        display.close()
        raise
    display.close()


def fan_out(observers: list[Observer | None]) -> Observer | None:
    """One observer calling each given one in turn (None when there are none)."""
    active = [o for o in observers if o is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def notify(event: Event) -> None:
        for observer in active:
            observer(event)

    return notify
