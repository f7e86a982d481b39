"""The accounting every stage shares: one writer counts, times and writes kept and dropped rows.

A stage decides only keep or drop-with-reason. `StageWriter` writes the kept rows (validated against the stage's
schema) and the dropped rows (DROPPED_SCHEMA: reason, raw row, kept_id) as Parquet, atomically, and returns the
counts that go into the manifest. For every stage and source: rows read = rows kept + sum of rows dropped by reason.
"""

import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pyarrow as pa
import pyarrow.parquet as pq

from m3e_hq.files import temporary
from m3e_hq.flows.core.lineage import made_from
from m3e_hq.schemas import DROPPED_SCHEMA, validate_table

BATCH_ROWS = 20_000


class AccountingError(RuntimeError):
    """Rows were read that were neither kept nor dropped with a reason (or counted twice)."""


class OutputError(OSError):
    """A build output could not be written (disk full, permission denied, read-only folder): the build stops,
    whatever source it was writing, since every other output would fail alike."""


# The errno in the message of an error that does not carry one: polars' "File too large (os error 27)", pyarrow's
# "Detail: [errno 28] No space left on device".
ERRNO_IN_MESSAGE = re.compile(r"\((?:os error|errno) (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Raise an OSError met in the block as an OutputError naming `path` (and keeping the errno), and so an error of
    another kind whose message holds an errno (polars writes OSError("... (os error 28)") without one, or its own
    ComputeError)."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        code = exc.errno if isinstance(exc, OSError) and exc.errno else message_errno(str(exc))
        if not isinstance(exc, OSError) and code is None:
            raise
        reason = os.strerror(code) if code else " ".join(str(exc).split()) or type(exc).__name__
        raise OutputError(code, reason, str(path)) from exc


def message_errno(message: str) -> int | None:
    """The errno an error's message names, if any."""
    match = ERRNO_IN_MESSAGE.search(message)
    return int(match[1] or match[2]) if match else None


def check_writable(folder: Path) -> None:
    """Create `folder` when needed and a file in it; OutputError when either fails."""
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass


@dataclass
class StageCounts:
    """What one stage did to one source."""

    stage: str
    source: str
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    kept_path: str | None = None
    dropped_path: str | None = None
    made_from: str | None = None  # the identity of what the outputs were made from (flows.core.lineage)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def check(self) -> None:
        """Raise AccountingError unless read = kept + dropped."""
        if self.read != self.kept + self.dropped_total:
            raise AccountingError(
                f"{self.stage}/{self.source}: read {self.read} rows but kept {self.kept} "
                f"and dropped {self.dropped_total} ({self.dropped})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parquet_batches(path: Path, batch_size: int = BATCH_ROWS, columns: list[str] | None = None,
                    ) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows a batch at a time. Pre-buffering is off: with it, pyarrow keeps every column chunk it
    has read until the file is closed (reading 2M rows of keys held 1.7 GB)."""
    return pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_size, columns=columns)


class _ParquetSink:
    """Rows buffered and written in batches to a temporary file, renamed into place on commit."""

    def __init__(self, path: Path, schema: pa.Schema, validate: bool, metadata: dict[bytes, bytes]) -> None:
        self.path, self.schema, self.validate, self.metadata = path, schema, validate, metadata
        self.tmp = temporary(path)
        self.rows: list[dict] = []
        self.written = 0
        self.writer: pq.ParquetWriter | None = None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def add_table(self, table: pa.Table) -> None:
        self.flush()
        self._write(table)

    def flush(self) -> None:
        if self.rows:
            self._write(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def _write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        if self.validate:
            validate_table(table, self.schema)
        with writing(self.path):
            self._open().write_table(table)
        self.written += table.num_rows

    def _open(self) -> pq.ParquetWriter:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            schema = self.schema.with_metadata((self.schema.metadata or {}) | self.metadata)
            self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        return self.writer

    def commit(self) -> None:
        """Close the temporary file (a valid, empty one when there were no rows) and rename it into place."""
        self.flush()
        with writing(self.path):
            self._open().close()
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Remove the temporary file; an error closing it (the disk that failed the write) is ignored."""
        if self.writer is not None:
            with suppress(OSError):
                self.writer.close()
        self.tmp.unlink(missing_ok=True)


class StageWriter:
    """Counts, times and writes one stage's output for one source; use as a context manager.

    Files: `<stage_dir>/<source>.parquet` (kept) and `<stage_dir>/dropped/<source>.parquet`. They appear only when
    the block completes and the accounting identity holds; on an error the temporary files are removed. Within a
    recorded unit of work both carry what they were made from in their metadata (`flows.core.lineage`), and the
    counts its identity.
    """

    def __init__(self, stage_dir: Path, stage: str, source: str, schema: pa.Schema) -> None:
        record = made_from(source)
        metadata = record.metadata() if record is not None else {}
        self.counts = StageCounts(stage=stage, source=source, made_from=record.id if record is not None else None)
        self._reasons: Counter[str] = Counter()
        self._kept = _ParquetSink(stage_dir / f"{source}.parquet", schema, True, metadata)
        self._dropped = _ParquetSink(stage_dir / "dropped" / f"{source}.parquet", DROPPED_SCHEMA, False, metadata)
        self._start = 0.0

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def read(self, n: int = 1) -> None:
        """Count rows taken in by the stage (independently of what happens to them)."""
        self.counts.read += n

    def keep(self, row: dict) -> None:
        self._kept.add(row)

    def drop(self, row: dict) -> None:
        """A row not kept: a dict with DROPPED_SCHEMA's fields (reason required)."""
        self._reasons[row["reason"]] += 1
        self._dropped.add(row)

    def keep_table(self, table: pa.Table) -> None:
        self._kept.add_table(table)

    def drop_table(self, table: pa.Table) -> None:
        self._reasons.update(table.column("reason").to_pylist())
        self._dropped.add_table(table)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._kept.flush()
            self._dropped.flush()
            self.counts.kept = self._kept.written
            self.counts.dropped = dict(sorted(self._reasons.items()))
            self.counts.check()
            self._kept.commit()
            self._dropped.commit()
        except BaseException:
            self._abort()
            raise
        self.counts.kept_path = str(self._kept.path)
        self.counts.dropped_path = str(self._dropped.path)
        self.counts.seconds = round(time.perf_counter() - self._start, 3)

    def _abort(self) -> None:
        self._kept.abort()
        self._dropped.abort()


def dropped_rows(table: pa.Table, source: str, stage_input: str, positions: list[int], reasons: list[str],
                 details: list[str | None] | None = None, kept_ids: list[str | None] | None = None,
                 table_offset: int = 0) -> pa.Table:
    """DROPPED_SCHEMA rows for the m3e-hq rows at `positions` of `table`, which holds the rows from `table_offset`
    on of the stage's input file `stage_input` (e.g. "ingest/lcqmc.parquet"): the row itself as JSON, its reason,
    and the row kept instead when there is one."""
    rows = table.take(positions).to_pylist()
    return pa.Table.from_pylist([{
        "source": source, "split": row["split"], "locator": f"{stage_input}#{table_offset + i}", "id": row["id"],
        "reason": reason, "detail": details[k] if details else None,
        "raw": json.dumps(row, ensure_ascii=False), "kept_id": kept_ids[k] if kept_ids else None,
    } for k, (i, row, reason) in enumerate(zip(positions, rows, reasons, strict=True))], schema=DROPPED_SCHEMA)
