"""The `build-m3e-hq` Prefect flow: a thin shell over the plain stage functions.

`build_sources` is the plain function (no Prefect); the flow maps one ingest task per source and writes the
manifest. A source whose files are absent is reported as missing, one that raises is reported as failed:
neither stops the other sources.
"""

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows import progress
from flows.accounting import StageCounts
from flows.ingest import STAGE as INGEST
from flows.ingest import ingest_source
from flows.manifest import write_manifest
from flows.params import BuildParams
from sources.catalog import ManualObtain, Source, default_catalog
from sources.layout import locate

FLOW_NAME = "build-m3e-hq"


@dataclass
class SourceResult:
    """How one source fared: ok, missing (no files) or failed (an error), and its ingest counts when ok."""

    source: str
    status: str
    message: str | None = None
    files: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    counts: StageCounts | None = None

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "counts"}


def missing_message(source: Source, folder: Path) -> str:
    """What to do when a source's native files are not in `folder`."""
    obtain = source.obtain
    expected = ", ".join(g.glob for g in source.files)
    if isinstance(obtain, ManualObtain) and obtain.unavailable:
        return f"unavailable: {obtain.unavailable}. If you hold a copy, put {expected} in {folder}/"
    if isinstance(obtain, ManualObtain):
        return f"download by hand from {obtain.page} and put {expected} in {folder}/"
    return f"no files matching {expected} in {folder}/"


def ingest_one(source_name: str, input_dir: Path, build_dir: Path, max_chars: int) -> SourceResult:
    """Locate and ingest one source; missing files and errors become a status, never an exception."""
    source = default_catalog().get(source_name)
    located = locate(source, input_dir)
    files = [f.relpath for f in located.files]
    if not located.files:
        return SourceResult(source_name, "missing", missing_message(source, input_dir / source_name),
                            missing_files=located.missing)
    try:
        counts = ingest_source(source, located.files, build_dir, max_chars, progress.counter(source_name))
    except Exception as exc:  # noqa: BLE001 - reported per source: one broken source does not stop the build
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return SourceResult(source_name, "failed", detail, files, located.missing)
    return SourceResult(source_name, "ok", None, files, located.missing, counts)


def finish(params: BuildParams, results: list[SourceResult]) -> dict[str, Any]:
    """Write the manifest for the results and return the build summary."""
    counts = [r.counts for r in results if r.counts is not None]
    path = write_manifest(params.build_dir, params.model_dump(mode="json"),
                          {r.source: r.summary() for r in results}, {INGEST: counts})
    return {"manifest": str(path), "build_dir": str(params.build_dir), "results": results}


def build_sources(params: BuildParams) -> dict[str, Any]:
    """The whole build without Prefect: ingest every selected source in turn, then write the manifest."""
    sources = default_catalog().select(params.sources)
    results = [ingest_one(s.name, params.input_dir, params.build_dir, params.max_chars) for s in sources]
    return finish(params, results)


ingest_task = task(ingest_one, name="ingest", task_run_name="ingest-{source_name}")


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def build_m3e_hq(samples: bool = False, raw_dir: str | None = None, sources: list[str] | None = None,
                 out_dir: str | None = None, max_chars: int = BuildParams.model_fields["max_chars"].default,
                 ) -> dict[str, Any]:
    """Build m3e-hq: ingest each selected source (one mapped task per source), then write the manifest."""
    params = BuildParams(samples=samples, raw_dir=raw_dir, sources=sources or [], out_dir=out_dir,
                         max_chars=max_chars)
    names = [s.name for s in default_catalog().select(params.sources)]
    futures = ingest_task.map(names, input_dir=params.input_dir, build_dir=params.build_dir,
                              max_chars=params.max_chars)
    return finish(params, [f.result() for f in futures])
