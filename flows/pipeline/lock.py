"""One build at a time in a build folder: `<build>/.lock`, held (flock) for the whole build and released by the
kernel when the process ends, even when it is killed, so that a killed build never leaves the folder locked. The
file says which process holds it (pid, command line, start time), for the one line a second build prints.

The lock is taken again, without waiting, by the process that holds it (the CLI takes it before starting Prefect,
the flow takes it again), and released when the outermost holder ends."""

import fcntl
import os
import shlex
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

LOCK_NAME = ".lock"

_held: dict[Path, tuple[TextIO, int]] = {}  # folder -> (its open lock file, how many holders in this process)
_guard = threading.Lock()


class BuildFolderBusy(RuntimeError):
    """Another process is building into the folder."""


@contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """Hold the build folder's lock in the block; BuildFolderBusy (naming the holder) when another process holds it."""
    folder = build_dir.resolve()
    with _guard:
        handle, holders = _held.get(folder) or (_acquire(folder), 0)
        _held[folder] = (handle, holders + 1)
    try:
        yield
    finally:
        with _guard:
            handle, holders = _held.pop(folder)
            if holders > 1:
                _held[folder] = (handle, holders - 1)
            else:
                handle.close()  # releases the lock


def _acquire(folder: Path) -> TextIO:
    """The folder's lock file, locked and saying who holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / LOCK_NAME).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not yet said which"
        handle.close()
        raise BuildFolderBusy(f"{folder} is being built by {holder}: wait for that build to end, or build into "
                              "another folder with --out DIR") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} ({holder_command()}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC)\n")
    handle.flush()
    return handle


def holder_command() -> str:
    """This process's command line, its program by name only."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
