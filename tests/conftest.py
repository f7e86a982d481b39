"""Shared fixtures: the catalog, one ingest build of every shipped sample (plain functions, no Prefect), and a
local stand-in for the Hub serving the samples."""

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mockhub import MockHub

from flows.build import build_sources
from flows.params import BuildParams
from sources.catalog import Catalog, HubObtain, default_catalog
from sources.layout import SAMPLES_DIR

EXPECTED_DIR = Path(__file__).parent / "expected"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(scope="session")
def samples_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Ingest of all 29 shipped samples into a temporary build folder."""
    out = tmp_path_factory.mktemp("build")
    return build_sources(BuildParams(samples=True, out_dir=out))


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
