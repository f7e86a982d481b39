"""What each stage output was made from (flows.core.lineage): recorded in every output and in the manifest, and a
build folder whose outputs a later, unfinished build rewrote (other settings, other inputs) is refused by publish and
by `m3e-hq export`, until that build is run again to its end."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from m3e_hq.flows.core.lineage import read_record, recording
from m3e_hq.flows.core.stage import Context, run_stages
from m3e_hq.flows.pipeline.build import build_sources
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.stages.dedup import DEDUP
from m3e_hq.flows.stages.filters import FILTER, FilterParams
from m3e_hq.flows.stages.mine import MINE, MineParams
from m3e_hq.flows.stages.publish import WITH_SCORE, PublishParams, StaleOutputsError, publish
from m3e_hq.schemas import Manifest
from m3e_hq.sources.catalog import Catalog

M3E_HQ_CLI = Path(sys.executable).parent / "m3e-hq"
SOURCES = ["ocnli", "BQ", "cmrc2018"]
STAGES = ("ingest", "filter", "dedup", "mine")


def params(out: Path, encoder: Path, num_negatives: int = 7, **changes: object) -> BuildParams:
    mine = MineParams(encoder=str(encoder)).model_dump()
    mine["negatives"]["num_negatives"] = num_negatives
    return BuildParams(samples=True, sources=SOURCES, out_dir=out, cache_dir=out.parent / "cache",
                       mine=MineParams.model_validate(mine), **changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Path:
    """A finished build of three samples, mined with 7 negatives."""
    out = tmp_path_factory.mktemp("finished") / "build"
    build_sources(params(out, tiny_encoder))
    return out


@pytest.fixture
def build(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished build, to change."""
    return Path(shutil.copytree(finished, tmp_path / "build"))


def rerun(build_params: BuildParams, stages: list, sources: list[str], catalog: Catalog) -> None:
    """What a later build with `build_params` killed midway leaves: `stages` run again on `sources` only, over the
    outputs of the stage before them, and no new manifest."""
    before = {"filter": "ingest", "dedup": "filter", "mine": "dedup"}[stages[0].name]
    inputs = {s: build_params.build_dir / before / f"{s}.parquet" for s in sources}
    context = Context(build_params.build_dir, catalog, build_params.embedding_cache)
    run_stages(stages, inputs, build_params, context)


def export(build: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(M3E_HQ_CLI), "export", "--build", str(build), "--out", str(out)],
                          capture_output=True, text=True, check=False, env={"PATH": str(M3E_HQ_CLI.parent),
                                                                              "COLUMNS": "200"})


def test_every_output_records_its_stage_parameters_and_inputs_as_the_manifest_does(build):
    manifest = Manifest.read(build)
    for stage, before in zip(STAGES, (None, *STAGES), strict=False):
        summary = manifest.stages[stage]
        for source in SOURCES:
            counts = summary.sources[source]
            for path in (counts.kept_path, counts.dropped_path):
                record = read_record(Path(path))
                assert record["id"] == counts.made_from
                assert (record["stage"], record["source"], record["params"]) == (stage, source, summary.params)
            if before is not None:  # the chain: what it read is the previous stage's output, by its identity
                inputs = record["inputs"]
                assert inputs[f"{before}/{source}.parquet"] == manifest.stages[before].sources[source].made_from
    assert manifest.stages["mine"].params["negatives"]["num_negatives"] == 7
    assert manifest.stages["ingest"].params == {"max_chars": 100_000}
    dedup = read_record(build / "dedup" / "BQ.parquet")  # dedup reads every source at once
    assert sorted(dedup["inputs"]) == sorted(f"filter/{s}.parquet" for s in SOURCES)
    native = read_record(build / "ingest" / "BQ.parquet")["inputs"]
    assert native and all(Path(name).is_absolute() and "/BQ/" in name for name in native)


