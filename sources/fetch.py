"""Obtaining one source: from the cache, by download (Hub or HTTP), or from the manual folder.

`fetch_source` never raises for a source that cannot be had: it returns an `Obtained` whose status says what
happened and whose message says what to do. Statuses (`ObtainStatus`):

    cached       complete in the cache; nothing downloaded
    downloaded   downloaded now and recorded as complete
    present      a manual source with every expected file (and companion) in the manual folder, at any depth
    partial      a manual source with some of its files (only those are read; the message names the others)
    skipped      a manual source with none of its files: download it by hand
    unavailable  a source that cannot be downloaded any more (a copy in the manual folder is still read)
    failed       the download failed, or a file is not the data (a Git LFS pointer, an HTML page, an empty file,
                 a link into /proc, /sys or /dev)
                 or is found in several folders (the reason is recorded and shown by `m3e-hq sources`);
                 `transient` when it may pass (the downloader's own retries ran out on a timeout, network error,
                 408, 429 or 5xx), never when a host name did not resolve ("no network": retrying would not help)

`check_folder` is the same check for a folder given with `--raw-dir`.
"""

import shutil
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from m3e_hq import progress
from m3e_hq.schemas import CacheState, ObtainStatus
from m3e_hq.sources import cache
from m3e_hq.sources.catalog import HttpObtain, HubObtain, ManualObtain, Source
from m3e_hq.sources.download_http import DownloadError, UnsafeArchiveError, download_file, extract_archive, is_archive
from m3e_hq.sources.download_hub import HubError, fetch_hub, unresolved
from m3e_hq.sources.errors import TransientError
from m3e_hq.sources.layout import Located, locate
from m3e_hq.sources.sniff import NotData, not_data


@dataclass
class Obtained:
    """Where a source's native files are (when it has any) and how they were obtained."""

    source: str
    status: ObtainStatus
    folder: Path | None = None
    message: str | None = None
    revision: str | None = None  # the Hub commit the files come from
    sha256: dict[str, str] = field(default_factory=dict)  # per downloaded URL
    files: dict[str, int] = field(default_factory=dict)  # relative path -> bytes
    missing: list[str] = field(default_factory=list)  # expected files that are absent
    transient: bool = False  # a failed download worth trying again later (not in the summary)

    def __post_init__(self) -> None:
        self.status = ObtainStatus(self.status)

    @property
    def ok(self) -> bool:
        return self.status.ok

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["folder"] = str(self.folder) if self.folder else None
        del out["transient"]
        return out


class FetchError(RuntimeError):
    """Downloaded, but not what the catalog expects (e.g. no file matches a glob)."""


def check_manual(source: Source, manual_root: Path) -> Obtained:
    """A manual source's files in `<manual_root>/<source>/`, as `check_folder` finds them; with none of them there,
    skipped (or unavailable) with where to get them and where to put them."""
    obtain = source.obtain
    assert isinstance(obtain, ManualObtain)
    folder = manual_root / source.name
    obtained = check_folder(source, folder)
    if obtained.status != ObtainStatus.PRESENT or obtained.files:
        return obtained
    status = ObtainStatus.UNAVAILABLE if obtain.unavailable else ObtainStatus.SKIPPED
    return Obtained(source.name, status, None, manual_guidance(obtain, folder, obtained.missing),
                    missing=obtained.missing)


def check_folder(source: Source, folder: Path) -> Obtained:
    """The native files a user placed in `folder` (the manual folder, `--raw-dir`): `failed` when one is not the
    data or a file is found in several folders, `partial` when some are absent (named, with the splits not built),
    else `present` (also when none are there, with a message saying so: the caller says what that means). The
    message names the files found below where the catalog puts them."""
    located = locate(source, folder)
    problems = ambiguities(located, folder) + [f"{rel} is {bad.what}, not the data: {remedy(source, bad, folder / rel)}"
                                               for rel, bad in not_data_files(located, folder)]
    if problems:
        return Obtained(source.name, ObtainStatus.FAILED, None, "; ".join(problems), missing=located.missing)
    notes = [f"found {', '.join(globs)} in {base}/" for base, globs in moved_by_folder(located).items()]
    status = ObtainStatus.PRESENT
    if located.missing and located.files:
        status = ObtainStatus.PARTIAL
        notes.insert(0, missing_note(source, located, folder))
    elif located.missing:
        notes.insert(0, f"no files matching {', '.join(located.missing)} in {folder}/")
    files = cache.file_sizes(folder, [f.relpath for f in located.files] + located.companions)
    return Obtained(source.name, status, folder, "; ".join(notes) or None, files=files, missing=located.missing)


def missing_note(source: Source, located: Located, folder: Path) -> str:
    """Which files are absent and which splits are therefore not built."""
    read = {f.split for f in located.files}
    unbuilt = [split for split in dict.fromkeys(g.split for g in source.files) if split not in read]
    splits = f" (split {', '.join(unbuilt)} not built)" if unbuilt else ""
    return f"{', '.join(located.missing)} missing from {folder}/{splits}: only the files present are read"


