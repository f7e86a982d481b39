"""Every adapter on every shipped sample (counts planted by hand in tests/expected/), and the readers' edge cases."""

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import EXPECTED_DIR

from m3e_hq.flows.stages.ingest import ingest_source
from m3e_hq.sources.adapters.flat import adapt_flat, detokenize, zh_cn
from m3e_hq.sources.adapters.squad import adapt_squad
from m3e_hq.sources.adapters.tableqa import BadSQL, render_sql
from m3e_hq.sources.catalog import FlatAdapter, SquadAdapter, default_catalog
from m3e_hq.sources.layout import SAMPLES_DIR, locate
from m3e_hq.sources.readers import SourceFile, read_records

NAMES = default_catalog().names


def expected(name: str) -> dict:
    return json.loads((EXPECTED_DIR / f"{name}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", NAMES)
def test_every_source_ships_a_sample_in_its_native_layout(catalog, name):
    located = locate(catalog.get(name), SAMPLES_DIR / name)
    assert located.files, f"no sample files for {name}"
    assert (EXPECTED_DIR / f"{name}.json").exists()


@pytest.mark.parametrize("name", NAMES)
def test_sample_counts_match_what_was_planted(samples_build, name):
    result = next(r for r in samples_build["results"] if r.source == name)
    assert result.status == "ok", result.message
    want = expected(name)
    counts = result.counts
    assert (counts.read, counts.kept, counts.dropped) == (want["read"], want["kept"], dict(sorted(want["dropped"].items())))
    kept = pq.read_table(counts.kept_path)
    splits = dict(Counter(kept.column("split").to_pylist()))
    assert splits == {split: n for split, n in want["splits"].items() if n}


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_small_and_hold_malformed_rows(samples_build, name):
    counts = next(r for r in samples_build["results"] if r.source == name).counts
    assert 20 <= counts.read <= 220
    malformed = set(counts.dropped) - {"label_filtered", "unanswerable"}
    assert len(malformed) >= 2, f"{name} quarantines only {malformed}"


def sample_file(tmp_path: Path, name: str, content: bytes, split: str = "train") -> SourceFile:
    path = tmp_path / name
    path.write_bytes(content)
    return SourceFile(path, name, split)


def test_jsonl_reader_counts_every_non_blank_line(tmp_path):
    file = sample_file(tmp_path, "a.jsonl", b'{"a": 1}\n\n  \n{"a": \n\xff\xfe\n[1]\n')
    records = list(read_records(file, "jsonl"))
    assert [(r.locator, r.reason) for r in records] == [
        ("a.jsonl:1", None), ("a.jsonl:4", "invalid_json"), ("a.jsonl:5", "invalid_utf8"), ("a.jsonl:6", None)]
    assert records[2].raw == "\\xff\\xfe\n"


def test_truncated_gzip_is_reported_not_raised(tmp_path):
    data = gzip.compress(b"".join(b'{"title": "t%d", "text": "x"}\n' % i for i in range(2000)))
    file = sample_file(tmp_path, "docs.jsonl.gz", data[: len(data) // 2])
    records = list(read_records(file, "jsonl"))
    assert records[-1].reason == "unreadable_file"
    assert all(r.reason is None for r in records[:-1]) and len(records) > 1


def test_corrupt_parquet_and_bad_json_documents_become_one_quarantined_unit(tmp_path):
    assert [r.reason for r in read_records(sample_file(tmp_path, "x.parquet", b"PAR1 nope"), "parquet")] == [
        "unreadable_file"]
    assert [r.reason for r in read_records(sample_file(tmp_path, "x.json", b'[{"a": 1}'), "json")] == [
        "invalid_json"]
    assert [r.reason for r in read_records(sample_file(tmp_path, "y.json", b'{"rows": []}'), "json", "utf-8",
                                           "data")] == ["invalid_record"]
    gbk = "成语".encode("gbk")
    assert [r.reason for r in read_records(sample_file(tmp_path, "z.json", gbk), "json")] == ["invalid_utf8"]


def test_csv_with_undecodable_bytes_quarantines_only_that_row(tmp_path):
    file = sample_file(tmp_path, "x.csv", "title,reply\n问题,回答\n".encode() + b"\xff\xfe,bad\n" + "甲,乙\n".encode())
    spec = FlatAdapter(name="flat", format="csv", pairs=[{"text": ["title"], "text_pos": ["reply"]}])
    from m3e_hq.flows.stages.ingest import to_row

    outcomes = [to_row(c, {"source": "s"}, 100)[1] for c in adapt_flat([file], spec)]
    assert outcomes == [None, "invalid_utf8", None]


def test_flat_keep_join_alternatives_and_transforms(tmp_path):
    lines = [
        {"q": "長江", "d": "長江", "a": "長江是中國第一長河", "label": 1},  # desc equal to title: not joined
        {"q": "标题", "d": "描述", "b": "答案", "label": 1},  # text_pos from the second alternative
        {"q": "标题", "a": "答案", "label": 0},
        {"q": "标题", "a": "答案"},
    ]
    file = sample_file(tmp_path, "x.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode())
    spec = FlatAdapter(name="flat", format="jsonl", keep={"field": "label", "values": [1]}, transforms=["zh_cn"],
                       pairs=[{"text": ["q", "d"], "text_pos": ["a", "b"]}])
    got = [(c.text, c.text_pos, c.reason) for c in adapt_flat([file], spec)]
    assert got == [("长江", "长江是中国第一长河", None), ("标题\n描述", "答案", None),
                   (None, None, "label_filtered"), (None, None, "missing_field")]


def test_dusql_takes_the_sql_under_query_or_sql_query(tmp_path, catalog):
    """The 千言 release keys the SQL `query`, the older baseline release `sql_query`: both become text_pos."""
    sql = {"except": None, "from": {"conds": [], "table_units": [["table_unit", 0]]}, "groupBy": [], "having": [],
           "intersect": None, "limit": None, "orderBy": [], "select": [False, [[0, [0, [0, 2, False], None]]]],
           "union": None, "where": []}
    records = [{"db_id": "图书", "question": "图书有哪些？", "question_id": "qid1", "query": "select 书名 from 图书",
                "sql": sql},
               {"db_id": "图书", "question": "书名是什么？", "question_id": "qid2", "sql_query": "select 书名 from 图书",
                "sql": sql}]
    file = sample_file(tmp_path, "train.json", json.dumps(records, ensure_ascii=False, indent=4).encode())
    counts = ingest_source(catalog.get("DuSQL"), [file], tmp_path / "out")
    assert (counts.read, counts.kept, counts.dropped) == (2, 2, {})
    kept = pq.read_table(counts.kept_path).to_pylist()
    assert [(r["text"], r["text_pos"]) for r in kept] == [("图书有哪些？", "select 书名 from 图书"),
                                                         ("书名是什么？", "select 书名 from 图书")]


def test_explode_gives_one_pair_per_answer_and_rejects_bad_lists_once(tmp_path):
    lines = [
        {"question": "问", "human_answers": ["甲", "乙"], "chatgpt_answers": ["丙"]},
        {"question": "问", "human_answers": "甲", "chatgpt_answers": ["丙"]},
        {"question": "问", "human_answers": [], "chatgpt_answers": []},
    ]
    file = sample_file(tmp_path, "all.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode())
    spec = FlatAdapter(name="flat", format="jsonl", explode=True,
                       pairs=[{"text": ["question"], "text_pos": ["human_answers"]},
                              {"text": ["question"], "text_pos": ["chatgpt_answers"]}])
    got = [(c.locator, c.text_pos, c.reason) for c in adapt_flat([file], spec)]
    assert got == [("all.jsonl:1#0.0", "甲", None), ("all.jsonl:1#0.1", "乙", None), ("all.jsonl:1#1.0", "丙", None),
                   ("all.jsonl:2", None, "wrong_type"), ("all.jsonl:3", None, "missing_field")]


def test_detokenize_and_zh_cn():
    assert detokenize("他 在 北京 工作\n") == "他在北京工作"
    assert detokenize("我 买 了 iPhone 7 手机") == "我买了 iPhone 7 手机"
    assert zh_cn("臺灣的歷史") == "台湾的历史"


def test_squad_gives_one_pair_per_answerable_question(tmp_path):
    answers = [{"text": "上", "answer_start": 0}]
    doc = {"data": [{"title": "t", "paragraphs": [
        {"context": "上下文", "qas": [
            {"question": "问一", "answers": answers, "is_impossible": False}, {"question": "问二", "is_impossible": True},
            7, {"question": "问四", "answers": []}, {"question": "问五"}, {"question": "问六", "answers": "上"}]},
        {"qas": [{"question": "问三", "answers": answers}]},
        "not a paragraph",
    ]}, 5]}
    file = sample_file(tmp_path, "dev.json", json.dumps(doc, ensure_ascii=False).encode())
    got = [(c.locator, c.text, c.text_pos, c.reason) for c in adapt_squad([file], SquadAdapter(name="squad"))]
    assert got == [
        ("dev.json:0/0/0", "问一", "上下文", None), ("dev.json:0/0/1", None, None, "unanswerable"),
        ("dev.json:0/0/2", None, None, "invalid_record"), ("dev.json:0/0/3", None, None, "unanswerable"),
        ("dev.json:0/0/4", None, None, "missing_field"), ("dev.json:0/0/5", None, None, "wrong_type"),
        ("dev.json:0/1/0", "问三", None, None),
        ("dev.json:0/2", None, None, "invalid_record"), ("dev.json:1", None, None, "invalid_record"),
    ]


# A real paragraph: pluto-junzeng/ChineseSquad @ 6cc7b1c, squad_2.0/dev-v2.0-zh.json, 黑死病 paragraphs[6] (via
# ../shared/data/real/chinese_squad/), its 7 questions cut to 5, the fifth's is_impossible left out (planted); the
# literal \u200b\u200b is in the real context.
BLACK_DEATH_CONTEXT = (
    "在中世纪，医学知识停滞了。当时最权威的说法来自巴黎的医学院，该报告致法国国王，指责天堂，以1345年"
    "三颗行星合在一起的形式引起了“空气中的巨大瘟疫”。这份报告成为了一系列旨在为患者提供建议的瘟疫的第一"
    "份，也是分发最广泛的一份。瘟疫是由恶劣的空气引起\\u200b\\u200b的，这成为最广泛接受的理"
    "论。如今，这被称为弥亚理论。“瘟疫”一词目前没有特殊意义，只有中世纪爆发的流行才使它成为医学术语。")
BLACK_DEATH_QAS = [
    {"question": "黑死病最初应归咎于什么？", "id": "57264b3edd62a815002e80aa", "answers": [{"text": "天堂", "answer_start": 41}],
     "is_impossible": False},
    {"question": "医疗报告是为谁写的？", "id": "57264b3edd62a815002e80ab", "answers": [{"text": "法国国王", "answer_start": 34}],
     "is_impossible": False},
    {"question": "瘟疫蔓延的背后是什么新的，更广泛接受的理论？", "id": "57264b3edd62a815002e80ac",
     "answers": [{"text": "空气中的巨大瘟疫", "answer_start": 65}], "is_impossible": False},
    {"question": "法国国王住在哪个城市？", "id": "5a2ec55da83784001a7d245b", "answers": [], "is_impossible": True},
    {"question": "到底是什么造成了瘟疫？", "id": "5a2ec55da83784001a7d245c", "answers": []},  # is_impossible left out
]


def test_squad_questions_without_answers_are_unanswerable_and_keep_their_context(tmp_path, catalog):
    doc = {"version": None, "data": [{"title": "黑死病", "paragraphs": [
        {"qas": BLACK_DEATH_QAS, "context": BLACK_DEATH_CONTEXT}]}]}
    file = sample_file(tmp_path, "dev-zen-v1.0.json", json.dumps(doc, ensure_ascii=False).encode(), "validation")
    counts = ingest_source(catalog.get("Chinese-SQuAD"), [file], tmp_path / "out")
    assert (counts.read, counts.kept, counts.dropped) == (5, 3, {"unanswerable": 2})
    dropped = pq.read_table(counts.dropped_path).to_pylist()
    assert [json.loads(row["raw"])["id"] for row in dropped] == ["5a2ec55da83784001a7d245b", "5a2ec55da83784001a7d245c"]
    assert all(json.loads(row["raw"])["context"] == BLACK_DEATH_CONTEXT for row in dropped)
    kept = pq.read_table(counts.kept_path).to_pylist()
    assert {row["text_pos"] for row in kept} == {BLACK_DEATH_CONTEXT.replace("\\u200b", "")}


TABLE = {"id": "t1", "name": "Table_t1", "header": ["楼盘", "均价", "城市"], "types": ["text", "real", "text"]}


def test_render_sql_from_the_structured_query():
    sql = {"sel": [1, 0], "agg": [2, 0], "cond_conn_op": 1, "conds": [[2, 2, "上海"], [1, 0, "30000"]]}
    assert render_sql(sql, TABLE) == 'SELECT MAX(均价), 楼盘 FROM Table_t1 WHERE 城市 = "上海" AND 均价 > 30000'
    assert render_sql({"sel": [0], "agg": [0], "cond_conn_op": 0, "conds": []}, TABLE) == "SELECT 楼盘 FROM Table_t1"


@pytest.mark.parametrize("sql", [
    {"sel": [3], "agg": [0], "conds": []},  # column out of range
    {"sel": [0], "agg": [9], "conds": []},  # unknown aggregate
    {"sel": [0], "agg": [0], "conds": [[0, 7, "x"]]},  # unknown operator
    {"sel": [0, 1], "agg": [0], "conds": []},  # sel and agg differ in length
    {"sel": [-1], "agg": [0], "conds": []},
    {"sel": [0], "agg": [0], "conds": [[1, 0, 10**400]]},  # too large for a float, on the real column 均价
    "SELECT 1",
])
def test_render_sql_rejects_malformed_queries(sql):
    with pytest.raises(BadSQL):
        render_sql(sql, TABLE)
