"""The dedup stage (flows.stages.dedup) on ingest outputs written for the test: planted duplicates across sources, the
survivor rule, short texts, evaluation splits and decontamination, and the accounting."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m3e_hq.flows.core.minhash import MinHashParams
from m3e_hq.flows.stages.dedup import (
    DedupParams,
    DedupReason,
    dedup_sources,
    read_eval_texts,
)
from m3e_hq.flows.stages.ingest import tags
from m3e_hq.schemas import M3E_HQ_SCHEMA, row_id

COMMON = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]


def rows_of(catalog, source: str, pairs: list[tuple[str, str]], split: str = "train") -> list[dict]:
    source_tags = tags(catalog.get(source))
    return [{"id": row_id(source, split, str(i), q, p), "text": q, "text_pos": p, "split": split, **source_tags}
            for i, (q, p) in enumerate(pairs)]


def write_ingest(folder, catalog, data: dict[str, list[dict]]) -> dict:
    """Write each source's rows as its ingest output; the inputs of dedup_sources."""
    (folder / "ingest").mkdir(parents=True, exist_ok=True)
    paths = {}
    for source, rows in data.items():
        paths[source] = folder / "ingest" / f"{source}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=M3E_HQ_SCHEMA), paths[source])
    return paths


def outcome(folder, source: str) -> tuple[list[dict], list[dict]]:
    """The kept rows and the dropped rows of a source after dedup."""
    kept = pq.read_table(folder / "dedup" / f"{source}.parquet").to_pylist()
    dropped = pq.read_table(folder / "dedup" / "dropped" / f"{source}.parquet").to_pylist()
    return kept, dropped


def sentence(rng: random.Random, n: int = 40) -> str:
    return "".join(rng.choices(COMMON, k=n))


@pytest.fixture
def planted(tmp_path, catalog):
    """Three sources with duplicates planted across them.

    paws-x (commercial, excellent) and SimCLUE (not commercial, good) share a pair written differently (width,
    case, punctuation, spaces); lcqmc and SimCLUE (both not commercial, good) share a near-duplicate pair (one
    character changed); SimCLUE holds an exact repeat of its own row.
    """
    rng = random.Random(1)
    shared = ("今天天气怎么样Ａpple", "今天的天气如何apple")
    near_q, near_p = sentence(rng), sentence(rng)
    near_q2 = near_q[:20] + ("错" if near_q[20] != "错" else "对") + near_q[21:]
    uniques = [(sentence(rng), sentence(rng)) for _ in range(6)]
    data = {
        "SimCLUE": rows_of(catalog, "SimCLUE", [("今天 天气怎么样 apple!", "今天的天气如何？APPLE"), (near_q2, near_p),
                                                uniques[0], uniques[1], uniques[1]]),
        "lcqmc": rows_of(catalog, "lcqmc", [(near_q, near_p), uniques[2]]),
        "paws-x": rows_of(catalog, "paws-x", [shared, uniques[3]]),
    }
    return tmp_path, write_ingest(tmp_path, catalog, data), data


def test_planted_cross_source_duplicates_are_resolved_by_the_survivor_rule(planted, catalog):
    folder, inputs, data = planted
    result = dedup_sources(inputs, folder, DedupParams(), catalog)
    kept, dropped = outcome(folder, "SimCLUE")
    by_reason = {d["reason"]: d for d in dropped if d["reason"] != DedupReason.EXACT_DUPLICATE or d["kept_id"] != data[
        "SimCLUE"][3]["id"]}
    # The shared pair survives in paws-x, the commercial source, though SimCLUE comes first in the input.
    assert by_reason[DedupReason.EXACT_DUPLICATE]["id"] == data["SimCLUE"][0]["id"]
    assert by_reason[DedupReason.EXACT_DUPLICATE]["kept_id"] == data["paws-x"][0]["id"]
    # Both not commercial and good: lcqmc comes before SimCLUE in the catalog, so its copy survives.
    assert by_reason[DedupReason.NEAR_DUPLICATE]["id"] == data["SimCLUE"][1]["id"]
    assert by_reason[DedupReason.NEAR_DUPLICATE]["kept_id"] == data["lcqmc"][0]["id"]
    assert by_reason[DedupReason.NEAR_DUPLICATE]["detail"] == "cluster of 2"
    # The repeat within SimCLUE: the row with the smaller id survives.
    repeat = [d for d in dropped if d not in by_reason.values()]
    first, second = sorted([data["SimCLUE"][3]["id"], data["SimCLUE"][4]["id"]])
    assert [(d["reason"], d["id"], d["kept_id"]) for d in repeat] == [(DedupReason.EXACT_DUPLICATE, second, first)]
    assert {r["id"] for r in kept} == {data["SimCLUE"][2]["id"], first}
    assert [r["id"] for r in outcome(folder, "paws-x")[0]] == [r["id"] for r in data["paws-x"]]
    assert [r["id"] for r in outcome(folder, "lcqmc")[0]] == [r["id"] for r in data["lcqmc"]]
    # A dropped row carries the full m3e-hq row and where it was read.
    raw = json.loads(by_reason[DedupReason.NEAR_DUPLICATE]["raw"])
    assert raw == data["SimCLUE"][1]
    assert by_reason[DedupReason.NEAR_DUPLICATE]["locator"] == "ingest/SimCLUE.parquet#1"
    assert result.stats["duplicates_by_source"] == {"SimCLUE": {"SimCLUE": 1, "lcqmc": 1, "paws-x": 1}}
    assert result.stats["near"]["confirmed_pairs"] == 1


