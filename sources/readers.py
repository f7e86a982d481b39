"""Readers of native files: Parquet, JSON Lines (optionally gzipped), JSON documents and CSV.

A reader yields every record it finds with a locator (file and position). What it cannot parse it still yields,
with a reason code and the raw text, so that nothing in a file is lost without being counted. UTF-8 is read with or
without a byte-order mark (files saved on Windows start with one); a file that starts with a UTF-16 byte-order mark
and ASCII characters (as every native format starts) is read as UTF-16, whatever the catalog's encoding.

Faults are confined to the record they are in where the format allows. A JSON Lines line that does not decode is
quarantined alone (invalid_utf8). In a JSON document or a CSV file, undecodable bytes become lone surrogates, so the
document still parses and only the records that map a text holding them are quarantined (invalid_utf8, by ingest's
clean-up). A CSV row over several lines that breaks csv's strict quoting (an unterminated quote, which would
swallow the rows after it into one cell, up to the next quote or the end of the file) quarantines the line it starts
on (invalid_csv), and the lines after it are read again.
"""

import codecs
import csv
import gzip
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

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


def _codec(path: Path, encoding: str) -> str:
    """The codec to read the file at `path` with: UTF-16 when it starts as UTF-16 text, else `_decoding(encoding)`."""
    with _open_binary(path) as handle:
        return "utf-16" if _starts_utf16(handle.read(6)) else _decoding(encoding)


def _starts_utf16(head: bytes) -> bool:
    """Whether `head` is a UTF-16 byte-order mark and two ASCII characters, as every native format starts (`[{`,
    `{"`, a CSV header): a line of junk that happens to start with the mark's bytes is no UTF-16 file."""
    if len(head) < 6:
        return False
    if head[:2] == codecs.BOM_UTF16_LE:
        units = [(head[i], head[i + 1]) for i in (2, 4)]
    elif head[:2] == codecs.BOM_UTF16_BE:
        units = [(head[i + 1], head[i]) for i in (2, 4)]
    else:
        return False
    return all(0 < low < 0x80 and high == 0 for low, high in units)


def _lenient(codec: str) -> str:
    """The error handler that decodes what `codec` cannot into lone surrogates (which ingest quarantines as
    invalid_utf8): UTF-16's own lone surrogates pass, other codecs' undecodable bytes are escaped."""
    return "surrogatepass" if codec == "utf-16" else "surrogateescape"


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _byte_lines(handle: IO[bytes], codec: str) -> Iterator[bytes]:
    """The lines of a binary file, each ending at b"\\n"; a UTF-16 file's lines re-encoded to UTF-8 (its lone
    surrogates kept, so that their line fails to decode)."""
    if codec != "utf-16":
        return iter(handle)
    text = io.TextIOWrapper(handle, encoding=codec, errors=_lenient(codec), newline="\n")
    return (line.encode("utf-8", "surrogatepass") for line in text)


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
    try:
        codec = _codec(file.path, encoding)
        # UTF-8 lines decode with or without a mark (files joined with `cat` keep theirs); UTF-16 comes re-encoded
        line_codec = "utf-8" if codec == "utf-16" else codec
        with _open_binary(file.path) as handle:
            for lineno, line in enumerate(_byte_lines(handle, codec), start=1):
                if not line.strip():
                    continue
                locator = f"{file.relpath}:{lineno}"
                try:
                    text = line.decode(line_codec)
                except UnicodeDecodeError:
                    yield NativeRecord(locator, reason="invalid_utf8", raw=line.decode(line_codec, "backslashreplace"))
                    continue
                try:
                    yield NativeRecord(locator, record=json.loads(text))
                except (ValueError, RecursionError):  # JSONDecodeError, an over-long integer, too deep nesting
                    yield NativeRecord(locator, reason="invalid_json", raw=text.rstrip("\r\n"))
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # a truncated or corrupt gzip stream, or UTF-16 file
        yield NativeRecord(f"{file.relpath}:{lineno + 1}-end", reason="unreadable_file",
                           raw=f"{type(exc).__name__}: {exc}")


