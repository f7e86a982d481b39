"""The source catalog (sources/catalog.yaml): loaded once, validated with pydantic, with errors that name the entry."""

import difflib
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3e_hq.schemas.enums import Domain, Permission, Prompt, Quality, TaskType

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")
EXPECTED_SOURCES = 29


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubObtain(Strict):
    """A Hugging Face Hub dataset repo, read at a pinned revision; only files matching allow_patterns are fetched."""

    kind: Literal["hf"]
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    configs: list[str] = []  # the Hub configs read (empty: the repo's default)
    ref: str = "main"
    revision: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    allow_patterns: list[str] = Field(min_length=1)


class HttpFile(Strict):
    url: str = Field(pattern=r"^https?://")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(None, gt=0)  # bytes, when known: a body of another length fails the download


class HttpObtain(Strict):
    """Files (or archives) at public URLs."""

    kind: Literal["http"]
    files: list[HttpFile] = Field(min_length=1)


class ManualObtain(Strict):
    """A page the user downloads from by hand (login walls, cloud drives), and the file names expected."""

    kind: Literal["manual"]
    page: str = Field(pattern=r"^https?://")
    files: list[str] = Field(min_length=1)
    note: str | None = None
    unavailable: str | None = None  # why the source can no longer be downloaded at all


Obtain = Annotated[HubObtain | HttpObtain | ManualObtain, Field(discriminator="kind")]


class FileGroup(Strict):
    """Native files of one split: a glob relative to the source's folder, and the companion files each of them needs
    beside it (`{stem}`: the file's name without its last suffix, e.g. `{stem}.tables.json` for NL2SQL tables)."""

    glob: str
    split: str
    companions: list[str] = []

    def companions_of(self, relpath: str) -> list[str]:
        """The companion files of the native file (or glob) at `relpath`, as paths relative to the same folder."""
        path = PurePosixPath(relpath)
        return [path.with_name(c.format(stem=path.stem)).as_posix() for c in self.companions]


class PairFields(Strict):
    """Where a pair's sides come from in a native record.

    text: the first field is required; later fields are optional and appended when present, non-empty and new.
    text_pos: alternative field names; the first one present in the record is used.
    """

    text: list[str] = Field(min_length=1)
    text_pos: list[str] = Field(min_length=1)


class KeepFilter(Strict):
    """Keep only records whose `field` has one of `values` (e.g. entailment or label 1 for NLI/similarity sets)."""

    field: str
    values: list[int | str] = Field(min_length=1)


class FlatAdapter(Strict):
    """One record per row of a Parquet, JSON Lines, JSON or CSV file."""

    name: Literal["flat"]
    format: Literal["parquet", "jsonl", "json", "csv"]
    pairs: list[PairFields] = Field(min_length=1)
    encoding: str = "utf-8"
    records_key: str | None = None  # JSON only: the key of a top-level object that holds the record list
    keep: KeepFilter | None = None
    explode: bool = False  # text_pos fields hold lists: one pair per element
    transforms: list[Literal["zh_cn", "detokenize"]] = []


class SquadAdapter(Strict):
    """SQuAD-style nested JSON: one pair (question, context) per question."""

    name: Literal["squad"]
    answerable_only: bool = True


class TableQAAdapter(Strict):
    """Zhuiyi TableQA (NL2SQL): JSON Lines questions with a structured `sql`, rendered with `<file>.tables.json`."""

    name: Literal["tableqa"]


Adapter = Annotated[FlatAdapter | SquadAdapter | TableQAAdapter, Field(discriminator="name")]