def test_accounting_identity_and_stage_files(planted, catalog):
    folder, inputs, data = planted
    result = dedup_sources(inputs, folder, DedupParams(), catalog)
    for counts in result.counts:
        counts.check()
        assert counts.read == len(data[counts.source])
        kept, dropped = outcome(folder, counts.source)
        assert (counts.kept, counts.dropped_total) == (len(kept), len(dropped))
        assert {r["id"] for r in kept} | {d["id"] for d in dropped} == {r["id"] for r in data[counts.source]}
    assert sum(c.kept for c in result.counts) == 6


def test_survivors_do_not_depend_on_row_order(planted, catalog, tmp_path_factory):
    folder, inputs, data = planted
    dedup_sources(inputs, folder, DedupParams(), catalog)
    first = {s: outcome(folder, s) for s in data}
    other = tmp_path_factory.mktemp("shuffled")
    shuffled = {s: random.Random(2).sample(rows, len(rows)) for s, rows in reversed(data.items())}
    dedup_sources(write_ingest(other, catalog, shuffled), other, DedupParams(), catalog)
    for source in data:
        kept, dropped = outcome(other, source)
        assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in first[source][0])
        assert sorted((d["id"], d["kept_id"], d["reason"]) for d in dropped) == sorted(
            (d["id"], d["kept_id"], d["reason"]) for d in first[source][1])


def test_small_batches_give_the_same_outcome(planted, catalog, tmp_path_factory, monkeypatch):
    """Rows read, hashed, MinHashed and written a few at a time: batches cross no source boundary wrongly, and the
    locators and kept ids still point at the right rows."""
    import m3e_hq.flows.core.minhash
    import m3e_hq.flows.stages.dedup

    folder, inputs, data = planted
    whole = dedup_sources(inputs, folder, DedupParams(), catalog)
    monkeypatch.setattr(m3e_hq.flows.stages.dedup, "BATCH_ROWS", 2)
    monkeypatch.setattr(m3e_hq.flows.core.minhash, "BATCH_TEXTS", 3)
    other = tmp_path_factory.mktemp("batches")
    small = dedup_sources(inputs, other, DedupParams(), catalog)
    assert small.stats == whole.stats
    for source in data:
        assert outcome(other, source) == outcome(folder, source)


def test_short_texts_are_deduplicated_but_never_dropped_for_being_short(tmp_path, catalog):
    pairs = [("好", "好的"), ("好！", "好的。"), ("嗯", "好的"), ("你好", "您好"), ("您好", "你好"), ("？", "！"), ("?", "!"),
             ("。", "，")]
    inputs = write_ingest(tmp_path, catalog, {"CINLID": rows_of(catalog, "CINLID", pairs)})
    dedup_sources(inputs, tmp_path, DedupParams(), catalog)
    kept, dropped = outcome(tmp_path, "CINLID")
    # Equal after normalisation: 好/好的 twice; punctuation-only texts keep their punctuation as key (？ and ?
    # agree by NFKC). Which copy of each survives depends on the ids only.
    texts = {r["id"]: r["text"] for r in rows_of(catalog, "CINLID", pairs)}
    assert {frozenset((texts[d["id"]], texts[d["kept_id"]])) for d in dropped} == {frozenset(("好", "好！")),
                                                                               frozenset(("?", "？"))}
    assert {d["reason"] for d in dropped} == {DedupReason.EXACT_DUPLICATE}
    assert len(kept) == 6


def test_query_only_mode(tmp_path, catalog):
    rng = random.Random(3)
    question, passages = sentence(rng, 12), [sentence(rng, 200) for _ in range(3)]
    para = [("我想查一下余额", "怎么查余额"), ("我想查一下余额", "余额在哪里看")]
    data = {"dureader_robust": rows_of(catalog, "dureader_robust", [(question, p) for p in passages]),
            "lcqmc": rows_of(catalog, "lcqmc", para)}
    inputs = write_ingest(tmp_path, catalog, data)
    kept_counts = {}
    for on in ("pair", "query", "query-s2p"):
        result = dedup_sources(inputs, tmp_path, DedupParams(on=on), catalog)
        kept_counts[on] = {c.source: c.kept for c in result.counts}
    # Three passages for one question: kept as three pairs, or one per query; s2s pairs keep their pair key.
    assert kept_counts == {"pair": {"lcqmc": 2, "dureader_robust": 3}, "query": {"lcqmc": 1, "dureader_robust": 1},
                           "query-s2p": {"lcqmc": 2, "dureader_robust": 1}}


