"""The build-m3e-hq deployment for real: a Prefect server, `m3e-hq serve` and `prefect deployment run` in
subprocesses. Against the same server, in this process: a failed build resumed at the failed stage, stages run again
when their input files or outputs change, retries of transient download failures, the artifacts, and serving without
a server.

Everything Prefect writes goes to temporary folders (PREFECT_HOME for the subprocesses, the result storage here)."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_server import BIN, Server, free_port, stop, wait_until
from typer.testing import CliRunner

from m3e_hq.flows.cli import app
from m3e_hq.flows.pipeline import download
from m3e_hq.flows.pipeline.artifacts import artifact_key, published_lines, slug, summary_markdown
from m3e_hq.flows.pipeline.build import RESULTS_DIR, build_m3e_hq
from m3e_hq.flows.pipeline.deploy import RUN_EXAMPLE, ServeError, serve
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.stages import filters, ingest
from m3e_hq.flows.stages.mine import MineParams
from m3e_hq.sources.fetch import Obtained
from m3e_hq.sources.layout import SAMPLES_DIR

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = "build-m3e-hq/build-m3e-hq"


class Served(NamedTuple):
    process: subprocess.Popen
    log: Path  # its stdout and stderr


@pytest.fixture(scope="module")
def served(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`m3e-hq serve` in a subprocess, once it polls for runs (the deployment is then ready)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(BIN / "m3e-hq"), "serve"], cwd=ROOT, env=server.env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: deployment_ready(server.url), 120, "the deployment was not served", process, log)
        yield Served(process, log)
    finally:
        stop(process)
        print(log.read_text(errors="replace")[-3000:])


def deployment_ready(url: str) -> bool:
    """Whether the deployment exists and a runner has polled for its runs."""
    answer = httpx.get(f"{url}/deployments/name/{DEPLOYMENT}", timeout=5)
    return answer.status_code == 200 and answer.json()["status"] == "READY"


def deployment_run(server: Server, *params: str) -> subprocess.CompletedProcess:
    """`prefect deployment run` with these `-p KEY=VALUE` parameters."""
    args = [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, *[a for p in params for a in ("-p", p)],
            "--watch", "--watch-timeout", "600"]
    return subprocess.run(args, env=server.env, capture_output=True, text=True, timeout=660, check=False)


# --- the deployment, end to end -----------------------------------------------------------------------------------


def run_id(done: subprocess.CompletedProcess) -> UUID:
    return UUID(re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1))


def test_served_deployment_builds_the_samples(server, served, tmp_path):
    out = tmp_path / "out"
    params = {"samples": True, "sources": ["ocnli", "lcqmc"], "out_dir": str(out), "publish": {"plots": False}}
    done = deployment_run(server, f"params={json.dumps(params)}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Flow run finished successfully in 'Completed'" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert BuildParams.model_validate(manifest["params"]) == BuildParams.model_validate(params)
    assert list(manifest["stages"]) == ["ingest", "filter", "dedup", "mine"]
    assert set(manifest["stages"]["mine"]["sources"]) == {"ocnli", "lcqmc"}
    assert manifest["stages"]["mine"]["totals"]["kept"] > 0
    for folder in ("m3e-hq", "m3e-hq-with-score"):  # the published datasets
        assert (out / folder / "SHA256SUMS").is_file() and any((out / folder).rglob("*.parquet"))
    assert any((out / RESULTS_DIR).iterdir())  # the stages' cached results live in the build folder
    with temporary_settings({PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id(done)])))
    assert any("Finished in state Completed" in log.message for log in logs)  # run logs reach the API


def test_invalid_parameters_fail_when_the_run_is_created(server, served):
    for params, message in [
        ('params={"max_chars": 0}',
         "Validation failed for field 'params.max_chars'. Failure reason: 0 is less than the minimum of 1"),
        ('params={"publish": {"commercial_only": "yes"}}',  # JSON: true or false
         ("Validation failed for field 'params.publish.commercial_only'. Failure reason: 'yes' is not of type "
          "'boolean'")),
        ('params={"dedup": {"nearr": false}}', "Additional properties are not allowed ('nearr' was unexpected)"),
        ("samples=true", "The following parameters were specified but not found on the deployment: 'samples'"),
        ('params={"sources": ["ocnli", "nosuch"]}',  # names in any case and aliases pass: the schema's pattern
         "Validation failed for field 'params.sources[1]'. Failure reason: 'nosuch' does not match"),
    ]:
        done = deployment_run(server, params)
        assert done.returncode == 1, done.stdout + done.stderr
        assert message in " ".join((done.stdout + done.stderr).split()), done.stdout + done.stderr


def test_sigterm_stops_serve_at_once_and_cleanly(served):
    # After the tests that use `served`. Prefect's own handler warned "coroutine 'Runner.astop' was never awaited".
    os.kill(served.process.pid, signal.SIGTERM)
    start = time.monotonic()
    assert served.process.wait(timeout=60) == 0
    output = served.log.read_text(errors="replace")
    assert time.monotonic() - start < 15, output  # about 1.5 s on 2 busy cores
    assert RUN_EXAMPLE in output and "never awaited" not in output and "Traceback" not in output, output


def test_prefect_yaml_deploys_to_a_process_pool_that_a_worker_runs(server, served, tmp_path):
    stop(served.process)  # it would race the worker for the run (so this test comes after the others that need it)
    env = {**server.env, "PWD": str(ROOT)}
    prefect = str(BIN / "prefect")
    for args in (["work-pool", "create", "local-process", "--type", "process"],
                 ["--no-prompt", "deploy", "--name", "build-m3e-hq"]):
        done = subprocess.run([prefect, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    log = tmp_path / "worker.log"
    with log.open("w") as out:  # started elsewhere: the pull step takes it to the repository
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "local-process"], cwd=tmp_path,
                                  env=server.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        params = {"samples": True, "sources": ["ocnli"], "out_dir": str(tmp_path)}
        done = deployment_run(server, f"params={json.dumps(params)}")
        assert done.returncode == 0, done.stdout + done.stderr + log.read_text(errors="replace")
    finally:
        stop(worker)
    with temporary_settings({PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id(done)).work_pool_name == "local-process"
    assert (tmp_path / "manifest.json").exists()


def test_serve_needs_a_reachable_prefect_server():
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ServeError, match="PREFECT_API_URL is not set.*prefect server start.*"
                                             "PREFECT_API_URL=http://127.0.0.1:4200/api"):
            serve()
        result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2 and "prefect server start" in result.output
    unreachable = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: unreachable}), pytest.raises(ServeError, match="does not answer"):
        serve()


# --- caching and resuming, in this process -------------------------------------------------------------------------


@pytest.fixture
def ingest_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources whose files are ingested (rather than taken from the cache), in order."""
    calls: list[str] = []
    original = ingest.candidates

    def counting(source, files):
        calls.append(source.name)
        return original(source, files)

    monkeypatch.setattr(ingest, "candidates", counting)
    return calls


