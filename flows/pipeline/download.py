"""Obtaining the selected sources: the plain functions, and the `download-m3e-hq-sources` Prefect flow.

Each source is obtained on its own (downloaded into the cache, found in the cache or the manual folder, or read
from the samples / a local folder); one that cannot be had is reported with what to do and does not stop the others,
unless `require_all` asks for every source (sources the catalog marks unavailable excepted).

Inside a flow, a download that failed for a passing reason (the downloader's own quick retries ran out on HTTP 408,
429 or 5xx answers or network errors: it raised a TransientError, and `Obtained.transient` says so) is retried by
Prefect after 10, 30 and 90 seconds; a failure that retrying cannot fix (HTTP 404, a checksum mismatch, a missing
manual source) is reported at once.
"""

from prefect import Task, flow, task, unmapped
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from m3e_hq import progress
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.schemas import ObtainStatus
from m3e_hq.sources.catalog import default_catalog
from m3e_hq.sources.fetch import Obtained, check_folder, fetch_source

DOWNLOAD_FLOW_NAME = "download-m3e-hq-sources"
RETRY_DELAYS = [10, 30, 90]


class MissingSourcesError(RuntimeError):
    """`require_all` was asked for and some selected sources could not be obtained."""


class TransientFetchError(RuntimeError):
    """A download failed for a reason that may pass: raised inside the obtain task so that Prefect retries it."""


def obtain_one(source_name: str, params: BuildParams) -> Obtained:
    """The source's folder: in the samples, or in the local folder as checked like the manual folder (absent or
    not-the-data files, companions, files at any depth), or downloaded / cached / hand-placed."""
    source = default_catalog().get(source_name)
    if params.raw_dir is not None:
        return check_folder(source, params.raw_dir / source_name)
    if params.input_dir is not None:  # the shipped samples, which hold some splits of some sources by design
        return Obtained(source_name, ObtainStatus.PRESENT, params.input_dir / source_name)
    return fetch_source(source, params.cache_root, params.manual_root)


def checked(params: BuildParams, obtained: list[Obtained]) -> list[Obtained]:
    """`obtained`, after raising MissingSourcesError, when `require_all`, listing every source that is absent,
    incomplete or failed, with what to do (a --raw-dir folder without any of its files as `missing`, as the build
    reports it)."""
    catalog = default_catalog()
    lacking = [o for o in obtained if catalog.get(o.source).available and (not o.ok or o.missing)]
    if params.require_all and lacking:
        lines = [f"  {o.source}: {'missing' if o.ok and not o.files else o.status}: {o.message}" for o in lacking]
        raise MissingSourcesError(f"{len(lacking)} selected sources were not obtained (require_all):\n"
                                  + "\n".join(lines))
    return obtained


def obtain_sources(params: BuildParams) -> list[Obtained]:
    """Obtain every selected source in turn (no Prefect); check them all when `require_all`."""
    return checked(params, [obtain_one(s.name, params) for s in default_catalog().select(params.sources)])


def transient(obtained: Obtained) -> bool:
    """Whether the source failed to download for a reason that may pass (server error, rate limit, network)."""
    return obtained.status == ObtainStatus.FAILED and obtained.transient


OBTAIN = "obtain"  # the obtain task's name, and its stage's on the progress bars


def obtain_retrying(source_name: str, params: BuildParams) -> Obtained:
    """`obtain_one` for the obtain task: a transient download failure raises, so that Prefect retries it, until the
    last attempt, which reports it as failed like any other failure."""
    with progress.unit(OBTAIN, [source_name]):  # an attempt that raises is not counted on the bar
        obtained = obtain_one(source_name, params)
        context = TaskRunContext.get()
        if context is not None and transient(obtained) and context.task_run.run_count <= context.task.retries:
            raise TransientFetchError(f"{source_name}: {obtained.message}")
    return obtained


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect retries only transient download failures: any other error would fail the same way again."""
    return isinstance(state.result(raise_on_failure=False), TransientFetchError)


obtain_task = task(obtain_retrying, name=OBTAIN, task_run_name="obtain-{source_name}", retries=len(RETRY_DELAYS),
                   retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient)


def obtain_mapped(params: BuildParams) -> list[Obtained]:
    """Inside a flow: one obtain task per selected source, run concurrently; checked when `require_all`."""
    names = [s.name for s in default_catalog().select(params.sources)]
    with progress.stage(OBTAIN, len(names)):
        obtained = [f.result() for f in obtain_task.map(names, params=unmapped(params))]
    return checked(params, obtained)


@flow(name=DOWNLOAD_FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def download_m3e_hq_sources(sources: list[str] | None = None, cache_dir: str | None = None,
                            manual_dir: str | None = None, require_all: bool = False) -> list[Obtained]:
    """Download every selected source into the cache (and check the manual folder) without building."""
    params = BuildParams(sources=sources or [], cache_dir=cache_dir, manual_dir=manual_dir, require_all=require_all)
    return obtain_mapped(params)
