"""The stage machinery (flows.core.stage): units by scope, the runner chaining stages, isolated failures, the
keep/drop loop's accounting and locators, a new stage added as one object in the list, and the pipeline's order
(the quality filters before dedup, so that a defective copy never wins a duplicate cluster)."""

import itertools
import re
import time
from operator import attrgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from test_dedup import rows_of

from m3e_hq.flows.core.accounting import OutputError, parquet_batches
from m3e_hq.flows.core.manifest import check_chain
from m3e_hq.flows.core.stage import (
    Context,
    InProcess,
    Reason,
    Scope,
    Stage,
    StageResult,
    Verdicts,
    run_stages,
    sift,
)
from m3e_hq.flows.pipeline.build import STAGES, Intake, context
from m3e_hq.flows.pipeline.download import obtain_sources
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.stages.dedup import DEDUP
from m3e_hq.flows.stages.filters import FILTER
from m3e_hq.flows.stages.ingest import INGEST
from m3e_hq.flows.stages.mine import MINE
from m3e_hq.flows.stages.publish import M3E_HQ, STAGE_DIRS, WITH_SCORE
from m3e_hq.flows.stages.publish import STAGES as PUBLISHED_STAGES
from m3e_hq.schemas import M3E_HQ_SCHEMA, row_id
from m3e_hq.sources.catalog import default_catalog

README = Path(__file__).resolve().parent.parent / "README.md"
PHONE = re.compile(r"1[3-9]\d{9}")


class PhoneReason(Reason):
    PHONE_NUMBER = "phone_number", "a side holds a mainland mobile number"


class PhoneParams(BaseModel):
    enabled: bool = True


def drop_phones(inputs: dict[str, Path], params: PhoneParams, context: Context) -> StageResult:
    """A stage written as a new module would be: a verdict per row, `sift` does the rest."""
    def decide(table: pa.Table, offset: int) -> Verdicts:
        texts = zip(table["text"].to_pylist(), table["text_pos"].to_pylist(), strict=True)
        return Verdicts([PhoneReason.PHONE_NUMBER if PHONE.search(q + p) else None for q, p in texts])

    return StageResult([sift((pa.Table.from_batches([b]) for b in parquet_batches(path, 3)), decide,
                             context.build_dir / "phones", "phones", name, M3E_HQ_SCHEMA,
                             f"{path.parent.name}/{path.name}") for name, path in inputs.items()])


PHONES = Stage("phones", PhoneParams, lambda build: PhoneParams(), PhoneReason, drop_phones)


def write_source(folder: Path, name: str, pairs: list[tuple[str, str]]) -> Path:
    path = folder / "in" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows_of(default_catalog(), name, pairs), schema=M3E_HQ_SCHEMA), path)
    return path


def test_units_follow_the_scope_in_catalog_order(catalog):
    inputs = {"lcqmc": Path("b"), "cmrc2018": Path("a")}
    per_source = Stage("s", PhoneParams, attrgetter("x"), PhoneReason, drop_phones)
    assert per_source.units(inputs, None, catalog) == [{"cmrc2018": Path("a")}, {"lcqmc": Path("b")}]
    over_all = Stage("s", PhoneParams, attrgetter("x"), PhoneReason, drop_phones, scope=Scope.ALL)
    assert over_all.units(inputs, None, catalog) == [{"cmrc2018": Path("a"), "lcqmc": Path("b")}]
    assert MINE.scope_for(BuildParams().mine) is Scope.SOURCE
    assert MINE.scope_for(BuildParams(mine={"pool": "all"}).mine) is Scope.ALL


def test_a_new_stage_is_one_object_in_the_list_and_keeps_the_accounting(tmp_path, catalog):
    pairs = [("我的电话是13812345678", "请联系我"), ("今天天气很好", "天气不错"), ("号码", "拨打15900001111"),
             ("一二三", "四五六"), ("电话多少", "没有电话")]
    inputs = {"lcqmc": write_source(tmp_path, "lcqmc", pairs), "BQ": write_source(tmp_path, "BQ", pairs[:2])}
    seen = []
    run = run_stages([PHONES], inputs, None, Context(tmp_path, catalog, tmp_path / "cache"),
                     on_stage=lambda stage, run: seen.append(stage.name))
    counts = {c.source: c for c in run.results["phones"].counts}
    assert seen == ["phones"] and list(counts) == ["BQ", "lcqmc"]  # catalog order
    assert (counts["lcqmc"].read, counts["lcqmc"].kept, counts["lcqmc"].dropped) == (5, 3, {"phone_number": 2})
    dropped = pq.read_table(tmp_path / "phones" / "dropped" / "lcqmc.parquet").to_pylist()
    assert [d["locator"] for d in dropped] == ["in/lcqmc.parquet#0", "in/lcqmc.parquet#2"]  # across batches of 3
    kept = pq.read_table(run.results["phones"].outputs["lcqmc"])["text"].to_pylist()
    assert kept == ["今天天气很好", "一二三", "电话多少"]