def moved_by_folder(located: Located) -> dict[str, list[str]]:
    """The globs whose files were found below where the catalog puts them, by the folder they were found in."""
    by_folder: dict[str, list[str]] = {}
    for glob, base in located.moved.items():
        by_folder.setdefault(base, []).append(glob)
    return by_folder


def ambiguities(located: Located, folder: Path) -> list[str]:
    return [f"{glob} is in {len(bases)} folders under {folder}/ ({', '.join(b + '/' for b in bases)}): leave only "
            "this source's copy there" for glob, bases in located.ambiguous.items()]


def not_data_files(located: Located, folder: Path) -> list[tuple[str, NotData]]:
    """The located files (companions included) that are not the data, by path relative to `folder`."""
    relpaths = [f.relpath for f in located.files] + located.companions
    return [(rel, bad) for rel in relpaths if (bad := not_data(folder / rel)) is not None]


def origin(source: Source) -> str:
    """Where the source's files can be had: its page, its Hub repo or its URLs."""
    obtain = source.obtain
    if isinstance(obtain, ManualObtain):
        return obtain.page
    if isinstance(obtain, HubObtain):
        return f"https://huggingface.co/datasets/{obtain.repo}"
    return ", ".join(f.url for f in obtain.files)


def remedy(source: Source, bad: NotData, path: Path) -> str:
    """What to do about the placed file at `path`, which is not the data."""
    if bad.kind == "lfs":
        return (f"run `git lfs pull` in the clone it was copied from (or download the file itself from "
                f"{origin(source)}), then copy it to {path}")
    if bad.kind == "system":
        return (f"links are followed only to regular files outside /proc, /sys and /dev; put the file itself at "
                f"{path}")
    if bad.kind == "page":
        return (f"a login or error page was saved under the file's name; download the file itself from "
                f"{origin(source)} to {path}")
    return f"download it again from {origin(source)} to {path}"


def manual_guidance(obtain: ManualObtain, folder: Path, files: list[str]) -> str:
    """What to do when a manual source's `files` are not in `folder`: where to get them, or why they cannot be had."""
    wanted = ", ".join(files)
    if obtain.unavailable:
        return f"unavailable: {obtain.unavailable}. If you hold a copy, put {wanted} in {folder}/"
    note = f" ({obtain.note})" if obtain.note else ""
    return f"download by hand from {obtain.page}{note} and put {wanted} in {folder}/"


def _file_name(url: str) -> str:
    """The URL's last path segment, percent-decoded; FetchError when the decoded name is no plain file name (`..%2F`
    would otherwise name a file outside the downloads folder)."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise FetchError(f"cannot name a file after the URL {url} (its decoded name is {name!r}): fix the URL in "
                         "sources/catalog.yaml")
    return name


def _merge(src: Path, dest: Path) -> None:
    """Move the contents of `src` into `dest`, refusing to overwrite."""
    for child in sorted(src.iterdir()):
        if (dest / child.name).exists():
            raise FetchError(f"{child.name} comes from two of the source's files")
        child.rename(dest / child.name)
    src.rmdir()


def fetch_http(obtain: HttpObtain, folder: Path, downloads: Path) -> dict[str, str]:
    """Download each file into `downloads` (checksummed when the catalog knows the hash), then lay out `folder`:
    archives extracted, other files copied. `folder` is replaced only once it is complete. Returns sha256 per URL."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    hashes = {}
    try:
        for i, item in enumerate(obtain.files):
            name = _file_name(item.url)
            source = downloads.name  # the source's downloads folder bears its name
            with progress.bar(f"download {source} {name}", item.size, "bytes") as on_bytes:
                result = download_file(item.url, downloads / name, item.sha256, size=item.size, on_bytes=on_bytes)
            hashes[item.url] = result.sha256
            _refuse_not_data(result.path, item.url)
            if is_archive(name):
                unpacked = staging.with_name(f"{staging.name}.{i}")
                shutil.rmtree(unpacked, ignore_errors=True)
                extract_archive(result.path, unpacked)
                _merge(unpacked, staging)
            elif (staging / name).exists():
                raise FetchError(f"two of the source's URLs are named {name}")
            else:
                shutil.copy2(result.path, staging / name)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return hashes


def _refuse_not_data(path: Path, url: str) -> None:
    """Raise FetchError when the file downloaded from `url` is not the data (it is removed, so that the next run
    fetches it again)."""
    bad = not_data(path)
    if bad is not None:
        path.unlink()
        raise FetchError(f"{url} sent {bad.what}, not the data (a login wall, an error or proxy page?): check the URL "
                         "in sources/catalog.yaml, or download the file by hand")


