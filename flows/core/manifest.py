"""The build manifest: per source where its rows came from, and per stage and source the accounting
(the model: schemas/manifest.py)."""

import hashlib
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from m3e_hq.flows.core.accounting import AccountingError, StageCounts
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


def stage_summary(counts: list[StageCounts], params: dict[str, Any] | None,
                  stats: dict[str, Any] | None) -> StageSummary:
    return StageSummary.model_validate({"totals": stage_totals(counts), "sources": {c.source: c.to_dict() for c in counts},
                                        "params": params, "stats": stats})


def check_chain(stages: dict[str, list[StageCounts]]) -> None:
    """Raise AccountingError unless, for every source, each stage read the rows the stage before it kept (`stages`
    in the order they ran: each stage's kept files are the next one's inputs). A source that left the build at a
    stage (its unit failed) is not seen by the stages after it; a stage never sees a source the one before did not."""
    for (before, earlier), (after, later) in itertools.pairwise(stages.items()):
        kept = {c.source: c.kept for c in earlier}
        for c in later:
            if c.source not in kept:
                raise AccountingError(f"{after}/{c.source}: read {c.read} rows of a source that {before}, the stage "
                                      f"before it, did not output")
            if c.read != kept[c.source]:
                raise AccountingError(f"{after}/{c.source}: read {c.read} rows but {before}, the stage before it, "
                                      f"kept {kept[c.source]}")


def write_manifest(build_dir: Path, params: dict[str, Any], sources: dict[str, dict[str, Any]],
                   stages: dict[str, list[StageCounts]], stats: dict[str, dict[str, Any]] | None = None,
                   stage_params: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write `<build_dir>/manifest.json` atomically, after checking every stage's accounting identity (rows read =
    rows kept + rows dropped by reason) and the chain of the stages, in the order given, which is the order they ran
    (a stage's rows read = the previous stage's rows kept).

    `sources`: per source, SourceResult.summary(); `stats`: per stage, what it found besides its counts (e.g. the
    dedup stage's duplicates by source pair); `stage_params`: per stage, the parameters it ran with."""
    for counts in stages.values():
        for c in counts:
            c.check()
    check_chain(stages)
    stats, stage_params = stats or {}, stage_params or {}
    manifest = Manifest.model_validate({
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog_sha256": hashlib.sha256(CATALOG_PATH.read_bytes()).hexdigest(),
        "params": params,
        "sources": sources,
        "stages": {stage: stage_summary(counts, stage_params.get(stage), stats.get(stage))
                   for stage, counts in stages.items()},
    })
    return manifest.write(build_dir)
