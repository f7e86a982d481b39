"""The `build-m3e-hq` Prefect flow: a thin shell that runs the list of stages.

    obtain (per source) ─► STAGES: ingest (per source) ─► filter (per source) ─► dedup (all sources)
                                   ─► mine (per source, or all with mine.pool="all") ─► manifest ─► publish

The filters run before dedup, so that a copy the filters drop (a U+FFFD in a side, a side too long) never wins a
duplicate cluster over a copy they keep: dedup chooses its survivors among the rows the filters kept, and its kept
rows are m3e-hq.

`STAGES` is the pipeline; `flows.core.stage.run_stages` runs it, each stage's kept files the next one's inputs:
`build_sources` in this process (no Prefect), the flow with every unit of work a cached Prefect task
(`PrefectTasks`). A source that cannot be obtained is reported as skipped, unavailable or failed, one whose folder
lacks its files as missing, one whose ingest raises as failed, one whose files do not yield its data as suspect
(`flows.pipeline.suspect`): none of these stops the other sources, unless `require_all` (then a failed or suspect
source stops the build after ingest). A build holds its folder's lock (`flows.pipeline.lock`).

With `mine.encode_shards` > 1, that many encode tasks fill the embedding cache before the mine tasks, which then
find every embedding cached. The tasks run on 4 threads (the decorator's default) or, with
`build_m3e_hq.with_options(task_runner=task_runner("ray", address))`, on Ray (prefect-ray), where the encode shards
and the mine tasks ask for one GPU each when the models run on CUDA.

Resuming: in the flow, each unit of work (the ingest of one source's files, the filter of one source, dedup, an
encode shard, the mining of one source) is a task cached on its inputs, the size and modification time of every file
it reads, and the source of its stage's module, its result (paths and counts) kept in `<build_dir>/.prefect-results/`.
A run after a failure starts again at the failed unit; a changed input, parameter or stage module runs that unit
again and the stages after it, and so does a stage output removed or overwritten since (e.g. by a build with other
settings into the same folder). Delete the build folder or set PREFECT_TASKS_REFRESH_CACHE=true to build from scratch.
"""

import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from prefect import Task, flow, task
from prefect.cache_policies import INPUTS, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.flows.core.manifest import write_manifest
from m3e_hq.flows.core.stage import (
    Context,
    Executor,
    Failed,
    InProcess,
    PipelineRun,
    Stage,
    StageResult,
    attempt,
    run_stages,
    timed,
)
from m3e_hq.flows.pipeline.artifacts import publish_artifacts
from m3e_hq.flows.pipeline.download import obtain_mapped, obtain_sources
from m3e_hq.flows.pipeline.lock import build_lock
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.pipeline.push import push_to_hub
from m3e_hq.flows.pipeline.suspect import Suspicion, suspicion
from m3e_hq.flows.stages.dedup import DEDUP
from m3e_hq.flows.stages.filters import FILTER
from m3e_hq.flows.stages.ingest import INGEST
from m3e_hq.flows.stages.mine import MINE
from m3e_hq.flows.stages.publish import PublishResult, publish
from m3e_hq.schemas import SourceStatus
from m3e_hq.sources.catalog import ManualObtain, Source, default_catalog
from m3e_hq.sources.fetch import Obtained, manual_guidance
from m3e_hq.sources.layout import Located, locate
from m3e_hq.sources.readers import SourceFile

FLOW_NAME = "build-m3e-hq"
RESULTS_DIR = ".prefect-results"  # in the build folder: the stages' cached results
# The pipeline: adding a stage is one module exporting a Stage and one entry here.
STAGES: list[Stage] = [INGEST, FILTER, DEDUP, MINE]

R = TypeVar("R")
Stamp = tuple[str, int, int]  # a file's path, size in bytes and modification time in ns


@dataclass
class SourceResult:
    """How one source fared, and its ingest counts when ingested.

    status (SourceStatus): ok, suspect (ingested, but no row kept or most rows quarantined for a structural reason:
    `suspect` says why), missing (its folder lacks the files), skipped / unavailable (a manual source not there),
    or failed (download or ingest error). `obtained` records how the files were had: cache, download (Hub commit,
    sha256) or manual folder.
    """

    source: str
    status: SourceStatus
    message: str | None = None
    files: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    obtained: dict[str, Any] | None = None
    counts: StageCounts | None = None
    suspect: Suspicion | None = None

    def __post_init__(self) -> None:
        self.status = SourceStatus(self.status)

    def summary(self) -> dict[str, Any]:
        summary = {k: v for k, v in vars(self).items() if k not in ("counts", "suspect")}
        return summary | ({"suspect": asdict(self.suspect)} if self.suspect else {})


