"""The comparison keys of texts, shared by dedup, the filters and negative selection."""

import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """The comparison key of a text: letters and digits only, NFKC, casefolded.

    Whitespace, punctuation and symbols are removed before NFKC, so the (slow) NFKC pass only runs on the rare texts
    whose letters or digits change under it, such as full-width Latin letters; a symbol that NFKC would spell with
    letters ('℃', '™') is removed whole.
    """
    key = _NON_WORD.sub("", unicodedata.normalize("NFC", text))
    if not unicodedata.is_normalized("NFKC", key):
        key = _NON_WORD.sub("", unicodedata.normalize("NFKC", key))
    return key.casefold()


def key(text: str) -> str:
    """The normalised comparison key of a text; a text of punctuation only keeps its punctuation (NFKC, no
    whitespace), so that it never gets the empty key."""
    return normalize(text) or "".join(unicodedata.normalize("NFKC", text).split())
