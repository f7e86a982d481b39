"""Writing a file so that it is either absent or complete: to a temporary name beside it, then renamed into place.

Every output of the build (stage Parquet, manifest, cache records, embedding chunks, downloads) is written this
way, so that a killed process never leaves a final-named file half written.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary(path: Path, suffix: str = ".tmp") -> Path:
    """The temporary name `path` is written under: hidden, beside it, so the rename stays on one file system."""
    return path.with_name(f".{path.name}{suffix}")


@contextmanager
def atomic(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to `path`, on any error remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented UTF-8 JSON to `path`, atomically."""
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
