"""A source that yields nothing is not ok: real-shaped wrong files, ingested through the build's ingest stage
(`ingest_one`), make the source `suspect` with the dominant reason, sampled keys and what to check; a minority of
malformed rows, or rows unusable for their content, do not."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from m3e_hq.flows.pipeline.build import ingest_one
from m3e_hq.flows.pipeline.suspect import STRUCTURAL_SHARE
from m3e_hq.schemas import ObtainStatus
from m3e_hq.sources.fetch import Obtained


def ingest(tmp_path: Path, name: str, files: dict[str, bytes]):
    folder = tmp_path / "raw" / name
    for relpath, content in files.items():
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        (folder / relpath).write_bytes(content)
    return ingest_one(Obtained(name, ObtainStatus.PRESENT, folder), tmp_path / "out", 100_000)


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def pairs(n: int) -> list[dict]:
    """SimCLUE positive pairs as its release writes them."""
    return [{"query": f"花呗怎么还款第{i}次", "title": f"花呗还款的方法{i}"} for i in range(n)]


def test_records_without_the_keys_the_adapter_reads_make_the_source_suspect(tmp_path):
    # SimCLUE's train_pair.json (sentence1, sentence2, label) saved under the positive pairs' name.
    records = [{"sentence1": f"借呗能提前还吗{i}", "sentence2": f"借呗可以提前还款吗{i}", "label": "1"} for i in range(30)]
    result = ingest(tmp_path, "SimCLUE", {"train_pair_postive.json": jsonl(records)})
    assert result.status == "suspect" and result.counts.kept == 0
    suspect = result.suspect
    assert (suspect.reason, suspect.rows, suspect.considered, suspect.kept) == ("missing_field", 30, 30, 0)
    assert suspect.sample_keys == [["sentence1", "sentence2", "label"]] and suspect.sample_rows == []
    assert "text ← query, text_pos ← title" in suspect.check
    assert result.message.startswith("missing_field quarantined 30 of 30 rows, 0 kept; keys of sampled "
                                     "rows: ['sentence1', 'sentence2', 'label']; the records lack the fields")
    assert result.summary()["suspect"]["sample_keys"] == [["sentence1", "sentence2", "label"]]


def test_a_minority_of_malformed_rows_is_ok_and_a_majority_is_not(tmp_path):
    assert STRUCTURAL_SHARE == 0.5
    broken = [{"q": "没有query的记录"}]
    minority = ingest(tmp_path / "a", "SimCLUE", {"train_pair_postive.json": jsonl(pairs(10) + broken * 10)})
    assert minority.status == "ok" and minority.counts.dropped == {"missing_field": 10}  # half: not most
    majority = ingest(tmp_path / "b", "SimCLUE", {"train_pair_postive.json": jsonl(pairs(10) + broken * 11)})
    assert majority.status == "suspect" and majority.suspect.rows == 11 and majority.counts.kept == 10
    assert majority.message.startswith("missing_field quarantined 11 of 21 rows, 10 kept; keys of sampled "
                                       "rows: ['q']")


def test_structural_reasons_count_together_and_the_dominant_one_is_named(tmp_path):
    lines = jsonl(pairs(4) + [{"query": 7, "title": "数字不是文本"}] * 3 + [{"query": "只有问题"}] * 2)
    result = ingest(tmp_path, "SimCLUE", {"train_pair_postive.json": lines + b'{"query": "cut\n' * 2})
    assert result.counts.dropped == {"invalid_json": 2, "missing_field": 2, "wrong_type": 3}
    assert result.status == "suspect" and (result.suspect.reason, result.suspect.structural) == ("wrong_type", 7)


def test_a_json_document_where_json_lines_are_expected_names_its_first_characters(tmp_path):
    document = json.dumps(pairs(12), ensure_ascii=False, indent=2).encode("utf-8")  # one JSON array, pretty-printed
    result = ingest(tmp_path, "SimCLUE", {"train_pair_postive.json": document})
    assert result.status == "suspect" and result.suspect.reason == "invalid_json"
    assert result.suspect.sample_keys == [] and result.suspect.sample_rows[:2] == ["[", "  {"]
    assert "JSON Lines vs. one JSON document" in result.message


def test_an_nli_file_with_renamed_text_fields_is_suspect_though_the_label_rule_leaves_most_rows_out(tmp_path):
    # The label is read, so two thirds are label_filtered by design; the entailment third lacks its text fields.
    table = pa.table({"premise": [f"他在{i}号去了北京" for i in range(30)],
                      "hypothesis": [f"他去过北京{i}" for i in range(30)], "label": [0, 1, 2] * 10})
    result = ingest(tmp_path, "ocnli", {"ocnli/train-00000-of-00001.parquet": parquet(table)})
    assert result.counts.dropped == {"label_filtered": 20, "missing_field": 10}
    assert result.status == "suspect" and (result.suspect.rows, result.suspect.considered) == (10, 10)
    assert result.suspect.sample_keys == [["premise", "hypothesis", "label"]]
    assert "text ← sentence1, text_pos ← sentence2; label in [1]" in result.suspect.check


def test_labels_the_catalog_does_not_keep_leave_nothing_and_say_what_to_check(tmp_path):
    table = pa.table({"sentence1": [f"怎么开通花呗{i}" for i in range(20)],
                      "sentence2": [f"花呗如何开通{i}" for i in range(20)], "label": ["entailment"] * 20})
    result = ingest(tmp_path, "lcqmc", {"LCQMC/train/0000.parquet": parquet(table)})
    assert result.counts.dropped == {"label_filtered": 20} and result.status == "suspect"
    assert result.suspect.reason == "label_filtered" and result.suspect.considered == 0
    assert "no record has a label the catalog keeps (text ← sentence1, text_pos ← sentence2; label in [1])" in (
        result.message)


def test_rows_unusable_for_their_content_do_not_make_a_source_suspect(tmp_path):
    empty = [{"query": f"只有问题{i}", "title": "   "} for i in range(30)]
    result = ingest(tmp_path, "SimCLUE", {"train_pair_postive.json": jsonl(pairs(5) + empty)})
    assert result.counts.dropped == {"empty_text": 30} and result.status == "ok" and result.suspect is None
    nothing = ingest(tmp_path / "none", "SimCLUE", {"train_pair_postive.json": jsonl(empty)})
    assert nothing.status == "suspect" and nothing.suspect.reason == "empty_text"  # but something must be kept
    assert "ingest/dropped/SimCLUE.parquet" in nothing.message


def test_a_csv_whose_quoting_is_broken_on_most_rows_is_suspect(tmp_path):
    # lawzhidao's columns, every reply opening a quote it never closes (a file saved with another quote character)
    rows = "".join(f'劳动合同到期不续签有补偿吗{i},,"有的。用人单位不续签的，应当支付经济补偿,1\n' for i in range(12))
    result = ingest(tmp_path, "lawzhidao", {"lawzhidao_filter.csv": ("title,question,reply,is_best\n" + rows).encode()})
    assert result.counts.dropped == {"invalid_csv": 12} and result.counts.kept == 0
    assert result.status == "suspect" and result.suspect.reason == "invalid_csv"
    assert "quoting is broken" in result.suspect.check
