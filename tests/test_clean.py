"""Text clean-up, the decoding of text still encoded, and the per-side checks that decide quarantine reasons."""

import pytest

from m3e_hq.flows.core.clean import check_side, clean_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  今天\t\t天气  好 ", "今天 天气 好"),
        ("零\u200b宽\u200c字\u200d符\u2060\ufeff", "零宽字符"),
        ("控制\x00字\x07符\x1b\x7f\x85", "控制字符"),
        ("第一行\r\n\r\n  第二行\r第三行", "第一行\n第二行\n第三行"),
        ("全角，标点！ＡＢＣ", "全角，标点！ＡＢＣ"),  # no lossy width or punctuation normalisation
        ("\u3000\u3000首段缩进\u3000两格\u00a0空格", "首段缩进 两格 空格"),  # U+3000 and U+00A0 are whitespace
        ("Hello   World", "Hello World"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing_field"),
        (42, "wrong_type"),
        (["甲"], "wrong_type"),
        ("坏\ud800字", "invalid_utf8"),
        ("   ", "empty_text"),
        ("\u200b\u200b", "empty_text"),
        ("长" * 11, "text_too_long"),
    ],
)
def test_check_side_reasons(value, reason):
    assert check_side(value, max_chars=10) == (None, reason)


def test_check_side_returns_cleaned_text():
    assert check_side(" 问\u200b题 ", max_chars=10) == ("问题", None)
    assert check_side("长" * 10, max_chars=10) == ("长" * 10, None)


# Real text, cut to the sentence around the encoded part: pluto-junzeng/ChineseSquad @ 6cc7b1c squad_2.0/dev-v2.0-zh.json
# (articles 黑死病, European_Union_law, 计算复杂性理论, 分组交换; ../shared/data/real/chinese_squad/ holds the first) and
# ymcui/cmrc2018 @ c0eb1b6 cmrc2018_dev.json (秋山幸二, via ../shared/data/real/cmrc2018/). The tag, the entities and the
# <sub> are planted in real 黑死病 and 氧 sentences.
@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("瘟疫是由恶劣的空气引起\\u200b\\u200b的，这成为最广泛接受的理论。", "瘟疫是由恶劣的空气引起的，这成为最广泛接受的理论。"),
        ("会是没有道理的。TFEU\\u200b\\u200b第49条规定", "会是没有道理的。TFEU第49条规定"),
        ("确定P \\u003d NP会从生物学中受益的一个特殊问题是什么？", "确定P = NP会从生物学中受益的一个特殊问题是什么？"),
        ("协会，1991年\\u003e \\u003cUyless Black，帧中继网络，McGraw-Hill", "协会，1991年> <Uyless Black，帧中继网络，McGraw-Hill"),
        ("金鹰队。<br>※注2：球季结束战绩排名第1", "金鹰队。\n※注2：球季结束战绩排名第1"),
        ("黑死病的起源<br clear=\"all\">在中世纪，医学知识停滞了。", "黑死病的起源\n在中世纪，医学知识停滞了。"),
        ("根据Biraben的说法，瘟疫每年在1346年至1671年之间&nbsp;出现", "根据Biraben的说法，瘟疫每年在1346年至1671年之间 出现"),
        ("根据杰弗里&middot;帕克（Geoffrey Parker）的说法&#65292;&ldquo;在1628-31年的疫情中，仅法国一地就使瘟疫损失了近100万人&#x3002;&rdquo;",
         "根据杰弗里·帕克（Geoffrey Parker）的说法，“在1628-31年的疫情中，仅法国一地就使瘟疫损失了近100万人。”"),
        ("色无味的双原子气体，分子式为O<sub>2</sub>", "色无味的双原子气体，分子式为O2"),
    ],
)
def test_text_still_encoded_is_decoded(raw, clean):
    assert check_side(raw) == (clean, None)


@pytest.mark.parametrize(
    "text",
    [
        "设$f(x)=\\frac{1}{x}$，求$\\lim_{x\\to\\infty}f(x)$与\\underline{下划线}",  # LaTeX
        "文件在C:\\Users\\user\\新建文件夹\\u盘备份里",  # a Windows path
        'printf("你好\\n世界")输出两行',  # a literal \n is left as the writer wrote it
        "用正则[\\u4e00-\\u9fa5]匹配汉字",
        "去掉全角空格：s.replace(/\\u3000/g, '')，零宽空格写作'\\u200b'",
        "JSON里\\\\u200b是转义后的反斜杠",
        "A&B公司与AT&T的R&D部门合作，&copy 未写分号",
        "若a<b且b>c，则n <p < 2n，a <b and c> d",
        "《红楼梦》<第一回>",
    ],
)
def test_real_text_that_only_looks_encoded_is_left_as_it_is(text):
    assert check_side(text) == (text, None)


@pytest.mark.parametrize(
    "text",
    [
        "在HTML里&amp;nbsp;表示空格",  # an entity left after decoding once: encoded twice, or text about HTML
        "用&lt;br&gt;换行",  # a tag left after decoding the entities
        "\\u4e2d\\u6587\\u95ee\\u9898",  # an all-ASCII side of escapes: an escaped text
        "s.replace(/[\\u4e00-\\u9fa5]/g, '')",  # or code: which one is a guess
    ],
)
def test_text_only_a_guess_could_decode_is_quarantined(text):
    assert check_side(text) == (None, "encoded_text")
