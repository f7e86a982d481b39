"""Shared fixtures: the catalog, and one ingest build of every shipped sample (plain functions, no Prefect)."""

from pathlib import Path

import pytest

from flows.build import build_sources
from flows.params import BuildParams
from sources.catalog import Catalog, default_catalog

EXPECTED_DIR = Path(__file__).parent / "expected"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(scope="session")
def samples_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Ingest of all 29 shipped samples into a temporary build folder."""
    out = tmp_path_factory.mktemp("build")
    return build_sources(BuildParams(samples=True, out_dir=out))
