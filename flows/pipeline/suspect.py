"""A source that yields nothing is not ok: after ingest, a source is `suspect` when it kept no row, or when
structural reasons (its files are not shaped as its adapter reads them: not UTF-8, not JSON, records without the
fields it maps, tables or queries it cannot use) quarantined most of the rows its own rule leaves.

"Most" is more than half (`STRUCTURAL_SHARE`). A file of another release, format or encoding quarantines all or
nearly all of its rows for one reason (every record lacks the key read, every line is invalid JSON); the shipped
samples, which plant malformed rows in every source, quarantine at most 22 % of a source's rows for structural
reasons (hc3_chinese: 11 of 50), at most 12 % for one reason. The rows a source's own rule leaves out
(`label_filtered`, `unanswerable`) are not counted: an NLI file whose text fields are renamed quarantines every
entailment pair, which are a third of its rows. Content reasons (`empty_text`, `text_too_long`, ...) never make a
source suspect on their own, unless nothing at all is kept.

The verdict names the dominant reason, the keys of a sample of the quarantined rows (or their first characters,
for rows that are not JSON objects) and what to check.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from m3e_hq.flows.core.accounting import StageCounts, parquet_batches
from m3e_hq.flows.stages.ingest import RULE_REASONS, IngestReason
from m3e_hq.sources.catalog import FlatAdapter, Source, SquadAdapter

# Reasons that say a file is not what the adapter reads, rather than that a record's text is unusable.
STRUCTURAL_REASONS = frozenset({
    IngestReason.INVALID_UTF8, IngestReason.INVALID_JSON, IngestReason.INVALID_RECORD, IngestReason.UNREADABLE_FILE,
    IngestReason.MISSING_FIELD, IngestReason.WRONG_TYPE, IngestReason.MISSING_TABLE, IngestReason.BAD_SQL,
    IngestReason.INVALID_CSV,
})
STRUCTURAL_SHARE = 0.5  # of the rows the source's own rule leaves: above it, the source is suspect
SAMPLE_ROWS = 20  # quarantined rows of the dominant reason read for their keys
SHOWN = 3  # distinct key sets, and excerpts of rows that are not objects, reported
EXCERPT_CHARS = 80

CHECKS = {
    IngestReason.INVALID_UTF8: "the files are not UTF-8: check their encoding (e.g. GBK) against the catalog "
                               "entry's adapter encoding",
    IngestReason.INVALID_JSON: "the files do not parse as the catalog's format says: check that they are the data "
                               "(not a web page or a partial download) and JSON Lines vs. one JSON document",
    IngestReason.INVALID_RECORD: "the records are not objects, or the top level is not the record list: check the "
                                 "files' layout against the catalog entry (format, records_key)",
    IngestReason.UNREADABLE_FILE: "the files cannot be read to their end: download them again",
    IngestReason.MISSING_FIELD: "the records lack the fields the adapter reads ({fields}): check that the files are "
                                "the release the catalog names, or map the keys they hold (sources/catalog.yaml)",
    IngestReason.WRONG_TYPE: "the fields the adapter reads ({fields}) hold no text: check that the files are the "
                             "release the catalog names, or map the keys they hold (sources/catalog.yaml)",
    IngestReason.MISSING_TABLE: "the questions' tables are not in the tables files: check that each split's "
                                "*.tables.json is there and of the same release",
    IngestReason.BAD_SQL: "the structured queries are not in the form the adapter renders (sel, agg, conds): check "
                          "that the files are the release the catalog names",
    IngestReason.INVALID_CSV: "the CSV's quoting is broken on most rows: check the delimiter and the quote "
                              "character against the catalog entry's adapter, and that the file is the data",
    IngestReason.LABEL_FILTERED: "no record has a label the catalog keeps ({fields}): check the label values the "
                                 "files use",
}
NOTHING_READ = "no_rows"


@dataclass(frozen=True)
class Suspicion:
    """Why a source is suspect: the dominant reason and its rows, out of the rows its own rule leaves; the keys of
    sampled quarantined rows (distinct sets, most frequent first) or excerpts of those that are not objects; what
    to check."""

    reason: str
    rows: int
    structural: int  # rows quarantined for any structural reason
    considered: int  # rows read less those the source's own rule leaves out
    kept: int
    sample_keys: list[list[str]] = field(default_factory=list)
    sample_rows: list[str] = field(default_factory=list)
    check: str = ""

    def message(self) -> str:
        """The verdict on one line."""
        if self.reason == NOTHING_READ:
            return f"no rows read; {self.check}"
        seen = [f"keys of sampled rows: {', '.join(map(str, self.sample_keys))}"] if self.sample_keys else []
        seen += [f"rows such as {', '.join(map(repr, self.sample_rows))}"] if self.sample_rows else []
        counts = f"{self.reason} quarantined {self.rows:,} of {self.considered:,} rows, {self.kept:,} kept"
        return "; ".join([counts, *seen, self.check])


def suspicion(source: Source, counts: StageCounts) -> Suspicion | None:
    """The verdict on a source's ingest counts: None when it looks like its data, else why it is suspect."""
    considered = counts.read - sum(n for reason, n in counts.dropped.items() if reason in RULE_REASONS)
    structural = Counter({r: n for r, n in counts.dropped.items() if r in STRUCTURAL_REASONS})
    if counts.read == 0:
        return Suspicion(NOTHING_READ, 0, 0, 0, 0, check="check that its files hold the data")
    if structural.total() > STRUCTURAL_SHARE * considered:
        reason, rows = dominant(structural)
    elif counts.kept == 0:
        reason, rows = dominant(Counter(counts.dropped))
    else:
        return None
    keys, rows_seen = sampled(Path(counts.dropped_path), reason) if counts.dropped_path else ([], [])
    return Suspicion(reason, rows, structural.total(), considered, counts.kept, keys, rows_seen,
                     what_to_check(source, reason))


