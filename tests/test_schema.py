"""The m3e-hq and m3e-hq-with-score schemas, the row id, and the one validation function."""

import json

import pyarrow as pa
import pytest

from m3e_hq.schemas import (
    M3E_HQ_SCHEMA,
    M3E_HQ_WITH_SCORE_SCHEMA,
    CacheState,
    Domain,
    ObtainStatus,
    SchemaError,
    SourceStatus,
    TaskType,
    row_id,
    validate_table,
)


def good_row(**overrides) -> dict:
    row = {
        "id": row_id("ocnli", "train", "f:1", "甲", "乙"),
        "source": "ocnli", "text": "今天天气怎么样", "text_pos": "今天的天气如何", "domain": "colloquial",
        "task_type": "nli", "prompt": "inference", "homogeneous": True, "commercial": "no", "research_use": "yes",
        "license": "CC BY-NC 2.0", "quality": "good", "lang": "zh", "split": "train",
    }
    row.update(overrides)
    return row


def table(rows: list[dict], schema: pa.Schema = M3E_HQ_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def test_row_id_is_deterministic_and_depends_on_every_part():
    parts = ("ocnli", "train", "train.jsonl:3", "甲", "乙")
    assert row_id(*parts) == row_id(*parts)
    assert len(row_id(*parts)) == 24
    for i in range(len(parts)):
        changed = list(parts)
        changed[i] += "x"
        assert row_id(*changed) != row_id(*parts)
    # the separator keeps parts apart: moving a character between fields changes the id
    assert row_id("a", "b", "c", "甲乙", "") != row_id("a", "b", "c", "甲", "乙")


def test_a_valid_table_passes():
    validate_table(table([good_row(), good_row(id=row_id("x", "y", "z", "1", "2"))]), M3E_HQ_SCHEMA)


def test_validation_lists_every_problem():
    rows = [good_row(domain="sports", commercial="maybe"), good_row(text="  ")]
    with pytest.raises(SchemaError) as err:
        validate_table(table(rows), M3E_HQ_SCHEMA)
    message = str(err.value)
    assert "domain" in message and "sports" in message
    assert "commercial" in message and "maybe" in message
    assert "duplicate ids" in message
    assert "'text' has 1 empty texts" in message


def test_missing_columns_wrong_types_and_nulls_are_reported():
    t = table([good_row()]).drop_columns(["lang"])
    with pytest.raises(SchemaError, match="missing columns \\['lang'\\]"):
        validate_table(t, M3E_HQ_SCHEMA)
    t = table([good_row()]).set_column(7, "homogeneous", pa.array(["yes"]))
    with pytest.raises(SchemaError, match="'homogeneous' has type string, expected bool"):
        validate_table(t, M3E_HQ_SCHEMA)
    nullable = pa.schema([f.with_nullable(True) for f in M3E_HQ_SCHEMA])
    t = pa.Table.from_pylist([good_row(text_pos=None)], schema=nullable).cast(nullable)
    with pytest.raises(SchemaError, match="'text_pos' has 1 nulls"):
        validate_table(t, M3E_HQ_SCHEMA)
    with pytest.raises(SchemaError, match="not 24 lowercase hex"):
        validate_table(table([good_row(id="ABC")]), M3E_HQ_SCHEMA)


def test_with_score_schema_extends_m3e_hq_and_checks_negative_scores():
    assert M3E_HQ_WITH_SCORE_SCHEMA.names[: len(M3E_HQ_SCHEMA)] == M3E_HQ_SCHEMA.names
    scored = good_row(text_neg=["明天下雨吗"], score_pos=0.9, score_neg=[0.2], teacher="bge-reranker-base",
                      score_scale="sigmoid[0,1]")
    validate_table(table([scored], M3E_HQ_WITH_SCORE_SCHEMA), M3E_HQ_WITH_SCORE_SCHEMA)
    scored["score_neg"] = [0.2, 0.1]
    with pytest.raises(SchemaError, match="text_neg and score_neg differ"):
        validate_table(table([scored], M3E_HQ_WITH_SCORE_SCHEMA), M3E_HQ_WITH_SCORE_SCHEMA)


def test_enumerations_keep_the_tables_chinese_labels():
    assert Domain.from_label("百科") is Domain.ENCYCLOPEDIA
    assert TaskType.NL2SQL.label_zh == "NL2SQL" and TaskType("mrc").label_zh == "机器阅读理解"
    with pytest.raises(ValueError, match="not a Domain label"):
        Domain.from_label("体育")


def test_statuses_are_their_codes_and_say_which_obtained_sources_have_files():
    assert [s for s in ObtainStatus if s.ok] == ["cached", "downloaded", "present", "partial"]
    assert ObtainStatus("not downloaded") is ObtainStatus.NOT_DOWNLOADED and not ObtainStatus.FAILED.ok
    assert [str(s) for s in SourceStatus] == ["ok", "suspect", "missing", "skipped", "unavailable", "failed"]
    assert list(CacheState) == ["cached", "failed"]
    assert json.dumps({"status": SourceStatus.OK}) == '{"status": "ok"}' and f"{CacheState.FAILED}" == "failed"
    with pytest.raises(ValueError, match="'done' is not a valid SourceStatus"):
        SourceStatus("done")
