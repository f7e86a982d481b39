"""Obtaining sources for real, offline: Hub downloads from a local stand-in (HF_ENDPOINT), HTTP downloads from a
local server, the cache, and the manual folder; then the same ingest as the shipped samples."""

import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import EXPECTED_DIR, fake_commit
from prefect_server import BIN
from pytest_httpserver import HTTPServer
from test_download_http import in_sequence, serve_ranges
from typer.testing import CliRunner
from werkzeug import Request, Response

from m3e_hq.flows.cli import app
from m3e_hq.flows.pipeline import download
from m3e_hq.flows.pipeline.build import build_sources, ingest_one
from m3e_hq.flows.pipeline.download import MissingSourcesError, download_m3e_hq_sources, obtain_sources
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.schemas import CacheState, ObtainStatus
from m3e_hq.sources import cache, fetch
from m3e_hq.sources.catalog import HttpFile, HttpObtain, HubObtain, Source, default_catalog
from m3e_hq.sources.download_http import DownloadError, TransientDownloadError, download_file, file_sha256
from m3e_hq.sources.download_hub import HubError, TransientHubError, fetch_hub
from m3e_hq.sources.errors import TransientError
from m3e_hq.sources.fetch import Obtained, fetch_source, source_status
from m3e_hq.sources.layout import SAMPLES_DIR

ROOT = Path(__file__).resolve().parent.parent


def hub_names(catalog) -> list[str]:
    return [s.name for s in catalog.sources if isinstance(s.obtain, HubObtain)]


def expected(name: str) -> dict:
    return json.loads((EXPECTED_DIR / f"{name}.json").read_text(encoding="utf-8"))


def sample_files(name: str) -> dict[str, int]:
    folder = SAMPLES_DIR / name
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


# --- Hub ------------------------------------------------------------------------------------------------------------


def test_hub_source_is_downloaded_at_the_pinned_revision_with_only_its_data_files(mock_hub, tmp_path, catalog):
    source = catalog.get("cmrc2018")
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "downloaded", got.message
    assert got.revision == source.obtain.revision
    assert got.files == sample_files("cmrc2018")
    folder = cache.source_folder(tmp_path / "cache", "cmrc2018")
    assert got.folder == folder
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert on_disk == set(sample_files("cmrc2018"))  # no loading script, no README
    assert not [r for r in mock_hub.requests if r.endswith((".py", "README.md"))]
    assert all(source.obtain.revision in r for r in mock_hub.requests if "/resolve/" in r)
    record = cache.read_record(tmp_path / "cache", "cmrc2018")
    assert record["status"] == "cached" and record["revision"] == source.obtain.revision


def test_unpinned_ref_is_resolved_to_a_commit_which_is_recorded(mock_hub, tmp_path, catalog):
    source = catalog.get("BQ")
    assert source.obtain.revision is None and source.obtain.ref == "refs/convert/parquet"
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    commit = fake_commit("shibing624/nli_zh", "refs/convert/parquet")
    assert got.status == "downloaded" and got.revision == commit
    assert f"resolved to {commit}; pin it" in got.message
    assert "GET /api/datasets/shibing624/nli_zh/revision/refs/convert/parquet" in mock_hub.requests
    assert not any("LCQMC" in r for r in mock_hub.requests if "/resolve/" in r)  # same repo, other config


def test_zhihu_kol_is_read_at_its_pinned_commit_from_the_five_shard_set_only(mock_hub, tmp_path, catalog):
    source = catalog.get("zhihu_kol")
    assert source.obtain.revision == "f66a447c8bcc75cc0d393ba629cd8b70444ee774"
    pinned = mock_hub.repos["wangrui6/Zhihu-KOL"].commits[source.obtain.revision]
    shard = next((pinned / "data").glob("train-*-of-00005-*.parquet"))
    old_set = pinned / "data" / "train-00000-of-00002-0f1e2d3c4b5a6978.parquet"  # an earlier 2-shard upload
    old_set.write_bytes(shard.read_bytes())
    newer = tmp_path / "newer"
    (newer / "data").mkdir(parents=True)
    (newer / "data" / "train-00000-of-00001-ffffffffffffffff.parquet").write_bytes(shard.read_bytes())
    mock_hub.add("wangrui6/Zhihu-KOL", "c" * 40, newer, ["main"])  # main moved on: the pin still holds
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "downloaded" and got.message is None  # pinned: no "pin it" note
    assert got.revision == source.obtain.revision and list(got.files) == [f"data/{shard.name}"]
    assert not [r for r in mock_hub.requests if "of-00002" in r or "c" * 40 in r]
    raw = tmp_path / "raw" / "zhihu_kol" / "data"  # a checkout holding both sets, read with --raw-dir
    raw.mkdir(parents=True)
    for path in (shard, old_set):
        (raw / path.name).write_bytes(path.read_bytes())
    result = ingest_one(Obtained("zhihu_kol", ObtainStatus.PRESENT, raw.parent), tmp_path / "out", 100_000)
    assert result.files == [f"data/{shard.name}"] and result.counts.read == expected("zhihu_kol")["read"]


