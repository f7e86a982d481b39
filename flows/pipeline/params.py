"""The build's parameters: one typed model that the CLI's `build` options, a `--config` file, the flow and the
deployment's `-p params=...` all fill.

A field marked with `json_schema_extra={"cli": "--name"}` (in BuildParams or a stage model it holds) is an option of
`m3e-hq build`, its help the field's description, its default the field's; `cli_fields` finds them.
"""

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from m3e_hq.flows.core.clean import DEFAULT_MAX_CHARS
from m3e_hq.flows.core.dedup_params import DedupParams
from m3e_hq.flows.core.filter_params import FilterParams
from m3e_hq.flows.core.mine_params import MineParams
from m3e_hq.flows.core.publish_params import PublishParams
from m3e_hq.sources import cache
from m3e_hq.sources.catalog import Catalog, default_catalog
from m3e_hq.sources.layout import SAMPLES_DIR

BUILD_ROOT = Path("data") / "build"  # in the working directory
Mode = Literal["samples", "local", "full"]  # where the native files come from
CLI = "cli"  # the json_schema_extra key of a field that is a `m3e-hq build` option: its name, or a list of names


def any_case(name: str) -> str:
    """A regular expression matching `name` in any case, `[bB][qQ]` for BQ: no flags and no escape that ECMA 262
    (JSON schema's dialect, the UI's) and Python (the server's) read differently."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.lower() != c.upper()
                   else c if c.isalnum() or c in "_-" else f"\\u{ord(c):04x}" for c in name)


def source_name_pattern(catalog: Catalog) -> str:
    """The JSON schema pattern of a source name: every name and alias of `catalog`, in any case."""
    return "^(?:" + "|".join(any_case(n) for s in catalog.sources for n in (s.name, *s.aliases)) + ")$"


def _schema_extra(schema: dict[str, Any]) -> None:
    """BuildParams' JSON schema, which the deployment enforces when a run is created: source names checked there
    too (the pattern is made when the schema is, so that importing BuildParams does not read the catalog)."""
    schema["properties"]["sources"]["items"]["pattern"] = source_name_pattern(default_catalog())


class BuildParams(BaseModel):
    """What to build from where. Default: download every source (into the cache) and build data/build/full/."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_schema_extra)

    samples: bool = Field(False, description="read the shipped samples in data/samples/ instead of downloading",
                          json_schema_extra={CLI: "--samples"})
    raw_dir: Path | None = Field(None, description="read native files laid out as <raw_dir>/<source>/<files>",
                                 json_schema_extra={CLI: "--raw-dir"})
    sources: list[str] = Field(default_factory=list, description="source names, in any case (`m3e-hq sources` "
                               "lists them); empty means all 29",
                               json_schema_extra={CLI: ["--sources", "-s"]})
    out_dir: Path | None = Field(None, description="build folder; default data/build/<full|samples|local>",
                                 json_schema_extra={CLI: "--out"})
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=1, description="longest text kept per side, in characters",
                           json_schema_extra={CLI: "--max-chars"})
    cache_dir: Path | None = Field(None, description="download cache; default $M3E_HQ_CACHE or ~/.cache/m3e-hq",
                                   json_schema_extra={CLI: "--cache-dir"})
    manual_dir: Path | None = Field(None, description="hand-downloaded sources; default $M3E_HQ_MANUAL or "
                                    "data/manual", json_schema_extra={CLI: "--manual-dir"})
    require_all: bool = Field(False, description="fail when a selected source cannot be obtained (sources the "
                              "catalog marks unavailable excepted)", json_schema_extra={CLI: "--require-all"})
    dedup: DedupParams = Field(default_factory=DedupParams, description="the dedup stage: keys, MinHash, "
                               "evaluation data kept out")
    filters: FilterParams = Field(default_factory=FilterParams, description="the filter stage's thresholds",
                                  json_schema_extra={CLI: "--filters"})
    mine: MineParams = Field(default_factory=MineParams, description="the mine stage: models, search, negatives, "
                             "teacher scores", json_schema_extra={CLI: "--mine"})
    publish: PublishParams = Field(default_factory=PublishParams, description="the published datasets: shards, "
                                   "plots, commercial-only")
    push_to_hub: str | None = Field(None, pattern=r"^[^/\s]+/[^/\s]+$", description="ORG/NAME: upload m3e-hq to "
                                    "ORG/NAME and m3e-hq-with-score to ORG/NAME-with-score (token from HF_TOKEN)",
                                    json_schema_extra={CLI: "--push-to-hub"})

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, names: list[str]) -> list[str]:
        """The catalog's spelling of each name, given in any case or as an alias (`bq`, `firefly`)."""
        catalog = default_catalog()
        try:
            catalog.select(names)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return [catalog.get(n).name for n in names]

    @model_validator(mode="after")
    def _one_input(self) -> "BuildParams":
        if self.samples and self.raw_dir is not None:
            raise ValueError("choose one input: samples=true (the shipped samples) or raw_dir=DIR (your own "
                             "files), or neither to download the sources")
        if self.filters.min_pair_score is not None:
            raise ValueError("filters.min_pair_score needs teacher scores, which come after the filter stage: set "
                             "mine.min_pair_score (--min-pair-score) instead")
        return self

    @property
    def mode(self) -> Mode:
        """Where the native files come from: the samples, a local folder, or downloads and the manual folder."""
        if self.samples:
            return "samples"
        return "local" if self.raw_dir is not None else "full"

    @property
    def input_dir(self) -> Path | None:
        """The folder holding <source>/ folders (None when sources are downloaded)."""
        if self.samples:
            return SAMPLES_DIR
        return Path(self.raw_dir) if self.raw_dir is not None else None

    @property
    def build_dir(self) -> Path:
        return self.out_dir or default_build_dir(self.mode)

    @property
    def embedding_cache(self) -> Path:
        """Where the mine stage caches embeddings."""
        return self.cache_root / "embeddings"

    @property
    def cache_root(self) -> Path:
        return cache.cache_dir(self.cache_dir)

    @property
    def manual_root(self) -> Path:
        return cache.manual_dir(self.manual_dir)


