"""Finding a source's native files in a folder laid out as the catalog says (shipped samples, downloads, manual)."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from m3e_hq.sources.catalog import Source
from m3e_hq.sources.readers import SourceFile


def samples_dir() -> Path:
    """The shipped samples: package data `m3e_hq.samples` (data/samples/ in the repository)."""
    spec = importlib.util.find_spec("m3e_hq.samples")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the shipped samples (package m3e_hq.samples) are not installed: reinstall m3e-hq")
    return Path(spec.origin).resolve().parent


SAMPLES_DIR = samples_dir()


@dataclass(frozen=True)
class Located:
    """The files found for a source, and the catalog globs that matched nothing."""

    files: list[SourceFile]
    missing: list[str]


def locate(source: Source, folder: Path) -> Located:
    """Match the source's file globs under its `folder`, each group sorted by path."""
    files: list[SourceFile] = []
    missing: list[str] = []
    for group in source.files:
        matches = sorted(p for p in folder.glob(group.glob) if p.is_file()) if folder.is_dir() else []
        if not matches:
            missing.append(group.glob)
        files += [SourceFile(p, p.relative_to(folder).as_posix(), group.split) for p in matches]
    return Located(files, missing)
