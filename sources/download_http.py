"""Downloads of the catalog's `http` sources: resumable, retried, checksummed; and safe extraction of their archives.

Plain Python (no Prefect): `download_file` streams a URL to `<dest>.part`, resumes it with an HTTP Range request,
retries transient failures with exponential backoff, and renames the part to `dest` only once it is complete and its
sha256 matches. Every transfer is bounded: an idle timeout, a minimum average rate, the expected size and a maximum
size. `extract_archive` unpacks .zip / .tar / .tar.gz / .tgz into a temporary sibling folder, refusing members that
would escape the target, links, members named twice, archives that unpack to too much (over `max_bytes`, or over
`max_ratio` times their size: a decompression bomb) and unreadable (truncated, corrupt) archives, then renames the
folder into place.
"""

import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

import httpx

from m3e_hq.sources.errors import TransientError

HASH_CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 20 << 30  # 20 GiB: the most a download of unknown size, or an archive uncompressed, may hold
MAX_RATIO = 100  # an archive may unpack to at most this many times its size (text compresses 3-10 times) ...
RATIO_FREE_BYTES = 1 << 20  # ... or to 1 MiB, whatever its size
MIN_RATE = 1024  # bytes per second: a transfer slower than this on average over RATE_WINDOW is cut (and retried)
RATE_WINDOW = 60.0  # seconds
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download that failed for good: a refused request, or a transient failure that outlasted the retries."""

    def __init__(self, message: str, *, url: str, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.attempts = attempts
        self.status = status


class TransientDownloadError(DownloadError, TransientError):
    """A transient failure (5xx, 429, a network error, a short body) that outlasted the retries."""


class ChecksumError(DownloadError):
    """The downloaded (or already present) file does not have the catalog's sha256."""


class UnsafeArchiveError(ValueError):
    """An archive refused: a member that escapes the target, a link member, a member named twice, or too much
    uncompressed data."""


class CorruptArchiveError(UnsafeArchiveError):
    """An archive that cannot be read to its end: truncated, corrupt, or not an archive at all."""


# What reading a truncated or corrupt archive raises (a truncated gzip stream: EOFError).
_UNREADABLE = (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError, zipfile.BadZipFile)


@dataclass(frozen=True)
class DownloadResult:
    """A completed download: the file, its sha256 and size, whether a partial file was resumed, requests made."""

    path: Path
    sha256: str
    bytes: int
    resumed: bool
    attempts: int


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, a short body, a transfer too slow, an unusable partial file)."""


class _TooLarge(Exception):
    """A body longer than the transfer's size limit."""


@dataclass(frozen=True)
class _Bounds:
    """What one file's transfer may take: its expected `size` (when known), else at most `max_bytes`; on average at
    least `min_rate` bytes/s over every `rate_window` seconds."""

    size: int | None
    max_bytes: int
    min_rate: int
    rate_window: float

    @property
    def limit(self) -> int:
        return self.size if self.size is not None else self.max_bytes

    def check_announced(self, url: str, announced: int | None, attempts: int) -> None:
        """A DownloadError when the size the server announces is not the expected one, or over the limit."""
        if announced is None:
            return
        if self.size is not None and announced != self.size:
            raise DownloadError(f"GET {url} announces {announced:,} bytes, not the expected {self.size:,}: the file "
                                "changed or the server is wrong; check its size and sha256 in sources/catalog.yaml",
                                url=url, attempts=attempts)
        if announced > self.limit:
            raise DownloadError(f"GET {url} announces {announced:,} bytes, over the maximum download size of "
                                f"{self.max_bytes:,} bytes: check the URL in sources/catalog.yaml", url=url,
                                attempts=attempts)

    def too_large(self, url: str, attempts: int) -> DownloadError:
        what = (f"the expected {self.size:,} bytes" if self.size is not None
                else f"the maximum download size of {self.max_bytes:,} bytes")
        return DownloadError(f"GET {url} sent more than {what} (a body without end?): check the URL in "
                             "sources/catalog.yaml, or download the file by hand", url=url, attempts=attempts)