def test_two_questions_on_one_passage_are_two_pairs(tmp_path, catalog):
    rng = random.Random(4)
    passage = sentence(rng, 400)
    pairs = [(sentence(rng, 15), passage), (sentence(rng, 15), passage)]
    inputs = write_ingest(tmp_path, catalog, {"cmrc2018": rows_of(catalog, "cmrc2018", pairs)})
    result = dedup_sources(inputs, tmp_path, DedupParams(), catalog)
    assert result.counts[0].kept == 2
    assert result.stats["near"]["candidate_pairs"] == 1 and result.stats["near"]["confirmed_pairs"] == 0


def test_near_threshold_is_configurable(planted, catalog):
    folder, inputs, _ = planted
    strict = dedup_sources(inputs, folder, DedupParams(minhash=MinHashParams(threshold=1.0)), catalog)
    off = dedup_sources(inputs, folder, DedupParams(near=False), catalog)
    for result in (strict, off):
        assert DedupReason.NEAR_DUPLICATE not in {r for c in result.counts for r in c.dropped}
    assert "near" not in off.stats


def test_evaluation_splits_are_dropped_unless_kept(tmp_path, catalog):
    rng = random.Random(5)
    rows = rows_of(catalog, "lcqmc", [(sentence(rng), sentence(rng))], "train") + rows_of(
        catalog, "lcqmc", [(sentence(rng), sentence(rng)), (sentence(rng), sentence(rng))], "test")
    inputs = write_ingest(tmp_path, catalog, {"lcqmc": rows})
    result = dedup_sources(inputs, tmp_path, DedupParams(), catalog)
    assert result.counts[0].dropped == {DedupReason.EVAL_SPLIT: 2}
    assert {d["split"] for d in outcome(tmp_path, "lcqmc")[1]} == {"test"}
    kept_all = dedup_sources(inputs, tmp_path, DedupParams(exclude_eval_splits=False), catalog)
    assert kept_all.counts[0].kept == 3


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "txt"])
def test_decontamination_drops_exact_and_near_overlaps(tmp_path, catalog, fmt):
    rng = random.Random(6)
    pairs = [(sentence(rng), sentence(rng)) for _ in range(5)]
    query_hit = pairs[0][0]
    near_hit = pairs[1][1][:30] + ("错" if pairs[1][1][30] != "错" else "对") + pairs[1][1][31:]
    eval_texts = [query_hit.replace(query_hit[3], f" {query_hit[3]}，"), near_hit, sentence(rng)]
    path = tmp_path / f"eval.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"sentence": t, "label": 1}, ensure_ascii=False) + "\n"
                                for t in eval_texts), encoding="utf-8")
    elif fmt == "parquet":
        pq.write_table(pa.table({"sentence": eval_texts, "label": [1, 0, 1]}), path)
    else:
        path.write_text("\n".join(eval_texts) + "\n", encoding="utf-8")
    assert read_eval_texts(path) == eval_texts
    inputs = write_ingest(tmp_path, catalog, {"webqa": rows_of(catalog, "webqa", pairs)})
    result = dedup_sources(inputs, tmp_path, DedupParams(decontaminate=path), catalog)
    dropped = outcome(tmp_path, "webqa")[1]
    assert sorted((d["reason"], d["detail"], json.loads(d["raw"])["text"]) for d in dropped) == sorted(
        [(DedupReason.EVAL_OVERLAP, "exact: query", pairs[0][0]), (DedupReason.EVAL_OVERLAP, "near: positive", pairs[1][0])])
    assert result.stats["decontaminate"] == {"file": str(path), "eval_texts": 3, "rows_dropped": 2}