def slow_phones(inputs: dict[str, Path], params: PhoneParams, context: Context) -> StageResult:
    """A stage that decides for a while before it writes (as dedup and mining do)."""
    time.sleep(0.5)
    return drop_phones(inputs, params, context)


def test_seconds_time_the_whole_unit_shared_out_by_rows_read(tmp_path, catalog):
    pairs = [("今天天气很好", "天气不错")] * 3
    inputs = {"lcqmc": write_source(tmp_path, "lcqmc", pairs), "BQ": write_source(tmp_path, "BQ", pairs[:1])}
    slow = Stage("phones", PhoneParams, lambda build: PhoneParams(), PhoneReason, slow_phones, scope=Scope.ALL)
    run = run_stages([slow], inputs, None, Context(tmp_path, catalog, tmp_path / "cache"))
    seconds = {c.source: c.seconds for c in run.results["phones"].counts}
    assert sum(seconds.values()) >= 0.5  # not only the writing
    assert seconds["lcqmc"] == pytest.approx(3 * seconds["BQ"], rel=0.01)  # 3 rows read against 1


def test_an_isolated_stage_fails_one_source_and_others_go_on(tmp_path, catalog):
    def explodes_on_bq(inputs, params, context):
        if "BQ" in inputs:
            raise ValueError("bad BQ file")
        return drop_phones(inputs, params, context)

    inputs = {"lcqmc": write_source(tmp_path, "lcqmc", [("一二", "三四")]), "BQ": write_source(tmp_path, "BQ", [])}
    ctx = Context(tmp_path, catalog, tmp_path / "cache")
    isolated = Stage("phones", PhoneParams, lambda b: PhoneParams(), PhoneReason, explodes_on_bq, isolated=True)
    run = run_stages([isolated, PHONES], inputs, None, ctx)
    assert run.failed == {"BQ": "ValueError: bad BQ file"}
    assert list(run.results["phones"].outputs) == ["lcqmc"]  # the next stage ran on what was left
    with pytest.raises(ValueError, match="bad BQ file"):
        run_stages([Stage("phones", PhoneParams, lambda b: PhoneParams(), PhoneReason, explodes_on_bq)], inputs,
                   None, ctx)

    def disk_full(inputs, params, context):
        raise OutputError(28, "No space left on device", str(tmp_path))

    with pytest.raises(OutputError):
        run_stages([Stage("phones", PhoneParams, lambda b: PhoneParams(), PhoneReason, disk_full, isolated=True)],
                   inputs, None, ctx)


def test_the_stage_list_runs_in_process_like_the_build(tmp_path, catalog):
    params = BuildParams(samples=True, sources=["lcqmc", "ocnli"], out_dir=tmp_path)
    intake = Intake.of(obtain_sources(params))
    cpu = [stage for stage in STAGES if stage is not MINE]
    run = run_stages(cpu, intake.files, params, context(params))
    assert list(run.results) == ["ingest", "filter", "dedup"] and run.failed == {}
    for before, after in itertools.pairwise(cpu):
        reads = {c.source: c.read for c in run.results[after.name].counts}
        assert reads == {c.source: c.kept for c in run.results[before.name].counts}, after.name


def test_every_stage_reason_is_a_row_of_the_readme():
    readme = README.read_text(encoding="utf-8")
    rows = re.findall(r"^\| ((?:`\w+`(?: / )?)+) \|", readme, re.MULTILINE)
    documented = {code for row in rows for code in re.findall(r"`(\w+)`", row)}
    missing = [f"{stage.name}: {reason}" for stage in STAGES for reason in stage.reasons if reason not in documented]
    assert missing == [] and all(reason.description for stage in STAGES for reason in stage.reasons)


# Two clean SimCLUE pairs, each with a copy of the same dedup key that a filter drops: one U+FFFD inside the query
# (mojibake), 600 trailing 。 on the positive (too long: 608 characters > 512).
CLEAN = [("我听了并不惊奇。", "我听了并不吃惊。"), ("伟大的人是如何倒下的！", "最有权势的人失败了！")]
DEFECTIVE = [("我听了并不\ufffd惊奇。", "我听了并不吃惊。"), ("伟大的人是如何倒下的！", "最有权势的人失败了！" + "。" * 600)]
WHY = ["mojibake", "too_long"]