def _read_json(file: SourceFile, encoding: str, records_key: str | None) -> Iterator[NativeRecord]:
    locator = f"{file.relpath}:file"
    try:
        codec = _codec(file.path, encoding)
        with _open_binary(file.path) as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        yield NativeRecord(locator, reason="unreadable_file", raw=f"{type(exc).__name__}: {exc}")
        return
    try:
        text = data.decode(codec, _lenient(codec))
    except UnicodeDecodeError as exc:  # UTF-16 cut in the middle of a character
        yield NativeRecord(locator, reason="invalid_utf8", raw=f"not {encoding}: {exc}")
        return
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an over-long integer, too deep nesting
        if undecodable := _decode_error(data, codec):  # not the encoding, nor JSON: check the encoding first
            yield NativeRecord(locator, reason="invalid_utf8", raw=f"not {encoding}: {undecodable}")
        else:
            yield NativeRecord(locator, reason="invalid_json", raw=f"{exc}: {text[:1000]}")
        return
    records = document.get(records_key) if records_key and isinstance(document, dict) else document
    if not isinstance(records, list):
        expected = f"an object with a {records_key!r} list" if records_key else "a list of records"
        yield NativeRecord(locator, reason="invalid_record", raw=f"expected {expected}: {text[:1000]}")
        return
    for index, record in enumerate(records):
        yield NativeRecord(f"{file.relpath}:{index}", record=record)


def _decode_error(data: bytes, codec: str) -> UnicodeDecodeError | None:
    """Why `data` does not decode strictly, if it does not."""
    try:
        data.decode(codec)
    except UnicodeDecodeError as exc:
        return exc
    return None


# Python's csv refuses cells over 131,072 characters and stops the file there; cells of any length are read, and
# ingest quarantines texts over --max-chars (text_too_long). The limit is the csv module's, for the whole process.
CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(file: SourceFile, encoding: str) -> Iterator[NativeRecord]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    line = 0
    try:
        codec = _codec(file.path, encoding)
        with file.path.open(encoding=codec, errors=_lenient(codec), newline="") as handle:
            header = None
            for line, cells, runaway in _csv_rows(handle):
                if runaway is not None:
                    yield NativeRecord(f"{file.relpath}:{line}", reason="invalid_csv", raw=runaway.rstrip("\r\n"))
                elif header is None:
                    header = cells
                elif cells:
                    yield NativeRecord(f"{file.relpath}:{line}", record=_csv_record(header, cells))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        yield NativeRecord(f"{file.relpath}:{line + 1}-end", reason="unreadable_file",
                           raw=f"{type(exc).__name__}: {exc}")


class _Feed:
    """Lines for csv.reader; `row` holds the lines of the row being read (csv reads no further than its end)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.row: list[str] = []

    def __iter__(self) -> "_Feed":
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.row.append(line)
        return line


def _csv_rows(lines: Iterator[str]) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(the row's last line number, its cells, None) for each row of the CSV lines. A row an unterminated quote ran
    through (`_runaway`) gives (its first line number, None, that line), and the lines after that one are read
    again."""
    last = 0
    while True:
        feed = _Feed(lines)
        for cells in csv.reader(feed):
            row, feed.row = feed.row, []
            if _runaway(row, cells):
                lines, last = itertools.chain(row[1:], feed.lines), last + 1
                yield last, None, row[0]
                break
            last += len(row)
            yield last, cells, None
        else:
            return


def _runaway(row: list[str], cells: list[str]) -> bool:
    """Whether an unterminated quote ran through the row: its lines break csv's strict quoting, or its one line is
    the file's last and its quote is still open (its last cell holds the line break)."""
    if len(row) > 1:
        return not _strictly_csv(row)
    return bool(cells) and cells[-1].endswith(("\r", "\n"))


def _strictly_csv(lines: list[str]) -> bool:
    """Whether the lines read as CSV under csv's strict rules (every quoted field closed, and followed by a
    delimiter or the end of the line)."""
    try:
        for _ in csv.reader(lines, strict=True):
            pass
    except csv.Error:
        return False
    return True


def _csv_record(header: list[str], cells: list[str]) -> dict[str, Any]:
    """A row's cells by the header's names (as csv.DictReader: None for absent cells), cells beyond the header in
    `_extra`."""
    record: dict[str, Any] = dict(zip(header, cells))
    record.update({name: None for name in header[len(cells):]})
    if len(cells) > len(header):
        record["_extra"] = cells[len(header):]
    return record
