"""The build-m3e-hq flow on a real local Ray instance (prefect-ray) against the thread runner, the encode shards
that fill the embedding cache before mining, and the task runner's errors."""

import json
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from prefect.context import serialize_context
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from prefect_ray import RayTaskRunner
from prefect_ray.context import RemoteOptionsContext
from prefect_server import STARTUP_SECONDS
from typer.testing import CliRunner

from m3e_hq.flows.cli import app, one_api_server
from m3e_hq.flows.core.stage import StageResult
from m3e_hq.flows.pipeline.build import (
    LOCAL_RAY,
    TaskRunnerError,
    build_m3e_hq,
    gpus_per_task,
    task_runner,
)
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.stages.mine import MineParams, encode_jobs, encode_shard, mine_sources

STAGES = ("ingest", "filter", "dedup", "mine", "m3e-hq", "m3e-hq-with-score")
# Every adapter and native format (Parquet, JSON Lines, gzip, JSON, GBK JSON, CSV, SQuAD, NL2SQL), the text
# transforms, an evaluation split and a filtered pair, in less time than all 29 sources take on Ray.
SOURCES = ["cmrc2018", "alpaca_gpt4", "hc3_chinese", "lcqmc", "wiki_atomic_edit", "csl", "miracl-corpus", "lawzhidao",
           "CINLID", "Zhuiyi-NL2SQL", "SimCLUE", "Chinese-SQuAD"]


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=STARTUP_SECONDS):
        yield


