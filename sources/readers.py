"""Readers of native files: Parquet, JSON Lines (optionally gzipped), JSON documents and CSV.

A reader yields every record it finds with a locator (file and position). What it cannot parse it still yields,
with a reason code and the raw text, so that nothing in a file is lost without being counted. UTF-8 is read with or
without a byte-order mark (files saved on Windows start with one).
"""

import codecs
import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

Format = Literal["parquet", "jsonl", "json", "csv"]
PARQUET_BATCH_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class NativeRecord:
    """One record of a native file, or the reason it could not be read (then `raw` holds what was there)."""

    locator: str
    record: Any = None
    reason: str | None = None
    raw: str | None = None


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A native file of a source: where it is, its path relative to the source folder, and its split."""

    path: Path
    relpath: str
    split: str


def read_records(file: SourceFile, fmt: Format, encoding: str = "utf-8", records_key: str | None = None,
                 ) -> Iterator[NativeRecord]:
    """Every record of `file` in the given native format."""
    if fmt == "parquet":
        return _read_parquet(file)
    if fmt == "jsonl":
        return _read_jsonl(file, encoding)
    if fmt == "json":
        return _read_json(file, encoding, records_key)
    return _read_csv(file, encoding)


def _decoding(encoding: str) -> str:
    """The codec to read `encoding` with: UTF-8 with or without a leading byte-order mark."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _read_parquet(file: SourceFile) -> Iterator[NativeRecord]:
    try:
        parquet = pq.ParquetFile(file.path, pre_buffer=False)  # pre-buffering keeps every chunk read in memory
        batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        index = 0
        for batch in batches:
            for row in _rows(batch):
                locator = f"{file.relpath}:{index}"
                if isinstance(row, str):
                    yield NativeRecord(locator, reason="unreadable_value", raw=row)
                else:
                    yield NativeRecord(locator, record=row)
                index += 1
    except (OSError, pa.ArrowException) as exc:
        yield NativeRecord(f"{file.relpath}:file", reason="unreadable_file", raw=f"{type(exc).__name__}: {exc}")


# What converting an Arrow value Python cannot hold raises: a timestamp or date past year 9999, a duration too long.
_UNCONVERTIBLE = (OverflowError, ValueError)


def _rows(batch: pa.RecordBatch) -> list[dict | str]:
    """The batch's rows as dicts; a row holding a value Python cannot hold becomes its cells as text instead."""
    try:
        return batch.to_pylist()
    except _UNCONVERTIBLE:
        return [_row(batch.slice(index, 1)) for index in range(batch.num_rows)]


def _row(row: pa.RecordBatch) -> dict | str:
    try:
        return row.to_pylist()[0]
    except _UNCONVERTIBLE:
        return json.dumps({name: _cell(column) for name, column in zip(row.schema.names, row.columns)},
                          ensure_ascii=False, default=str)


def _cell(column: pa.Array) -> Any:
    """A one-row column's value, or Arrow's text for it when Python cannot hold it (`<value out of range: …>`)."""
    try:
        return column.to_pylist()[0]
    except _UNCONVERTIBLE as exc:
        return f"{column.type}: {' '.join(column.to_string().split())} ({type(exc).__name__}: {exc})"


def _read_jsonl(file: SourceFile, encoding: str) -> Iterator[NativeRecord]:
    lineno = 0
    encoding = _decoding(encoding)  # a mark at the start of any line: files joined with `cat` keep theirs
    try:
        with _open_binary(file.path) as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                locator = f"{file.relpath}:{lineno}"
                try:
                    text = line.decode(encoding)
                except UnicodeDecodeError:
                    yield NativeRecord(locator, reason="invalid_utf8", raw=line.decode(encoding, "backslashreplace"))
                    continue
                try:
                    yield NativeRecord(locator, record=json.loads(text))
                except (ValueError, RecursionError):  # JSONDecodeError, an over-long integer, too deep nesting
                    yield NativeRecord(locator, reason="invalid_json", raw=text.rstrip("\r\n"))
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
        yield NativeRecord(f"{file.relpath}:{lineno + 1}-end", reason="unreadable_file",
                           raw=f"{type(exc).__name__}: {exc}")


def _read_json(file: SourceFile, encoding: str, records_key: str | None) -> Iterator[NativeRecord]:
    locator = f"{file.relpath}:file"
    try:
        with _open_binary(file.path) as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        yield NativeRecord(locator, reason="unreadable_file", raw=f"{type(exc).__name__}: {exc}")
        return
    try:
        text = data.decode(_decoding(encoding))
    except UnicodeDecodeError as exc:
        yield NativeRecord(locator, reason="invalid_utf8", raw=f"not {encoding}: {exc}")
        return
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an over-long integer, too deep nesting
        yield NativeRecord(locator, reason="invalid_json", raw=f"{exc}: {text[:1000]}")
        return
    records = document.get(records_key) if records_key and isinstance(document, dict) else document
    if not isinstance(records, list):
        expected = f"an object with a {records_key!r} list" if records_key else "a list of records"
        yield NativeRecord(locator, reason="invalid_record", raw=f"expected {expected}: {text[:1000]}")
        return
    for index, record in enumerate(records):
        yield NativeRecord(f"{file.relpath}:{index}", record=record)


# Python's csv refuses cells over 131,072 characters and stops the file there; cells of any length are read, and
# ingest quarantines texts over --max-chars (text_too_long). The limit is the csv module's, for the whole process.
CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(file: SourceFile, encoding: str) -> Iterator[NativeRecord]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    line = 0
    try:
        # Undecodable bytes become lone surrogates, so the row they are in is quarantined as invalid_utf8.
        with file.path.open(encoding=_decoding(encoding), errors="surrogateescape", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                line = reader.line_num
                extra = row.pop(None, None)  # cells beyond the header
                if extra:
                    row["_extra"] = extra
                yield NativeRecord(f"{file.relpath}:{line}", record=row)
    except (OSError, csv.Error) as exc:
        yield NativeRecord(f"{file.relpath}:{line + 1}-end", reason="unreadable_file",
                           raw=f"{type(exc).__name__}: {exc}")
