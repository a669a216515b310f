"""Rich progress bars for long work (export, training, calibration, build, bench)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
# Tables go to stdout; wide enough to stay readable when piped into a log.
table_console = Console(width=None if Console().is_terminal else 180)


class LineProgress(Progress):
    """A progress bar that, when its console is not a terminal (`make demo | tee log`, CI), prints one plain
    line per task every ``every`` seconds and when a task finishes: rich draws nothing there until the end."""

    every = 15.0

    def __init__(self, *columns: Any, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self._logged: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        if self.console.is_terminal:
            return
        task = self._tasks[task_id]
        now, last = time.monotonic(), self._logged.get(task_id)
        done = task.total is not None and task.completed >= task.total
        if last is not None and now - last < self.every and not (done and last != -1.0):
            return
        self._logged[task_id] = -1.0 if done else now
        total = f"/{task.total:.0f}" if task.total is not None else ""
        self.console.print(f"{task.description}: {task.completed:.0f}{total} {task.fields.get('info', '')}",
                           highlight=False, soft_wrap=True)


def progress(transient: bool = False) -> Progress:
    return LineProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
    )