def default_build_dir(mode: Mode) -> Path:
    """The build folder of a build into no --out: data/build/<mode> in the working directory (`build`, `export`)."""
    return Path.cwd() / BUILD_ROOT / mode


@dataclass(frozen=True)
class CliField:
    """A field of BuildParams, or of a stage model in it, that is a `m3e-hq build` option."""

    path: tuple[str, ...]  # where the field is, e.g. ("dedup", "minhash", "threshold")
    names: tuple[str, ...]  # the option's names, e.g. ("--sources", "-s") or ("--near/--no-near",)
    info: FieldInfo

    @property
    def parameter(self) -> str:
        """The option's parameter name: near for --near/--no-near, dedup_on for --dedup-on."""
        return self.names[0].split("/")[0].removeprefix("--").replace("-", "_")

    @property
    def model(self) -> type | None:
        """The field's model when it is one: its option then names a YAML or JSON file of that model's fields."""
        return self.info.annotation if holds_fields(self.info.annotation) else None


def holds_fields(annotation: object) -> bool:
    """Whether a field's type is a model whose fields are walked: a pydantic model or a dataclass."""
    return isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation))


def fields_of(model: type) -> dict[str, FieldInfo]:
    """The fields of a pydantic model, or of a dataclass whose fields declare `Annotated[type, Field(...)]`."""
    if issubclass(model, BaseModel):
        return model.model_fields
    hints = typing.get_type_hints(model, include_extras=True)
    return {f.name: FieldInfo.from_annotated_attribute(hints[f.name], f.default) for f in dataclasses.fields(model)}


def cli_fields(model: type = BuildParams, prefix: tuple[str, ...] = ()) -> list[CliField]:
    """The fields marked as `m3e-hq build` options in `model` and the models it holds, in declaration order."""
    found = []
    for name, info in fields_of(model).items():
        path = (*prefix, name)
        names = info.json_schema_extra.get(CLI) if isinstance(info.json_schema_extra, dict) else None
        if names:
            found.append(CliField(path, (names,) if isinstance(names, str) else tuple(names), info))
        if holds_fields(info.annotation):
            found += cli_fields(info.annotation, path)
    return found