def build(out: Path, tiny_encoder: Path, raw_dir: Path | None = None, **params) -> dict:
    where = {"raw_dir": raw_dir} if raw_dir else {"samples": True}
    return build_m3e_hq(BuildParams(**where, sources=["ocnli", "lcqmc"], out_dir=out, cache_dir=out.parent / "cache",
                                    mine=MineParams(encoder=str(tiny_encoder)), **params))


def test_a_failed_build_resumes_at_the_failed_stage(prefect_api, tmp_path, monkeypatch, ingest_calls, tiny_encoder):
    out = tmp_path / "out"
    original = filters.reasons
    failures = []

    def fails_once(table, params):
        if not failures:
            failures.append(1)
            raise RuntimeError("filter exploded")
        return original(table, params)

    monkeypatch.setattr(filters, "reasons", fails_once)
    with pytest.raises(RuntimeError, match="filter exploded"):
        build(out, tiny_encoder)
    assert sorted(ingest_calls) == ["lcqmc", "ocnli"] and not (out / "manifest.json").exists()

    ingest_calls.clear()
    summary = build(out, tiny_encoder)
    assert ingest_calls == []  # ingest (and dedup) came from the cache
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["stages"]["mine"]["sources"]) == {"ocnli", "lcqmc"}
    assert [r.status for r in summary["results"]] == ["ok", "ok"]


def test_a_changed_input_file_or_a_changed_output_runs_the_stage_again(prefect_api, tmp_path, ingest_calls,
                                                                       tiny_encoder):
    raw = tmp_path / "raw"
    for name in ("ocnli", "lcqmc"):
        shutil.copytree(SAMPLES_DIR / name, raw / name)
    out = tmp_path / "out"
    first = build(out, tiny_encoder, raw)
    assert sorted(ingest_calls) == ["lcqmc", "ocnli"]

    ingest_calls.clear()
    changed = next(p for p in (raw / "ocnli").rglob("*") if p.is_file())
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 1_000_000_000))
    build(out, tiny_encoder, raw)
    assert ingest_calls == ["ocnli"]  # lcqmc's files did not change

    ingest_calls.clear()
    (out / "ingest" / "lcqmc.parquet").unlink()
    again = build(out, tiny_encoder, raw)
    assert ingest_calls == ["lcqmc"]  # its cached result no longer matched the files it wrote
    assert (out / "ingest" / "lcqmc.parquet").exists()
    kept = {stage: [c.kept for c in counts] for stage, counts in again["stages"].items()}
    assert kept == {stage: [c.kept for c in counts] for stage, counts in first["stages"].items()}

    ingest_calls.clear()
    build(out, tiny_encoder, raw, max_chars=50)
    assert sorted(ingest_calls) == ["lcqmc", "ocnli"]  # another parameter


