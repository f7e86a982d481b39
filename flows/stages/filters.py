"""Quality filters for text pairs: one reason code per filter, pure functions (no Prefect).

Tuned for short Chinese pairs: character-level signals only (no word segmentation), length bounds per kind of pair
(s2s: two short sentences; s2p: a query and a passage, answer or SQL), and no web-document defaults such as "at
least 10 words". Empty texts and texts over 100,000 characters never get here: ingest has quarantined them.

Texts are compared through `normalize` (letters and digits only, NFKC, casefolded). Each filter has its threshold in
`FilterParams`; `pair_reason` gives the first `FilterReason`, in its order, that applies to a pair, `reasons` does the
same for every row of an m3e-hq table.
"""

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from operator import attrgetter
from pathlib import Path

import numpy as np
import pyarrow as pa

from m3e_hq.flows.core.accounting import BATCH_ROWS, StageCounts, parquet_batches
from m3e_hq.flows.core.filter_params import FilterParams
from m3e_hq.flows.core.stage import Context, Reason, Stage, StageResult, Verdicts, sift
from m3e_hq.flows.core.text import normalize
from m3e_hq.schemas import M3E_HQ_SCHEMA

STAGE = "filter"



class FilterReason(Reason):
    """In the order `pair_reason` checks them: a pair gets the first that applies."""

    TOO_SHORT = "too_short", "a side has fewer letters/digits than its bound"
    TOO_LONG = "too_long", "a side has more characters than its bound"
    QUERY_EQUALS_POSITIVE = "query_equals_positive", "both sides are equal after normalisation"
    QUERY_IN_POSITIVE = "query_in_positive", ("s2s: one side is inside the other and covers most of it, or the "
                                               "other adds at most two letters/digits to it")
    ANSWER_REPEATS_QUESTION = "answer_repeats_question", "s2p: the positive holds the query and little else"
    MOJIBAKE = "mojibake", "replacement characters, 锟斤拷, UTF-8 read as Latin-1"
    MARKUP = "markup", "HTML/XML tags, entities, markdown links beyond an allowance"
    BOILERPLATE = "boilerplate", "the positive holds an instruction-set refusal or AI disclaimer"
    REPETITIVE = "repetitive", "a letter repeated too often in a row, or too many repeated character n-grams"
    LOW_CJK_RATIO = "low_cjk_ratio", "the positive has too few CJK ideographs among its letter units"
    LOW_PAIR_SCORE = "low_pair_score", "the teacher score of the pair is below the bound (a hook for mining)"


# Everything but letters and digits: whitespace, punctuation, symbols, the underscore.
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)
_CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_SYLLABLES = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\uac00-\ud7af"  # Hangul jamo, kana, Hangul syllables
_CJK_RUN = re.compile(f"[{_CJK_CHARS}]+")
# One letter unit that is not an ideograph: a kana or Hangul syllable, or a run of other letters (a Latin word).
_OTHER_UNIT = re.compile(f"[{_SYLLABLES}]|[^\\W\\d_{_CJK_CHARS}{_SYLLABLES}]+")
_CODE_SYMBOLS = "{}()[];=<>"
# Share of code symbols among the non-space characters from which text looks like source code, not prose.
_CODE_SYMBOL_SHARE = 0.05
# Latin-1 supplement without the no-break space and the signs common in Chinese text (middle dot U+00B7,
# multiplication sign U+00D7, division sign U+00F7).
_LATIN1 = "\u00a1-\u00b6\u00b8-\u00d6\u00d8-\u00f6\u00f8-\u00ff"
# Every mojibake marker starts with one of these characters: a cheap test before the full pattern.
_MOJIBAKE_HINT = re.compile(f"[{_LATIN1}\ufffd锟烫屯]")
_MOJIBAKE = re.compile(
    "\ufffd"  # replacement character: bytes lost in a lossy decode
    "|锟斤拷|烫烫烫|屯屯屯"  # U+FFFD, or an uninitialised buffer, read as GBK
    "|ï¼|ï½|â€|Ã|Â[\u00a0-\u00bf]"  # UTF-8 of full-width forms, punctuation, accents read as Latin-1 / cp1252
    f"|[{_LATIN1}]{{3,}}"  # Chinese bytes (UTF-8 or GBK) read as Latin-1: runs of accented letters
)
_MARKUP = re.compile(
    r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]{0,300})?/?>"  # HTML/XML tag
    r"|&(?:[A-Za-z]{2,8}|#[0-9]{2,7}|#[xX][0-9A-Fa-f]{2,6});"  # HTML entity
    r"|!?\[[^\[\]\n]{0,300}\]\([^()\s]{1,500}\)"  # markdown link or image
)
# Keys at least this long use the vectorised n-gram count; shorter ones a Python set (same result, less overhead).
_VECTOR_MIN_CHARS = 64
_CODEPOINT_BITS = 21
_TABLE_COLUMNS = ("text", "text_pos", "homogeneous", "task_type")


