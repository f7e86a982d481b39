"""Text clean-up and the per-side checks that decide quarantine reasons."""

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
