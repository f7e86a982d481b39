"""Shared fixtures: the catalog, one build of every shipped sample (plain functions, no Prefect), tiny random BERT
models for mining, a local stand-in for the Hub serving the samples, and a Prefect server in a subprocess."""

import hashlib
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mockhub import MockHub
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect_server import Server, running_server

from m3e_hq.flows.pipeline.build import build_sources
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.stages.mine import MineParams
from m3e_hq.sources import cache
from m3e_hq.sources.catalog import Catalog, HubObtain, default_catalog
from m3e_hq.sources.layout import SAMPLES_DIR

EXPECTED_DIR = Path(__file__).parent / "expected"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from random_models import build_cross_encoder, build_encoder

# The slow tier: tests that start Prefect servers or Ray, kill builds, download through local servers, or build
# the wheel. `pytest -m "not slow"` leaves them out; the README's test command runs everything.
SLOW_MODULES = {"test_deployment", "test_ray", "test_kill_resume", "test_security", "test_fetch",
                "test_download_http", "test_push", "test_wheel"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers BERT (2 layers, 32 wide, 21,128-token CJK vocabulary) with random weights."""
    return build_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label BERT cross-encoder of the same tiny shape with random weights."""
    return build_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(scope="session")
def samples_build(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> dict:
    """A build of all 29 shipped samples into a temporary folder (mining with the tiny encoder)."""
    out = tmp_path_factory.mktemp("build")
    return build_sources(BuildParams(samples=True, out_dir=out, cache_dir=out / "cache",
                                     mine=MineParams(encoder=str(tiny_encoder))))


def fake_commit(repo: str, ref: str) -> str:
    """The mock hub's commit for an unpinned ref: stable per repo and ref."""
    return hashlib.sha1(f"{repo}@{ref}".encode()).hexdigest()


@pytest.fixture
def mock_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog: Catalog) -> Iterator[MockHub]:
    """A local Hub (through HF_ENDPOINT) serving each `hf` source's sample files at the catalog's revision or ref.

    Every repo also holds a loading script and a README, which the allow-patterns must keep from being fetched.
    """
    with MockHub() as hub:
        for source in catalog.sources:
            obtain = source.obtain
            if not isinstance(obtain, HubObtain):
                continue
            sha = obtain.revision or fake_commit(obtain.repo, obtain.ref)
            folder = tmp_path / "hub" / obtain.repo / sha
            shutil.copytree(SAMPLES_DIR / source.name, folder, dirs_exist_ok=True)
            (folder / f"{obtain.repo.split('/')[1]}.py").write_text("raise SystemExit('never run me')\n")
            (folder / "README.md").write_text(f"# {obtain.repo}\n")
            hub.add(obtain.repo, sha, folder, [obtain.ref])
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write to the user's cache (downloads, embeddings): the default cache is a temporary folder."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "m3e-hq-cache"))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Prefect server in a subprocess, with its own PREFECT_HOME (database, storage) in a temporary folder."""
    with running_server(tmp_path_factory.mktemp("prefect-home")) as running:
        yield running


@pytest.fixture
def prefect_api(server: Server, tmp_path: Path) -> Iterator[Path]:
    """This process talks to the server; results not kept in a build folder go to a temporary one. Logs and events
    are sent before the server stops (else the process waits for it at exit)."""
    storage = tmp_path / "prefect-storage"
    with temporary_settings({PREFECT_API_URL: server.url, PREFECT_RESULTS_LOCAL_STORAGE_PATH: storage}):
        yield storage
        APILogWorker.drain_all()
        EventsWorker.drain_all()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the temporary Prefect servers started in this process (by flows run without a server of their own),
    quietly, while pytest's streams are open: stopped at exit, they log to a closed stream ("--- Logging error ---")
    after the summary line."""
    from prefect.server.api.server import SubprocessASGIServer

    logging.getLogger("prefect").setLevel(logging.WARNING)
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
