"""The near-duplicate confirmation (m3e_hq.flows.core.similarity) against a plain-Python reference, and each of its
rules on real text from shared/data/real."""

import random

import numpy as np
import pytest
import zhconv

from m3e_hq.flows.core.similarity import edit_similarity, guarded, lexical_edit, similarity
from m3e_hq.flows.core.text import near_key

# Real SimCLUE / OCNLI sentences, as keys.
LCQMC_LIKE = "新手开车上路应该注意什么"  # 11 characters
OCNLI = "一个女人正在用蜡笔和镜子画画"  # 14
LONG_Q = "尽管图拉比宣称拒绝民主进程但他上台后严格执行了什么"  # 25


def levenshtein(x: str, y: str) -> int:
    prev = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        cur = [i]
        for j, cy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (cx != cy)))
        prev = cur
    return prev[-1]


def reference(x: str, y: str, threshold: float = 0.875) -> float:
    """The rule of the module docstring, written plainly."""
    if x == y:
        return 1.0
    flags = guarded()
    if [c for c in x if flags[ord(c)]] != [c for c in y if flags[ord(c)]] or lexical_edit(x, y):
        return 0.0
    longer = max(len(x), len(y))
    d = levenshtein(x, y)
    return 1 - d / longer if d <= int((1 - threshold) * longer + 1e-9) else 0.0


def test_similarity_matches_the_plain_reference_on_random_edits():
    rng = random.Random(3)
    alphabet = "甲乙丙丁戊己庚辛壬癸不一3a個"  # guarded characters among them
    xs, ys = [], []
    for _ in range(3000):
        x = "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
        y = list(x)
        for _ in range(rng.randint(0, 6)):
            op = rng.random()
            if op < 0.4 and y:
                y[rng.randrange(len(y))] = rng.choice(alphabet)
            elif op < 0.7:
                y.insert(rng.randrange(len(y) + 1), rng.choice(alphabet))
            elif y:
                del y[rng.randrange(len(y))]
        xs.append(x)
        ys.append("".join(y))
    n = len(xs)
    got = similarity([xs + ys], np.arange(n), np.arange(n, 2 * n), 0.875)
    want = np.array([reference(x, y) for x, y in zip(xs, ys, strict=True)])
    assert np.allclose(got, want)
    assert (want > 0).sum() > 300 and ((want > 0) & (want < 1)).sum() > 100  # both outcomes well represented


@pytest.mark.parametrize("length, edits, duplicate", [
    (7, 1, False), (8, 1, True), (15, 1, True), (15, 2, False), (16, 2, True), (40, 5, True), (40, 6, False),
    (10_000, 1_250, True), (10_000, 1_251, False),
])
def test_the_edit_budget_is_one_in_eight_at_every_length(length, edits, duplicate):
    rng = random.Random(length)
    alphabet = [chr(c) for c in range(0x4E00, 0x4F00) if not guarded()[c]]
    x = "".join(rng.choices(alphabet, k=length))
    y = list(x)
    for i in rng.sample(range(length), edits):
        y[i] = rng.choice([c for c in alphabet[:20] if c != y[i]])
    assert (edit_similarity(x, "".join(y)) > 0) is duplicate


def test_one_and_two_character_typos_on_real_sentences_are_duplicates():
    assert edit_similarity(OCNLI, "一个女人正在用蜡笔和镜子话画") == pytest.approx(1 - 1 / 14)  # substituted
    assert edit_similarity(OCNLI, "一个女人正在用蜡笔和镜子画") > 0  # deleted
    assert edit_similarity(OCNLI, "一个女人正在用用蜡笔和镜子画画") > 0  # inserted
    assert edit_similarity("一个女人正在用蜡笔和镜子画画他们很开心", "一个女人在用蜡笔和镜子画他们很开心") > 0  # two
    assert edit_similarity(LCQMC_LIKE, "新手开车上路应该注意什吗") > 0


def test_short_keys_allow_no_edit_but_particles_do_not_count():
    assert edit_similarity("苹果手机", "苹果手表") == 0 and edit_similarity("怎么减肥", "怎么减肥快") == 0
    assert near_key("云集景附吗？") == near_key("云集景附") and near_key("你好啊!") == near_key("你好")
    assert near_key("吗啡很贵") == "吗啡很贵"  # 吗 that opens a word is kept


@pytest.mark.parametrize("x, y", [
    (LCQMC_LIKE, "新手开车上路不应该注意什么"),  # negation inserted
    ("我没有看过这部电影的原著小说", "我有看过这部电影的原著小说"),  # negation removed
    ("2019年上海的常住人口是多少", "2018年上海的常住人口是多少"),  # a digit
    ("第三届全国人民代表大会在哪召开", "第四届全国人民代表大会在哪召开"),  # a numeral
    ("NBA总决赛一般在几月份举行", "CBA总决赛一般在几月份举行"),  # a Latin name
    ("iphone6怎么设置指纹解锁", "iphone7怎么设置指纹解锁"),
    ("要努力提高政府立法工作质量", zhconv.convert("要努力提高政府立法工作质量", "zh-tw")),  # script: 質
    ("滑雪者沿著近垂直的斜坡滑行", "滑雪者沿着近垂直的斜坡滑行"),  # 著 / 着: shared by both scripts
    ("哪个佛罗里达城市人口最多", "哪个佛罗里达城市人口最少"),  # an antonym character
    (LONG_Q, LONG_Q.replace("拒绝", "支持")),  # an antonym word
])
def test_meaning_edits_are_never_duplicates(x, y):
    assert levenshtein(x, y) <= max(len(x), len(y)) // 8  # within the budget: only a guard keeps them apart
    assert edit_similarity(x, y) == 0


def test_guards_still_allow_typos_beside_guarded_characters():
    assert edit_similarity("2019年上海的常住人口是多少", "2019年上海的常驻人口是多少") > 0
    assert edit_similarity("我没有看过这部电影的原著小说", "我没有看过这步电影的原著小说") > 0
    assert not lexical_edit("哪个佛罗里达城市人口最多", "哪个佛罗里达城市口最多")


def test_parts_are_all_required_and_checked_in_order():
    queries, positives = ["北京大学在哪里呀请告诉我", "北京大学在哪里呀请告诉你"], ["一段很长的文字" * 50] * 2
    both = similarity([queries, positives], np.array([0]), np.array([1]), 0.875)
    assert both[0] == pytest.approx(1 - 1 / 12)
    other = ["另一段很长的文字" * 50, "完全不同的回答" * 50]
    assert similarity([queries, other], np.array([0]), np.array([1]), 0.875)[0] == 0
    with pytest.raises(ValueError, match="parts of different lengths"):
        similarity([queries, positives[:1]], np.array([0]), np.array([1]), 0.875)