class _RateGuard:
    """Cuts a transfer slower than `min_rate` bytes/s on average over a window of `window` seconds (a trickle);
    a transfer with no byte at all is cut by the client's read timeout."""

    def __init__(self, min_rate: int, window: float) -> None:
        self.min_rate, self.window = min_rate, window
        self.start, self.bytes = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.bytes += n
        elapsed = time.monotonic() - self.start
        if elapsed < self.window:
            return
        if self.bytes < self.min_rate * elapsed:
            raise _Transient(f"too slow: {self.bytes:,} bytes in {elapsed:.1f} s, under {self.min_rate:,} bytes/s")
        self.start, self.bytes = time.monotonic(), 0


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header; None for parts that are absent or `*`."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _refusal_message(url: str, response: httpx.Response) -> str:
    status = response.status_code
    if status in (401, 403):
        hint = "the server refuses access (login or licence wall?); download the file by hand from its page"
    elif status in (404, 410):
        hint = "the file is gone or moved; check the URL in sources/catalog.yaml or download the file by hand"
    else:
        hint = "check the URL in sources/catalog.yaml, or download the file by hand"
    return f"GET {url} failed with HTTP {status} {response.reason_phrase}: {hint}"


def _fetch_once(client: httpx.Client, url: str, part: Path, bounds: _Bounds, chunk_bytes: int, attempts: int,
                on_bytes: Callable[[int], None] | None) -> bool:
    """One GET that appends to (206) or rewrites (200) `part`; True when it resumed an existing part.

    Raises _Transient for retryable outcomes (the part is kept whenever it is still a valid prefix), DownloadError
    for a refusal, a wrong announced size or a body over the size limit (the part removed), httpx.TransportError for
    network failures (no byte within the read timeout included).
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        if status == 416 and offset:
            _, total = _parse_content_range(response.headers.get("Content-Range"))
            if total == offset:
                return True  # the part already holds the whole file
            part.unlink()
            raise _Transient(f"HTTP 416 for a partial file of {offset} bytes (server size {total}); starting over")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status} {response.reason_phrase}")
        if status >= 400:
            raise DownloadError(_refusal_message(url, response), url=url, attempts=attempts, status=status)

        length = response.headers.get("Content-Length")
        resumed = status == 206 and offset > 0
        if resumed:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Transient(f"HTTP 206 started at byte {start}, not {offset}; starting over")
            expected = total if total is not None else (offset + int(length) if length else None)
        else:  # 200 (the server ignored or was not sent a Range): start from zero
            expected = int(length) if length else None
        bounds.check_announced(url, expected, attempts)
        try:
            _write_body(response, part, offset if resumed else 0, bounds, chunk_bytes, on_bytes)
        except _TooLarge:
            part.unlink()
            raise bounds.too_large(url, attempts) from None
    size = part.stat().st_size
    expected = expected if expected is not None else bounds.size
    if expected is not None and size != expected:
        raise _Transient(f"incomplete body: {size} of {expected} bytes")
    return resumed


def _write_body(response: httpx.Response, part: Path, start: int, bounds: _Bounds, chunk_bytes: int,
                on_bytes: Callable[[int], None] | None) -> None:
    """Write the body to `part` from byte `start` as it arrives (a cut transfer keeps every byte received;
    chunk_bytes is the write buffer). _TooLarge past the size limit, _Transient when too slow."""
    guard, written = _RateGuard(bounds.min_rate, bounds.rate_window), start
    with part.open("ab" if start else "wb", buffering=chunk_bytes) as fh:
        for chunk in response.iter_raw():
            written += len(chunk)
            if written > bounds.limit:
                raise _TooLarge
            fh.write(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            guard.add(len(chunk))


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 60.0,
    min_rate: int = MIN_RATE,
    rate_window: float = RATE_WINDOW,
    chunk_bytes: int = 1 << 20,
    on_bytes: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Download `url` to `dest` (resuming `<dest>.part`), verify `sha256` when given, and return what was done.

    An existing `dest` is not downloaded again (only checked against `sha256`). Transient failures (5xx, 429,
    network errors, a body cut short, a transfer too slow) are retried up to `retries` more times, sleeping
    `backoff * 2**n` before the n-th retry (n from 0), then raise TransientDownloadError; a cut transfer resumes
    where it stopped. Other 4xx answers, more redirects than the client follows (a loop) and a redirect to a URL
    that is not http or https fail at once.
    Every transfer is bounded: no byte for `timeout` seconds, or fewer than `min_rate` bytes/s on average over
    `rate_window` seconds, cuts it (a transient failure). The file must have the expected `size` when given, and
    the size the server announces (Content-Length, Content-Range) when it announces one; a body longer than `size`,
    or than `max_bytes` when the size is unknown, or an announced size that differs from `size` or exceeds the
    limit, fails at once (DownloadError, the part removed).
    `on_bytes` is called with the size of each chunk written (for a progress bar).
    """
    dest = Path(dest)
    if dest.exists():
        actual = file_sha256(dest)
        if sha256 and actual != sha256:
            raise ChecksumError(
                f"{dest} (from {url}) has sha256 {actual}, expected {sha256}; delete it to download again",
                url=url,
                attempts=0,
            )
        return DownloadResult(dest, actual, dest.stat().st_size, resumed=False, attempts=0)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    bounds = _Bounds(size, max_bytes, min_rate, rate_window)
    resumed = False
    last_error: Exception | None = None
    attempts = 0
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            attempts = attempt + 1
            try:
                resumed |= _fetch_once(client, url, part, bounds, chunk_bytes, attempts, on_bytes)
                break
            except httpx.TooManyRedirects:
                raise DownloadError(f"GET {url} was redirected more than {client.max_redirects} times (a redirect "
                                    "loop?): check the URL in sources/catalog.yaml, or download the file by hand",
                                    url=url, attempts=attempts) from None
            except httpx.UnsupportedProtocol as exc:  # a transport error that no retry can fix
                raise DownloadError(f"GET {url} led to a URL that is not http or https ({exc}): check the URL in "
                                    "sources/catalog.yaml, or download the file by hand", url=url,
                                    attempts=attempts) from None
            except (_Transient, httpx.TransportError) as exc:
                last_error = exc
        else:
            cause = f"{type(last_error).__name__}: {last_error}"
            raise TransientDownloadError(
                f"GET {url} failed after {attempts} attempts; last error: {cause}", url=url, attempts=attempts
            ) from last_error

    actual = file_sha256(part)
    if sha256 and actual != sha256:
        part.unlink()
        raise ChecksumError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}", url=url, attempts=attempts
        )
    size = part.stat().st_size
    os.replace(part, dest)
    return DownloadResult(dest, actual, size, resumed=resumed, attempts=attempts)