def pair_reason(text: str, text_pos: str, homogeneous: bool, task_type: str, params: FilterParams,
                score: float | None = None) -> str | None:
    """The first reason (in `FilterReason` order) to drop the pair, or None to keep it.

    `score` is the pair's teacher score, required when `params.min_pair_score` is set.
    """
    if params.min_pair_score is not None and (score is None or math.isnan(score)):
        raise ValueError("the pair-score filter (min_pair_score) needs a teacher score for every pair; "
                         "scores come with the mining stage")
    query_key, pos_key = normalize(text), normalize(text_pos)
    if homogeneous:
        query_min, query_max = params.s2s_query_min_chars, params.s2s_query_max_chars
        pos_min, pos_max = params.s2s_pos_min_chars, params.s2s_pos_max_chars
    else:
        query_min, query_max = params.s2p_query_min_chars, params.s2p_query_max_chars
        pos_min, pos_max = params.s2p_pos_min_chars, params.s2p_pos_max_chars
    if len(query_key) < query_min or len(pos_key) < pos_min:
        return FilterReason.TOO_SHORT
    if len(text) > query_max or len(text_pos) > pos_max:
        return FilterReason.TOO_LONG
    if query_key == pos_key:
        return FilterReason.QUERY_EQUALS_POSITIVE
    if homogeneous:
        if _near_containment(query_key, pos_key, params.query_in_positive_min_coverage,
                             params.query_in_positive_max_extra_chars):
            return FilterReason.QUERY_IN_POSITIVE
    elif query_key and query_key in pos_key and len(pos_key.replace(query_key, "")) < params.answer_min_new_chars:
        return FilterReason.ANSWER_REPEATS_QUESTION
    if _mojibake_count(text) > params.max_mojibake or _mojibake_count(text_pos) > params.max_mojibake:
        return FilterReason.MOJIBAKE
    if _too_much_markup(text, params) or _too_much_markup(text_pos, params):
        return FilterReason.MARKUP
    boilerplate = _phrase_pattern(params.boilerplate_phrases)
    if boilerplate is not None and boilerplate.search(pos_key):
        return FilterReason.BOILERPLATE
    if _repetitive(query_key, params) or _repetitive(pos_key, params):
        return FilterReason.REPETITIVE
    if task_type not in params.cjk_exempt_task_types and _low_cjk(text_pos, params) and (
            task_type not in params.cjk_either_side_task_types or _low_cjk(text, params)):
        return FilterReason.LOW_CJK_RATIO
    if score is not None and params.min_pair_score is not None and score < params.min_pair_score:
        return FilterReason.LOW_PAIR_SCORE
    return None


