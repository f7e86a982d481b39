"""Obtaining the selected sources: the plain functions, and the `download-m3e-hq-sources` Prefect flow.

Each source is obtained on its own (downloaded into the cache, found in the cache or the manual folder, or read
from the samples / a local folder); one that cannot be had is reported with what to do and does not stop the others,
unless `require_all` asks for every source (sources the catalog marks unavailable excepted).
"""

from prefect import flow, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows.params import BuildParams
from sources.catalog import default_catalog
from sources.fetch import Obtained, fetch_source

DOWNLOAD_FLOW_NAME = "download-m3e-hq-sources"


class MissingSourcesError(RuntimeError):
    """`require_all` was asked for and some selected sources could not be obtained."""


def obtain_one(source_name: str, params: BuildParams) -> Obtained:
    """The source's folder: in the samples or the local folder, or downloaded / cached / hand-placed."""
    if params.input_dir is not None:
        return Obtained(source_name, "present", params.input_dir / source_name)
    return fetch_source(default_catalog().get(source_name), params.cache_root, params.manual_root)


def checked(params: BuildParams, obtained: list[Obtained]) -> list[Obtained]:
    """`obtained`, after raising MissingSourcesError, when `require_all`, listing every source that is absent,
    incomplete or failed, with what to do."""
    lacking = [o for o in obtained if o.status != "unavailable" and (not o.ok or o.missing)]
    if params.require_all and lacking:
        lines = [f"  {o.source}: {o.status}: {o.message}" for o in lacking]
        raise MissingSourcesError(f"{len(lacking)} selected sources were not obtained (require_all):\n"
                                  + "\n".join(lines))
    return obtained


def obtain_sources(params: BuildParams) -> list[Obtained]:
    """Obtain every selected source in turn (no Prefect); check them all when `require_all`."""
    return checked(params, [obtain_one(s.name, params) for s in default_catalog().select(params.sources)])


obtain_task = task(obtain_one, name="obtain", task_run_name="obtain-{source_name}")


def obtain_mapped(params: BuildParams) -> list[Obtained]:
    """Inside a flow: one obtain task per selected source, run concurrently; checked when `require_all`."""
    names = [s.name for s in default_catalog().select(params.sources)]
    return checked(params, [f.result() for f in obtain_task.map(names, params=unmapped(params))])


@flow(name=DOWNLOAD_FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def download_m3e_hq_sources(sources: list[str] | None = None, cache_dir: str | None = None,
                            manual_dir: str | None = None, require_all: bool = False) -> list[Obtained]:
    """Download every selected source into the cache (and check the manual folder) without building."""
    params = BuildParams(sources=sources or [], cache_dir=cache_dir, manual_dir=manual_dir, require_all=require_all)
    return obtain_mapped(params)
