"""Adapter for flat records (Parquet, JSON Lines, JSON, CSV): fields of one record become one or more pairs."""

import re
from collections.abc import Iterator
from typing import Any

import zhconv

from m3e_hq.sources.adapters.base import Candidate, rejected
from m3e_hq.sources.catalog import FlatAdapter, PairFields
from m3e_hq.sources.readers import NativeRecord, SourceFile, read_records

JOIN = "\n"


def adapt_flat(files: list[SourceFile], spec: FlatAdapter) -> Iterator[Candidate]:
    """Every candidate pair of the files, in file order."""
    for file in files:
        for native in read_records(file, spec.format, spec.encoding, spec.records_key):
            if native.reason:
                yield rejected(native, file.split)
            elif not isinstance(native.record, dict):
                yield rejected(native, file.split, "invalid_record")
            elif spec.keep and native.record.get(spec.keep.field) is None:
                yield rejected(native, file.split, "missing_field")
            elif spec.keep and native.record[spec.keep.field] not in spec.keep.values:
                yield rejected(native, file.split, "label_filtered")
            elif spec.explode:
                yield from _exploded(native, file.split, spec)
            else:
                for index, pair in enumerate(spec.pairs):
                    locator = native.locator if len(spec.pairs) == 1 else f"{native.locator}#{index}"
                    yield Candidate(file.split, locator, _text(native.record, pair, spec),
                                    _transform(_first_present(native.record, pair.text_pos), spec), raw=native.record)


def _exploded(native: NativeRecord, split: str, spec: FlatAdapter) -> Iterator[Candidate]:
    """One candidate per element of the list fields named by text_pos (e.g. every answer to a question)."""
    record = native.record
    values = [(pair, _first_present(record, pair.text_pos)) for pair in spec.pairs]
    if any(value is not None and not isinstance(value, list) for _, value in values):
        yield rejected(native, split, "wrong_type")
        return
    if not any(value for _, value in values):
        yield rejected(native, split, "missing_field")
        return
    for pair_index, (pair, elements) in enumerate(values):
        text = _text(record, pair, spec)
        for index, element in enumerate(elements or []):
            yield Candidate(split, f"{native.locator}#{pair_index}.{index}", text, _transform(element, spec),
                            raw=record)


def _first_present(record: dict, names: list[str]) -> Any:
    for name in names:
        if record.get(name) is not None:
            return record[name]
    return None


def _text(record: dict, pair: PairFields, spec: FlatAdapter) -> Any:
    """The first text field, followed by the optional ones that are non-empty strings and add something new."""
    first = record.get(pair.text[0])
    if not isinstance(first, str):
        return first
    parts = [first]
    for name in pair.text[1:]:
        value = record.get(name)
        if isinstance(value, str) and value.strip() and value.strip() not in {p.strip() for p in parts}:
            parts.append(value)
    return _transform(JOIN.join(parts), spec)


def _transform(value: Any, spec: FlatAdapter) -> Any:
    if not isinstance(value, str):
        return value
    for name in spec.transforms:
        value = zh_cn(value) if name == "zh_cn" else detokenize(value)
    return value


def zh_cn(text: str) -> str:
    """Traditional to Simplified Chinese (miracl's Wikipedia passages mix both)."""
    return zhconv.convert(text, "zh-cn")


_SPACES = re.compile(r" {2,}")


def _is_ascii_word_edge(char: str) -> bool:
    return char.isascii() and char.isalnum()


def detokenize(text: str) -> str:
    """Re-join space-tokenised Chinese: no space between Chinese tokens, spaces kept around Latin words and numbers."""
    out = []
    for token in text.split():
        ascii_edge = _is_ascii_word_edge(token[0]) or _is_ascii_word_edge(token[-1])
        out.append(f" {token} " if ascii_edge else token)
    return _SPACES.sub(" ", "".join(out)).strip()
