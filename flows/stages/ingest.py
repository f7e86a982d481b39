"""Ingest stage: native files -> adapter -> clean-up -> validation -> one m3e-hq Parquet file per source.

Rows that cannot become a pair are quarantined (the dropped file) with a reason code and their raw native row,
whatever looks like a credential in it redacted and cut at RAW_MAX_CHARS characters (`stored_raw`).
"""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from m3e_hq import progress
from m3e_hq.flows.core.accounting import StageCounts, StageWriter
from m3e_hq.flows.core.clean import DEFAULT_MAX_CHARS, check_side
from m3e_hq.flows.core.stage import Context, Reason, Stage, StageResult
from m3e_hq.schemas import M3E_HQ_SCHEMA, row_id
from m3e_hq.sources.adapters import Candidate, candidates
from m3e_hq.sources.catalog import Source
from m3e_hq.sources.readers import SourceFile

STAGE = "ingest"


class IngestReason(Reason):
    """Why a native record did not become a pair (set by the readers, the adapters and `check_side`)."""

    INVALID_UTF8 = "invalid_utf8", "a line or text that is not valid UTF-8 (or holds lone surrogates)"
    INVALID_JSON = "invalid_json", "a line or file that does not parse as JSON"
    INVALID_CSV = "invalid_csv", "a CSV row over several lines with an unterminated quote: its first line"
    INVALID_RECORD = "invalid_record", "a record that is not an object, or a top level that is not the expected list"
    UNREADABLE_FILE = "unreadable_file", "a file that cannot be read past a point: counted once"
    UNREADABLE_VALUE = "unreadable_value", "a Parquet row holding a value Python cannot hold (a timestamp past 9999)"
    LABEL_FILTERED = "label_filtered", "not a positive pair by the source's rule"
    UNANSWERABLE = "unanswerable", "SQuAD question marked impossible or with no answers"
    MISSING_FIELD = "missing_field", "a required field is absent or null"
    WRONG_TYPE = "wrong_type", "a text field that is not a string (SQuAD: answers that are not a list)"
    EMPTY_TEXT = "empty_text", "a side that is empty after clean-up"
    ENCODED_TEXT = "encoded_text", "a side still encoded after decoding, where decoding further would be a guess"
    TEXT_TOO_LONG = "text_too_long", "a side longer than max_chars"
    MISSING_TABLE = "missing_table", "NL2SQL: the question's table is not in the tables file"
    BAD_SQL = "bad_sql", "NL2SQL: the question's structured query cannot be rendered"


# Rows the source's own rule leaves out (not positive pairs); every other reason marks a malformed row.
RULE_REASONS = frozenset({IngestReason.LABEL_FILTERED, IngestReason.UNANSWERABLE})


class IngestParams(BaseModel):
    """The ingest stage's one setting."""

    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=1, description="longest text kept per side, in characters")
PROGRESS_EVERY = 5_000


def tags(source: Source) -> dict[str, Any]:
    """The catalog values every row of a source carries."""
    return {
        "source": source.name,
        "domain": source.domain.value,
        "task_type": source.task_type.value,
        "prompt": source.prompt.value,
        "homogeneous": source.homogeneous,
        "commercial": source.commercial.value,
        "research_use": source.research_use.value,
        "license": source.license,
        "quality": source.quality.value,
        "lang": source.lang,
    }


def ingest_source(source: Source, files: list[SourceFile], out_dir: Path, max_chars: int = DEFAULT_MAX_CHARS,
                  on_progress: Callable[[int], None] | None = None) -> StageCounts:
    """Ingest one source's native files into `out_dir/ingest/`; returns its counts (read = kept + quarantined)."""
    source_tags = tags(source)
    with StageWriter(out_dir / STAGE, STAGE, source.name, M3E_HQ_SCHEMA) as writer:
        for n, candidate in enumerate(candidates(source, files), start=1):
            writer.read()
            row, reason = to_row(candidate, source_tags, max_chars)
            if row is not None:
                writer.keep(row)
            else:
                writer.drop(quarantine_row(source.name, candidate, reason))
            if on_progress and n % PROGRESS_EVERY == 0:
                on_progress(PROGRESS_EVERY)
    if on_progress:
        on_progress(writer.counts.read % PROGRESS_EVERY)
    return writer.counts


