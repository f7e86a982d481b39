"""The build manifest as a model: written by the build, read back field for field, and refused in one line when it is
not one."""

import json
from dataclasses import fields
from pathlib import Path

import pytest

from m3e_hq.flows.core.accounting import AccountingError, StageCounts
from m3e_hq.flows.core.manifest import write_manifest
from m3e_hq.flows.pipeline.build import SourceResult
from m3e_hq.schemas import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ObtainedSummary,
    ObtainStatus,
    SourceCounts,
    SourceStatus,
    SourceSummary,
)
from m3e_hq.sources.fetch import Obtained

PARAMS = {"samples": False, "dedup": {"near": True, "decontaminate": None}, "mine": {"query_prompt": "查询: "}}
DEDUP_STATS = {"exact_duplicate_keys": {"pair": 1}, "duplicates_by_source": {"a": {"b": 1}}}


def counts(stage: str, source: str, kept: int, dropped: dict[str, int]) -> StageCounts:
    return StageCounts(stage, source, kept + sum(dropped.values()), kept, dropped, 0.125,
                       f"/b/{stage}/{source}.parquet", f"/b/{stage}/dropped/{source}.parquet")


def results() -> list[SourceResult]:
    downloaded = Obtained("a", "downloaded", Path("/c/sources/a"), None, "f" * 40, {}, {"train.json": 10})
    failed = Obtained("b", "failed", None, "TransientDownloadError: GET u failed after 5 attempts", transient=True)
    return [SourceResult("a", "ok", None, ["train.json"], [], downloaded.summary()),
            SourceResult("b", failed.status, failed.message, obtained=failed.summary())]


def stages() -> dict[str, list[StageCounts]]:
    return {"ingest": [counts("ingest", "a", 3, {"empty_text": 1})],
            "dedup": [counts("dedup", "a", 2, {"exact_duplicate": 1})]}


@pytest.fixture
def written(tmp_path: Path) -> Path:
    return write_manifest(tmp_path, PARAMS, {r.source: r.summary() for r in results()}, stages(),
                          {"dedup": DEDUP_STATS}, {"dedup": {"near": True}})


def test_a_written_manifest_reads_back_as_the_model_of_what_was_written(written):
    manifest = Manifest.read(written.parent)
    assert written.name == MANIFEST_NAME and manifest.params == PARAMS
    assert len(manifest.catalog_sha256) == 64 and manifest.created.endswith("+00:00")
    a, b = manifest.sources["a"], manifest.sources["b"]
    assert a == SourceSummary(source="a", status=SourceStatus.OK, files=["train.json"], obtained=ObtainedSummary(
        source="a", status=ObtainStatus.DOWNLOADED, folder="/c/sources/a", revision="f" * 40,
        files={"train.json": 10}))
    assert (b.status, b.obtained.status, b.files) == (SourceStatus.FAILED, ObtainStatus.FAILED, [])
    ingest, dedup = manifest.stages["ingest"], manifest.stages["dedup"]
    assert ingest.sources["a"] == SourceCounts(**stages()["ingest"][0].to_dict())
    assert (ingest.totals.read, ingest.totals.kept, ingest.totals.dropped) == (4, 3, {"empty_text": 1})
    assert ingest.stats is None and dedup.stats == DEDUP_STATS
    assert manifest.stage_kept("dedup", "a") == 2 and manifest.stage_kept("dedup", "b") is None
    assert manifest.stage_kept("mine", "a") is None
    assert manifest.settings("mine") == {"query_prompt": "查询: "} and manifest.settings("filters") == {}


def test_the_json_keeps_its_keys_in_order_and_writing_the_read_model_gives_the_same_bytes(written, tmp_path):
    data = json.loads(written.read_text(encoding="utf-8"))
    assert list(data) == ["created", "catalog_sha256", "params", "sources", "stages"]
    assert list(data["stages"]["ingest"]) == ["totals", "sources"]  # no params, no stats: no keys
    assert list(data["stages"]["dedup"]) == ["totals", "sources", "params", "stats"]
    assert list(data["sources"]["a"]) == [f.name for f in fields(SourceResult) if f.name != "counts"]
    again = Manifest.read(written.parent).write(tmp_path / "again")
    assert again.read_bytes() == written.read_bytes()


