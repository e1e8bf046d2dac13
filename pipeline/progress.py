"""Progress display for long work: a rich progress bar on a terminal, quiet otherwise."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Quiet:
    def add_task(self, *_a, **_k) -> int:
        return 0

    def update(self, *_a, **_k) -> None:
        pass


@contextmanager
def progress_bar(enabled: bool = True):
    if not enabled:
        yield _Quiet()
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        yield bar
