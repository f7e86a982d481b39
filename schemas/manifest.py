"""The build manifest, `<build>/manifest.json`: per source where its rows came from, per stage and source the
accounting. Written by the build (flows/core/manifest.py), read back by publish."""

import json
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError, model_serializer

from m3e_hq.files import write_json_atomic
from m3e_hq.schemas.enums import ObtainStatus, SourceStatus

MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that cannot be read as one: not JSON, or not the manifest's shape."""


class Record(BaseModel):
    """A part of the manifest: strict about its fields."""

    model_config = ConfigDict(extra="forbid")


class ObtainedSummary(Record):
    """How a source's files were had (sources/fetch.py: Obtained.summary)."""

    source: str
    status: ObtainStatus
    folder: str | None = None
    message: str | None = None
    revision: str | None = None  # the Hub commit
    sha256: dict[str, str] = {}  # per downloaded URL
    files: dict[str, int] = {}  # relative path -> bytes
    missing: list[str] = []


class SuspectSummary(Record):
    """Why a source is suspect (flows/pipeline/suspect.py: Suspicion): the dominant reason and its rows, out of the
    rows the source's own rule leaves; the keys of sampled quarantined rows, or excerpts of those that are not
    objects; what to check."""

    reason: str
    rows: int
    structural: int
    considered: int
    kept: int
    sample_keys: list[list[str]]
    sample_rows: list[str]
    check: str


class SourceSummary(Record):
    """How one source fared in the build (flows/pipeline/build.py: SourceResult.summary)."""

    source: str
    status: SourceStatus
    message: str | None = None
    files: list[str] = []
    missing_files: list[str] = []
    obtained: ObtainedSummary | None = None
    suspect: SuspectSummary | None = None


class SourceCounts(Record):
    """What one stage did to one source: the fields of flows/core/accounting.py: StageCounts."""

    stage: str
    source: str
    read: int
    kept: int
    dropped: dict[str, int]  # reason -> rows
    seconds: float
    kept_path: str | None = None
    dropped_path: str | None = None
    made_from: str | None = None  # the identity its outputs record (flows/core/lineage.py)


class StageTotals(Record):
    """One stage's counts over every source."""

    read: int
    kept: int
    dropped: dict[str, int]


class StageSummary(Record):
    """One stage: its totals, its counts per source, the parameters it ran with and, for some stages, what it found
    (e.g. dedup's duplicates by source pair); `params` and `stats` are left out of the JSON when absent."""

    totals: StageTotals
    sources: dict[str, SourceCounts]
    params: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _without_absent_parts(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for part in ("params", "stats"):
            if getattr(self, part) is None:
                data.pop(part, None)
        return data

    def kept(self, source: str) -> int | None:
        """Rows of `source` kept (None when the stage did not see it)."""
        counts = self.sources.get(source)
        return None if counts is None else counts.kept


class Manifest(Record):
    """The whole manifest. `params` is the build's parameters as JSON (flows/pipeline/params.py: BuildParams)."""

    created: str  # ISO 8601, UTC, to the second
    catalog_sha256: str
    params: dict[str, Any]
    sources: dict[str, SourceSummary]
    stages: dict[str, StageSummary]

    def write(self, build_dir: Path) -> Path:
        """Write `<build_dir>/manifest.json` atomically; returns its path. Values of `params` and `stats` that JSON
        lacks (a Path) are written as text."""
        path = build_dir / MANIFEST_NAME
        write_json_atomic(path, self.model_dump())
        return path

    @classmethod
    def read(cls, build_dir: Path) -> Self:
        """The manifest of the build in `build_dir`: FileNotFoundError when there is none, ManifestError (one line)
        when it is not a valid one."""
        path = build_dir / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build first (m3e-hq build)")
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is not JSON ({exc}): build again (m3e-hq build)") from None
        except ValidationError as exc:
            raise ManifestError(f"{path} is not a build manifest ({first_problem(exc)}): build again "
                                f"(m3e-hq build)") from None

    def settings(self, part: str) -> dict[str, Any]:
        """One part of the build's parameters (dedup, filters, mine, ...); empty when the build had none."""
        return self.params.get(part) or {}

    def stage_kept(self, stage: str, source: str) -> int | None:
        """Rows of `source` kept by `stage` (None when the stage did not run or did not see it)."""
        summary = self.stages.get(stage)
        return None if summary is None else summary.kept(source)


def first_problem(exc: ValidationError) -> str:
    """The first error of a validation, on one line: where and what."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the top level"
    count = exc.error_count()
    more = f", and {count - 1} more" if count > 1 else ""
    return f"{where}: {error['msg']}{more}"
