"""Quality filters of text pairs: each reason code on a crafted bad pair, no false drops on the real sample rows."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from m3e_hq.flows.core.text import normalize
from m3e_hq.flows.stages import filters
from m3e_hq.flows.stages.filters import (
    FilterParams,
    FilterReason,
    pair_reason,
    reasons,
)

DEFAULTS = FilterParams()
PASSAGE = ("黑死病被认为起源于中亚干旱平原，然后沿着丝绸之路行进，到1343年到达克里米亚。从那里开始，它很可能是由生活在"
           "黑老鼠上的东方老鼠跳蚤携带的，黑老鼠是商船上的定期乘客。")
# 600 different ideographs: long, and neither repetitive nor contained in anything.
VARIED = "".join(chr(0x4E00 + i * 37 % 20_000) for i in range(600))
# Sources whose samples are cut from real data (data/samples/README.md).
REAL_SOURCES = ("cmrc2018", "ocnli", "SimCLUE", "Zhuiyi-NL2SQL", "Chinese-SQuAD")

# (text, text_pos, homogeneous, task_type, expected reason)
BAD_PAIRS = [
    ("好", "好的", True, "paraphrase", FilterReason.TOO_SHORT),
    ("？？", "这是一个答案。", False, "qa", FilterReason.TOO_SHORT),
    ("什么是黑死病", "……", False, "qa", FilterReason.TOO_SHORT),
    ("长" * 600, "一句短话", True, "paraphrase", FilterReason.TOO_LONG),
    ("黑死病", "病" * 10_001, False, "qa", FilterReason.TOO_LONG),
    ("今天天气怎么样？", "今天 天气怎么样", True, "paraphrase", FilterReason.QUERY_EQUALS_POSITIVE),
    ("ＡＢＣ公司，在哪里", "abc公司在哪里?", True, "paraphrase", FilterReason.QUERY_EQUALS_POSITIVE),
    ("如何办理护照", "如何办理护照？", False, "qa", FilterReason.QUERY_EQUALS_POSITIVE),
    ("我也不知道为什么", "我也不知道为什么啊", True, "paraphrase", FilterReason.QUERY_IN_POSITIVE),
    ("这部电影真好看啊！", "这部电影真好看", True, "paraphrase", FilterReason.QUERY_IN_POSITIVE),
    ("云集景附", "云集景附吗", True, "paraphrase", FilterReason.QUERY_IN_POSITIVE),  # coverage 0.80
    ("什么是机器学习", "什么是机器学习？什么是机器学习？", False, "qa", FilterReason.ANSWER_REPEATS_QUESTION),
    ("北京是中国的首都吗", "北京是中国的首都吗？是", False, "qa", FilterReason.ANSWER_REPEATS_QUESTION),
    ("文件乱码了", "这是\ufffd\ufffd的文本", False, "qa", FilterReason.MOJIBAKE),
    ("中文编码", "ä¸­æ–‡çš„ç¼–ç ", False, "qa", FilterReason.MOJIBAKE),  # UTF-8 read as cp1252
    ("标点乱码", "你好ï¼Œä¸–ç•Œ", False, "qa", FilterReason.MOJIBAKE),
    ("引号乱码", "他说â€œä½ å¥½â€", False, "qa", FilterReason.MOJIBAKE),
    ("GBK乱码", "ÖÐÎÄÂÒÂë", False, "qa", FilterReason.MOJIBAKE),  # GBK read as Latin-1
    ("锟斤拷是什么", "手烫烫烫锟斤拷锟斤拷", False, "qa", FilterReason.MOJIBAKE),
    ("网页残留", "<p>第一段</p><br/>第二段", False, "qa", FilterReason.MARKUP),
    ("实体残留", "答案&nbsp;&nbsp;是&amp;这个", False, "qa", FilterReason.MARKUP),
    ("链接残留", "见![图](http://a.cn/1.png)和[这里](http://a.cn)及[那里](http://b.cn)", False, "qa", FilterReason.MARKUP),
    ("你有感情吗", "作为一个AI语言模型，我没有感情。", False, "instruction", FilterReason.BOILERPLATE),
    ("你怎么看", "作为一个人工智能，我没有个人观点。", False, "instruction", FilterReason.BOILERPLATE),
    ("帮我写首诗", "抱歉,我无法完成这个请求。", False, "instruction", FilterReason.BOILERPLATE),
    ("Do you dream?", "As an AI language model, I do not dream.", False, "instruction", FilterReason.BOILERPLATE),
    ("笑什么", "哈" * 20, False, "qa", FilterReason.REPETITIVE),
    ("说三遍", "这个问题很好。" * 3, False, "qa", FilterReason.REPETITIVE),
    ("循环输出", "我爱北京天安门。" * 12, False, "instruction", FilterReason.REPETITIVE),
    ("什么是光合作用", "Photosynthesis is how green plants turn sunlight into food.", False, "qa", FilterReason.LOW_CJK_RATIO),
    ("韩国的首都", "서울은 대한민국의 수도이다", False, "qa", FilterReason.LOW_CJK_RATIO),
    ("歌手列表", "SELECT name , country FROM singer ORDER BY age DESC", False, "qa", FilterReason.LOW_CJK_RATIO),
]


def test_reason_codes():
    assert [r.value for r in FilterReason] == [
        "too_short", "too_long", "query_equals_positive", "query_in_positive", "answer_repeats_question", "mojibake",
        "markup", "boilerplate", "repetitive", "low_cjk_ratio", "low_pair_score"]
    # Every reason but the pair score (tested below with scores) has crafted bad pairs.
    assert {case[-1] for case in BAD_PAIRS} == set(FilterReason) - {FilterReason.LOW_PAIR_SCORE}


@pytest.mark.parametrize(("text", "text_pos", "homogeneous", "task_type", "reason"), BAD_PAIRS)
def test_bad_pair_gets_its_reason(text, text_pos, homogeneous, task_type, reason):
    assert pair_reason(text, text_pos, homogeneous, task_type, DEFAULTS) == reason


def test_first_reason_in_order_wins():
    # Mojibake and repetitive: mojibake comes first.
    assert pair_reason("乱码", "\ufffd坏" * 30, False, "qa", DEFAULTS) == FilterReason.MOJIBAKE
    # Equal after normalisation and too short: too_short comes first.
    assert pair_reason("好！", "好", True, "paraphrase", DEFAULTS) == FilterReason.TOO_SHORT


def test_real_sample_rows_are_kept(samples_build):
    ingest = Path(samples_build["build_dir"]) / "ingest"
    checked, dropped = 0, []
    for source in REAL_SOURCES:
        table = pq.read_table(ingest / f"{source}.parquet")
        checked += table.num_rows
        dropped += [(source, text, text_pos, reason)
                    for text, text_pos, reason in zip(table["text"].to_pylist(), table["text_pos"].to_pylist(),
                                                      reasons(table, DEFAULTS), strict=True) if reason]
    assert checked >= 180
    # The real rows dropped: one side is the other plus the particle 啊, or plus 我说 ("I say"): near-duplicate
    # pairs that teach nothing (the trivial containment query_in_positive exists for).
    assert sorted(dropped) == [("SimCLUE", "我也不知道为什么", "我也不知道为什么啊", FilterReason.QUERY_IN_POSITIVE),
                               ("SimCLUE", "我说保护的近义词是什么", "保护的近义词是什么？", FilterReason.QUERY_IN_POSITIVE)]


@pytest.mark.parametrize(
    ("text", "text_pos", "homogeneous", "task_type"),
    [
        ("天气", "今天白天晴，最高气温25°C，夜间多云，东南风三到四级。", False, "qa"),
        ("茶", "茶是以茶树的叶子加工制成的饮品。", False, "corpus"),
        ("氧气的化学符号是什么", "O", False, "qa"),
        ("画蛇添足", "多此一举", True, "paraphrase"),
        ("你好", "您好", True, "paraphrase"),
        ("史蒂夫·乔布斯的身高", "他身高1.88米，3×4的房间，约合6′2″。", False, "qa"),
        ("苹果手机哪款好", "iPhone 15 Pro Max", False, "qa"),
        ("Python是什么", "Python是一种解释型、面向对象的高级编程语言，由Guido van Rossum创造。", False, "qa"),
        ("网页换行怎么写", "在HTML里用<br>标签换行。", False, "qa"),
        ("黑死病从何而来？", PASSAGE, False, "mrc"),
    ],
)
def test_good_short_and_mixed_pairs_are_kept(text, text_pos, homogeneous, task_type):
    assert pair_reason(text, text_pos, homogeneous, task_type, DEFAULTS) is None


def test_length_bounds_differ_between_s2s_and_s2p():
    assert pair_reason(VARIED, VARIED[:300], True, "paraphrase", DEFAULTS) == FilterReason.TOO_LONG
    assert pair_reason(VARIED, "一个很短的回答", False, "qa", DEFAULTS) is None
    assert pair_reason("茶", "茶叶", True, "paraphrase", DEFAULTS) == FilterReason.TOO_SHORT
    assert pair_reason("茶", "茶叶是茶树的叶子", False, "qa", DEFAULTS) is None
    assert DEFAULTS.s2s_pos_max_chars < DEFAULTS.s2p_pos_max_chars


def test_query_in_positive_only_for_s2s():
    any_containment = FilterParams(query_in_positive_min_coverage=0)
    query = "黑死病从何而来"
    assert pair_reason(query, PASSAGE + query, True, "paraphrase", any_containment) == FilterReason.QUERY_IN_POSITIVE
    assert pair_reason(query, query + "？" + PASSAGE, False, "mrc", any_containment) is None
    # By default only a near-duplicate containment counts: a real pair whose longer side adds words is kept.
    assert pair_reason("狗为什么怕水", "狗为什么怕水不怕雨", True, "paraphrase", DEFAULTS) is None


# Real SimCLUE positive pairs (../shared/data/real/simclue/) whose one side is the other plus one or two letters or
# digits, before, after or on both sides of it: coverage under 0.85, dropped for the characters they add.
SHORT_PLUS_TWO = [
    ("你看一下", "那你看一下"),  # 4 + 1: coverage 0.80
    ("工作很轻松", "我的工作很轻松"),  # 5 + 2: 0.71
    ("肾亏吃什么会好", "肾亏吃什么"),  # 5 + 2, after
    ("我肚子好痛啊", "肚子好痛"),  # 4 + 1 before, 1 after
    ("大长脸适合什么发型啊", "长脸适合什么发型"),  # 8 + 2: 0.80
    ("然后用红笔把它划掉。", "用红笔把它划掉。"),  # 7 + 2: 0.78
    ("root软件", "给个root软件"),  # Latin letters count one each
]
# Real SimCLUE / OCNLI positive pairs whose one side contains the other and adds three characters or more: what
# they add is content (a second question, a condition, a subject), so they stay.
CONTAINED_BUT_KEPT = [
    ("狗为什么怕水", "狗为什么怕水不怕雨"),
    ("丸美眼霜效果怎么样", "丸美眼霜效果怎么样多少钱"),
    ("羊口疮怎么治疗？", "羊得了羊口疮怎么治疗？"),
    ("办法的反义词", "办法的反义词是什么"),
    ("没关系，你可以从那里开始", "你可以从那里开始"),
    ("鱼香肉丝味道怎么样", "鱼香肉丝"),
    ("21.5米,咱们宋代去高丽的船有多少", "咱们宋代去高丽的船有多少"),  # OCNLI entailment
]


def contained(text: str, text_pos: str) -> tuple[str, str]:
    """The shorter and the longer normalised side, after checking that the one is inside the other."""
    short, long = sorted((normalize(text), normalize(text_pos)), key=len)
    assert short in long and short != long
    return short, long


def test_a_short_side_plus_one_or_two_characters_is_query_in_positive():
    assert DEFAULTS.query_in_positive_max_extra_chars == 2
    assert pair_reason("云集景附", "云集景附吗", True, "paraphrase", DEFAULTS) == FilterReason.QUERY_IN_POSITIVE
    for text, text_pos in SHORT_PLUS_TWO:
        short, long = contained(text, text_pos)
        assert len(long) - len(short) <= 2 and len(short) < 0.85 * len(long), (text, text_pos)
        assert pair_reason(text, text_pos, True, "paraphrase", DEFAULTS) == FilterReason.QUERY_IN_POSITIVE
        assert pair_reason(text_pos, text, True, "paraphrase", DEFAULTS) == FilterReason.QUERY_IN_POSITIVE
        # Coverage alone (the rule before max_extra_chars) kept them.
        assert pair_reason(text, text_pos, True, "paraphrase", FilterParams(query_in_positive_max_extra_chars=0)) \
            is None
    # Characters added inside the short side are no containment: a negation changes the pair, it stays.
    assert pair_reason("他去过北京", "他没去过北京", True, "paraphrase", DEFAULTS) is None
    # s2p pairs have their own rule, the fewest new letters/digits an answer holding the query must add.
    assert pair_reason("云集景附", "云集景附吗", False, "qa", DEFAULTS) == FilterReason.ANSWER_REPEATS_QUESTION
    assert pair_reason("云集景附", "云集景附指云彩聚集", False, "qa", DEFAULTS) is None


@pytest.mark.parametrize(("text", "text_pos"), CONTAINED_BUT_KEPT)
def test_real_pairs_that_contain_the_other_side_and_add_three_characters_or_more_are_kept(text, text_pos):
    short, long = contained(text, text_pos)
    assert len(long) - len(short) >= 3
    assert pair_reason(text, text_pos, True, "paraphrase", DEFAULTS) is None


def test_long_sides_keep_the_coverage_rule_alone():
    coverage_only = FilterParams(query_in_positive_max_extra_chars=0)
    for n in range(12, 41):
        short = VARIED[:n]
        for extra in range(1, 11):
            longer = VARIED[300:300 + extra // 2] + short + VARIED[400:400 + extra - extra // 2]
            expected = FilterReason.QUERY_IN_POSITIVE if n >= 0.85 * (n + extra) else None
            assert pair_reason(short, longer, True, "paraphrase", DEFAULTS) == expected, (n, extra)
            assert pair_reason(short, longer, True, "paraphrase", coverage_only) == expected, (n, extra)
    # Real SimCLUE pairs: 14 of 15 characters (0.93) go, 12 of 20 (0.60) stay.
    assert pair_reason("我上气不接下气地打断了他的话。", "喂！我上气不接下气地打断了他的话。", True, "paraphrase",
                       DEFAULTS) == FilterReason.QUERY_IN_POSITIVE
    assert pair_reason("有什么软件可以下载破解版", "有什么软件可以下载破解版的游戏或修改游戏", True, "paraphrase",
                       DEFAULTS) is None


def test_cjk_check_skipped_for_nl2sql():
    sql = "SELECT name , country FROM singer ORDER BY age DESC"
    assert pair_reason("按年龄列出歌手的名字和国家", sql, False, "nl2sql", DEFAULTS) is None
    assert pair_reason("按年龄列出歌手的名字和国家", sql, False, "qa", DEFAULTS) == FilterReason.LOW_CJK_RATIO


def test_code_positives_are_not_cjk_checked():
    code = "def add(a, b):\n    return a + b"
    assert pair_reason("用Python写一个函数，返回两个数的和", code, False, "instruction", DEFAULTS) is None
    fenced = "```python\nfor i in range(10):\n    print('hello world', i)\n```\n运行即可。"
    assert pair_reason("循环打印", fenced, False, "instruction", DEFAULTS) is None
    html = "下面是例子：\n```html\n<p>第一段</p><br/><a href='x'>链接</a>\n```"
    assert pair_reason("写一个网页片段", html, False, "instruction", DEFAULTS) is None


def test_markup_allowance_grows_with_length():
    tags = "<br>第一行<br>第二行<br>第三行"
    assert pair_reason("换行", tags, False, "qa", DEFAULTS) == FilterReason.MARKUP
    assert pair_reason("换行", tags + VARIED, False, "qa", DEFAULTS) is None


def table_of(pairs: list[tuple[str, str, bool, str]]) -> pa.Table:
    text, text_pos, homogeneous, task_type = map(list, zip(*pairs, strict=True))
    return pa.table({"id": [f"r{i}" for i in range(len(pairs))], "text": text, "text_pos": text_pos,
                     "homogeneous": homogeneous, "task_type": task_type})


PAIRS = [
    ("黑死病从何而来？", PASSAGE, False, "mrc"),
    ("画蛇添足", "多此一举", True, "paraphrase"),
    ("你有感情吗", "作为一个AI语言模型，我没有感情。", False, "instruction"),
    ("我听了并不惊奇。", "我听了并不吃惊。", True, "paraphrase"),
]


def test_reasons_over_a_table():
    assert reasons(table_of(PAIRS), DEFAULTS) == [None, None, FilterReason.BOILERPLATE, None]


def test_pair_score_hook():
    params = FilterParams(min_pair_score=0.43)
    scores = [0.9, 0.2, 0.1, 0.43]
    # A row another filter drops keeps that reason; the score filter comes last.
    assert reasons(table_of(PAIRS), params, pa.array(scores)) == [None, FilterReason.LOW_PAIR_SCORE, FilterReason.BOILERPLATE, None]
    assert reasons(table_of(PAIRS), params, scores) == [None, FilterReason.LOW_PAIR_SCORE, FilterReason.BOILERPLATE, None]
    assert pair_reason(*PAIRS[1], params, score=0.2) == FilterReason.LOW_PAIR_SCORE
    # Without min_pair_score, scores change nothing.
    assert reasons(table_of(PAIRS), DEFAULTS, scores) == [None, None, FilterReason.BOILERPLATE, None]


def test_pair_score_filter_needs_scores():
    params = FilterParams(min_pair_score=0.43)
    with pytest.raises(ValueError, match="needs teacher scores"):
        reasons(table_of(PAIRS), params)
    with pytest.raises(ValueError, match="needs a teacher score"):
        pair_reason(*PAIRS[0], params)
    with pytest.raises(ValueError, match="needs a teacher score"):
        reasons(table_of(PAIRS), params, [0.9, float("nan"), 0.5, 0.5])
    with pytest.raises(ValueError, match="3 scores for 4 rows"):
        reasons(table_of(PAIRS), params, [0.9, 0.9, 0.9])


def test_reasons_needs_the_pair_columns():
    with pytest.raises(ValueError, match="task_type"):
        reasons(table_of(PAIRS).drop_columns(["task_type"]), DEFAULTS)


@pytest.mark.parametrize(
    ("pair", "default_reason", "override"),
    [
        (("画蛇添足", "多此一举", True, "paraphrase"), None, {"s2s_query_min_chars": 5}),
        (("黑死病", PASSAGE, False, "mrc"), None, {"s2p_pos_max_chars": 50}),
        (("我也不知道为什么", "我也不知道为什么啊", True, "paraphrase"), FilterReason.QUERY_IN_POSITIVE,
         {"query_in_positive_min_coverage": 0.95, "query_in_positive_max_extra_chars": 0}),
        (("云集景附", "云集景附吗", True, "paraphrase"), FilterReason.QUERY_IN_POSITIVE,
         {"query_in_positive_max_extra_chars": 0}),
        (("狗为什么怕水", "狗为什么怕水不怕雨", True, "paraphrase"), None, {"query_in_positive_max_extra_chars": 3}),
        (("北京是中国的首都吗", "北京是中国的首都吗？是", False, "qa"), FilterReason.ANSWER_REPEATS_QUESTION,
         {"answer_min_new_chars": 1}),
        (("文件乱码了", "这是\ufffd\ufffd的文本", False, "qa"), FilterReason.MOJIBAKE, {"max_mojibake": 2}),
        (("网页残留", "<p>第一段</p><br/>第二段", False, "qa"), FilterReason.MARKUP, {"max_markup": 3}),
        (("你有感情吗", "作为一个AI语言模型，我没有感情。", False, "instruction"), FilterReason.BOILERPLATE,
         {"boilerplate_phrases": ()}),
        (("你好", "您好，很高兴认识你", False, "qa"), None, {"boilerplate_phrases": ("很高兴认识你",)}),
        (("笑什么", "哈" * 20, False, "qa"), FilterReason.REPETITIVE, {"max_char_run": 30, "max_ngram_dup_share": 1}),
        (("说三遍", "这个问题很好。" * 3, False, "qa"), FilterReason.REPETITIVE, {"max_ngram_dup_share": 0.7}),
        (("说两遍", "这个问题很好。" * 2, False, "qa"), None, {"repetition_ngram": 1, "max_ngram_dup_share": 0.4}),
        (("什么是光合作用", "Photosynthesis is how green plants turn sunlight into food.", False, "qa"),
         FilterReason.LOW_CJK_RATIO, {"min_cjk_ratio": 0}),
        (("翻译成英文：谢谢你的帮助", "Thank you for your help.", False, "instruction"), None,
         {"cjk_either_side_task_types": []}),
        (("Write a haiku about the sea", "Waves fold into foam, the tide keeps its slow promise", False,
          "instruction"), FilterReason.LOW_CJK_RATIO, {"cjk_exempt_task_types": ["nl2sql", "instruction"]}),
        (("什么是光合作用", "Photosynthesis is how plants eat.", False, "qa"), FilterReason.LOW_CJK_RATIO,
         {"cjk_min_units": 10}),
    ],
)
def test_thresholds_are_configurable(pair, default_reason, override):
    assert pair_reason(*pair, DEFAULTS) == default_reason
    changed = pair_reason(*pair, FilterParams(**override))
    assert changed != default_reason
    assert changed in (None, *tuple(FilterReason))


def test_params_are_described_and_strict():
    assert all(field.description for field in FilterParams.model_fields.values())
    with pytest.raises(ValidationError):
        FilterParams(min_cjk_ratio_typo=0.5)
    with pytest.raises(ValidationError):
        FilterParams(cjk_exempt_task_types=["sql"])  # not a TaskType
    with pytest.raises(ValidationError):
        FilterParams(repetition_ngram=4)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("今天 天气，怎么样？", "今天天气怎么样"),
        ("ＡＢＣ公司！Hello_World", "abc公司helloworld"),
        ("第⑴条", "第1条"),
        ("Straße", "strasse"),
        ("cafe\u0301", "café"),  # a decomposed accent composes
        ("……！！", ""),
    ],
)
def test_normalize(text, key):
    assert normalize(text) == key


@pytest.mark.parametrize(
    "key",
    ["哈" * 70, "我爱北京天安门" * 12, normalize(PASSAGE) * 2, normalize(PASSAGE), "1" * 80 + "好" * 11,
     "a" * 30 + "b" * 40, "好" * 10 + normalize(PASSAGE)],
)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_vectorised_repetition_matches_the_plain_one(key, n):
    # Long keys take the numpy path: it must give what the plain-Python path gives.
    long_run, dup_share = filters._repetition_stats(key, n, 10)
    assert long_run == (filters._char_run(10).search(key) is not None)
    assert dup_share == pytest.approx(filters._ngram_dup_share(key, n))


def test_filter_stage_writes_kept_and_dropped_rows_with_the_accounting(tmp_path, catalog, monkeypatch):
    from m3e_hq.flows.stages.ingest import tags
    from m3e_hq.schemas import M3E_HQ_SCHEMA

    rows = [{"id": f"{i:024x}", "text": text, "text_pos": text_pos, "split": "train",
             **tags(catalog.get("firefily" if task_type == "instruction" else "CINLID")), "homogeneous": homogeneous,
             "task_type": task_type} for i, (text, text_pos, homogeneous, task_type) in enumerate(PAIRS * 3)]
    path = tmp_path / "ingest" / "mixed.parquet"  # the filters read ingest's output
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=M3E_HQ_SCHEMA), path)
    monkeypatch.setattr(filters, "BATCH_ROWS", 5)  # three batches: locators count rows across them
    counts = filters.filter_source("mixed", path, tmp_path, DEFAULTS)
    counts.check()
    assert (counts.read, counts.kept, counts.dropped) == (12, 9, {FilterReason.BOILERPLATE: 3})
    kept = pq.read_table(tmp_path / "filter" / "mixed.parquet")
    dropped = pq.read_table(tmp_path / "filter" / "dropped" / "mixed.parquet").to_pylist()
    assert kept.schema.equals(M3E_HQ_SCHEMA, check_metadata=False)
    assert kept["id"].to_pylist() == [r["id"] for r in rows if r["text"] != "你有感情吗"]
    assert [(d["id"], d["locator"], d["reason"]) for d in dropped] == [
        (f"{i:024x}", f"ingest/mixed.parquet#{i}", FilterReason.BOILERPLATE) for i in (2, 6, 10)]