def missing_message(source: Source, folder: Path) -> str:
    """What to do when a source's native files are not in `folder`."""
    if isinstance(source.obtain, ManualObtain):
        return manual_guidance(source.obtain, folder, source.obtain.files)
    return f"no files matching {', '.join(g.glob for g in source.files)} in {folder}/"


@dataclass
class Intake:
    """The obtained sources: the located native files of those that can be ingested (the first stage's inputs),
    and the result of each of the others."""

    obtained: dict[str, Obtained] = field(default_factory=dict)
    located: dict[str, Located] = field(default_factory=dict)  # the sources with files to ingest
    not_ingested: dict[str, SourceResult] = field(default_factory=dict)

    @classmethod
    def of(cls, obtained: list[Obtained]) -> "Intake":
        intake = cls()
        for o in obtained:
            intake.add(o)
        return intake

    @property
    def files(self) -> dict[str, list[SourceFile]]:
        """The first stage's inputs: each ingestible source's native files."""
        return {name: located.files for name, located in self.located.items()}

    def add(self, o: Obtained) -> None:
        self.obtained[o.source] = o
        if not o.ok or o.folder is None:
            self.not_ingested[o.source] = SourceResult(o.source, o.status, o.message, missing_files=o.missing,
                                                       obtained=o.summary())
            return
        source = default_catalog().get(o.source)
        located = locate(source, o.folder)
        if located.files:
            self.located[o.source] = located
        else:
            self.not_ingested[o.source] = SourceResult(o.source, "missing", missing_message(source, o.folder),
                                                       missing_files=located.missing, obtained=o.summary())

    def results(self, run: PipelineRun) -> list[SourceResult]:
        """Every source's result, in the order obtained, once the pipeline has run."""
        ingested = {c.source: c for c in run.results[INGEST.name].counts} if INGEST.name in run.results else {}
        return [self.result(name, ingested.get(name), run.failed.get(name)) for name in self.obtained]

    def result(self, name: str, counts: StageCounts | None, failure: str | None) -> SourceResult:
        if name in self.not_ingested:
            return self.not_ingested[name]
        o = self.obtained[name]
        located = self.located[name]
        files, missing = [f.relpath for f in located.files], located.missing
        if failure is not None:
            return SourceResult(name, "failed", failure, files, missing, o.summary())
        verdict = suspicion(default_catalog().get(name), counts) if counts is not None else None
        if verdict is not None:
            message = "; ".join(filter(None, [verdict.message(), o.message]))
            return SourceResult(name, "suspect", message, files, missing, o.summary(), counts, verdict)
        return SourceResult(name, "ok", o.message, files, missing, o.summary(), counts)


def context(params: BuildParams) -> Context:
    return Context(params.build_dir, default_catalog(), params.embedding_cache)


def ingest_one(obtained: Obtained, build_dir: Path, max_chars: int) -> SourceResult:
    """Ingest one obtained source in this process; absent files and errors become its status."""
    intake = Intake.of([obtained])
    params = BuildParams(out_dir=build_dir, max_chars=max_chars)
    [result] = intake.results(run_stages([INGEST], intake.files, params, context(params)))
    return result


def finish(params: BuildParams, results: list[SourceResult], run: PipelineRun) -> dict[str, Any]:
    """Write the manifest for the results and return the build summary."""
    stages = {name: result.counts for name, result in run.results.items()}
    stats = {name: result.stats for name, result in run.results.items() if result.stats}
    path = write_manifest(params.build_dir, params.model_dump(mode="json"),
                          {r.source: r.summary() for r in results}, stages, stats)
    return {"manifest": str(path), "build_dir": str(params.build_dir), "results": results, "stages": stages}


def release(params: BuildParams, summary: dict[str, Any]) -> dict[str, Any]:
    """Publish m3e-hq and m3e-hq-with-score into the build folder (and to the Hub when asked); the summary with the
    published folders (and commit URLs)."""
    kept = {stage: sum(c.kept for c in summary["stages"][stage]) for stage in (DEDUP.name, MINE.name)}
    if not all(kept.values()):
        return {**summary, "published": {"folders": {}, "skipped": f"nothing to publish: {kept[DEDUP.name]} rows "
                                                                   f"left after the filters and dedup, "
                                                                   f"{kept[MINE.name]} after mining"}}
    result = publish(params.build_dir, params.build_dir, params.publish, default_catalog())
    published = {"folders": {"m3e-hq": str(result.m3e_hq.folder), "m3e-hq-with-score": str(result.with_score.folder)}}
    if params.push_to_hub:
        published["hub"] = push_both(result, params.push_to_hub)
    return {**summary, "published": published}


