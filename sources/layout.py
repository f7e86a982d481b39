"""Finding a source's native files in a folder laid out as the catalog says (shipped samples, downloads, manual).

A manual source's files are also found below that place, at any depth (an archive that unpacks into a folder of its
own, such as brightmart's `new2016zh/`): a glob that matches nothing where the catalog puts it is matched under every
folder below, and the one folder where it matches is used. A file's companions (the NL2SQL tables files) must lie
beside it, or it is not read.
"""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from m3e_hq.sources.catalog import FileGroup, ManualObtain, Source
from m3e_hq.sources.readers import SourceFile


def samples_dir() -> Path:
    """The shipped samples: package data `m3e_hq.samples` (data/samples/ in the repository)."""
    spec = importlib.util.find_spec("m3e_hq.samples")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the shipped samples (package m3e_hq.samples) are not installed: reinstall m3e-hq")
    return Path(spec.origin).resolve().parent


SAMPLES_DIR = samples_dir()


@dataclass
class Located:
    """The files found for a source, and what was not found where the catalog says.

    missing: the globs that matched nothing, and the companions absent beside a file (which is then not read).
    companions: the companion files found, relative to the source folder.
    moved: glob -> the folder below the source folder where its files were found.
    ambiguous: glob -> the folders below the source folder that each hold a match (none of them is read).
    """

    files: list[SourceFile]
    missing: list[str]
    companions: list[str] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)


def locate(source: Source, folder: Path) -> Located:
    """Match the source's file globs under its `folder` (a manual source's at any depth), each group sorted by path,
    and check that every file's companions lie beside it."""
    any_depth = isinstance(source.obtain, ManualObtain)
    located = Located([], [])
    for group in source.files:
        by_base = matches(folder, group.glob, any_depth)
        if len(by_base) > 1:
            located.ambiguous[group.glob] = sorted(by_base)
            continue
        if not by_base:
            located.missing.extend([group.glob, *group.companions_of(group.glob)])
            continue
        [(base, paths)] = by_base.items()
        if base != ".":
            located.moved[group.glob] = base
        for path in paths:
            add_with_companions(located, group, path, folder)
    return located


def matches(folder: Path, glob: str, any_depth: bool) -> dict[str, list[Path]]:
    """The files matching `glob` under `folder`, by the folder (relative to `folder`, "." for itself) the glob
    matched from: `folder` itself when it holds a match; else, with `any_depth`, each folder below that does."""
    if not folder.is_dir():
        return {}
    here = sorted(p for p in folder.glob(glob) if p.is_file())
    if here or not any_depth or "**" in glob:
        return {".": here} if here else {}
    depth = len(PurePosixPath(glob).parts)
    by_base: dict[str, list[Path]] = {}
    for path in sorted(p for p in folder.glob(f"**/{glob}") if p.is_file()):
        base = path.relative_to(folder).parents[depth - 1].as_posix()
        by_base.setdefault(base, []).append(path)
    return by_base


def add_with_companions(located: Located, group: FileGroup, path: Path, folder: Path) -> None:
    """Add the native file at `path` to `located` when its companions lie beside it, else list them as missing."""
    relpath = path.relative_to(folder).as_posix()
    companions = group.companions_of(relpath)
    absent = [c for c in companions if not (folder / c).is_file()]
    if absent:
        located.missing.extend(absent)
        return
    located.files.append(SourceFile(path, relpath, group.split))
    located.companions.extend(companions)
