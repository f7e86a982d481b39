"""The ingest stage: accounting identity for every source, deterministic ids, clean valid rows, atomic outputs."""

import codecs
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m3e_hq.flows.core.accounting import AccountingError, StageCounts, StageWriter
from m3e_hq.flows.stages.ingest import ingest_source
from m3e_hq.schemas import DROPPED_SCHEMA, M3E_HQ_SCHEMA, SchemaError, validate_table
from m3e_hq.sources.catalog import default_catalog
from m3e_hq.sources.layout import SAMPLES_DIR, locate
from m3e_hq.sources.readers import SourceFile

NAMES = default_catalog().names


@pytest.mark.parametrize("name", NAMES)
def test_accounting_identity_and_outputs_for_every_source(samples_build, catalog, name):
    result = next(r for r in samples_build["results"] if r.source == name)
    counts = result.counts
    kept = pq.read_table(counts.kept_path)
    dropped = pq.read_table(counts.dropped_path)
    # the files hold exactly what was counted, and every row read is in one of them
    assert counts.read == kept.num_rows + dropped.num_rows == counts.kept + counts.dropped_total
    assert kept.schema.equals(M3E_HQ_SCHEMA, check_metadata=False)
    assert dropped.schema.equals(DROPPED_SCHEMA, check_metadata=False)
    validate_table(kept, M3E_HQ_SCHEMA)
    source = catalog.get(name)
    assert set(kept.column("source").to_pylist()) <= {name}
    assert set(kept.column("commercial").to_pylist()) <= {source.commercial.value}
    assert set(kept.column("homogeneous").to_pylist()) <= {source.homogeneous}
    assert set(kept.column("split").to_pylist()) <= {g.split for g in source.files}
    reasons = dropped.column("reason").to_pylist()
    assert {r: reasons.count(r) for r in set(reasons)} == counts.dropped
    # nothing is quarantined without the raw row it came from
    assert all(raw for raw in dropped.column("raw").to_pylist())


def test_manifest_accounts_for_every_row(samples_build):
    manifest = json.loads(Path(samples_build["manifest"]).read_text(encoding="utf-8"))
    ingest = manifest["stages"]["ingest"]
    assert len(ingest["sources"]) == 29
    assert ingest["totals"]["read"] == ingest["totals"]["kept"] + sum(ingest["totals"]["dropped"].values())
    for name, counts in ingest["sources"].items():
        assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()), name
        assert manifest["sources"][name]["status"] == "ok"
    assert manifest["params"]["samples"] is True


def test_kept_text_is_cleaned(samples_build):
    for result in samples_build["results"]:
        kept = pq.read_table(result.counts.kept_path)
        for column in ("text", "text_pos"):
            for value in kept.column(column).to_pylist():
                assert value == value.strip()
                assert not any(c in value for c in "\u200b\u200c\u200d\u2060\ufeff\x00\x07\r"), (result.source, value)
                assert not any(e in value for e in ("\\u200b", "\\u003d", "&nbsp;", "<br")), (result.source, value)


def test_source_specific_mapping_on_the_samples(samples_build):
    def kept(name):
        result = next(r for r in samples_build["results"] if r.source == name)
        return pq.read_table(result.counts.kept_path).to_pylist()

    miracl = kept("miracl-corpus")
    assert not any(c in row["text"] + row["text_pos"] for row in miracl for c in "長臺歷這個們")
    wiki = kept("wiki_atomic_edit")
    assert all("  " not in r["text"] and not r["text_pos"].endswith("\n") for r in wiki)
    assert sum(" " in r["text"] for r in wiki) < len(wiki) / 2  # de-tokenised: only Latin words keep spaces
    nl2sql = kept("Zhuiyi-NL2SQL")
    assert all(r["text_pos"].startswith("SELECT ") and " FROM " in r["text_pos"] for r in nl2sql)
    xlsum = kept("xlsum")
    assert len({r["text"] for r in xlsum}) < len(xlsum)  # two pairs per article share its title
    squad = kept("Chinese-SQuAD")  # real \u003d, planted &nbsp; and <br clear="all">, decoded
    assert sum("较小的项。\n这使得界限" in r["text_pos"] and "T（n）= 7n2" in r["text_pos"] for r in squad) == 2