def parquet_files(folder: Path) -> dict[str, Path]:
    """Every Parquet file under `folder`, by its path relative to it."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*.parquet"))}


def encode_stats(build: Path) -> dict[str, int]:
    return json.loads((build / "manifest.json").read_text(encoding="utf-8"))["stages"]["mine"]["stats"]["encode"]


def test_ray_build_equals_the_thread_build_and_mines_from_the_shards_cache(prefect_server, tmp_path, tiny_encoder,
                                                                         monkeypatch):
    # The local instance declares two GPUs it does not have: Ray then schedules the tasks that ask for one, whose
    # torch (CPU build) still encodes on the CPU.
    monkeypatch.setitem(LOCAL_RAY, "num_gpus", 2)
    asked: dict[str, list[dict]] = {}
    submit = RayTaskRunner.submit

    def recording(self, task, *args, **kwargs):
        asked.setdefault(task.name, []).append(dict(RemoteOptionsContext.get().current_remote_options))
        return submit(self, task, *args, **kwargs)

    monkeypatch.setattr(RayTaskRunner, "submit", recording)
    thread, ray = tmp_path / "thread", tmp_path / "ray"
    mine = MineParams(encoder=str(tiny_encoder), encode_shards=2)
    build_m3e_hq(BuildParams(samples=True, sources=SOURCES, out_dir=thread, cache_dir=tmp_path / "thread-cache",
                             mine=mine))
    build_m3e_hq.with_options(task_runner=task_runner("ray"))(BuildParams(
        samples=True, sources=SOURCES, out_dir=ray, cache_dir=tmp_path / "ray-cache", mine=mine))

    for stage in STAGES:
        expected, got = parquet_files(thread / stage), parquet_files(ray / stage)
        assert expected and list(got) == list(expected), stage
        assert [name for name in expected if not pq.read_table(got[name]).equals(pq.read_table(expected[name]))] == []
    assert sum(pq.read_metadata(path).num_rows for path in (ray / "mine").glob("*.parquet")) > 0
    encoded = encode_stats(ray)
    assert encoded == encode_stats(thread)
    assert encoded["queries_cached"] == encoded["queries"] > 0 and encoded["passages_cached"] == encoded["passages"]
    # One mine task per filtered source (pool "source"), each asking for a GPU.
    assert asked["encode"] == [{"num_gpus": 1}] * 2 and asked["mine"] == [{"num_gpus": 1}] * len(asked["filter"])
    cpu_tasks = [options for name, submitted in asked.items() if name not in ("encode", "mine") for options in submitted]
    assert len(asked["ingest"]) == len(SOURCES) and set(asked) >= {"obtain", "dedup", "filter"}
    assert all(options == {} for options in cpu_tasks)


def test_the_cli_gives_ray_workers_its_one_prefect_server(prefect_server):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # as in a shell without PREFECT_API_URL
        with one_api_server("thread"):
            assert PREFECT_API_URL.value() is None  # Prefect starts its temporary server as it always does
        with one_api_server("ray"):
            url = PREFECT_API_URL.value()
            assert url == SubprocessASGIServer().api_url and httpx.get(f"{url}/health").status_code == 200
            # What prefect-ray sends to every task, so that no worker starts a server of its own.
            assert serialize_context()["settings_context"]["settings"]["api"]["url"] == url
    with temporary_settings({PREFECT_API_URL: "http://prefect.example:4200/api"}), one_api_server("ray"):
        assert PREFECT_API_URL.value() == "http://prefect.example:4200/api"


@pytest.mark.parametrize("pool", ["source", "all"])
def test_encode_shards_fill_the_cache_that_mining_reads(samples_build, catalog, tiny_encoder, tmp_path, pool):
    inputs = StageResult(samples_build["stages"]["dedup"]).outputs
    params = MineParams(encoder=str(tiny_encoder), encode_shards=3, pool=pool, query_prompt="查询：")
    shards = [encode_shard(inputs, params, catalog, tmp_path / "cache", shard) for shard in range(3)]
    assert all(s["texts"] == s["encoded"] > 0 and s["cached"] == 0 for s in shards)
    mined = mine_sources(inputs, tmp_path / "out", params, catalog, tmp_path / "cache")
    encoded = mined.stats["encode"]
    assert encoded["queries_cached"] == encoded["queries"] and encoded["passages_cached"] == encoded["passages"]
    # Mining counts a text once per pool group; the shards hold each distinct text once, in exactly one shard.
    assert sum(s["texts"] for s in shards) <= encoded["queries"] + encoded["passages"]
    jobs = [set(encode_jobs(inputs, params, catalog, shard)) for shard in range(3)]
    assert sum(map(len, jobs)) == len(set.union(*jobs)) == sum(s["texts"] for s in shards)
    again = encode_shard(inputs, params, catalog, tmp_path / "cache", 0)
    assert again == {"texts": shards[0]["texts"], "encoded": 0, "cached": shards[0]["texts"]}


def test_task_runner_errors_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(TaskRunnerError, match="unknown task runner 'dask': choose thread or ray"):
        task_runner("dask")
    with pytest.raises(TaskRunnerError, match="needs the ray task runner"):
        task_runner("thread", "ray://head:10001")
    assert task_runner("ray", "ray://head:10001").init_kwargs == {"namespace": "prefect"}
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if prefect-ray were not installed
    with pytest.raises(TaskRunnerError, match='pip install "m3e-hq\\[ray\\]"'):
        task_runner("ray")
    result = CliRunner().invoke(app, ["build", "--samples", "--out", str(tmp_path), "--task-runner", "ray"])
    assert result.exit_code == 2 and 'pip install "m3e-hq[ray]"' in result.output
    assert not (tmp_path / "manifest.json").exists()
    bad = CliRunner().invoke(app, ["build", "--samples", "--task-runner", "dask"])
    assert bad.exit_code == 2 and "Invalid value for '--task-runner'" in bad.output and "'dask'" in bad.output


@pytest.mark.parametrize(("device", "cluster_gpus", "gpus"), [("cuda", 2, 1), (None, 2, 1), (None, 0, 0),
                                                              ("cpu", 2, 0), ("cpu", 0, 0)])
def test_model_tasks_ask_ray_for_a_gpu_when_they_run_on_cuda(device, cluster_gpus, gpus):
    assert gpus_per_task(device, cluster_gpus) == gpus


def test_cuda_on_a_ray_cluster_without_gpus_fails_instead_of_waiting():
    with pytest.raises(TaskRunnerError, match="device 'cuda' requested but the Ray cluster has no GPU"):
        gpus_per_task("cuda", 0)