def to_row(candidate: Candidate, source_tags: dict[str, Any], max_chars: int) -> tuple[dict | None, str | None]:
    """The m3e-hq row for a candidate, or None and the reason it is quarantined."""
    if candidate.reason:
        return None, candidate.reason
    text, reason = check_side(candidate.text, max_chars)
    if reason:
        return None, reason
    text_pos, reason = check_side(candidate.text_pos, max_chars)
    if reason:
        return None, reason
    row_key = row_id(source_tags["source"], candidate.split, candidate.locator, text, text_pos)
    return {"id": row_key, "text": text, "text_pos": text_pos, "split": candidate.split, **source_tags}, None


def quarantine_row(source: str, candidate: Candidate, reason: str) -> dict[str, Any]:
    raw, detail = stored_raw(_raw_json(candidate.raw))
    return {
        "source": source,
        "split": candidate.split,
        "locator": candidate.locator,
        "id": None,
        "reason": reason,
        "detail": detail,
        "raw": raw,
        "kept_id": None,
    }


def _raw_json(raw: Any) -> str | None:
    """The raw native row as JSON text; undecodable characters are escaped so the quarantine file stays valid."""
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


RAW_MAX_CHARS = 100_000  # the most of a quarantined row's raw text stored
# What a credential looks like: the value of a name that says it is one (HF_TOKEN=…, "password": "…"), a Hub,
# GitHub, OpenAI, Slack or AWS token, a bearer token, a private key.
TOKEN_PATTERNS = re.compile(
    r"(?P<name>(?i:\b\w*(?:token|secret|passw(?:or)?d|api_?key|access_?key|private_?key))[\"']?\s*[=:]\s*[\"']?)"
    r"[^\s\"',;\x00]+"
    r"|\bhf_[A-Za-z0-9]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_\w{20,}|\bsk-[\w-]{20,}|\bxox[abpr]-[\w-]{10,}"
    r"|\bAKIA[0-9A-Z]{16}\b|\bBearer\s+[\w.~+/=-]{8,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
REDACTED = "[redacted]"


def stored_raw(raw: str | None) -> tuple[str | None, str | None]:
    """The raw text as stored in the dropped file, and a note of what was changed (the row's `detail`): whatever
    looks like a credential replaced by `[redacted]` (a `name=value` keeps its name), the text cut at RAW_MAX_CHARS
    characters."""
    if raw is None:
        return None, None
    notes = []
    raw, redacted = TOKEN_PATTERNS.subn(lambda match: (match.group("name") or "") + REDACTED, raw)
    if redacted:
        notes.append(f"raw: {redacted} credential{'s' if redacted > 1 else ''} redacted")
    if len(raw) > RAW_MAX_CHARS:
        notes.append(f"raw cut to {RAW_MAX_CHARS:,} of {len(raw):,} characters")
        raw = raw[:RAW_MAX_CHARS]
    return raw, "; ".join(notes) or None


def run(inputs: dict[str, list[SourceFile]], params: IngestParams, context: Context) -> StageResult:
    """The stage function: ingest each source's located native files."""
    results = []
    for name, files in inputs.items():
        with progress.bar(f"ingest {name}") as on_progress:
            results.append(ingest_source(context.catalog.get(name), files, context.build_dir, params.max_chars,
                                         on_progress))
    return StageResult(results)


INGEST = Stage(STAGE, IngestParams, lambda build: IngestParams(max_chars=build.max_chars), IngestReason, run,
               isolated=True)