def sources_problem(summary: dict[str, Any]) -> str | None:
    """The build's last line when sources failed or are suspect (the CLI then exits 1), else None: which sources,
    and what was built of the others."""
    results: list[SourceResult] = summary["results"]
    parts = [f"{len(names)} of {len(results)} sources {status}: {', '.join(names)}"
             for status in (SourceStatus.FAILED, SourceStatus.SUSPECT)
             if (names := [r.source for r in results if r.status == status])]
    return "; ".join(parts) + f" (why above); {built_text(summary)}" if parts else None


def built_text(summary: dict[str, Any]) -> str:
    """What the build published: nothing (and why), every source not failed or suspect, or which sources."""
    published = summary["published"]
    if "skipped" in published:
        return f"nothing was built or published: {published['skipped']}"
    built = [c.source for c in summary["stages"][MINE.name] if c.kept]
    others = [r.source for r in summary["results"] if r.status not in (SourceStatus.FAILED, SourceStatus.SUSPECT)]
    if set(others) <= set(built):
        return "the other sources were built"
    return f"{len(built)} of {len(summary['results'])} sources were built and published: {', '.join(built)}"


def push_both(result: PublishResult, repo_id: str) -> dict[str, str]:
    """Upload m3e-hq to `repo_id` and m3e-hq-with-score to `repo_id`-with-score; their commit URLs."""
    return {repo_id: push_to_hub(result.m3e_hq.folder, repo_id),
            f"{repo_id}-with-score": push_to_hub(result.with_score.folder, f"{repo_id}-with-score")}


class SuspectSourcesError(RuntimeError):
    """`require_all` was asked for and some ingested sources failed or are suspect: the build stopped after ingest."""


def require_ingested(params: BuildParams, intake: Intake) -> Callable[[Stage, PipelineRun], None]:
    """A check run after each stage: after ingest, when `require_all`, raise SuspectSourcesError listing every
    source whose ingest failed or that is suspect, with why."""
    def check(stage: Stage, run: PipelineRun) -> None:
        if stage is not INGEST or not params.require_all:
            return
        lacking = [r for r in intake.results(run) if r.status in (SourceStatus.FAILED, SourceStatus.SUSPECT)]
        if lacking:
            lines = [f"  {r.source}: {r.status}: {r.message}" for r in lacking]
            raise SuspectSourcesError(f"{len(lacking)} selected sources did not ingest as their data (require_all): "
                                      "nothing was filtered or published; fix their files, or leave them out with "
                                      "--sources, and run the build again:\n" + "\n".join(lines))

    return check


def build(params: BuildParams, obtained: list[Obtained], executor: Executor) -> dict[str, Any]:
    """Run the stages on the obtained sources with `executor`, write the manifest and publish; the summary, its
    `problem` the line that ends the CLI's output when sources failed or are suspect (`sources_problem`)."""
    intake = Intake.of(obtained)
    run = run_stages(STAGES, intake.files, params, context(params), executor, require_ingested(params, intake))
    summary = release(params, finish(params, intake.results(run), run))
    return {**summary, "problem": sources_problem(summary)}


def build_sources(params: BuildParams) -> dict[str, Any]:
    """The whole build without Prefect, holding the build folder's lock: obtain every selected source, run the
    stages in this process, write the manifest and publish."""
    with build_lock(params.build_dir):
        return build(params, obtain_sources(params), InProcess())


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


@dataclass(frozen=True)
class Stamped(Generic[R]):
    """A stage's result, and the files it wrote as they were when it ran."""

    value: R
    outputs: tuple[Stamp, ...]

    def intact(self) -> bool:
        """Whether the files are still as written: not removed or overwritten since."""
        return all(stamp(Path(s[0])) == s for s in self.outputs)


