"""Build events for observers (progress displays, profiles): what the planner and the schedulers report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..tasks.task import TaskResult


@dataclass
class Event:
    """A build event for observers: "plan" (from build_many), "start" or "finish" of one task."""

    kind: str
    task: str | None = None
    result: TaskResult | None = None
    at: float = field(default_factory=time.time)  # epoch seconds
    data: dict = field(default_factory=dict)  # "plan": {"dag", "plan", "started", "finished"}


Observer = Callable[[Event], None]