def test_transient_download_failures_are_retried_and_permanent_ones_reported(prefect_api, tmp_path, monkeypatch,
                                                                              tiny_encoder):
    answers = {"ocnli": [("TransientDownloadError: GET https://x/a.zip failed after 5 attempts: HTTP 503", True)],
               "lcqmc": [("DownloadError: GET https://x/b.zip failed with HTTP 404 Not Found", False)]}
    calls: list[str] = []

    def fetch(source, cache_root, manual_root):
        calls.append(source.name)
        if answers[source.name]:
            message, transient = answers[source.name].pop()
            return Obtained(source.name, "failed", None, message, transient=transient)
        return Obtained(source.name, "cached", SAMPLES_DIR / source.name)

    monkeypatch.setattr(download, "fetch_source", fetch)
    monkeypatch.setattr(download, "obtain_task", download.obtain_task.with_options(retry_delay_seconds=0))
    summary = build_m3e_hq(BuildParams(sources=["ocnli", "lcqmc"], out_dir=tmp_path / "out", cache_dir=tmp_path,
                                       mine=MineParams(encoder=str(tiny_encoder))))
    status = {r.source: r.status for r in summary["results"]}
    assert status == {"ocnli": "ok", "lcqmc": "failed"}
    assert sorted(calls) == ["lcqmc", "ocnli", "ocnli"]


def test_only_transient_download_failures_are_retried():
    assert download.transient(Obtained("x", "failed", None, "TransientHubError: a/b@main: HTTP 503", transient=True))
    assert not download.transient(Obtained("x", "failed", None, "DownloadError: HTTP 404 Not Found"))
    assert not download.transient(Obtained("x", "skipped", None, "download by hand", transient=True))


# --- artifacts -----------------------------------------------------------------------------------------------------


def test_artifact_keys_are_slugs_of_the_build_folder_and_the_stage_unique_per_folder():
    assert slug("Chinese-SQuAD") == "chinese-squad" and slug("hc3__chinese.v2") == "hc3-chinese-v2"
    digest = hashlib.sha256(b"/x/My_Build").hexdigest()[:8]
    assert artifact_key("/x/My_Build", "ingest") == f"m3e-hq-my-build-{digest}-ingest"
    assert artifact_key("/a/samples", "summary") != artifact_key("/b/samples", "summary")
    assert re.fullmatch(r"m3e-hq-samples-[0-9a-f]{8}-summary", artifact_key("/a/samples", "summary"))


def test_the_build_publishes_a_table_per_stage_and_a_summary(prefect_api, tmp_path, tiny_encoder):
    out = tmp_path / "My_Build"
    summary = build(out, tiny_encoder)
    prefix = artifact_key(str(out), "")
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts() if a.key and a.key.startswith(prefix)}
    assert set(artifacts) == {artifact_key(str(out), s) for s in ("ingest", "filter", "dedup", "mine", "summary")}
    table = json.loads(artifacts[artifact_key(str(out), "ingest")].data)
    ocnli = next(row for row in table if row["source"] == "ocnli")
    counts = next(c for c in summary["stages"]["ingest"] if c.source == "ocnli")
    assert (ocnli["read"], ocnli["kept"], ocnli["label_filtered"]) == (counts.read, counts.kept, 40)
    assert all(set(row) == set(table[0]) for row in table)
    markdown = artifacts[artifact_key(str(out), "summary")].data
    assert "| filter |" in markdown and "| ocnli | ok |" in markdown
    assert f"## Published\n\n- m3e-hq: `{out / 'm3e-hq'}`\n- m3e-hq-with-score: `{out / 'm3e-hq-with-score'}`" in markdown


def test_the_summary_says_what_was_not_published_or_uploaded_and_why():
    summary = {"build_dir": "/b", "manifest": "/b/manifest.json", "stages": {}, "results": [],
               "published": {"folders": {"m3e-hq": "/b/m3e-hq"}, "push_failed": "uploading /b/m3e-hq to o/n failed: "
                                                                                 "HTTP 401 | no token"},
               "problem": "1 of 2 sources failed: BQ (why above)"}
    lines = published_lines(summary)
    assert lines == ["- m3e-hq: `/b/m3e-hq`",
                     "- **upload failed**: uploading /b/m3e-hq to o/n failed: HTTP 401 \\| no token",
                     "- **problem**: 1 of 2 sources failed: BQ (why above)"]
    nothing = {**summary, "published": {"folders": {}, "skipped": "nothing to publish: 0 rows"}, "problem": None}
    assert published_lines(nothing) == ["- not published: nothing to publish: 0 rows"]
    assert summary_markdown(nothing).endswith("## Published\n\n- not published: nothing to publish: 0 rows\n")
