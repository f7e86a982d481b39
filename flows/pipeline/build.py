"""The `build-m3e-hq` Prefect flow: a thin shell over the plain stage functions.

    obtain + ingest (per source) ─► dedup (all sources) ─► filter (per source) ─► mine (per source) ─► manifest

`build_sources` is the plain function (no Prefect); the flow maps one obtain task (download, cache or manual
folder) and one ingest task per source, runs one dedup task over every ingested source, maps one filter task per
source, runs one mine task (hard negatives, teacher scores) per filtered source (one over all of them with
`mine.pool="all"`), merges their results, and writes the manifest.
A source that cannot be obtained is reported as skipped, unavailable or failed, one whose folder lacks its files as
missing, one whose ingest raises as failed: none of these stops the other sources.

With `mine.encode_shards` > 1, that many encode tasks fill the embedding cache before the mine task, which then finds
every embedding cached. The tasks run on 4 threads (the decorator's default) or, with
`build_m3e_hq.with_options(task_runner=task_runner("ray", address))`, on Ray (prefect-ray), where the encode shards
and the mine tasks ask for one GPU each when the models run on CUDA.

Resuming: in the flow, each shard of work (the ingest of one source's files, dedup, the filter of one source, an
encode shard, the mining of one source) is a task cached on its inputs, the size and modification time of every file
it reads, and its source code, its result (paths and counts) kept in `<build_dir>/.prefect-results/`. A run after a
failure starts again at the failed shard; a changed input, parameter or stage function runs that shard again and the
stages after it, and so does a stage output removed or overwritten since (e.g. by a build with other settings into
the same folder). Delete the build folder or set PREFECT_TASKS_REFRESH_CACHE=true to build from scratch.
"""

import functools
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, ParamSpec, TypeVar

from m3e_hq.flows.core.accounting import OutputError, StageCounts
from m3e_hq.flows.core.manifest import write_manifest
from m3e_hq.flows.pipeline.artifacts import publish_artifacts
from m3e_hq.flows.pipeline.download import obtain_mapped, obtain_sources
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.pipeline.push import push_to_hub
from m3e_hq.flows.stages.clean import DEFAULT_MAX_CHARS
from m3e_hq.flows.stages.dedup import STAGE as DEDUP
from m3e_hq.flows.stages.dedup import DedupParams, DedupResult, dedup_sources
from m3e_hq.flows.stages.filters import STAGE as FILTER
from m3e_hq.flows.stages.filters import FilterParams, filter_source
from m3e_hq.flows.stages.ingest import STAGE as INGEST
from m3e_hq.flows.stages.ingest import ingest_source
from m3e_hq.flows.stages.mine import STAGE as MINE
from m3e_hq.flows.stages.mine import MineParams, MineResult, encode_shard, groups, merge, mine_sources
from m3e_hq.flows.stages.publish import PublishParams, PublishResult, publish
from m3e_hq.sources.catalog import Catalog, ManualObtain, Source, default_catalog
from m3e_hq.sources.fetch import Obtained, manual_guidance
from m3e_hq.sources.layout import locate
from prefect import Task, flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel, Field

from m3e_hq import progress

FLOW_NAME = "build-m3e-hq"
RESULTS_DIR = ".prefect-results"  # in the build folder: the stages' cached results

P = ParamSpec("P")
R = TypeVar("R")
Stamp = tuple[str, int, int]  # a file's path, size in bytes and modification time in ns


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


def ingest_one(obtained: Obtained, build_dir: Path, max_chars: int,
               ingest: Callable[..., StageCounts] = ingest_source) -> SourceResult:
    """Ingest one obtained source with `ingest` (ingest_source's arguments); absent files and errors become a status,
    never an exception, except an OutputError (the build folder cannot be written)."""
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
        counts = ingest(source, located.files, build_dir, max_chars, progress.counter(name))
    except OutputError:  # the build folder, not the source: every source would fail alike
        raise
    except Exception as exc:  # noqa: BLE001 - reported per source: one broken source does not stop the build
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return SourceResult(name, "failed", detail, files, located.missing, summary)
    return SourceResult(name, "ok", obtained.message, files, located.missing, summary, counts)


def ingested(results: list[SourceResult]) -> dict[str, Path]:
    """The ingest output of every source that was ingested."""
    return {r.source: Path(r.counts.kept_path) for r in results if r.counts is not None and r.counts.kept_path}