def test_the_models_mirror_the_records_they_summarise():
    assert list(SourceCounts.model_fields) == [f.name for f in fields(StageCounts)]
    assert list(SourceSummary.model_fields) == [f.name for f in fields(SourceResult) if f.name != "counts"]
    assert list(ObtainedSummary.model_fields) == [f.name for f in fields(Obtained) if f.name != "transient"]


def test_a_broken_accounting_identity_writes_no_manifest(tmp_path):
    broken = counts("ingest", "a", 3, {})
    broken.read += 1
    with pytest.raises(AccountingError, match="read 4 rows but kept 3"):
        write_manifest(tmp_path, PARAMS, {}, {"ingest": [broken]})
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_each_stage_must_read_what_the_stage_before_it_kept_in_the_order_they_ran(tmp_path):
    chained = {"ingest": [counts("ingest", "a", 5, {"empty_text": 1}), counts("ingest", "b", 2, {})],
               "filter": [counts("filter", "a", 4, {"mojibake": 1}), counts("filter", "b", 2, {})],
               "dedup": [counts("dedup", "a", 3, {"exact_duplicate": 1}), counts("dedup", "b", 1, {"eval_split": 1})]}
    write_manifest(tmp_path, PARAMS, {}, chained)
    assert list(Manifest.read(tmp_path).stages) == ["ingest", "filter", "dedup"]  # in the order they ran
    swapped = {name: chained[name] for name in ("ingest", "dedup", "filter")}  # dedup read 4 = filter's kept, not 5
    with pytest.raises(AccountingError, match="dedup/a: read 4 rows but ingest, the stage before it, kept 5"):
        write_manifest(tmp_path / "swapped", PARAMS, {}, swapped)
    lost = {"ingest": chained["ingest"][:1], "filter": chained["filter"]}
    with pytest.raises(AccountingError, match="filter/b: read 2 rows of a source that ingest, the stage before it, "
                                              "did not output"):
        write_manifest(tmp_path / "lost", PARAMS, {}, lost)
    failed = {"ingest": chained["ingest"], "filter": chained["filter"][:1], "dedup": chained["dedup"][:1]}
    write_manifest(tmp_path / "failed", PARAMS, {}, failed)  # b left the build at the filter: the chain holds
    assert not (tmp_path / "swapped" / MANIFEST_NAME).exists() and not (tmp_path / "lost" / MANIFEST_NAME).exists()


def test_a_missing_manifest_says_to_build_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest.json not found: build first \(m3e-hq build\)"):
        Manifest.read(tmp_path)


@pytest.mark.parametrize(("text", "says"), [
    ("{", "is not JSON"),
    (b"\xff\xfe", "is not JSON"),
    ('{"created": "x"}', "is not a build manifest (catalog_sha256: Field required, and 3 more)"),
    ("[]", "is not a build manifest (the top level: Input should be a valid dictionary"),
])
def test_an_invalid_manifest_is_refused_in_one_line(written, text, says):
    if isinstance(text, bytes):
        written.write_bytes(text)
    else:
        written.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        Manifest.read(written.parent)
    message = str(info.value)
    assert says in message and str(written) in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_a_manifest_with_an_unknown_status_or_field_is_refused(written):
    data = json.loads(written.read_text(encoding="utf-8"))
    data["sources"]["a"]["status"] = "done"
    written.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ManifestError, match=r"sources\.a\.status: Input should be 'ok', 'suspect', 'missing'"):
        Manifest.read(written.parent)
    data["sources"]["a"]["status"] = "ok"
    data["stages"]["ingest"]["sources"]["a"]["extra"] = 1
    written.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ManifestError, match=r"stages\.ingest\.sources\.a\.extra: Extra inputs are not permitted"):
        Manifest.read(written.parent)
