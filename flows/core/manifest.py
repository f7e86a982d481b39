"""The build manifest: per source where its rows came from, and per stage and source the accounting
(the model: schemas/manifest.py)."""

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.schemas import Manifest, StageSummary
from m3e_hq.sources.catalog import CATALOG_PATH


def stage_totals(counts: list[StageCounts]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    for c in counts:
        for reason, n in c.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    return {
        "read": sum(c.read for c in counts),
        "kept": sum(c.kept for c in counts),
        "dropped": dict(sorted(dropped.items())),
    }


def stage_summary(counts: list[StageCounts], stats: dict[str, Any] | None) -> StageSummary:
    return StageSummary.model_validate({"totals": stage_totals(counts),
                                        "sources": {c.source: c.to_dict() for c in counts}, "stats": stats})


def write_manifest(build_dir: Path, params: dict[str, Any], sources: dict[str, dict[str, Any]],
                   stages: dict[str, list[StageCounts]], stats: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write `<build_dir>/manifest.json` atomically, after checking every stage's accounting identity.

    `sources`: per source, SourceResult.summary(); `stats`: per stage, what it found besides its counts (e.g. the
    dedup stage's duplicates by source pair)."""
    for counts in stages.values():
        for c in counts:
            c.check()
    stats = stats or {}
    manifest = Manifest.model_validate({
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog_sha256": hashlib.sha256(CATALOG_PATH.read_bytes()).hexdigest(),
        "params": params,
        "sources": sources,
        "stages": {stage: stage_summary(counts, stats.get(stage)) for stage, counts in stages.items()},
    })
    return manifest.write(build_dir)