class Source(Strict):
    """One row of the M3E dataset table plus how to obtain and map it."""

    name: str
    aliases: list[str] = []  # other names the CLI and the parameters accept, e.g. firefly for the table's firefily
    domain: Domain
    reported_rows: int = Field(gt=0)
    task_types: list[TaskType] = Field(min_length=1)
    prompt: Prompt
    quality: Quality
    provider: str
    description: str
    research_use: Permission
    commercial: Permission
    uniem_script: bool
    homogeneous: bool
    url: str = Field(pattern=r"^https?://")
    license: str
    lang: str = "zh"
    obtain: Obtain
    files: list[FileGroup] = Field(min_length=1)
    adapter: Adapter
    eval_splits: list[str] = []
    eval_note: str | None = None

    @property
    def task_type(self) -> TaskType:
        """The primary task type (the first the table lists), stored on every row."""
        return self.task_types[0]

    @property
    def license_stated(self) -> bool:
        """Whether the source states a licence for its data (catalog entries say "none stated" when it does not)."""
        return not self.license.startswith("none stated")

    def commercial_use(self, include_unknown_license: bool = False) -> bool:
        """Whether the source's rows may go into a commercial export: the M3E table says yes and the source states
        a licence. With include_unknown_license, also sources whose commercial use or licence is unstated; never a
        source marked no."""
        if self.commercial is Permission.NO:
            return False
        return include_unknown_license or (self.commercial is Permission.YES and self.license_stated)

    @property
    def available(self) -> bool:
        return not (isinstance(self.obtain, ManualObtain) and self.obtain.unavailable)

    @model_validator(mode="after")
    def _manual_files_are_the_globs(self) -> "Source":
        if isinstance(self.obtain, ManualObtain):
            globs = [path for g in self.files for path in (g.glob, *g.companions_of(g.glob))]
            if sorted(self.obtain.files) != sorted(globs):
                raise ValueError(f"obtain.files {self.obtain.files} must name the file globs and their companions "
                                 f"{globs}")
        return self

    @model_validator(mode="after")
    def _eval_splits_exist(self) -> "Source":
        splits = {g.split for g in self.files}
        unknown = set(self.eval_splits) - splits
        if unknown:
            raise ValueError(f"eval_splits {sorted(unknown)} are not splits of this source ({sorted(splits)})")
        return self


class Catalog(Strict):
    sources: list[Source]

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Source]) -> list[Source]:
        names = [n.casefold() for s in sources for n in (s.name, *s.aliases)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source names {dupes} (names and aliases, in any case)")
        return sources

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def _by_name(self) -> dict[str, Source]:
        """The sources by each of their names and aliases, case-folded."""
        return {n.casefold(): s for s in self.sources for n in (s.name, *s.aliases)}

    def find(self, name: str) -> Source | None:
        """The source called `name` in any case, or by one of its aliases; None when there is none."""
        return self._by_name().get(name.casefold())

    def get(self, name: str) -> Source:
        source = self.find(name)
        if source is None:
            raise KeyError(self._unknown([name]))
        return source

    def select(self, names: list[str] | None) -> list[Source]:
        """The named sources in catalog order (all when `names` is empty); unknown names raise KeyError."""
        if not names:
            return list(self.sources)
        unknown = [n for n in names if self.find(n) is None]
        if unknown:
            raise KeyError(self._unknown(unknown))
        wanted = {self.find(n).name for n in names}
        return [s for s in self.sources if s.name in wanted]

    def _unknown(self, names: list[str]) -> str:
        """The error for unknown source names: the closest known name for each, and where the names are listed."""
        by_name = self._by_name()
        close = {name: by_name[match[0]].name for name in names
                 if (match := difflib.get_close_matches(name.casefold(), by_name, n=1, cutoff=0.6))}
        hint = ", ".join(f"{match!r}" + (f" for {name!r}" if len(names) > 1 else "") for name, match in close.items())
        return (f"unknown sources {names}{f'; did you mean {hint}?' if hint else ''} (`m3e-hq sources` lists the "
                f"{len(self.sources)} names; any case works)")


class CatalogError(ValueError):
    """The catalog file is missing, not YAML, or an entry breaks the catalog's rules."""


def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    """Read and validate a catalog file; errors name the entry and field at fault."""
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise CatalogError(f"catalog {path} must be a YAML list of sources, got {type(entries).__name__}")
    try:
        return Catalog(sources=entries)
    except ValidationError as exc:
        raise CatalogError(_describe(exc, entries, path)) from exc


def _describe(exc: ValidationError, entries: list, path: Path) -> str:
    lines = [f"catalog {path} is invalid ({exc.error_count()} problems):"]
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
            entry = entries[loc[1]] if loc[1] < len(entries) else None
            name = entry.get("name", f"#{loc[1]}") if isinstance(entry, dict) else f"#{loc[1]}"
            where = f"source {name!r}"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        lines.append(f"  - {where}{' field ' + field if field else ''}: {err['msg']}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The shipped catalog, loaded once per process."""
    return load_catalog(CATALOG_PATH)
