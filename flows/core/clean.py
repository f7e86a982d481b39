"""Text clean-up and the per-side checks of a pair. Nothing lossy: Chinese punctuation and width are left as they are."""

import re
from typing import Any

DEFAULT_MAX_CHARS = 100_000

# C0/C1 control characters other than whitespace, and zero-width characters (ZWSP, ZWNJ, ZWJ, word joiner, BOM).
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_SPACE_RUN = re.compile(r"[^\S\n]+")
_NEWLINE_RUN = re.compile(r" ?\n[\s]*")


def clean_text(text: str) -> str:
    """Remove control and zero-width characters, collapse spaces, keep single line breaks, strip the ends."""
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACE_RUN.sub(" ", text)
    return _NEWLINE_RUN.sub("\n", text).strip()


def check_side(value: Any, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str | None, str | None]:
    """(cleaned text, None) for a usable side of a pair, else (None, reason code)."""
    if value is None:
        return None, "missing_field"
    if not isinstance(value, str):
        return None, "wrong_type"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes or a broken JSON escape
        return None, "invalid_utf8"
    text = clean_text(value)
    if not text:
        return None, "empty_text"
    if len(text) > max_chars:
        return None, "text_too_long"
    return text, None
