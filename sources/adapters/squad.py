"""Adapter for SQuAD-style JSON ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]}): (question, context)."""

from collections.abc import Iterator

from m3e_hq.sources.adapters.base import Candidate, rejected
from m3e_hq.sources.catalog import SquadAdapter
from m3e_hq.sources.readers import NativeRecord, SourceFile, read_records


def adapt_squad(files: list[SourceFile], spec: SquadAdapter) -> Iterator[Candidate]:
    """One candidate per question; a structural fault rejects the part of the file it spoils, counted once."""
    for file in files:
        for article in read_records(file, "json", records_key="data"):
            if article.reason:
                yield rejected(article, file.split)
            elif not isinstance(article.record, dict):
                yield rejected(article, file.split, "invalid_record")
            elif not isinstance(article.record.get("paragraphs"), list):
                yield rejected(article, file.split, "missing_field")
            else:
                yield from _paragraphs(article, file.split, spec)


def _paragraphs(article: NativeRecord, split: str, spec: SquadAdapter) -> Iterator[Candidate]:
    for p_index, paragraph in enumerate(article.record["paragraphs"]):
        locator = f"{article.locator}/{p_index}"
        if not isinstance(paragraph, dict):
            yield Candidate(split, locator, reason="invalid_record", raw=paragraph)
            continue
        if not isinstance(paragraph.get("qas"), list):
            yield Candidate(split, locator, reason="missing_field", raw=paragraph)
            continue
        context = paragraph.get("context")
        for q_index, qa in enumerate(paragraph["qas"]):
            q_locator = f"{locator}/{q_index}"
            if not isinstance(qa, dict):
                yield Candidate(split, q_locator, reason="invalid_record", raw=qa)
                continue
            raw = {**qa, "context": context}  # a quarantined question keeps the paragraph it was asked about
            reason = _unanswerable(qa) if spec.answerable_only else None
            if reason:
                yield Candidate(split, q_locator, reason=reason, raw=raw)
            else:
                yield Candidate(split, q_locator, qa.get("question"), context, raw=raw)


def _unanswerable(qa: dict) -> str | None:
    """Why a question cannot be shown answerable: marked impossible, or no answer (a file may leave `is_impossible`
    out), no `answers` at all, or `answers` that are not a list; None when it is answerable."""
    answers = qa.get("answers")
    if qa.get("is_impossible") is True or answers == []:
        return "unanswerable"
    if answers is None:
        return "missing_field"
    return None if isinstance(answers, list) else "wrong_type"
