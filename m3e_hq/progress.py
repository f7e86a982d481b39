"""Progress bars for long work, shown when the CLI turns them on and silent otherwise (tests, deployments).

Each stage shows one bar that counts its sources and names the one whose work started or ended last (`stage`,
`unit`); the work inside a unit (rows read, texts encoded, bytes downloaded) shows as a bar named after the stage and
the source, removed when that work ends (`bar`). While bars are shown, the bars that transformers and
huggingface_hub print by themselves and the load reports of transformers and sentence-transformers are turned off.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

_progress: Progress | None = None
_stages: dict[str, TaskID] = {}
# Loggers of the model libraries, whose load reports and warnings would otherwise print between the bars (not
# huggingface_hub's, whose download retries are printed once: sources/download_hub.py).
LIBRARY_LOGGERS = ("transformers", "sentence_transformers")


@contextmanager
def showing(console: Console | None = None) -> Iterator[Progress]:
    """Show progress bars on `console` while the block runs, the model libraries' own bars and load reports off."""
    global _progress
    progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), console=console, transient=False)
    _progress = progress
    try:
        with libraries_quiet(), progress:
            yield progress
    finally:
        _progress = None
        _stages.clear()


@contextmanager
def libraries_quiet() -> Iterator[None]:
    """transformers' and huggingface_hub's tqdm bars (e.g. "Loading weights") off and the LIBRARY_LOGGERS at ERROR
    while the block runs; as they were afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    hub_bars_were_off = are_progress_bars_disabled()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    transformers_logging.disable_progress_bar()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars_were_on:
            transformers_logging.enable_progress_bar()
        if not hub_bars_were_off:
            enable_progress_bars()


@contextmanager
def stage(name: str, sources: int) -> Iterator[None]:
    """A bar for stage `name` while the block runs, counting its `sources`; complete when the block ends (a stage
    that raises leaves it where it stopped)."""
    progress = _progress
    if progress is None:
        yield
        return
    task = progress.add_task(name, total=sources, unit="sources")
    _stages[name] = task
    yield
    _stages.pop(name, None)
    progress.update(task, completed=sources)


@contextmanager
def unit(stage_name: str, sources: Sequence[str]) -> Iterator[None]:
    """The work of stage `stage_name` on `sources`: named on the stage's bar when it starts, and when it ends,
    counted there."""
    progress, task = _progress, _stages.get(stage_name)
    if progress is None or task is None:
        yield
        return
    description = f"{stage_name} {label(sources)}"
    progress.update(task, description=description)
    yield
    progress.update(task, description=description, advance=len(sources))


def label(sources: Sequence[str]) -> str:
    """`sources` in a few words: the one source, or the first and how many more."""
    return sources[0] if len(sources) == 1 else f"{sources[0]} +{len(sources) - 1}"


@contextmanager
def bar(description: str, total: int | None = None, unit: str = "rows") -> Iterator[Callable[[int], None] | None]:
    """A bar named `description` (a stage and a source) while the block runs, removed when it ends: a callback
    that advances it by n `unit`s (out of `total`, None: not known beforehand), or None when no bars are shown."""
    progress = _progress
    if progress is None:
        yield None
        return
    task = progress.add_task(description, total=total, unit=unit)
    try:
        yield lambda n: progress.advance(task, n)
    finally:
        progress.remove_task(task)