def filter_outputs(filtered: list[StageCounts]) -> dict[str, Path]:
    """The filter output of every filtered source."""
    return {c.source: Path(c.kept_path) for c in filtered if c.kept_path}


def finish(params: BuildParams, results: list[SourceResult], dedup: DedupResult, filtered: list[StageCounts],
           mined: MineResult) -> dict[str, Any]:
    """Write the manifest for the results and return the build summary."""
    stages = {INGEST: [r.counts for r in results if r.counts is not None], DEDUP: dedup.counts, FILTER: filtered,
              MINE: mined.counts}
    path = write_manifest(params.build_dir, params.model_dump(mode="json"),
                          {r.source: r.summary() for r in results}, stages, {DEDUP: dedup.stats, MINE: mined.stats})
    return {"manifest": str(path), "build_dir": str(params.build_dir), "results": results, "stages": stages}


def release(params: BuildParams, summary: dict[str, Any]) -> dict[str, Any]:
    """Publish m3e-hq and m3e-hq-with-score into the build folder (and to the Hub when asked); the summary with the
    published folders (and commit URLs)."""
    kept = {stage: sum(c.kept for c in summary["stages"][stage]) for stage in (FILTER, MINE)}
    if not all(kept.values()):
        return {**summary, "published": {"folders": {}, "skipped": f"nothing to publish: {kept[FILTER]} rows left "
                                                                   f"after the filters, {kept[MINE]} after mining"}}
    result = publish(params.build_dir, params.build_dir, params.publish, default_catalog())
    published = {"folders": {"m3e-hq": str(result.m3e_hq.folder), "m3e-hq-with-score": str(result.with_score.folder)}}
    if params.push_to_hub:
        published["hub"] = push_both(result, params.push_to_hub)
    return {**summary, "published": published}


def push_both(result: PublishResult, repo_id: str) -> dict[str, str]:
    """Upload m3e-hq to `repo_id` and m3e-hq-with-score to `repo_id`-with-score; their commit URLs."""
    return {repo_id: push_to_hub(result.m3e_hq.folder, repo_id),
            f"{repo_id}-with-score": push_to_hub(result.with_score.folder, f"{repo_id}-with-score")}


def build_sources(params: BuildParams) -> dict[str, Any]:
    """The whole build without Prefect: obtain and ingest every selected source in turn, dedup them, filter each,
    mine them, then write the manifest."""
    build_dir, catalog = params.build_dir, default_catalog()
    results = [ingest_one(o, build_dir, params.max_chars) for o in obtain_sources(params)]
    dedup = dedup_sources(ingested(results), build_dir, params.dedup, catalog)
    filtered = [filter_source(c.source, Path(c.kept_path), build_dir, params.filters) for c in dedup.counts]
    mined = mine_sources(filter_outputs(filtered), build_dir, params.mine, catalog, params.embedding_cache)
    return release(params, finish(params, results, dedup, filtered, mined))


# --- caching: stage tasks keyed on their inputs and input files, their results checked against their outputs -------


