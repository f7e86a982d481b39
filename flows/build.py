"""The `build-m3e-hq` Prefect flow: a thin shell over the plain stage functions.

    obtain + ingest (per source) ─► dedup (all sources) ─► filter (per source) ─► mine (all sources) ─► manifest

`build_sources` is the plain function (no Prefect); the flow maps one obtain task (download, cache or manual
folder) and one ingest task per source, runs one dedup task over every ingested source, maps one filter task per
source, runs one mine task (hard negatives, teacher scores) over every filtered source, and writes the manifest.
A source that cannot be obtained is reported as skipped, unavailable or failed, one whose folder lacks its files as
missing, one whose ingest raises as failed: none of these stops the other sources.
"""

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import progress
from flows.accounting import StageCounts
from flows.dedup import STAGE as DEDUP
from flows.dedup import DedupParams, DedupResult, dedup_sources
from flows.download import obtain_mapped, obtain_sources
from flows.filters import STAGE as FILTER
from flows.filters import FilterParams, filter_source
from flows.ingest import STAGE as INGEST
from flows.ingest import ingest_source
from flows.manifest import write_manifest
from flows.mine import STAGE as MINE
from flows.mine import MineParams, MineResult, mine_sources
from flows.params import BuildParams
from sources.catalog import ManualObtain, Source, default_catalog
from sources.fetch import Obtained, manual_guidance
from sources.layout import locate

FLOW_NAME = "build-m3e-hq"


@dataclass
class SourceResult:
    """How one source fared, and its ingest counts when ok.

    status: ok, missing (its folder lacks the files), skipped / unavailable (a manual source not there), or failed
    (download or ingest error). `obtained` records how the files were had: cache, download (Hub commit, sha256) or
    manual folder.
    """

    source: str
    status: str
    message: str | None = None
    files: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    obtained: dict[str, Any] | None = None
    counts: StageCounts | None = None

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "counts"}


def missing_message(source: Source, folder: Path) -> str:
    """What to do when a source's native files are not in `folder`."""
    if isinstance(source.obtain, ManualObtain):
        return manual_guidance(source.obtain, folder, source.obtain.files)
    return f"no files matching {', '.join(g.glob for g in source.files)} in {folder}/"


def ingest_one(obtained: Obtained, build_dir: Path, max_chars: int) -> SourceResult:
    """Ingest one obtained source; absent files and errors become a status, never an exception."""
    name = obtained.source
    summary = obtained.summary()
    if not obtained.ok or obtained.folder is None:
        return SourceResult(name, obtained.status, obtained.message, missing_files=obtained.missing,
                            obtained=summary)
    source = default_catalog().get(name)
    located = locate(source, obtained.folder)
    files = [f.relpath for f in located.files]
    if not located.files:
        return SourceResult(name, "missing", missing_message(source, obtained.folder), missing_files=located.missing,
                            obtained=summary)
    try:
        counts = ingest_source(source, located.files, build_dir, max_chars, progress.counter(name))
    except Exception as exc:  # noqa: BLE001 - reported per source: one broken source does not stop the build
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return SourceResult(name, "failed", detail, files, located.missing, summary)
    return SourceResult(name, "ok", obtained.message, files, located.missing, summary, counts)


def ingested(results: list[SourceResult]) -> dict[str, Path]:
    """The ingest output of every source that was ingested."""
    return {r.source: Path(r.counts.kept_path) for r in results if r.counts is not None and r.counts.kept_path}


def dedup_all(results: list[SourceResult], params: BuildParams) -> DedupResult:
    """The dedup stage over every ingested source."""
    return dedup_sources(ingested(results), params.build_dir, params.dedup, default_catalog())


def filter_one(counts: StageCounts, params: BuildParams) -> StageCounts:
    """The filter stage for one source's dedup output."""
    assert counts.kept_path is not None
    return filter_source(counts.source, Path(counts.kept_path), params.build_dir, params.filters)


def mine_all(filtered: list[StageCounts], params: BuildParams) -> MineResult:
    """The mine stage over every filtered source."""
    inputs = {c.source: Path(c.kept_path) for c in filtered if c.kept_path}
    return mine_sources(inputs, params.build_dir, params.mine, default_catalog(), params.embedding_cache)


def finish(params: BuildParams, results: list[SourceResult], dedup: DedupResult, filtered: list[StageCounts],
           mined: MineResult) -> dict[str, Any]:
    """Write the manifest for the results and return the build summary."""
    stages = {INGEST: [r.counts for r in results if r.counts is not None], DEDUP: dedup.counts, FILTER: filtered,
              MINE: mined.counts}
    path = write_manifest(params.build_dir, params.model_dump(mode="json"),
                          {r.source: r.summary() for r in results}, stages, {DEDUP: dedup.stats, MINE: mined.stats})
    return {"manifest": str(path), "build_dir": str(params.build_dir), "results": results, "stages": stages}


def build_sources(params: BuildParams) -> dict[str, Any]:
    """The whole build without Prefect: obtain and ingest every selected source in turn, dedup them, filter each,
    mine them, then write the manifest."""
    results = [ingest_one(o, params.build_dir, params.max_chars) for o in obtain_sources(params)]
    dedup = dedup_all(results, params)
    filtered = [filter_one(c, params) for c in dedup.counts]
    return finish(params, results, dedup, filtered, mine_all(filtered, params))


ingest_task = task(ingest_one, name="ingest", task_run_name="ingest-{obtained.source}")
dedup_task = task(dedup_all, name="dedup")
filter_task = task(filter_one, name="filter", task_run_name="filter-{counts.source}")
mine_task = task(mine_all, name="mine")


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def build_m3e_hq(samples: bool = False, raw_dir: str | None = None, sources: list[str] | None = None,
                 out_dir: str | None = None, max_chars: int = BuildParams.model_fields["max_chars"].default,
                 cache_dir: str | None = None, manual_dir: str | None = None, require_all: bool = False,
                 dedup: DedupParams | None = None, filters: FilterParams | None = None,
                 mine: MineParams | None = None) -> dict[str, Any]:
    """Build m3e-hq and m3e-hq-with-score: obtain each selected source (download, cache, manual folder or samples),
    ingest each one, dedup them together, filter each, mine negatives and teacher scores, write the manifest."""
    params = BuildParams(samples=samples, raw_dir=raw_dir, sources=sources or [], out_dir=out_dir,
                         max_chars=max_chars, cache_dir=cache_dir, manual_dir=manual_dir, require_all=require_all,
                         dedup=dedup or DedupParams(), filters=filters or FilterParams(), mine=mine or MineParams())
    obtained = obtain_mapped(params)
    results = [f.result() for f in ingest_task.map(obtained, build_dir=params.build_dir, max_chars=params.max_chars)]
    deduped = dedup_task(results, params)
    filtered = [f.result() for f in filter_task.map(deduped.counts, params=unmapped(params))]
    return finish(params, results, deduped, filtered, mine_task(filtered, params))
