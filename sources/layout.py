"""Finding a source's native files in a folder laid out as the catalog says (shipped samples, downloads, manual)."""

from dataclasses import dataclass
from pathlib import Path

from sources.catalog import Source
from sources.readers import SourceFile

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "samples"


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