def test_every_hub_source_downloads_and_ingests_like_its_sample(mock_hub, tmp_path, catalog):
    names = hub_names(catalog)
    assert len(names) == 18
    params = BuildParams(sources=names, cache_dir=tmp_path / "cache", manual_dir=tmp_path / "manual",
                         out_dir=tmp_path / "out")
    summary = build_sources(params)
    manifest = json.loads(Path(summary["manifest"]).read_text(encoding="utf-8"))
    for result in summary["results"]:
        want = expected(result.source)
        assert result.status == "ok", (result.source, result.message)
        assert (result.counts.read, result.counts.kept, result.counts.dropped) == (
            want["read"], want["kept"], want["dropped"]), result.source
        obtain = catalog.get(result.source).obtain
        used = manifest["sources"][result.source]["obtained"]["revision"]
        assert used == (obtain.revision or fake_commit(obtain.repo, obtain.ref))


def test_a_second_run_uses_the_cache_without_any_request(mock_hub, tmp_path, catalog):
    source = catalog.get("ocnli")
    first = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    mock_hub.requests.clear()
    second = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert (first.status, second.status) == ("downloaded", "cached")
    assert second.files == first.files and second.revision == first.revision
    assert mock_hub.requests == []


def test_a_damaged_cache_file_is_not_taken_as_complete(mock_hub, tmp_path, catalog):
    source = catalog.get("ocnli")
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    damaged = got.folder / next(iter(got.files))
    damaged.write_bytes(damaged.read_bytes()[:100])
    status = source_status(source, tmp_path / "cache", tmp_path / "manual")
    assert status.status == "not downloaded" and "recorded bytes differ" in status.message
    again = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert again.status == "downloaded" and again.files == got.files
    assert damaged.stat().st_size == got.files[damaged.relative_to(got.folder).as_posix()]


def test_a_new_revision_in_the_catalog_replaces_the_cached_files(mock_hub, tmp_path, catalog):
    source = catalog.get("webqa")
    fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    new_commit = "a" * 40
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "train.json").write_bytes((SAMPLES_DIR / "webqa" / "train.json").read_bytes())
    mock_hub.add(source.obtain.repo, new_commit, newer, [])
    moved = source.model_copy(update={"obtain": source.obtain.model_copy(update={"revision": new_commit})})
    got = fetch_source(moved, tmp_path / "cache", tmp_path / "manual")
    # the new commit lacks dev.json and test.json: the old copies must not linger and be read as that revision's
    assert got.status == "failed" and "has no files matching dev.json, test.json" in got.message
    assert not (cache.source_folder(tmp_path / "cache", "webqa") / "dev.json").exists()
    assert source_status(moved, tmp_path / "cache", tmp_path / "manual").status == "failed"


def test_a_transient_hub_error_is_retried(mock_hub, tmp_path, catalog):
    source = catalog.get("csl")
    path = f"/datasets/neuclir/csl/resolve/{fake_commit('neuclir/csl', 'main')}/data/csl.jsonl.gz"
    mock_hub.fail[f"GET {path}"] = 1  # huggingface_hub does not retry a 500 on a file body: the fetch does
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "downloaded", got.message
    assert sum(r == f"GET {path}" for r in mock_hub.requests) == 2


def test_a_transient_hub_error_that_outlasts_the_retries_fails_the_source_as_transient(mock_hub, tmp_path, catalog,
                                                                                       monkeypatch):
    source = catalog.get("csl")
    mock_hub.fail[f"GET /datasets/neuclir/csl/resolve/{fake_commit('neuclir/csl', 'main')}/data/csl.jsonl.gz"] = 9
    with pytest.raises(TransientHubError, match="neuclir/csl@.*500") as info:
        fetch_hub(source.obtain, tmp_path / "direct", retries=1, backoff=0)
    assert isinstance(info.value, HubError) and isinstance(info.value, TransientError)
    monkeypatch.setattr(fetch, "fetch_hub", functools.partial(fetch_hub, retries=1, backoff=0))
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert (got.status, got.transient, got.folder) == (ObtainStatus.FAILED, True, None)
    assert got.message.startswith("TransientHubError: neuclir/csl@") and "transient" not in got.summary()
    record = cache.read_record(tmp_path / "cache", "csl")
    assert record["status"] == CacheState.FAILED and record["message"] == got.message


