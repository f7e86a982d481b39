"""Where downloads and hand-fetched files live, and the record that marks a source's download as complete.

Cache layout (`--cache-dir`, else `$M3E_HQ_CACHE`, else `$XDG_CACHE_HOME/m3e-hq`, else `~/.cache/m3e-hq`):

    sources/<source>/     the native files, laid out as the catalog's file globs expect
    downloads/<source>/   the HTTP files as fetched (archives are kept, so a re-extraction needs no download)
    state/<source>.json   the last attempt (CacheState): `cached` (complete) or `failed` (with the reason)

A source counts as cached only when its record says `cached`, was written for the catalog's current `obtain`
and file globs, and every recorded file is still there with its recorded size. The record is written after the
last file is in place, so an interrupted download is never taken as complete.

Manual sources are read from `--manual-dir`, else `$M3E_HQ_MANUAL`, else `data/manual/` in the working directory:
`<manual dir>/<source>/<the files the catalog names>`.
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from m3e_hq.files import write_json_atomic
from m3e_hq.schemas import CacheState
from m3e_hq.sources.catalog import Source

CACHE_ENV = "M3E_HQ_CACHE"
MANUAL_ENV = "M3E_HQ_MANUAL"
MANUAL_DEFAULT = Path("data") / "manual"  # in the working directory


def cache_dir(explicit: Path | None = None) -> Path:
    """The cache folder: the option, else $M3E_HQ_CACHE, else the per-user cache folder."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "m3e-hq"


def manual_dir(explicit: Path | None = None) -> Path:
    """The folder of hand-downloaded sources: the option, else $M3E_HQ_MANUAL, else data/manual/."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(MANUAL_ENV):
        return Path(os.environ[MANUAL_ENV]).expanduser()
    return Path.cwd() / MANUAL_DEFAULT


def source_folder(cache: Path, name: str) -> Path:
    return cache / "sources" / name


def downloads_folder(cache: Path, name: str) -> Path:
    return cache / "downloads" / name


def record_path(cache: Path, name: str) -> Path:
    return cache / "state" / f"{name}.json"


def spec(source: Source) -> dict[str, Any]:
    """What a download depends on: a record written for another spec is stale."""
    return {"obtain": source.obtain.model_dump(mode="json"), "files": [g.model_dump() for g in source.files]}


def read_record(cache: Path, name: str) -> dict[str, Any] | None:
    """The source's last record, or None when there is none or it cannot be read."""
    try:
        record = json.loads(record_path(cache, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(cache: Path, source: Source, status: CacheState, **fields: Any) -> dict[str, Any]:
    record = {"source": source.name, "status": status, "at": datetime.now(UTC).isoformat(timespec="seconds"),
              "spec": spec(source), **fields}
    write_json_atomic(record_path(cache, source.name), record)
    return record


def file_sizes(folder: Path, relpaths: list[str]) -> dict[str, int]:
    return {rel: (folder / rel).stat().st_size for rel in relpaths}


def damaged_files(cache: Path, source: Source, record: dict[str, Any]) -> list[str]:
    """The recorded files that are gone from the cache or no longer have their recorded size."""
    folder = source_folder(cache, source.name)
    return [rel for rel, size in record.get("files", {}).items()
            if not (folder / rel).is_file() or (folder / rel).stat().st_size != size]


def stale_reason(cache: Path, source: Source, record: dict[str, Any] | None) -> str | None:
    """Why the cached copy cannot be used (None: it can): no record, a failed or stale record, or a changed file."""
    if record is None:
        return "not downloaded"
    if record.get("status") != CacheState.CACHED:
        return f"last attempt failed: {record.get('message')}"
    if record.get("spec") != spec(source):
        return "the catalog entry changed since it was downloaded"
    damaged = damaged_files(cache, source, record)
    if damaged:
        return f"{', '.join(damaged)} missing or changed since downloaded (recorded bytes differ)"
    return None
