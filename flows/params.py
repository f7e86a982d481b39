"""The build's parameters, one typed model shared by the CLI and the Prefect flow."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows.clean import DEFAULT_MAX_CHARS
from sources.catalog import default_catalog
from sources.layout import SAMPLES_DIR

BUILD_ROOT = Path(__file__).resolve().parent.parent / "data" / "build"


class BuildParams(BaseModel):
    """What to build from where. Defaults: every source; outputs under data/build/<samples|local>/."""

    model_config = ConfigDict(extra="forbid")

    samples: bool = Field(False, description="read the shipped samples in data/samples/")
    raw_dir: Path | None = Field(None, description="read native files laid out as <raw_dir>/<source>/<files>")
    sources: list[str] = Field(default_factory=list, description="source names; empty means all 29")
    out_dir: Path | None = Field(None, description="build folder; default data/build/samples or data/build/local")
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=1, description="longest text kept per side, in characters")

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
        if self.samples == (self.raw_dir is not None):
            raise ValueError(
                "choose the input: samples=true for the shipped samples, or raw_dir=DIR for native files you "
                "have (downloading the sources is not built yet)"
            )
        return self

    @property
    def input_dir(self) -> Path:
        return SAMPLES_DIR if self.samples else Path(self.raw_dir)

    @property
    def build_dir(self) -> Path:
        return self.out_dir or BUILD_ROOT / ("samples" if self.samples else "local")
