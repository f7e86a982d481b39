"""The build's parameters, one typed model shared by the CLI and the Prefect flow."""

from pathlib import Path
from typing import Literal

from m3e_hq.flows.core.clean import DEFAULT_MAX_CHARS
from m3e_hq.flows.stages.dedup import DedupParams
from m3e_hq.flows.stages.filters import FilterParams
from m3e_hq.flows.stages.mine import MineParams
from m3e_hq.flows.stages.publish import PublishParams
from m3e_hq.sources import cache
from m3e_hq.sources.catalog import default_catalog
from m3e_hq.sources.layout import SAMPLES_DIR
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILD_ROOT = Path("data") / "build"  # in the working directory


class BuildParams(BaseModel):
    """What to build from where. Default: download every source (into the cache) and build data/build/full/."""

    model_config = ConfigDict(extra="forbid")

    samples: bool = Field(False, description="read the shipped samples in data/samples/ instead of downloading")
    raw_dir: Path | None = Field(None, description="read native files laid out as <raw_dir>/<source>/<files>")
    sources: list[str] = Field(default_factory=list, description="source names; empty means all 29")
    out_dir: Path | None = Field(None, description="build folder; default data/build/<full|samples|local>")
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=1, description="longest text kept per side, in characters")
    cache_dir: Path | None = Field(None, description="download cache; default $M3E_HQ_CACHE or ~/.cache/m3e-hq")
    manual_dir: Path | None = Field(None, description="hand-downloaded sources; default $M3E_HQ_MANUAL or "
                                    "data/manual")
    require_all: bool = Field(False, description="fail when a selected source cannot be obtained")
    dedup: DedupParams = Field(default_factory=DedupParams, description="the dedup stage: keys, MinHash, "
                               "evaluation data kept out")
    filters: FilterParams = Field(default_factory=FilterParams, description="the filter stage's thresholds")
    mine: MineParams = Field(default_factory=MineParams, description="the mine stage: models, search, negatives, "
                             "teacher scores")
    publish: PublishParams = Field(default_factory=PublishParams, description="the published datasets: shards, "
                                   "plots, commercial-only")
    push_to_hub: str | None = Field(None, pattern=r"^[^/\s]+/[^/\s]+$", description="ORG/NAME: upload m3e-hq to "
                                    "ORG/NAME and m3e-hq-with-score to ORG/NAME-with-score (token from HF_TOKEN)")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, names: list[str]) -> list[str]:
        try:
            default_catalog().select(names)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return names

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
    def mode(self) -> Literal["samples", "local", "full"]:
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
        return self.out_dir or Path.cwd() / BUILD_ROOT / self.mode

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