@pytest.mark.parametrize("name", ["lawzhidao", "alpaca_gpt4", "SimCLUE", "Chinese-SQuAD", "Zhuiyi-NL2SQL"])
def test_files_saved_with_a_byte_order_mark_give_what_they_give_without(tmp_path, catalog, name):
    """A UTF-8 CSV, JSON, JSON Lines or SQuAD file (and a tables file) starting with a BOM, as Windows tools save them."""
    source = catalog.get(name)
    shutil.copytree(SAMPLES_DIR / name, tmp_path / name)
    for path in (tmp_path / name).rglob("*"):
        if path.is_file():
            path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    plain = ingest_source(source, locate(source, SAMPLES_DIR / name).files, tmp_path / "plain")
    marked = ingest_source(source, locate(source, tmp_path / name).files, tmp_path / "marked")
    assert (marked.read, marked.kept, marked.dropped) == (plain.read, plain.kept, plain.dropped)
    assert pq.read_table(marked.kept_path).equals(pq.read_table(plain.kept_path))


# pluto-junzeng/ChineseSquad @ 6cc7b1c squad_2.0/dev-v2.0-zh.json, 黑死病 paragraphs[18] (../shared/data/real/
# chinese_squad/), cut before its last sentence: the literal \u200b\u200b is real; the tag and the entities are planted
# as HTML leaves them.
PLAGUE_CONTEXT = ("在整个14至17世纪，鼠疫多次返回困扰欧洲和地中海。<br clear=\"all\">根据Biraben的说法，瘟疫每年在1346年至1671年之间"
                  "\\u200b\\u200b出现在欧洲某个地方。第二次大流行在接下来的几年特别普遍：1360-63；&nbsp;随后的爆发虽然很严重，"
                  "但标志着欧洲大部分地区（18世纪）和北非地区（19世纪）的消退。")
PLAGUE_DECODED = ("在整个14至17世纪，鼠疫多次返回困扰欧洲和地中海。\n根据Biraben的说法，瘟疫每年在1346年至1671年之间出现在欧洲某个"
                  "地方。第二次大流行在接下来的几年特别普遍：1360-63； 随后的爆发虽然很严重，但标志着欧洲大部分地区（18世纪）和北非"
                  "地区（19世纪）的消退。")


def test_text_still_encoded_is_decoded_or_quarantined_with_a_reason(tmp_path, catalog):
    answer = [{"text": "在整个14至17世纪", "answer_start": 0}]
    qas = [{"question": "瘟疫什么时候回到欧洲？", "id": "572654e2708984140094c2b7", "answers": answer, "is_impossible": False},
           {"question": "瘟疫什么时候&amp;nbsp;回到欧洲？", "id": "x1", "answers": answer, "is_impossible": False}]
    doc = {"version": None, "data": [{"title": "黑死病", "paragraphs": [{"qas": qas, "context": PLAGUE_CONTEXT}]}]}
    path = tmp_path / "dev-zen-v1.0.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    counts = ingest_source(catalog.get("Chinese-SQuAD"), [SourceFile(path, path.name, "validation")], tmp_path / "out")
    assert (counts.read, counts.kept, counts.dropped) == (2, 1, {"encoded_text": 1})
    kept = pq.read_table(counts.kept_path).to_pylist()
    assert [(r["text"], r["text_pos"]) for r in kept] == [("瘟疫什么时候回到欧洲？", PLAGUE_DECODED)]
    dropped = pq.read_table(counts.dropped_path).to_pylist()
    assert json.loads(dropped[0]["raw"])["question"] == "瘟疫什么时候&amp;nbsp;回到欧洲？"  # as it was


def test_a_parquet_value_python_cannot_hold_quarantines_its_row_only(tmp_path, catalog):
    """cmrc2018's real train sample with a crawl-time column: a timestamp and a date past year 9999 in two rows."""
    source = catalog.get("cmrc2018")
    sample = SAMPLES_DIR / "cmrc2018" / "data" / "train-00000-of-00001.parquet"
    table = pq.read_table(sample)
    seconds = [0] * table.num_rows
    seconds[2] = 10**12  # year 33658
    days = [0] * table.num_rows
    days[20] = 2**30
    table = table.append_column("crawled_at", pa.array(seconds, pa.int64()).cast(pa.timestamp("s")))
    table = table.append_column("crawled_on", pa.array(days, pa.int32()).cast(pa.date32()))
    path = tmp_path / "raw" / "data" / sample.name
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    plain = ingest_source(source, [SourceFile(sample, "data/" + sample.name, "train")], tmp_path / "plain")
    odd = ingest_source(source, [SourceFile(path, "data/" + sample.name, "train")], tmp_path / "odd")
    assert (odd.read, odd.kept) == (plain.read, plain.kept - 2)
    assert odd.dropped == {**plain.dropped, "unreadable_value": 2}
    dropped = [r for r in pq.read_table(odd.dropped_path).to_pylist() if r["reason"] == "unreadable_value"]
    assert [r["locator"] for r in dropped] == [f"data/{sample.name}:2", f"data/{sample.name}:20"]
    raw = json.loads(dropped[0]["raw"])
    assert raw["question"] == table.column("question")[2].as_py() and "out of range" in raw["crawled_at"]


