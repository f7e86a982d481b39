"""Files saved under a data file's name that are not the data, told apart by their first bytes before any parsing:
a Git LFS pointer (a clone without `git lfs pull`), an HTML or XML page (a cloud drive's login or error page, a
proxy's answer), an empty file. No native format of the catalog starts like any of them: Parquet starts with
`PAR1`, gzip with 1f 8b, JSON and JSON Lines with `{` or `[`, the CSV files with their header row.

Symbolic links are followed only to regular files outside the system trees (/proc, /sys, /dev): a file whose real
path lies in one (a link to /proc/self/environ would read the build's environment, tokens with it) is not the data
and is not opened. Links to anything but a regular file (a folder, a device, a pipe) match no file glob at all.
"""

import re
from pathlib import Path
from typing import Literal, NamedTuple

HEAD_BYTES = 4096
SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
LFS_SPECS = (b"version https://git-lfs.github.com/spec/", b"version https://hawser.github.com/spec/")
MARKUP_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--")
_LFS_SIZE = re.compile(rb"^size (\d+)\s*$", re.MULTILINE)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class NotData(NamedTuple):
    """A file that is not the data: its kind, and what it is in words ("a Git LFS pointer to a 1,024-byte file")."""

    kind: Literal["lfs", "page", "empty", "system"]
    what: str


def not_data(path: Path) -> NotData | None:
    """What the file at `path` is when it cannot be the data; None when it may be (or cannot be opened: the reader
    then quarantines it as unreadable_file)."""
    real = path.resolve()
    if any(real.is_relative_to(tree) for tree in SYSTEM_TREES):
        return NotData("system", f"a link to the system file {real}" if path.is_symlink() else f"the system file {real}")
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    if not head:
        return NotData("empty", "empty (0 bytes)")
    if head.startswith(LFS_SPECS):
        size = _LFS_SIZE.search(head)
        return NotData("lfs", "a Git LFS pointer" + (f" to a {int(size.group(1)):,}-byte file" if size else ""))
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if start.startswith(MARKUP_STARTS):
        title = _TITLE.search(head)
        name = " ".join(title.group(1).decode("utf-8", "replace").split())[:80] if title else ""
        page = "an XML page" if start.startswith(b"<?xml") else "an HTML page"
        return NotData("page", page + (f" titled {name!r}" if name else ""))
    return None
