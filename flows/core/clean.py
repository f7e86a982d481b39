"""Text clean-up and the per-side checks of a pair.

Text still encoded is decoded where the encoding is certain: literal `\\uXXXX` escapes that JSON encoders write for
HTML safety (`\\u003c \\u003e \\u0026 \\u003d \\u0027`) or of invisible characters and spaces outside code
(`这\\u200b\\u200b里`, not `'\\u3000'`), leftover HTML tags, HTML entities. Where decoding once leaves markup, or a
side is all ASCII with escapes of other characters, decoding further would be a guess: the side is `encoded_text`.
Then control and zero-width characters are removed and whitespace (U+00A0 and the ideographic space U+3000 included)
is collapsed to one space; Chinese punctuation and full-width letters are left as they are.
"""

import html
import re
from html.entities import html5
from typing import Any

DEFAULT_MAX_CHARS = 100_000

# C0/C1 control characters other than whitespace, and zero-width characters (ZWSP, ZWNJ, ZWJ, word joiner, BOM).
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_SPACE_RUN = re.compile(r"[^\S\n]+")
_NEWLINE_RUN = re.compile(r" ?\n[\s]*")

# A literal escape: a backslash not itself escaped (`\\u003d` in code is the escape written out, left alone).
_ESCAPE = r"(?<!\\)\\u"
_HTML_SAFE_ESCAPE = re.compile(_ESCAPE + r"00(?:3[cCeEdD]|26|27)")
# Next to a quote, a bracket, a slash or a hyphen an escape is code or its explanation: '\u3000', [\u200b-\u200d],
# /\u00a0/g, （\u3000）. A possessive run, so that a run is decoded whole or not at all.
_DELIMITERS = r"""'"`/\\|()\[\]{}<>\-（）“”‘’「」《》"""
_INVISIBLE_ESCAPES = re.compile(
    rf"(?<![{_DELIMITERS}])(?:{_ESCAPE}(?:200[bBcCdD]|2060|[fF][eE][fF][fF]|00[aA]0|3000))++(?![{_DELIMITERS}])")
_ANY_ESCAPE = re.compile(_ESCAPE + r"[0-9a-fA-F]{4}")

_LINE_TAGS = "br|p|div|li|tr|h[1-6]|hr|table|ul|ol|dl|dt|dd|blockquote|pre"
_INLINE_TAGS = ("a|abbr|b|big|center|code|del|em|font|i|img|ins|s|small|span|strike|strong|sub|sup|tbody|td|th|"
                "thead|tt|u|wbr")
_ATTRIBUTE = r"""\s+[A-Za-z][\w:-]*\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>=`]+)"""  # name=value: `a <b and c>` is no tag
_TAG = re.compile(rf"</?({_LINE_TAGS}|{_INLINE_TAGS})(?:{_ATTRIBUTE})*\s*/?>", re.IGNORECASE)
_LINE_TAG = re.compile(rf"(?:{_LINE_TAGS})", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")  # with its `;`: "A&B" is text


def _escaped(match: re.Match) -> str:
    return "".join(chr(int(code, 16)) for code in match.group(0).split("\\u")[1:])


def _untagged(match: re.Match) -> str:
    return "\n" if _LINE_TAG.fullmatch(match.group(1)) else ""


def _entity(match: re.Match) -> str:
    """The character of a named or numeric entity; an unknown name is left as it is."""
    entity = match.group(0)
    return html.unescape(entity) if entity[1] == "#" else html5.get(entity[1:], entity)


def decode_text(text: str) -> str:
    """Decode what is certainly still encoded, in the order it was encoded: escapes, then tags, then entities."""
    if "\\u" in text:
        text = _INVISIBLE_ESCAPES.sub(_escaped, _HTML_SAFE_ESCAPE.sub(_escaped, text))
    if "<" in text:
        text = _TAG.sub(_untagged, text)
    if "&" in text:
        text = _ENTITY.sub(_entity, text)
    return text


def still_encoded(text: str) -> bool:
    """Whether decoded text holds what only a guess could decode: an entity or a tag left after decoding once
    (`&amp;nbsp;`, `&lt;br&gt;`), or escapes in an all-ASCII side (an escaped text, or code: `[\\u4e00-\\u9fa5]`)."""
    return ("&" in text and any(_entity(m) != m.group(0) for m in _ENTITY.finditer(text))
            or "<" in text and _TAG.search(text) is not None
            or text.isascii() and _ANY_ESCAPE.search(text) is not None)


def clean_text(text: str) -> str:
    """Remove control and zero-width characters, collapse spaces, keep single line breaks, strip the ends."""
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACE_RUN.sub(" ", text)
    return _NEWLINE_RUN.sub("\n", text).strip()


def check_side(value: Any, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str | None, str | None]:
    """(the decoded and cleaned text, None) for a usable side of a pair, else (None, reason code)."""
    if value is None:
        return None, "missing_field"
    if not isinstance(value, str):
        return None, "wrong_type"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes or a broken JSON escape
        return None, "invalid_utf8"
    text = clean_text(decode_text(value))
    if not text:
        return None, "empty_text"
    if still_encoded(text):
        return None, "encoded_text"
    if len(text) > max_chars:
        return None, "text_too_long"
    return text, None