@dataclass
class StageCode(CachePolicy):
    """Cache-key part: the source of the module that defines the task's stage function, so that a change to any
    of the stage's helpers, not only to the function, runs it again."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        module = inspect.getmodule(inspect.unwrap(task_ctx.task.fn))
        return hash_objects(inspect.getsource(module), raise_on_failure=True)


STAGE_CACHE = INPUTS + StageCode() + InputFiles()


def written(result: Any) -> list[Path]:
    """The files a unit of work wrote: the kept and dropped rows of every source of a StageResult."""
    counts = result.counts if isinstance(result, StageResult) else []
    return [Path(p) for c in counts for p in (c.kept_path, c.dropped_path) if p]


def unit_task(fn: Callable[..., R], name: str) -> Task[..., Stamped[R]]:
    """A cached task running `fn` (a stage function, or its prepare function), its result stamped with the files
    it wrote."""
    @functools.wraps(fn)
    def run(*args: Any) -> Stamped[R]:
        result = fn(*args)
        return Stamped(result, tuple(stamp(p) for p in written(result)))

    return task(run, name=name, cache_policy=STAGE_CACHE, persist_result=True)


STAGE_TASKS = {s.name: unit_task(timed(s), s.name) for s in STAGES}
PREPARE_TASKS = {s.name: unit_task(s.prepare, s.prepare_name) for s in STAGES if s.prepare is not None}


def current(got: Stamped[R], stage: Task[..., Stamped[R]], args: tuple[Any, ...]) -> R:
    """The unit's value, computed again when the files of a cached result are no longer as written."""
    return got.value if got.intact() else stage.with_options(refresh_cache=True)(*args).value


def run_name(stage: Stage, unit: dict[str, Any]) -> str:
    """A unit's task-run name: the stage and, for a unit of one source, the source."""
    return f"{stage.name}-{next(iter(unit))}" if len(unit) == 1 else stage.name


@dataclass
class PrefectTasks:
    """Every unit of work a cached task of the running flow, submitted at once to its task runner; results are kept
    in the build folder, and a cached result whose files were removed or overwritten since is computed again."""

    build_dir: Path

    def map(self, stage: Stage, units: list[dict[str, Any]], params: Any,
            context: Context) -> list[StageResult | Failed]:
        unit_run = STAGE_TASKS[stage.name].with_options(result_storage=self.build_dir / RESULTS_DIR)
        with model_tasks(stage, params):
            futures = [unit_run.with_options(task_run_name=run_name(stage, unit)).submit(unit, params, context)
                       for unit in units]
        return [attempt(stage, unit, lambda f=future, u=unit: current(f.result(), unit_run, (u, params, context)))
                for future, unit in zip(futures, units, strict=True)]

    def prepare(self, stage: Stage, inputs: dict[str, Any], params: Any, context: Context, shards: int) -> None:
        shard_run = PREPARE_TASKS[stage.name].with_options(result_storage=self.build_dir / RESULTS_DIR)
        with model_tasks(stage, params):
            futures = [shard_run.with_options(task_run_name=f"{stage.prepare_name}-{shard}")
                       .submit(inputs, params, context, shard) for shard in range(shards)]
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


def model_tasks(stage: Stage, params: Any) -> AbstractContextManager[Any]:
    """Under the Ray task runner, the tasks of a stage with models (encode shards, mine) submitted in this block ask
    Ray for `gpus_per_task` GPUs each; for other stages or under another runner nothing changes."""
    if stage.device is None:
        return nullcontext()
    try:
        import ray
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError:
        return nullcontext()
    context = FlowRunContext.get()
    if context is None or not isinstance(context.task_runner, RayTaskRunner):
        return nullcontext()
    gpus = gpus_per_task(stage.device(params), ray.cluster_resources().get("GPU", 0))
    return remote_options(num_gpus=gpus) if gpus else nullcontext()


@flow(name=FLOW_NAME, task_runner=task_runner("thread"), log_prints=True)
def build_m3e_hq(params: BuildParams | None = None) -> dict[str, Any]:
    """Build m3e-hq and m3e-hq-with-score as `params` says (None: the defaults, every source downloaded and built
    into data/build/full/): obtain each selected source (download, cache, manual folder or samples), ingest each one,
    filter each, dedup them together, mine negatives and teacher scores, write the manifest, publish both datasets
    (only commercial-use sources with publish.commercial_only) and the counts as Prefect artifacts. A deployment run
    takes `params` as JSON, checked against BuildParams' schema when the run is created. The run holds the build
    folder's lock (BuildFolderBusy when another process builds there)."""
    params = BuildParams() if params is None else params
    with build_lock(params.build_dir):
        summary = build(params, obtain_mapped(params), PrefectTasks(params.build_dir))
    publish_artifacts(summary)
    return summary
