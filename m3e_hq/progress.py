"""Progress bars for long work, shown when the CLI turns them on and silent otherwise (tests, deployments)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_progress: Progress | None = None


@contextmanager
def showing(console: Console | None = None) -> Iterator[Progress]:
    """Show progress bars on `console` while the block runs."""
    global _progress
    progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), console=console, transient=False)
    _progress = progress
    try:
        with progress:
            yield progress
    finally:
        _progress = None


def counter(description: str, unit: str = "rows") -> Callable[[int], None] | None:
    """A callback that advances a bar named `description` by n units, or None when no bars are shown."""
    progress = _progress
    if progress is None:
        return None
    task = progress.add_task(description, total=None, unit=unit)
    return lambda n: progress.advance(task, n)
