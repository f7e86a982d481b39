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


PARTICLES = "吗呢啊"
_CLAUSE_FINAL_PARTICLES = re.compile(f"[{PARTICLES}]+(?=[\\W_]|$)")


def near_key(text: str, plain: str | None = None) -> str:
    """The key near-duplicates are compared on: `key` without clause-final modal particles (吗 呢 啊 before
    punctuation, a space or the end), so that 你好吗？/ 你好。 compare equal; a text of particles keeps them.
    `plain`: the text's `key`, when the caller has it."""
    plain = key(text) if plain is None else plain
    if not any(p in plain for p in PARTICLES):
        return plain
    return normalize(_CLAUSE_FINAL_PARTICLES.sub("", text)) or plain