def dominant(reasons: Counter[str]) -> tuple[str, int]:
    """The most frequent reason (the first by name among equals) and its rows."""
    return min(reasons.items(), key=lambda item: (-item[1], item[0]))


def sampled(dropped_path: Path, reason: str) -> tuple[list[list[str]], list[str]]:
    """Of the first SAMPLE_ROWS quarantined rows with `reason`: the distinct key lists of those that are JSON
    objects (most frequent first) and the first characters of the others, SHOWN of each."""
    keys: Counter[tuple[str, ...]] = Counter()
    excerpts: list[str] = []
    for raw in quarantined_raw(dropped_path, reason):
        record = as_json(raw)
        if isinstance(record, dict):
            keys[tuple(record)] += 1
        elif len(excerpts) < SHOWN:
            excerpts.append(raw[:EXCERPT_CHARS])
    return [list(k) for k, _ in keys.most_common(SHOWN)], excerpts


def quarantined_raw(dropped_path: Path, reason: str) -> list[str]:
    """The raw rows of the first SAMPLE_ROWS quarantined rows with `reason`, read a batch at a time."""
    found: list[str] = []
    for batch in parquet_batches(dropped_path, columns=["reason", "raw"]):
        rows = batch.to_pydict()
        found += [raw or "" for r, raw in zip(rows["reason"], rows["raw"], strict=True) if r == reason]
        if len(found) >= SAMPLE_ROWS:
            break
    return found[:SAMPLE_ROWS]


def as_json(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def what_to_check(source: Source, reason: str) -> str:
    """What to look at for the dominant reason, naming the fields the source's adapter reads."""
    check = CHECKS.get(reason, f"check the quarantined rows (ingest/dropped/{source.name}.parquet) against the "
                               "catalog entry's adapter")
    return check.format(fields=adapter_fields(source))


def adapter_fields(source: Source) -> str:
    """The native fields the source's adapter reads, e.g. "text ← title + question, text_pos ← reply"."""
    adapter = source.adapter
    if isinstance(adapter, FlatAdapter):
        pairs = [f"text ← {' + '.join(p.text)}, text_pos ← {' | '.join(p.text_pos)}" for p in adapter.pairs]
        keep = [f"{adapter.keep.field} in {adapter.keep.values}"] if adapter.keep else []
        return "; ".join(pairs + keep)
    if isinstance(adapter, SquadAdapter):
        return "data[].paragraphs[].context and qas[].question, answers, is_impossible"
    return "question, table_id, sql; the tables file's id, header"