def reasons(table: pa.Table, params: FilterParams,
            scores: pa.Array | pa.ChunkedArray | Sequence[float] | None = None) -> list[str | None]:
    """`pair_reason` of every row of a table with the m3e-hq columns text, text_pos, homogeneous, task_type.

    `scores` (one teacher score per row) feed the pair-score filter and are required when
    `params.min_pair_score` is set; otherwise they are not used.
    """
    missing = [name for name in _TABLE_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(f"the table lacks the column(s) {missing}; the filters need {list(_TABLE_COLUMNS)}")
    if params.min_pair_score is None:
        row_scores: Sequence[float | None] = [None] * table.num_rows
    elif scores is None:
        raise ValueError("the pair-score filter (min_pair_score) needs teacher scores, one per row; "
                         "scores come with the mining stage")
    else:
        row_scores = scores.to_pylist() if isinstance(scores, pa.Array | pa.ChunkedArray) else list(scores)
        if len(row_scores) != table.num_rows:
            raise ValueError(f"{len(row_scores)} scores for {table.num_rows} rows")
    columns = [table.column(name).to_pylist() for name in _TABLE_COLUMNS]
    return [pair_reason(text, text_pos, homogeneous, task_type, params, score)
            for text, text_pos, homogeneous, task_type, score in zip(*columns, row_scores, strict=True)]


def filter_source(name: str, path: Path, out_dir: Path, params: FilterParams) -> StageCounts:
    """The filter stage for one source: its ingest output `path` into `out_dir/filter/` (dedup's input), each pair
    kept or dropped with the first reason that applies."""
    tables = (pa.Table.from_batches([batch]) for batch in parquet_batches(path, BATCH_ROWS))
    return sift(tables, lambda table, _offset: Verdicts(reasons(table, params)), out_dir / STAGE, STAGE, name,
                M3E_HQ_SCHEMA, f"{path.parent.name}/{path.name}")


def run(inputs: dict[str, Path], params: FilterParams, context: Context) -> StageResult:
    """The stage function: filter each input source."""
    return StageResult([filter_source(n, path, context.build_dir, params) for n, path in inputs.items()])


FILTER = Stage(STAGE, FilterParams, attrgetter("filters"), FilterReason, run)


def _near_containment(a: str, b: str, min_coverage: float, max_extra: int = 0) -> bool:
    """Whether the shorter key is inside the longer one and covers at least `min_coverage` of it, or the longer
    one has at most `max_extra` characters more (which then stand before or after the shorter one)."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return (bool(short) and short in long
            and (len(short) >= min_coverage * len(long) or len(long) - len(short) <= max_extra))


def _mojibake_count(text: str) -> int:
    """Mojibake markers in the text."""
    return len(_MOJIBAKE.findall(text)) if _MOJIBAKE_HINT.search(text) else 0


def _too_much_markup(text: str, params: FilterParams) -> bool:
    """More tags, entities and markdown links/images outside code than the side's length allows."""
    if "<" not in text and "&" not in text and "](" not in text:
        return False
    allowed = max(params.max_markup, params.max_markup_per_1000_chars * len(text) / 1000)
    return len(_MARKUP.findall(_prose(text))) > allowed


def _prose(text: str) -> str:
    """The text without its fenced code blocks and inline code spans."""
    return _CODE.sub(" ", text) if "`" in text else text


@lru_cache(maxsize=16)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for the normalised phrases (None when there are none, so that nothing matches)."""
    keys = sorted({key for key in map(normalize, phrases) if key})
    return re.compile("|".join(map(re.escape, keys))) if keys else None


@lru_cache(maxsize=16)
def _char_run(max_run: int) -> re.Pattern[str]:
    """A character other than a digit repeated more than `max_run` times in a row (keys hold letters and digits)."""
    return re.compile(rf"([^0-9])\1{{{max_run},}}")


def _repetitive(key: str, params: FilterParams) -> bool:
    """A letter repeated too many times in a row, or too many repeated character n-grams."""
    if len(key) < _VECTOR_MIN_CHARS:
        long_run = _char_run(params.max_char_run).search(key) is not None
        dup_share = _ngram_dup_share(key, params.repetition_ngram)
    else:
        long_run, dup_share = _repetition_stats(key, params.repetition_ngram, params.max_char_run)
    return long_run or dup_share > params.max_ngram_dup_share


def _ngram_dup_share(key: str, n: int) -> float:
    """Share of the key's character n-grams that repeat an earlier one: 0 for varied text, near 1 for loops."""
    grams = len(key) - n + 1
    if grams < 2:
        return 0.0
    return 1 - len({key[i:i + n] for i in range(grams)}) / grams


def _repetition_stats(key: str, n: int, max_run: int) -> tuple[bool, float]:
    """Vectorised `_char_run(max_run).search(key) is not None` and `_ngram_dup_share(key, n)`, for long keys."""
    codes = np.frombuffer(key.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    # A run longer than max_run: max_run characters in a row equal to the one before (digits may repeat: 1000000).
    repeats = codes[1:] == codes[:-1]
    long_run = False
    if np.count_nonzero(repeats) >= max_run:
        repeats &= (codes[1:] < ord("0")) | (codes[1:] > ord("9"))
        in_a_row = np.concatenate(([0], np.cumsum(repeats)))
        long_run = bool((in_a_row[max_run:] - in_a_row[:-max_run]).max() >= max_run)
    grams = len(key) - n + 1
    if grams < 2:
        return long_run, 0.0
    # Each n-gram packed exactly into one integer (n <= 3 code points of 21 bits), sorted: equal neighbours repeat.
    packed = codes[:grams].copy()
    for i in range(1, n):
        packed <<= np.uint64(_CODEPOINT_BITS)
        packed |= codes[i:i + grams]
    packed.sort()
    return long_run, int(np.count_nonzero(packed[1:] == packed[:-1])) / grams


def _low_cjk(text_pos: str, params: FilterParams) -> bool:
    """Whether too few of the positive's letter units are CJK ideographs (code and short answers are not checked)."""
    prose = _prose(text_pos)
    # Each run of ideographs becomes one space (so the words around it stay apart): it held len - 1 more characters.
    rest, runs = _CJK_RUN.subn(" ", prose)
    cjk = len(prose) - len(rest) + runs
    others = len(_OTHER_UNIT.findall(rest))
    if cjk + others < params.cjk_min_units or cjk >= params.min_cjk_ratio * (cjk + others):
        return False
    return not _looks_like_code(prose)


def _looks_like_code(text: str) -> bool:
    """Source code rather than prose: many of its non-space characters are brackets, semicolons, = < >."""
    visible = len(text) - sum(map(text.count, " \n\t"))
    return sum(map(text.count, _CODE_SYMBOLS)) >= _CODE_SYMBOL_SHARE * max(visible, 1)