@pytest.mark.parametrize(("change", "says"), [
    ({"repo": "gone/away"}, "dataset repo gone/away not found on the Hub"),
    ({"revision": "b" * 40}, f"revision {'b' * 40} not found in hfl/cmrc2018"),
])
def test_hub_errors_fail_the_source_and_say_what_to_fix(mock_hub, tmp_path, catalog, change, says):
    source = catalog.get("cmrc2018")
    broken = source.model_copy(update={"obtain": source.obtain.model_copy(update=change)})
    got = fetch_source(broken, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed" and says in got.message and not got.transient
    status = source_status(broken, tmp_path / "cache", tmp_path / "manual")
    assert status.status == "failed" and says in status.message


def test_warm_cache_works_with_hf_hub_offline_and_a_cold_one_fails_clearly(mock_hub, tmp_path, catalog):
    for name in ("cmrc2018", "xlsum"):
        assert fetch_source(catalog.get(name), tmp_path / "cache", tmp_path / "manual").status == "downloaded"
    cache.record_path(tmp_path / "cache", "cmrc2018").unlink()  # record lost: huggingface_hub checks its own
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from m3e_hq.flows.pipeline.download import obtain_sources\n"
        "from m3e_hq.flows.pipeline.params import BuildParams\n"
        "out = obtain_sources(BuildParams(sources=['cmrc2018', 'xlsum', 'BQ'], cache_dir=Path(sys.argv[1])))\n"
        "print(json.dumps({o.source: [o.status, o.message] for o in out}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["xlsum"] == ["cached", None]
    assert got["cmrc2018"][0] == "downloaded"  # found complete in huggingface_hub's local-dir metadata
    assert got["BQ"][0] == "failed" and "not in the cache and the Hub cannot be reached" in got["BQ"][1]


def test_a_hub_that_does_not_resolve_fails_at_once_as_no_network(tmp_path, catalog, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://nosuch.invalid")
    for name in ("cmrc2018", "BQ"):  # a pinned revision and an unpinned ref
        start = time.monotonic()
        got = fetch_source(catalog.get(name), tmp_path / "cache", tmp_path / "manual")
        assert time.monotonic() - start < 5  # no retries: huggingface_hub's took 23 s, the fetch's 7 s
        assert (got.status, got.transient) == (ObtainStatus.FAILED, False)
        assert got.message.startswith("NoNetworkError: no network: cannot resolve nosuch.invalid")
        assert "use HF_ENDPOINT" in got.message and "--raw-dir DIR" in got.message


def test_offline_sources_are_not_retried_by_prefect(prefect_api, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_ENDPOINT", "http://nosuch.invalid")
    start = time.monotonic()
    got = download_m3e_hq_sources(sources=["cmrc2018", "BQ", "ocnli"], cache_dir=str(tmp_path))
    assert time.monotonic() - start < 60  # Prefect's retries alone would wait 130 s
    assert all(o.status == "failed" and "no network" in o.message for o in got)
    printed = capfd.readouterr()
    assert "Retrying in" not in printed.out + printed.err


def test_a_hub_endpoint_with_a_trailing_slash_works(mock_hub, tmp_path, catalog, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", mock_hub.url + "/")
    got = fetch_source(catalog.get("BQ"), tmp_path / "cache", tmp_path / "manual")
    assert got.status == "downloaded", got.message
    assert not any("//" in r for r in mock_hub.requests)


def test_huggingface_hubs_retry_warnings_are_printed_once(server, mock_hub, tmp_path, catalog):
    tree = f"GET /api/datasets/hfl/cmrc2018/tree/{catalog.get('cmrc2018').obtain.revision}"
    mock_hub.fail[tree] = 1  # huggingface_hub retries a tree listing itself
    env = {k: v for k, v in server.env.items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": mock_hub.url}
    done = subprocess.run([str(BIN / "m3e-hq"), "download", "-s", "cmrc2018", "--cache-dir", str(tmp_path)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert mock_hub.fail[tree] == 0
    assert (done.stdout + done.stderr).count("Retrying in 1s [Retry 1/5]") == 1, done.stdout + done.stderr


# --- HTTP -----------------------------------------------------------------------------------------------------------


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def simclue_zip() -> bytes:
    folder = SAMPLES_DIR / "SimCLUE"
    return zip_of({p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()})


def served(source: Source, httpserver: HTTPServer, sha256: str | None) -> Source:
    """The source with its download URL moved to the local server."""
    url = httpserver.url_for("/tasks/simclue_public.zip")
    return source.model_copy(update={"obtain": HttpObtain(kind="http", files=[HttpFile(url=url, sha256=sha256)])})


def test_http_archive_is_downloaded_extracted_recorded_and_ingested(httpserver, tmp_path, catalog):
    body = simclue_zip()
    httpserver.expect_oneshot_request("/tasks/simclue_public.zip").respond_with_data(body)
    source = served(catalog.get("SimCLUE"), httpserver, None)
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "downloaded", got.message
    sha = file_sha256(cache.downloads_folder(tmp_path / "cache", "SimCLUE") / "simclue_public.zip")
    assert got.sha256 == {source.obtain.files[0].url: sha}
    assert f"no sha256 in the catalog for {source.obtain.files[0].url}; downloaded {sha}" == got.message
    result = ingest_one(got, tmp_path / "out", 100_000)
    want = expected("SimCLUE")
    assert (result.counts.read, result.counts.kept, result.counts.dropped) == (
        want["read"], want["kept"], want["dropped"])
    again = fetch_source(source, tmp_path / "cache", tmp_path / "manual")  # oneshot: a second request would fail
    assert again.status == "cached" and again.sha256 == got.sha256


def test_http_transfer_cut_midway_is_resumed_and_verified(httpserver, tmp_path, catalog):
    body = simclue_zip()
    half = len(body) // 2

    def cut(request: Request) -> Response:
        return Response(iter([body[:half]]), headers={"Content-Length": str(len(body))}, direct_passthrough=True)

    httpserver.expect_request("/tasks/simclue_public.zip").respond_with_handler(in_sequence(cut, serve_ranges(body)))
    source = served(catalog.get("SimCLUE"), httpserver, hashlib.sha256(body).hexdigest())
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "downloaded" and got.message is None  # the catalog's hash matched: nothing to report
    assert [r.headers.get("Range") for r, _ in httpserver.log] == [None, f"bytes={half}-"]
    assert ingest_one(got, tmp_path / "out", 100_000).counts.kept == expected("SimCLUE")["kept"]


def test_http_checksum_mismatch_is_rejected_and_not_cached(httpserver, tmp_path, catalog):
    httpserver.expect_request("/tasks/simclue_public.zip").respond_with_data(simclue_zip())
    source = served(catalog.get("SimCLUE"), httpserver, "0" * 64)
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed" and "checksum mismatch" in got.message
    assert not cache.source_folder(tmp_path / "cache", "SimCLUE").exists()
    assert not list(cache.downloads_folder(tmp_path / "cache", "SimCLUE").iterdir())
    assert source_status(source, tmp_path / "cache", tmp_path / "manual").status == "failed"


def test_the_catalogs_size_bounds_the_http_download(httpserver, tmp_path, catalog):
    body = simclue_zip()
    httpserver.expect_request("/tasks/simclue_public.zip").respond_with_data(body)
    source = served(catalog.get("SimCLUE"), httpserver, None)
    sized = source.model_copy(update={"obtain": HttpObtain(kind="http", files=[
        HttpFile(url=source.obtain.files[0].url, size=len(body) - 1)])})
    got = fetch_source(sized, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed" and f"announces {len(body):,} bytes, not the expected {len(body) - 1:,}" in got.message
    assert not cache.source_folder(tmp_path / "cache", "SimCLUE").exists()
    right = sized.model_copy(update={"obtain": HttpObtain(kind="http", files=[
        HttpFile(url=source.obtain.files[0].url, size=len(body))])})
    assert fetch_source(right, tmp_path / "cache", tmp_path / "manual").status == "downloaded"


def test_http_archive_escaping_its_folder_is_rejected(httpserver, tmp_path, catalog):
    evil = zip_of({"simclue_public/train_pair_postive.json": b"{}\n", "../../escaped.txt": b"gotcha"})
    httpserver.expect_request("/tasks/simclue_public.zip").respond_with_data(evil)
    got = fetch_source(served(catalog.get("SimCLUE"), httpserver, None), tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed" and "UnsafeArchiveError" in got.message and "outside the target" in got.message
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not cache.source_folder(tmp_path / "cache", "SimCLUE").exists()


def test_http_404_fails_the_source_with_a_hint(httpserver, tmp_path, catalog):
    httpserver.expect_request("/tasks/simclue_public.zip").respond_with_data("gone", status=404)
    got = fetch_source(served(catalog.get("SimCLUE"), httpserver, None), tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed" and "HTTP 404" in got.message and "download the file by hand" in got.message
    assert not got.transient


def test_http_500_is_retried(httpserver, tmp_path, catalog):
    httpserver.expect_ordered_request("/tasks/simclue_public.zip").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/tasks/simclue_public.zip").respond_with_data(simclue_zip())
    got = fetch_source(served(catalog.get("SimCLUE"), httpserver, None), tmp_path / "cache", tmp_path / "manual")
    assert got.status == "downloaded", got.message


def test_http_503_that_outlasts_the_retries_fails_the_source_as_transient(httpserver, tmp_path, catalog, monkeypatch):
    httpserver.expect_request("/tasks/simclue_public.zip").respond_with_data("busy", status=503)
    monkeypatch.setattr(fetch, "download_file", functools.partial(download_file, retries=1, backoff=0))
    got = fetch_source(served(catalog.get("SimCLUE"), httpserver, None), tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed" and got.transient and len(httpserver.log) == 2
    assert got.message.startswith("TransientDownloadError: GET ") and "failed after 2 attempts" in got.message


def test_an_http_host_that_does_not_resolve_is_no_network_not_transient(tmp_path, catalog, monkeypatch):
    url = "http://nosuch.invalid/tasks/simclue_public.zip"
    source = catalog.get("SimCLUE").model_copy(update={"obtain": HttpObtain(kind="http", files=[HttpFile(url=url)])})
    monkeypatch.setattr(fetch, "download_file", functools.partial(download_file, retries=1, backoff=0))
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert (got.status, got.transient) == (ObtainStatus.FAILED, False)
    assert got.message.startswith("no network: TransientDownloadError: GET http://nosuch.invalid/")
    assert got.message.endswith("use a warm cache (--cache-dir) or your own copies (--raw-dir DIR)")


def test_obtained_statuses_are_enums_and_unknown_ones_are_refused():
    got = Obtained("x", "partial", Path("/m/x"))
    assert got.status is ObtainStatus.PARTIAL and got.ok and not got.transient
    with pytest.raises(ValueError, match="'done' is not a valid ObtainStatus"):
        Obtained("x", "done")


def test_the_obtain_task_retries_transient_failures_and_reports_permanent_ones_at_once(prefect_api, tmp_path,
                                                                                       monkeypatch):
    failures = {"cmrc2018": [TransientDownloadError("GET u failed after 5 attempts", url="u", attempts=5)],
                "ocnli": [DownloadError("GET v failed with HTTP 404 Not Found", url="v", attempts=1, status=404)]}
    calls: list[str] = []

    def attempt(source: Source, cache_root: Path) -> Obtained:
        calls.append(source.name)
        if failures[source.name]:
            raise failures[source.name].pop()
        return Obtained(source.name, ObtainStatus.DOWNLOADED, SAMPLES_DIR / source.name)

    monkeypatch.setattr(fetch, "_download", attempt)
    monkeypatch.setattr(download, "obtain_task", download.obtain_task.with_options(retry_delay_seconds=0))
    got = {o.source: o for o in download_m3e_hq_sources(sources=["cmrc2018", "ocnli"], cache_dir=str(tmp_path))}
    assert sorted(calls) == ["cmrc2018", "cmrc2018", "ocnli"]
    assert got["cmrc2018"].status == "downloaded"
    assert (got["ocnli"].status, got["ocnli"].transient) == ("failed", False)
    assert got["ocnli"].message == "DownloadError: GET v failed with HTTP 404 Not Found"


# --- manual ---------------------------------------------------------------------------------------------------------


def test_missing_manual_source_is_skipped_with_where_to_get_it(tmp_path, catalog):
    got = fetch_source(catalog.get("lawzhidao"), tmp_path / "cache", tmp_path / "manual")
    assert got.status == "skipped" and not got.ok
    assert got.message == (
        "download by hand from https://www.heywhale.com/mw/dataset/5e953ca8e7ec38002d02fca7/content (login required; "
        "also on Baidu pan via SophonPlus/ChineseNlpCorpus (datasets/lawzhidao)) and put lawzhidao_filter.csv in "
        f"{tmp_path / 'manual' / 'lawzhidao'}/")


def test_present_manual_sources_are_ingested_and_partial_ones_flagged(tmp_path, catalog):
    manual = tmp_path / "manual"
    for name in ("lawzhidao", "Zhuiyi-NL2SQL"):
        for rel in catalog.get(name).obtain.files:
            if (SAMPLES_DIR / name / rel).exists():
                (manual / name / rel).parent.mkdir(parents=True, exist_ok=True)
                (manual / name / rel).write_bytes((SAMPLES_DIR / name / rel).read_bytes())
    obtained = obtain_sources(BuildParams(sources=["lawzhidao", "Zhuiyi-NL2SQL", "amazon_reviews_multi"],
                                          cache_dir=tmp_path / "cache", manual_dir=manual))
    law, zhuiyi, amazon = ({o.source: o for o in obtained}[n] for n in ("lawzhidao", "Zhuiyi-NL2SQL",
                                                                         "amazon_reviews_multi"))
    assert law.status == "present" and law.folder == manual / "lawzhidao"
    assert zhuiyi.status == "partial" and zhuiyi.missing == ["train/train.json", "train/train.tables.json"]
    assert zhuiyi.message == (f"train/train.json, train/train.tables.json missing from {manual / 'Zhuiyi-NL2SQL'}/ "
                              "(split train not built): only the files present are read")
    assert amazon.status == "unavailable" and amazon.message.startswith("unavailable: taken down")
    result = ingest_one(law, tmp_path / "out", 100_000)
    assert (result.counts.read, result.counts.kept) == (expected("lawzhidao")["read"], expected("lawzhidao")["kept"])
    with pytest.raises(MissingSourcesError) as err:
        obtain_sources(BuildParams(sources=["lawzhidao", "Zhuiyi-NL2SQL", "amazon_reviews_multi", "DuSQL"],
                                   cache_dir=tmp_path / "cache", manual_dir=manual, require_all=True))
    message = str(err.value)
    assert "2 selected sources were not obtained" in message
    assert "Zhuiyi-NL2SQL: partial" in message and "DuSQL: skipped: download by hand from https://www.luge.ai" in message
    assert "amazon_reviews_multi" not in message


def test_cache_and_manual_folders_follow_options_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.delenv(cache.MANUAL_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "m3e-hq"
    assert cache.manual_dir() == ROOT / "data" / "manual"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "env-cache"))
    monkeypatch.setenv(cache.MANUAL_ENV, str(tmp_path / "env-manual"))
    assert (cache.cache_dir(), cache.manual_dir()) == (tmp_path / "env-cache", tmp_path / "env-manual")
    assert cache.cache_dir(tmp_path / "opt") == tmp_path / "opt"
    assert BuildParams(manual_dir=tmp_path / "m").manual_root == tmp_path / "m"


# --- files placed by hand or with --raw-dir: any depth, companions, files that are not the data -------------------

# What a clone without `git lfs pull` leaves in place of a large file (https://git-lfs.com/spec/v1).
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
               b"size 61357913\n")
# What a cloud drive answers for an expired share link, saved under the data file's name.
LOGIN_PAGE = ('<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">\n'
              "<title>百度网盘-链接不存在</title></head><body><div>啊哦，你所访问的页面不存在了。</div></body></html>\n"
              ).encode()
NOT_DATA = {"lfs": (LFS_POINTER, "is a Git LFS pointer to a 61,357,913-byte file, not the data: run `git lfs pull`"),
            "html": (LOGIN_PAGE, "is an HTML page titled '百度网盘-链接不存在', not the data: a login or error page"),
            "empty": (b"", "is empty (0 bytes), not the data: download it again from")}
# brightmart/nlp_chinese_corpus: each zip unpacks into a folder of its own.
BRIGHTMART_FOLDERS = {"news2016zh": "new2016zh", "baike2018qa": "baike_qa2019", "webtext2019zh": "webtext2019zh"}


def unzip_sample_into(folder: Path, name: str, inside: str) -> None:
    """The source's sample files zipped under `inside/`, unpacked into `folder` as a user would."""
    members = {f"{inside}/{rel}": (SAMPLES_DIR / name / rel).read_bytes() for rel in sample_files(name)}
    with zipfile.ZipFile(io.BytesIO(zip_of(members))) as archive:
        archive.extractall(folder)


def copy_sample(folder: Path, name: str) -> None:
    for rel in sample_files(name):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes((SAMPLES_DIR / name / rel).read_bytes())


def test_unzipped_brightmart_corpora_are_found_in_their_folders_and_named(tmp_path):
    manual = tmp_path / "manual"
    for name, inside in BRIGHTMART_FOLDERS.items():
        unzip_sample_into(manual / name, name, inside)
    got = {o.source: o for o in obtain_sources(BuildParams(sources=list(BRIGHTMART_FOLDERS), manual_dir=manual))}
    for name, inside in BRIGHTMART_FOLDERS.items():
        assert got[name].status == "present" and got[name].files == {f"{inside}/{rel}": size for rel, size in
                                                                     sample_files(name).items()}
        result = ingest_one(got[name], tmp_path / "out", 100_000)
        assert result.files == list(got[name].files)  # the located files, read where they were found
        assert (result.counts.read, result.counts.kept) == (expected(name)["read"], expected(name)["kept"])
    assert got["news2016zh"].message == "found news2016zh_train.json, news2016zh_valid.json in new2016zh/"


def test_a_file_found_in_several_folders_fails_the_source_naming_them(tmp_path):
    manual = tmp_path / "manual" / "DuSQL"  # the whole 千言 semantic parsing folder put where DuSQL's files go
    for inside, name in (("DuSQL", "DuSQL"), ("CSpider", "Cspider")):
        unzip_sample_into(manual, name, inside)
    [got] = obtain_sources(BuildParams(sources=["DuSQL"], manual_dir=tmp_path / "manual"))
    assert got.status == "failed" and got.folder is None
    assert got.message == (f"train.json is in 2 folders under {manual}/ (CSpider/, DuSQL/): leave only this source's "
                           f"copy there; dev.json is in 2 folders under {manual}/ (CSpider/, DuSQL/): leave only this "
                           "source's copy there")


@pytest.mark.parametrize("kind", NOT_DATA)
def test_a_placed_file_that_is_not_the_data_fails_the_source_on_every_path(tmp_path, kind):
    content, says = NOT_DATA[kind]
    for folder in (tmp_path / "manual" / "Chinese-SQuAD", tmp_path / "raw" / "Chinese-SQuAD"):
        copy_sample(folder, "Chinese-SQuAD")
        (folder / "squad-zen" / "dev-zen-v1.0.json").write_bytes(content)
    for params in (BuildParams(sources=["Chinese-SQuAD"], manual_dir=tmp_path / "manual", out_dir=tmp_path / "m"),
                   BuildParams(sources=["Chinese-SQuAD"], raw_dir=tmp_path / "raw", out_dir=tmp_path / "r")):
        [result] = build_sources(params)["results"]
        assert result.status == "failed" and result.counts is None
        assert result.message.startswith(f"squad-zen/dev-zen-v1.0.json {says}")
        assert "https://github.com/pluto-junzeng/ChineseSquad" in result.message
        assert not (params.build_dir / "ingest" / "Chinese-SQuAD.parquet").exists()
    listed = source_status(default_catalog().get("Chinese-SQuAD"), tmp_path / "cache", tmp_path / "manual")
    assert listed.status == "failed" and says in listed.message


def test_absent_tables_files_make_the_questions_missing_on_every_path(tmp_path, catalog):
    for folder in (tmp_path / "manual" / "Zhuiyi-NL2SQL", tmp_path / "raw" / "Zhuiyi-NL2SQL"):
        copy_sample(folder, "Zhuiyi-NL2SQL")
        (folder / "val" / "val.tables.json").unlink()
    manual = tmp_path / "manual" / "Zhuiyi-NL2SQL"
    for got in (fetch_source(catalog.get("Zhuiyi-NL2SQL"), tmp_path / "cache", tmp_path / "manual"),
                *obtain_sources(BuildParams(sources=["Zhuiyi-NL2SQL"], manual_dir=tmp_path / "manual"))):
        assert got.status == "skipped" and got.missing == ["train/train.json", "train/train.tables.json",
                                                           "val/val.tables.json"]
        assert got.message.endswith(f"and put train/train.json, train/train.tables.json, val/val.tables.json in "
                                    f"{manual}/")
    [result] = build_sources(BuildParams(sources=["Zhuiyi-NL2SQL"], raw_dir=tmp_path / "raw",
                                         out_dir=tmp_path / "out"))["results"]
    assert result.status == "missing" and result.counts is None  # not 100 % missing_table rows reported as ok
    assert result.missing_files == ["train/train.json", "train/train.tables.json", "val/val.tables.json"]


def test_an_http_download_that_is_an_html_page_fails_before_unpacking(httpserver, tmp_path, catalog):
    httpserver.expect_request("/tasks/simclue_public.zip").respond_with_data(LOGIN_PAGE, content_type="text/html")
    source = served(catalog.get("SimCLUE"), httpserver, None)
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed" and not got.transient
    assert got.message == (f"FetchError: {source.obtain.files[0].url} sent an HTML page titled '百度网盘-链接不存在', "
                           "not the data (a login wall, an error or proxy page?): check the URL in "
                           "sources/catalog.yaml, or download the file by hand")
    assert not list(cache.downloads_folder(tmp_path / "cache", "SimCLUE").iterdir())  # fetched again next time


def test_a_hub_mirror_serving_lfs_pointers_fails_the_source(mock_hub, tmp_path, catalog):
    source = catalog.get("cmrc2018")
    served_files = mock_hub.repos["hfl/cmrc2018"].commits[source.obtain.revision]
    (served_files / "data" / "train-00000-of-00001.parquet").write_bytes(LFS_POINTER)
    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")
    assert got.status == "failed"
    assert got.message == (f"FetchError: hfl/cmrc2018@{source.obtain.revision}: data/train-00000-of-00001.parquet is "
                           "a Git LFS pointer to a 61,357,913-byte file, not the data: check HF_ENDPOINT (a mirror or "
                           "proxy answering for the Hub?) and download again")
    assert not (cache.source_folder(tmp_path / "cache", "cmrc2018") / "data" / "train-00000-of-00001.parquet").exists()


def test_the_console_names_absent_splits_where_files_were_found_and_files_that_are_not_the_data(prefect_api, tmp_path,
                                                                                                tiny_encoder):
    raw = tmp_path / "raw"
    validation = "data/validation-00000-of-00001.parquet"  # cmrc2018 without its train and test files
    (raw / "cmrc2018" / "data").mkdir(parents=True)
    (raw / "cmrc2018" / validation).write_bytes((SAMPLES_DIR / "cmrc2018" / validation).read_bytes())
    unzip_sample_into(raw / "news2016zh", "news2016zh", "new2016zh")
    copy_sample(raw / "Chinese-SQuAD", "Chinese-SQuAD")
    (raw / "Chinese-SQuAD" / "squad-zen" / "dev-zen-v1.0.json").write_bytes(LFS_POINTER)
    result = CliRunner().invoke(app, ["build", "--raw-dir", str(raw), "-s", "cmrc2018,news2016zh,Chinese-SQuAD",
                                      "--out", str(tmp_path / "out"), "--encoder", str(tiny_encoder)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert (f"cmrc2018: data/train-*.parquet, data/test-*.parquet missing from {raw / 'cmrc2018'}/ (split train, test "
            "not built): only the files present are read") in lines
    assert "news2016zh: found news2016zh_train.json, news2016zh_valid.json in new2016zh/" in lines
    assert [line for line in lines if line.startswith("Chinese-SQuAD: failed — squad-zen/dev-zen-v1.0.json is a Git "
                                                      "LFS pointer to a 61,357,913-byte file, not the data: run `git "
                                                      "lfs pull` in the clone")]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sources"]["cmrc2018"]["missing_files"] == ["data/train-*.parquet", "data/test-*.parquet"]
    assert manifest["sources"]["news2016zh"]["files"] == ["new2016zh/news2016zh_train.json",
                                                          "new2016zh/news2016zh_valid.json"]
    copy_sample(tmp_path / "manual" / "Zhuiyi-NL2SQL", "Zhuiyi-NL2SQL")  # and `m3e-hq download`'s flow
    (tmp_path / "manual" / "Zhuiyi-NL2SQL" / "val" / "val.tables.json").unlink()
    [zhuiyi] = download_m3e_hq_sources(sources=["Zhuiyi-NL2SQL"], cache_dir=str(tmp_path / "cache"),
                                       manual_dir=str(tmp_path / "manual"))
    assert zhuiyi.status == "skipped" and "val/val.tables.json" in zhuiyi.message


def test_require_all_with_raw_dir_fails_on_absent_files_but_not_on_unavailable_sources(tmp_path):
    raw = tmp_path / "raw"
    validation = "data/validation-00000-of-00001.parquet"
    (raw / "cmrc2018" / "data").mkdir(parents=True)
    (raw / "cmrc2018" / validation).write_bytes((SAMPLES_DIR / "cmrc2018" / validation).read_bytes())
    with pytest.raises(MissingSourcesError) as err:
        obtain_sources(BuildParams(raw_dir=raw, sources=["cmrc2018", "ocnli", "amazon_reviews_multi"],
                                   require_all=True))
    cmrc, ocnli = raw / "cmrc2018", raw / "ocnli"
    assert str(err.value).splitlines() == [
        "2 selected sources were not obtained (require_all):",
        (f"  cmrc2018: partial: data/train-*.parquet, data/test-*.parquet missing from {cmrc}/ (split train, test "
         "not built): only the files present are read"),
        (f"  ocnli: missing: no files matching ocnli/train-*.parquet, ocnli/validation-*.parquet, "
         f"ocnli/test-*.parquet in {ocnli}/")]