def test_bad_decontamination_files_are_reported(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"a": "好"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"eval.jsonl:2: not JSON"):
        read_eval_texts(bad)
    with pytest.raises(ValueError, match="not found"):
        DedupParams(decontaminate=tmp_path / "missing.jsonl")
    (tmp_path / "eval.csv").write_text("a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"use \.jsonl, \.json, \.parquet, \.txt"):
        DedupParams(decontaminate=tmp_path / "eval.csv")


# Real pairs (SimCLUE, OCNLI, cmrc2018 and Chinese-SQuAD questions from ../shared/data/real, lightly shortened) and
# the variants of bench/curation.py: each row is (query, positive, the row it must be dropped for, or None).
REAL_CASES = [
    ("新手开车上路应该注意什么", "新手开车需要注意哪些事项", None),
    ("新手开车上路应该注意什么？", "新手开车需要注意哪些事项。", 0),  # punctuation: exact after normalisation
    ("新手开车上路应该注意些什么", "新手开车需要注意哪些事项", 0),  # one character inserted (12 characters)
    ("新手开车上路不应该注意什么", "新手开车需要注意哪些事项", None),  # negation
    ("新手开车上路应该注意什么", "新手开车需要注意哪些问题", None),  # the same query, another positive
    ("一个女人正在用蜡笔和镜子画画他们很开心", "女人在画画", None),
    ("一个女人在用蜡笔和镜子画他们很开心", "女人在画画", 5),  # two characters deleted (19 characters)
    ("2019年上海的常住人口是多少", "上海2019年常住人口有多少", None),
    ("2018年上海的常住人口是多少", "上海2019年常住人口有多少", None),  # a number
    ("哪个佛罗里达城市人口最多", "佛罗里达州人口最多的城市是哪个", None),
    ("哪个佛罗里达城市人口最少", "佛罗里达州人口最多的城市是哪个", None),  # an antonym
    ("要努力提高政府立法工作质量", "政府立法工作的质量要提高", None),
    ("要努力提高政府立法工作質量", "政府立法工作的质量要提高", None),  # traditional script
    ("云集景附", "形容人很多", None),
    ("云集景附吗？", "形容人很多", 13),  # a clause-final particle
    ("你好", "您好", None),
    ("你好啊", "您好", 15),
    ("你们好", "您好", None),  # one character in 3: no edit allowed
]


def test_real_short_pairs_duplicates_dropped_and_hard_negatives_kept(tmp_path, catalog):
    pairs = [(q, p) for q, p, _ in REAL_CASES]
    rows = rows_of(catalog, "SimCLUE", pairs)
    passage = ("杰克逊维尔是美国佛罗里达州人口最多的城市，也是美国毗连地区最大的城市。它是杜瓦尔县的县城，"
               "市政府于1968年与杜瓦尔县合并。")
    questions = [("哪个佛罗里达城市人口最多？", passage), ("杰克逊维尔市政府哪一年与杜瓦尔县合并？", passage)]
    inputs = write_ingest(tmp_path, catalog, {"SimCLUE": rows, "cmrc2018": rows_of(catalog, "cmrc2018", questions)})
    result = dedup_sources(inputs, tmp_path, DedupParams(), catalog)
    kept, dropped = outcome(tmp_path, "SimCLUE")
    index = {r["id"]: i for i, r in enumerate(rows)}
    # Which copy survives depends on the ids; which pairs are duplicates does not.
    assert {frozenset((index[d["id"]], index[d["kept_id"]])) for d in dropped} == {
        frozenset((i, want)) for i, (_, _, want) in enumerate(REAL_CASES) if want is not None}
    assert {d["reason"] for d in dropped if {index[d["id"]], index[d["kept_id"]]} & {2, 6, 14, 16}} == {
        DedupReason.NEAR_DUPLICATE}
    assert len(kept) + len(dropped) == len(rows)  # the accounting identity
    assert {c.source: c.kept for c in result.counts}["cmrc2018"] == 2  # two questions over one passage: two pairs


def test_decontamination_finds_eval_texts_with_one_or_two_characters_changed(tmp_path, catalog):
    pairs = [("一个女人正在用蜡笔和镜子画画", "女人在画画"), ("新手开车上路应该注意什么", "要注意安全"),
             ("一个穿着橙色背心的人坐在红色摩托车上", "有人坐在摩托车上"), ("你好", "好啊"),
             ("这个人在户外骑摩托车", "有人在骑车")]
    eval_texts = ["一个女人正在用蜡笔和镜子话画",  # one substituted
                  "新手开车上路应该注意什么！",  # punctuation
                  "一个穿着橙色马甲的人坐在红色摩托车上",  # two substituted (18 characters)
                  "您好",  # 2 characters: no edit allowed
                  "那个人在户外骑摩托车"]  # one substituted in 10
    path = tmp_path / "eval.txt"
    path.write_text("\n".join(eval_texts) + "\n", encoding="utf-8")
    inputs = write_ingest(tmp_path, catalog, {"SimCLUE": rows_of(catalog, "SimCLUE", pairs)})
    dedup_sources(inputs, tmp_path, DedupParams(decontaminate=path), catalog)
    kept, dropped = outcome(tmp_path, "SimCLUE")
    assert sorted((json.loads(d["raw"])["text"], d["detail"]) for d in dropped) == sorted([
        (pairs[0][0], "near: query"), (pairs[1][0], "exact: query"), (pairs[2][0], "near: query"),
        (pairs[4][0], "near: query")])
    assert [r["text"] for r in kept] == ["你好"]