def stamp(path: Path) -> Stamp:
    """A file's path, size and modification time (-1, -1 when it is absent)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return str(path), -1, -1
    return str(path), stat.st_size, stat.st_mtime_ns


def files_in(value: Any) -> Iterator[Path]:
    """Every existing file that a task input names, in lists, dicts, dataclasses and pydantic models (a folder's
    contents are not walked: stages name the files they read)."""
    if isinstance(value, Path):
        if value.is_file():
            yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from files_in(getattr(value, name))
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from files_in(getattr(value, f.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from files_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from files_in(item)


@dataclass
class InputFiles(CachePolicy):
    """Cache-key part: the size and modification time of every file the task reads, so that a changed input file
    (a sample, a download, an earlier stage's output) never gets a stale result."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        return hash_objects([stamp(p) for p in files_in(inputs)], raise_on_failure=True)


STAGE_CACHE = INPUTS + TASK_SOURCE + InputFiles()


@dataclass(frozen=True)
class Stamped(Generic[R]):
    """A stage's result, and the files it wrote as they were when it ran."""

    value: R
    outputs: tuple[Stamp, ...]

    def intact(self) -> bool:
        """Whether the files are still as written: not removed or overwritten since."""
        return all(stamp(Path(s[0])) == s for s in self.outputs)


def written(result: StageCounts | DedupResult | MineResult) -> list[Path]:
    """The files a stage wrote: the kept and dropped rows of every source."""
    counts = [result] if isinstance(result, StageCounts) else result.counts
    return [Path(p) for c in counts for p in (c.kept_path, c.dropped_path) if p]


def stage_task(fn: Callable[P, R], name: str, cache_policy: CachePolicy = STAGE_CACHE,
               **options: Any) -> Task[P, Stamped[R]]:
    """A cached task running the stage function `fn` (whose source code is part of the key)."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> Stamped[R]:
        result = fn(*args, **kwargs)
        return Stamped(result, tuple(stamp(p) for p in written(result)))

    return task(run, name=name, cache_policy=cache_policy, persist_result=True, **options)


def run_stage(stage: Task[..., Stamped[R]], build_dir: Path, calls: list[tuple[Any, ...]]) -> list[R]:
    """Run `stage` once per argument tuple, concurrently, with its results kept in the build folder; a cached
    result whose files were removed or overwritten since is computed again."""
    stage = stage.with_options(result_storage=build_dir / RESULTS_DIR)
    futures = [stage.submit(*args) for args in calls]
    return [current(future.result(), stage, args) for future, args in zip(futures, calls, strict=True)]


def current(got: Stamped[R], stage: Task[..., Stamped[R]], args: tuple[Any, ...]) -> R:
    """The stage's value, computed again when the files of a cached result are no longer as written."""
    return got.value if got.intact() else stage.with_options(refresh_cache=True)(*args).value


ingest_files_task = stage_task(ingest_source, "ingest-files", task_run_name="ingest-files-{source.name}",
                               cache_policy=STAGE_CACHE - "on_progress")
dedup_task = stage_task(dedup_sources, "dedup", task_run_name="dedup")
filter_task = stage_task(filter_source, "filter", task_run_name="filter-{name}")
mine_task = stage_task(mine_sources, "mine", task_run_name="mine")


def ingest_cached(obtained: Obtained, build_dir: Path, max_chars: int) -> SourceResult:
    """`ingest_one` with the ingest of the files as a cached task (a failed ingest is not cached)."""
    stage = ingest_files_task.with_options(result_storage=build_dir / RESULTS_DIR)
    return ingest_one(obtained, build_dir, max_chars, lambda *args: current(stage(*args), stage, args))


ingest_task = task(ingest_cached, name="ingest", task_run_name="ingest-{obtained.source}")
encode_task = task(encode_shard, name="encode", task_run_name="encode-{shard}", cache_policy=STAGE_CACHE,
                   persist_result=True)


def encode_shards(inputs: dict[str, Path], params: BuildParams, catalog: Catalog) -> None:
    """With `mine.encode_shards` > 1: encode the texts mining needs in that many concurrent tasks, into the embedding
    cache (a shard cached from an earlier run is not run again; the mine task encodes whatever is still missing)."""
    shards = params.mine.encode_shards
    if shards == 1:
        return
    stage = encode_task.with_options(result_storage=params.build_dir / RESULTS_DIR)
    futures = [stage.submit(inputs, params.mine, catalog, params.embedding_cache, shard) for shard in range(shards)]
    for future in futures:
        future.result()


# --- task runners: threads in this process (the default) or a Ray cluster (prefect-ray) -----------------------------

TASK_RUNNERS = ("thread", "ray")
# A local Ray instance (no address): every core, no dashboard, Ray's own logs from WARNING, a small object store
# (tasks pass paths, settings and counts, never rows).
LOCAL_RAY = {"num_cpus": os.cpu_count(), "include_dashboard": False, "logging_level": logging.WARNING,
             "object_store_memory": 256 * 2**20}


class TaskRunnerError(RuntimeError):
    """A task runner that cannot be had: an unknown name, or prefect-ray not installed."""


def task_runner(name: str = "thread", ray_address: str | None = None) -> TaskRunner:
    """The flow's task runner: `thread` (4 threads in this process) or `ray` (prefect-ray: the Ray cluster at
    `ray_address`, e.g. ray://head:10001, else a local Ray instance for the run)."""
    if name not in TASK_RUNNERS:
        raise TaskRunnerError(f"unknown task runner {name!r}: choose {' or '.join(TASK_RUNNERS)}")
    if name == "thread":
        if ray_address:
            raise TaskRunnerError("a Ray address needs the ray task runner (--task-runner ray)")
        return ThreadPoolTaskRunner(max_workers=4)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise TaskRunnerError('the ray task runner needs prefect-ray and ray: pip install "m3e-hq[ray]"') from None
    return RayTaskRunner(address=ray_address, init_kwargs=None if ray_address else LOCAL_RAY)


def gpus_per_task(device: str | None, cluster_gpus: float) -> int:
    """GPUs a model task asks Ray for: one when it runs on CUDA (`device` says cuda, or says nothing and the cluster
    has GPUs), else none."""
    cuda = device.startswith("cuda") if device else cluster_gpus > 0
    if cuda and not cluster_gpus:
        raise TaskRunnerError(f"device {device!r} requested but the Ray cluster has no GPU")
    return int(cuda)


def model_tasks(device: str | None) -> AbstractContextManager[Any]:
    """Under the Ray task runner, the tasks submitted in this block (encode shards, mine) ask Ray for
    `gpus_per_task` GPUs each; under another runner nothing changes."""
    try:
        import ray
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError:
        return nullcontext()
    context = FlowRunContext.get()
    if context is None or not isinstance(context.task_runner, RayTaskRunner):
        return nullcontext()
    gpus = gpus_per_task(device, ray.cluster_resources().get("GPU", 0))
    return remote_options(num_gpus=gpus) if gpus else nullcontext()


MaxChars = Annotated[int, Field(ge=1, description="longest text kept per side, in characters")]


@flow(name=FLOW_NAME, task_runner=task_runner("thread"), log_prints=True)
def build_m3e_hq(samples: bool = False, raw_dir: str | None = None, sources: list[str] | None = None,
                 out_dir: str | None = None, max_chars: MaxChars = DEFAULT_MAX_CHARS, cache_dir: str | None = None,
                 manual_dir: str | None = None, require_all: bool = False, dedup: DedupParams | None = None,
                 filters: FilterParams | None = None, mine: MineParams | None = None,
                 commercial_only: bool = False, include_unknown_license: bool = False,
                 publish_settings: PublishParams | None = None, push_to_hub: str | None = None) -> dict[str, Any]:
    """Build m3e-hq and m3e-hq-with-score: obtain each selected source (download, cache, manual folder or samples),
    ingest each one, dedup them together, filter each, mine negatives and teacher scores, write the manifest,
    publish both datasets (only commercial-use sources with commercial_only) and the counts as Prefect artifacts."""
    settings = publish_settings or PublishParams()
    publishing = settings.model_copy(update={
        "commercial_only": commercial_only or settings.commercial_only,
        "include_unknown_license": include_unknown_license or settings.include_unknown_license})
    params = BuildParams(samples=samples, raw_dir=raw_dir, sources=sources or [], out_dir=out_dir,
                         max_chars=max_chars, cache_dir=cache_dir, manual_dir=manual_dir, require_all=require_all,
                         dedup=dedup or DedupParams(), filters=filters or FilterParams(), mine=mine or MineParams(),
                         publish=publishing, push_to_hub=push_to_hub)
    build_dir, catalog = params.build_dir, default_catalog()
    obtained = obtain_mapped(params)
    results = [f.result() for f in ingest_task.map(obtained, build_dir=build_dir, max_chars=params.max_chars)]
    [deduped] = run_stage(dedup_task, build_dir, [(ingested(results), build_dir, params.dedup, catalog)])
    filtered = run_stage(filter_task, build_dir,
                         [(c.source, Path(c.kept_path), build_dir, params.filters) for c in deduped.counts])
    inputs = filter_outputs(filtered)
    with model_tasks(params.mine.device):
        encode_shards(inputs, params, catalog)
        mined = merge(run_stage(mine_task, build_dir, [
            ({n: inputs[n] for n in group}, build_dir, params.mine, catalog, params.embedding_cache)
            for group in groups([n for n in catalog.names if n in inputs], params.mine.pool)]), params.mine)
    summary = release(params, finish(params, results, deduped, filtered, mined))
    publish_artifacts(summary)
    return summary