def _refuse_not_data_files(source: Source, located: Located, folder: Path, where: str) -> None:
    """Raise FetchError naming the downloaded files that are not the data (removed, so that none is kept as
    complete)."""
    bad = not_data_files(located, folder)
    if not bad:
        return
    for rel, _ in bad:
        (folder / rel).unlink()
    hint = ("check HF_ENDPOINT (a mirror or proxy answering for the Hub?) and download again"
            if isinstance(source.obtain, HubObtain) else "check the URL in sources/catalog.yaml, or download the "
            "file by hand")
    raise FetchError(f"{where}: {'; '.join(f'{rel} is {b.what}' for rel, b in bad)}, not the data: {hint}")


def _download(source: Source, cache_root: Path) -> Obtained:
    folder = cache.source_folder(cache_root, source.name)
    obtain = source.obtain
    revision, hashes, notes = None, {}, []
    if isinstance(obtain, HubObtain):
        revision = fetch_hub(obtain, folder)
        if not obtain.revision:
            notes.append(f"unpinned: {obtain.repo}@{obtain.ref} resolved to {revision}; pin it as obtain.revision")
    else:
        assert isinstance(obtain, HttpObtain)
        hashes = fetch_http(obtain, folder, cache.downloads_folder(cache_root, source.name))
        unknown = [f.url for f in obtain.files if not f.sha256]
        notes += [f"no sha256 in the catalog for {url}; downloaded {hashes[url]}" for url in unknown]
    located = locate(source, folder)
    where = f"{obtain.repo}@{revision}" if isinstance(obtain, HubObtain) else ", ".join(hashes)
    if located.missing:
        raise FetchError(f"{where} has no files matching {', '.join(located.missing)}: the layout changed? "
                         "fix the file globs in sources/catalog.yaml")
    _refuse_not_data_files(source, located, folder, where)
    files = cache.file_sizes(folder, [f.relpath for f in located.files] + located.companions)
    cache.write_record(cache_root, source, CacheState.CACHED, revision=revision, sha256=hashes, files=files)
    return Obtained(source.name, ObtainStatus.DOWNLOADED, folder, "; ".join(notes) or None, revision, hashes, files)


def _cached(source: Source, cache_root: Path, record: dict[str, Any]) -> Obtained:
    return Obtained(source.name, ObtainStatus.CACHED, cache.source_folder(cache_root, source.name), None,
                    record.get("revision"), record.get("sha256", {}), record["files"])


def fetch_source(source: Source, cache_root: Path, manual_root: Path) -> Obtained:
    """Obtain one source: manual folder, valid cache entry, or a fresh download (recorded as complete at the end)."""
    if isinstance(source.obtain, ManualObtain):
        return check_manual(source, manual_root)
    record = cache.read_record(cache_root, source.name)
    if record is not None and cache.stale_reason(cache_root, source, record) is None:
        return _cached(source, cache_root, record)
    if record is not None and record.get("spec") != cache.spec(source):
        shutil.rmtree(cache.source_folder(cache_root, source.name), ignore_errors=True)
        shutil.rmtree(cache.downloads_folder(cache_root, source.name), ignore_errors=True)
    elif record is not None:  # huggingface_hub's local-dir check trusts its metadata: remove what changed
        for rel in cache.damaged_files(cache_root, source, record):
            (cache.source_folder(cache_root, source.name) / rel).unlink(missing_ok=True)
    try:
        return _download(source, cache_root)
    except (HubError, DownloadError, UnsafeArchiveError, FetchError, OSError, zipfile.BadZipFile,
            tarfile.TarError, EOFError, httpx.HTTPError) as exc:
        message = failure_message(exc)
        cache.write_record(cache_root, source, CacheState.FAILED, message=message)
        return Obtained(source.name, ObtainStatus.FAILED, None, message,
                        transient=isinstance(exc, TransientError) and not unresolved(exc))


def failure_message(exc: BaseException) -> str:
    """A failed download in one line; a host name that did not resolve (an HTTP source's) says there is no network
    and what to do instead (a HubError says it itself)."""
    message = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
    if unresolved(exc) and not isinstance(exc, HubError):
        return f"no network: {message}; use a warm cache (--cache-dir) or your own copies (--raw-dir DIR)"
    return message


def source_status(source: Source, cache_root: Path, manual_root: Path) -> Obtained:
    """What `fetch_source` would start from, without any network: for `m3e-hq sources`."""
    if isinstance(source.obtain, ManualObtain):
        return check_manual(source, manual_root)
    record = cache.read_record(cache_root, source.name)
    reason = cache.stale_reason(cache_root, source, record)
    if record is not None and reason is None:
        return _cached(source, cache_root, record)
    if record is not None and record.get("status") == CacheState.FAILED:
        return Obtained(source.name, ObtainStatus.FAILED, None, record.get("message"))
    return Obtained(source.name, ObtainStatus.NOT_DOWNLOADED, None, reason)