def test_a_tableqa_number_too_large_for_a_real_is_bad_sql(tmp_path, catalog):
    """A real val.json question (TableQA @ 46aff3e, line 6) whose condition value on a real column is 10**400."""
    source = catalog.get("Zhuiyi-NL2SQL")
    shutil.copytree(SAMPLES_DIR / source.name, tmp_path / source.name)
    questions = tmp_path / source.name / "val" / "val.json"
    line = json.loads(questions.read_bytes().split(b"\n")[5])  # the file holds a planted non-UTF-8 line
    assert line["sql"]["conds"] == [[7, 1, "11"]]
    line["sql"]["conds"] = [[7, 1, 10**400]]
    with questions.open("ab") as handle:
        handle.write(b"\n" + json.dumps(line, ensure_ascii=False).encode() + b"\n")
    plain = ingest_source(source, locate(source, SAMPLES_DIR / source.name).files, tmp_path / "plain")
    odd = ingest_source(source, locate(source, tmp_path / source.name).files, tmp_path / "odd")
    assert (odd.read, odd.kept) == (plain.read + 1, plain.kept)
    assert odd.dropped == {**plain.dropped, "bad_sql": plain.dropped["bad_sql"] + 1}


def test_ids_are_identical_across_two_runs(tmp_path, catalog):
    source = catalog.get("SimCLUE")
    files = locate(source, SAMPLES_DIR / source.name).files
    first = ingest_source(source, files, tmp_path / "a")
    second = ingest_source(source, files, tmp_path / "b")
    assert pq.read_table(first.kept_path).column("id") == pq.read_table(second.kept_path).column("id")


def test_absurdly_long_text_is_quarantined(tmp_path, catalog):
    source = catalog.get("ocnli")
    counts = ingest_source(source, locate(source, SAMPLES_DIR / source.name).files, tmp_path, max_chars=12)
    assert counts.dropped.get("text_too_long", 0) > 0
    counts.check()


def test_a_failing_stage_leaves_no_output(tmp_path):
    stage_dir = tmp_path / "ingest"
    with pytest.raises(RuntimeError, match="boom"), StageWriter(stage_dir, "ingest", "s", DROPPED_SCHEMA) as writer:
        writer.read()
        writer.drop({"source": "s", "locator": "f:1", "reason": "empty_text"})
        raise RuntimeError("boom")
    assert not list(stage_dir.rglob("*.parquet")) and not list(stage_dir.rglob("*.tmp"))


def test_unaccounted_rows_fail_the_stage(tmp_path):
    with (pytest.raises(AccountingError, match="read 2 rows but kept 0 and dropped 1"),
          StageWriter(tmp_path, "ingest", "s", DROPPED_SCHEMA) as writer):
        writer.read(2)
        writer.drop({"source": "s", "locator": "f:1", "reason": "empty_text"})
    assert not list(tmp_path.rglob("*.parquet"))
    with pytest.raises(AccountingError):
        StageCounts("ingest", "s", read=3, kept=1, dropped={"x": 1}).check()


def test_stage_writer_takes_whole_tables_and_counts_their_reasons(tmp_path, catalog):
    source = catalog.get("ocnli")
    ingested = ingest_source(source, locate(source, SAMPLES_DIR / source.name).files, tmp_path / "a")
    kept = pq.read_table(ingested.kept_path)
    dropped = pq.read_table(ingested.dropped_path)
    with StageWriter(tmp_path / "b", "copy", "ocnli", M3E_HQ_SCHEMA) as writer:
        writer.read(kept.num_rows + dropped.num_rows)
        writer.keep_table(kept)
        writer.drop_table(dropped)
    assert (writer.counts.kept, writer.counts.dropped) == (ingested.kept, ingested.dropped)
    assert pq.read_table(writer.counts.kept_path).equals(kept)
    with (pytest.raises(SchemaError, match="domain.*sports"),
          StageWriter(tmp_path / "c", "copy", "ocnli", M3E_HQ_SCHEMA) as writer):
        writer.keep_table(kept.set_column(4, "domain", pa.array(["sports"] * kept.num_rows)))
    assert not list((tmp_path / "c").rglob("*.parquet"))
