"""Obtaining one source: from the cache, by download (Hub or HTTP), or from the manual folder.

`fetch_source` never raises for a source that cannot be had: it returns an `Obtained` whose status says what
happened and whose message says what to do. Statuses (`ObtainStatus`):

    cached       complete in the cache; nothing downloaded
    downloaded   downloaded now and recorded as complete
    present      a manual source with every expected file in the manual folder
    partial      a manual source with some of its files (only those are read)
    skipped      a manual source with none of its files: download it by hand
    unavailable  a source that cannot be downloaded any more (a copy in the manual folder is still read)
    failed       the download failed (the reason is recorded and shown by `m3e-hq sources`); `transient` when
                 it may pass (the downloader's own retries ran out on a timeout, network error, 408, 429 or 5xx)
"""

import shutil
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from m3e_hq import progress
from m3e_hq.schemas import CacheState, ObtainStatus
from m3e_hq.sources import cache
from m3e_hq.sources.catalog import HttpObtain, HubObtain, ManualObtain, Source
from m3e_hq.sources.download_http import DownloadError, UnsafeArchiveError, download_file, extract_archive, is_archive
from m3e_hq.sources.download_hub import HubError, fetch_hub
from m3e_hq.sources.errors import TransientError
from m3e_hq.sources.layout import locate


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
    """Which of a manual source's expected files are in `<manual_root>/<source>/`, and what to do if some are not."""
    obtain = source.obtain
    assert isinstance(obtain, ManualObtain)
    folder = manual_root / source.name
    present = [f for f in obtain.files if (folder / f).is_file()]
    missing = [f for f in obtain.files if f not in present]
    files = cache.file_sizes(folder, present)
    if not missing:
        return Obtained(source.name, ObtainStatus.PRESENT, folder, files=files)
    if present:
        return Obtained(source.name, ObtainStatus.PARTIAL, folder, f"{', '.join(missing)} missing from {folder}/: "
                        "only the files present are read", files=files, missing=missing)
    status = ObtainStatus.UNAVAILABLE if obtain.unavailable else ObtainStatus.SKIPPED
    return Obtained(source.name, status, None, manual_guidance(obtain, folder, missing), missing=missing)


def manual_guidance(obtain: ManualObtain, folder: Path, files: list[str]) -> str:
    """What to do when a manual source's `files` are not in `folder`: where to get them, or why they cannot be had."""
    wanted = ", ".join(files)
    if obtain.unavailable:
        return f"unavailable: {obtain.unavailable}. If you hold a copy, put {wanted} in {folder}/"
    note = f" ({obtain.note})" if obtain.note else ""
    return f"download by hand from {obtain.page}{note} and put {wanted} in {folder}/"


def _file_name(url: str) -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise FetchError(f"cannot name a file after the URL {url}")
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
            result = download_file(item.url, downloads / name, item.sha256,
                                   on_bytes=progress.counter(f"download {name}", "bytes"))
            hashes[item.url] = result.sha256
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
    if located.missing:
        where = f"{obtain.repo}@{revision}" if isinstance(obtain, HubObtain) else ", ".join(hashes)
        raise FetchError(f"{where} has no files matching {', '.join(located.missing)}: the layout changed? "
                         "fix the file globs in sources/catalog.yaml")
    files = cache.file_sizes(folder, [f.relpath for f in located.files])
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
            tarfile.TarError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        cache.write_record(cache_root, source, CacheState.FAILED, message=message)
        return Obtained(source.name, ObtainStatus.FAILED, None, message, transient=isinstance(exc, TransientError))


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
