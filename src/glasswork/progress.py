"""Progress bars for long jobs: a rich bar with throughput (tokens/s, features/s, ...) and an ETA."""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="cyan")


def enabled() -> bool:
    """Bars go to stderr; GLASSWORK_PROGRESS=0 turns them off (JSON output stays clean either way)."""
    return os.environ.get("GLASSWORK_PROGRESS", "1") != "0"


_watch = threading.local()  # per thread: callbacks told of every bar's progress (the web app's job polling)


@contextmanager
def watch(callback) -> Iterator[None]:
    """Inside the block, every bar opened in this thread also calls callback(description, completed, total)."""
    stack = getattr(_watch, "stack", [])
    _watch.stack = stack + [callback]
    try:
        yield
    finally:
        _watch.stack = stack


class Bar:
    """Handle for one task: `bar.advance(n)`, `bar.update(description=...)`."""

    def __init__(self, progress: Progress | None, task_id, description: str = "", total: float | None = None,
                 completed: float = 0):
        self._progress, self._task = progress, task_id
        self._watchers = list(getattr(_watch, "stack", []))
        self._state = [description, completed, total]
        self._tell()

    def _tell(self) -> None:
        for cb in self._watchers:
            cb(*self._state)

    def advance(self, n: float = 1) -> None:
        self._state[1] += n
        self._tell()
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **kwargs) -> None:
        for i, key in enumerate(("description", "completed", "total")):
            if key in kwargs:
                self._state[i] = kwargs[key]
        self._tell()
        if self._progress is not None:
            self._progress.update(self._task, **kwargs)


@contextmanager
def progress(description: str, total: float | None, unit: str = "tokens", completed: float = 0) -> Iterator[Bar]:
    """A progress bar on stderr with `unit`/s and an ETA; `completed` starts it part-way (resume)."""
    if not enabled():
        yield Bar(None, None, description, total, completed)
        return
    from rich.console import Console

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               _RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as p:
        task = p.add_task(description, total=total, completed=completed)
        yield Bar(p, task, description, total, completed)