def twins_first(source: str) -> list[dict]:
    """Each clean pair and its defective twin as rows of `source`, the twin with the smaller id, so that dedup's
    survivor rule (commercial use, quality, catalog position, then id) prefers the twin."""
    rows = []
    for k, (clean, defective) in enumerate(zip(CLEAN, DEFECTIVE, strict=True)):
        clean_id = row_id(source, "train", f"clean-{k}", *clean)
        n = next(n for n in itertools.count() if row_id(source, "train", f"twin-{k}-{n}", *defective) < clean_id)
        rows += [{"id": row_id(source, "train", f"twin-{k}-{n}", *defective), "text": defective[0],
                  "text_pos": defective[1]}, {"id": clean_id, "text": clean[0], "text_pos": clean[1]}]
    rows.append({"id": row_id(source, "train", "other", "你叫什么名字", "怎么称呼你"), "text": "你叫什么名字",
                 "text_pos": "怎么称呼你"})
    template = rows_of(default_catalog(), source, [("", "")])[0]
    return [{**template, **row} for row in rows]


def test_the_filters_run_before_dedup_so_a_defective_twin_never_wins_over_the_clean_pair(tmp_path, catalog):
    names = tuple(stage.name for stage in STAGES)
    assert names == ("ingest", "filter", "dedup", "mine")
    # Publish follows: m3e-hq is the last curation stage's rows, its cards list the stages in the order they ran.
    assert STAGE_DIRS[M3E_HQ] == DEDUP.name and PUBLISHED_STAGES == {M3E_HQ: names[:-1], WITH_SCORE: names}
    rows = twins_first("SimCLUE")
    ingested = tmp_path / "build" / "ingest" / "SimCLUE.parquet"  # stands in for the ingest stage's output
    ingested.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=M3E_HQ_SCHEMA), ingested)
    by_id = {r["id"]: r for r in rows}
    clean_ids = [r["id"] for r in rows if (r["text"], r["text_pos"]) in CLEAN]
    twin_ids = [r["id"] for r in rows if (r["text"], r["text_pos"]) in DEFECTIVE]

    # Dedup on its own keeps each twin (it ranks first) and drops the clean pair: what the old order lost.
    alone = run_stages([DEDUP], {"SimCLUE": ingested}, BuildParams(), Context(tmp_path / "alone", catalog,
                                                                              tmp_path / "cache"), InProcess())
    kept_alone = pq.read_table(alone.results["dedup"].outputs["SimCLUE"])["id"].to_pylist()
    assert set(twin_ids) <= set(kept_alone) and not set(clean_ids) & set(kept_alone)

    # The pipeline's own order: the filters drop the twins, dedup never sees them, the clean pairs are m3e-hq.
    curation = [stage for stage in STAGES if stage not in (INGEST, MINE)]
    build = tmp_path / "build"
    run = run_stages(curation, {"SimCLUE": ingested}, BuildParams(), Context(build, catalog, tmp_path / "cache"),
                     InProcess())
    published = pq.read_table(build / STAGE_DIRS[M3E_HQ] / "SimCLUE.parquet").to_pylist()
    assert sorted(r["id"] for r in published) == sorted(clean_ids + [rows[-1]["id"]])
    assert all(by_id[r["id"]]["text_pos"] == r["text_pos"] for r in published)
    filtered = pq.read_table(build / FILTER.name / "dropped" / "SimCLUE.parquet").to_pylist()
    assert {r["id"]: r["reason"] for r in filtered} == dict(zip(twin_ids, WHY, strict=True))
    assert all(r["locator"].startswith("ingest/SimCLUE.parquet#") for r in filtered)
    deduped = pq.read_table(build / DEDUP.name / "dropped" / "SimCLUE.parquet").to_pylist()
    assert not {r["id"] for r in deduped} & set(twin_ids + clean_ids)

    # The accounting: per stage rows read = rows kept + dropped by reason, and each stage read what the one before
    # kept.
    counts = {name: {c.source: c for c in result.counts} for name, result in run.results.items()}
    f, d = counts["filter"]["SimCLUE"], counts["dedup"]["SimCLUE"]
    assert (f.read, f.kept, f.dropped) == (5, 3, {"mojibake": 1, "too_long": 1})
    assert (d.read, d.kept, d.dropped) == (f.kept, 3, {})
    for c in (f, d):
        c.check()
    check_chain({name: result.counts for name, result in run.results.items()})