# --- archives ---------------------------------------------------------------------------------------------------


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(name: str) -> bool:
    """Whether `extract_archive` unpacks a file of this name."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    size: int


class _Budget:
    """The bytes an archive may unpack to: members written and the rest of a compressed stream read, counted as
    they come; UnsafeArchiveError past the limit (nothing past it is written)."""

    def __init__(self, archive: Path, max_bytes: int, max_ratio: float) -> None:
        self.archive, self.size = archive, archive.stat().st_size
        self.limit = min(max_bytes, max(int(max_ratio * self.size), RATIO_FREE_BYTES))
        self.why = f"max_bytes={max_bytes}, or {max_ratio:g} times the archive's {self.size:,} bytes"
        self.used = 0

    def check_declared(self, declared: int) -> None:
        if declared > self.limit:
            raise UnsafeArchiveError(f"{self.archive}: {declared:,} bytes uncompressed exceeds the limit of "
                                     f"{self.limit:,} bytes ({self.why}): a decompression bomb? check the URL in "
                                     "sources/catalog.yaml")

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise UnsafeArchiveError(f"{self.archive}: unpacks to more than {self.limit:,} bytes ({self.why}), "
                                     f"stopped after {self.used - n:,}: a decompression bomb? check the URL in "
                                     "sources/catalog.yaml")


def _check_member(archive: Path, member: _Member, root: Path) -> Path:
    """The member's path under `root`, or UnsafeArchiveError when it is absolute or escapes `root`."""
    if PurePosixPath(member.name).is_absolute() or PureWindowsPath(member.name).is_absolute():
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} has an absolute path")
    path = (root / member.name).resolve()
    if not path.is_relative_to(root):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} would be written outside the target folder")
    return path


def _zip_members(archive: Path, zf: zipfile.ZipFile, budget: _Budget) -> list[tuple[_Member, zipfile.ZipInfo]]:
    members, declared = [], 0
    for info in zf.infolist():
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link")
        declared += info.file_size
        budget.check_declared(declared)
        members.append((_Member(info.filename, info.is_dir(), info.file_size), info))
    return members