def test_an_identity_changes_with_the_parameters_and_the_inputs_only(tmp_path, build):
    filtered = build / "filter" / "ocnli.parquet"
    ids = []
    for filters, source in ((FilterParams(), filtered), (FilterParams(), filtered), (FilterParams(s2s_pos_min_chars=3), filtered),
                            (FilterParams(), build / "filter" / "BQ.parquet")):
        with recording("dedup", filters, {"ocnli": source}) as unit:
            ids.append(unit.of("ocnli").id)
    assert ids[0] == ids[1] and len(set(ids)) == 3
    native = tmp_path / "native.jsonl"
    native.write_text("{}\n")
    with recording("ingest", FilterParams(), {"x": [native]}) as unit:
        first = unit.of("x").id
    native.write_text("{}\n{}\n")
    with recording("ingest", FilterParams(), {"x": [native]}) as unit:
        assert unit.of("x").id != first


def test_outputs_an_unfinished_build_rewrote_are_refused_until_it_is_run_to_its_end(build, tiny_encoder, catalog,
                                                                                    tmp_path):
    out = tmp_path / "out"
    assert export(build, out).returncode == 0
    published = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # a re-run with 3 negatives, killed after it rewrote the mine outputs of two of the three sources
    three = params(build, tiny_encoder, num_negatives=3)
    rerun(three, [MINE], ["ocnli", "BQ"], catalog)
    with pytest.raises(StaleOutputsError) as info:
        publish(build, tmp_path / "other", PublishParams(plots=False), catalog)
    message = str(info.value)
    assert f"{build}/mine/ocnli.parquet was made with mine.negatives.num_negatives 3 (the manifest's build: 7) " \
           "(and 1 more" in message
    assert "(and 1 more: mine/BQ.parquet)" in message and "nothing was published" in message
    assert not (tmp_path / "other").exists()
    done = export(build, out)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "mine/ocnli.parquet" in lines[0]
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == published  # left as it was
    # the re-run, run again to its end, is published with its own settings
    build_sources(three)
    assert export(build, out).returncode == 0
    negatives = pq.read_table(next((out / WITH_SCORE / "data" / "ocnli").glob("*.parquet")), columns=["text_neg"])
    assert pc.max(pc.list_value_length(negatives["text_neg"])).as_py() == 3


def test_outputs_made_from_other_inputs_are_refused(build, tiny_encoder, catalog, tmp_path):
    # a re-run with other filter settings, killed after its filter and dedup stages: dedup's settings are the same,
    # but not what it read (the mine outputs are still the manifest's: m3e-hq would not match m3e-hq-with-score)
    stricter = params(build, tiny_encoder, filters=FilterParams(s2s_query_min_chars=6))
    rerun(stricter, [FILTER, DEDUP], SOURCES, catalog)
    with pytest.raises(StaleOutputsError, match=r"dedup/cmrc2018.parquet was made from other inputs "
                       r".*\(and 2 more: dedup/ocnli.parquet, dedup/BQ.parquet\)"):
        publish(build, tmp_path / "out", PublishParams(plots=False), catalog)


def test_a_manifest_without_identities_is_refused(build, catalog, tmp_path):
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    for stage in manifest["stages"].values():
        for counts in stage["sources"].values():
            del counts["made_from"]
    (build / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(StaleOutputsError, match=r"manifest.json does not record what its outputs were made from "
                                                r"\(written by an older m3e-hq\): build again"):
        publish(build, tmp_path / "out", PublishParams(plots=False), catalog)


def test_published_files_carry_no_record_and_keep_their_schemas_metadata(build, tmp_path, catalog):
    result = publish(build, tmp_path, PublishParams(plots=False), catalog)
    for folder in (result.m3e_hq.folder, result.with_score.folder):
        for path in folder.rglob("*.parquet"):
            assert b"m3e_hq.made_from" not in (pq.read_schema(path).metadata or {}), path
        for path in (folder / "data").rglob("*.parquet"):  # every column, as the stage wrote them
            assert pq.read_schema(path).metadata[b"name"] == folder.name.encode(), path


def test_an_output_replaced_by_hand_is_refused(build, catalog, tmp_path):
    path = build / "dedup" / "ocnli.parquet"
    pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)  # the same rows, no record
    with pytest.raises(StaleOutputsError, match=r"dedup/ocnli.parquet records nothing it was made from \(not written "
                                                r"by a build\): these are not the outputs"):
        publish(build, tmp_path / "out", PublishParams(plots=False), catalog)
