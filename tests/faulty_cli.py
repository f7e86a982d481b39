"""`m3e-hq` on a full disk, for tests/test_kill_resume.py: `M3E_HQ_FULL_DISK=TEXT python tests/faulty_cli.py build ...`
runs the CLI with every Parquet write to a path containing TEXT failing with ENOSPC, as pyarrow reports it, and every
JSON Lines write of polars to such a path too, as polars reports it (an OSError without an errno)."""

import errno
import os

import polars as pl
import pyarrow.parquet as pq

from m3e_hq.flows.cli import app

FULL_DISK = os.environ["M3E_HQ_FULL_DISK"]
write_table = pq.ParquetWriter.write_table
write_ndjson = pl.DataFrame.write_ndjson


def full_write_table(self: pq.ParquetWriter, table: object, row_group_size: int | None = None) -> None:
    if FULL_DISK in str(self.where):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    write_table(self, table, row_group_size)


def full_write_ndjson(self: pl.DataFrame, file: object = None) -> str | None:
    if FULL_DISK in str(getattr(file, "name", file)):
        raise OSError("No space left on device (os error 28)")
    return write_ndjson(self, file)


pq.ParquetWriter.write_table = full_write_table
pl.DataFrame.write_ndjson = full_write_ndjson
app(prog_name="m3e-hq")