def _tar_members(archive: Path, tf: tarfile.TarFile, budget: _Budget) -> list[tuple[_Member, tarfile.TarInfo]]:
    """The members, read one header at a time: reading the next header inflates the data before it, so the total
    declared so far is checked at each (a bomb is refused at its first oversized header, not after inflating it)."""
    members, declared = [], 0
    for info in tf:
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a link (to {info.linkname!r})")
        if not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {info.name!r} is not a regular file or folder")
        declared += info.size
        budget.check_declared(declared)
        members.append((_Member(info.name, info.isdir(), info.size), info))
    return members


@contextmanager
def _open_archive(archive: Path, budget: _Budget,
                  ) -> Iterator[tuple[list[tuple[_Member, Any]], Callable[[Any], IO[bytes]]]]:
    """The archive's members, checked for links and their declared sizes within `budget`, and a function opening a
    member's data stream. A tar archive's stream is read to its end afterwards, within `budget`: a compressed stream
    checks its CRC and length only there."""
    name = archive.name.lower()
    if not is_archive(name):
        raise ValueError(f"{archive}: unsupported archive type (expected {', '.join(ARCHIVE_SUFFIXES)})")
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            yield _zip_members(archive, zf, budget), zf.open
    else:
        with tarfile.open(archive, "r:*") as tf:
            yield _tar_members(archive, tf, budget), tf.extractfile
            tf.fileobj.read(tarfile.RECORDSIZE)  # the end-of-archive padding every tar writer adds: not counted
            while chunk := tf.fileobj.read(HASH_CHUNK):
                budget.take(len(chunk))


def _check_unique(archive: Path, members: list[tuple[_Member, Any]], paths: list[Path]) -> None:
    """UnsafeArchiveError when two file members unpack to the same path (the second would overwrite the first)."""
    seen: set[Path] = set()
    for (member, _), path in zip(members, paths, strict=True):
        if member.is_dir:
            continue
        if path in seen:
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} appears twice (the second copy would "
                                     "overwrite the first): check the URL in sources/catalog.yaml")
        seen.add(path)


def _copy(src: IO[bytes], out: IO[bytes], budget: _Budget) -> None:
    while chunk := src.read(HASH_CHUNK):
        budget.take(len(chunk))
        out.write(chunk)


def _extract(archive: Path, root: Path, budget: _Budget) -> list[Path]:
    """Check every member, then write them under `root` within `budget`; the files written. CorruptArchiveError
    when the archive cannot be read to its end."""
    try:
        with _open_archive(archive, budget) as (members, open_member):
            paths = [_check_member(archive, member, root) for member, _ in members]
            _check_unique(archive, members, paths)
            for (member, info), path in zip(members, paths, strict=True):
                if member.is_dir:
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with open_member(info) as src, path.open("wb") as out:
                    _copy(src, out, budget)
    except _UNREADABLE as exc:
        why = " ".join(str(exc).split())  # tarfile's ReadError lists each method it tried, a line each
        raise CorruptArchiveError(f"{archive} cannot be read to its end: truncated, corrupt or not an archive "
                                  f"({type(exc).__name__}: {why}); delete it to download it again") from None
    return [path for (member, _), path in zip(members, paths, strict=True) if not member.is_dir]


def extract_archive(archive: Path, target: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    max_ratio: float = MAX_RATIO) -> list[Path]:
    """Extract a .zip / .tar / .tar.gz / .tgz archive to `target` (which must not exist); returns the files, sorted.

    An archive may unpack to at most `max_bytes`, and to at most `max_ratio` times its own size (RATIO_FREE_BYTES
    whatever its size). Every member is checked before anything is written: absolute paths, paths escaping `target`,
    symbolic or hard links, two file members of the same path, and a declared uncompressed total above the limit
    raise UnsafeArchiveError. Declared sizes bind: tar members are read for exactly their header size, and zipfile
    stops at the declared size and checks the CRC; the bytes actually unpacked (members written, and the rest of a
    compressed tar stream, read to its end) are counted too, and stop the extraction past the limit. An
    archive that cannot be read to its end (truncated, corrupt, a lying zip) raises CorruptArchiveError. Extraction
    goes to a temporary sibling folder renamed to `target` at the end, so `target` only ever appears complete; on any
    error the temporary folder is removed.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; delete it to extract {archive} again")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)).resolve()
    try:
        files = _extract(archive, tmp, _Budget(archive, max_bytes, max_ratio))
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted({target / path.relative_to(tmp) for path in files})
