"""`m3e-hq` on a full disk, for tests/test_kill_resume.py: `M3E_HQ_FULL_DISK=TEXT python tests/faulty_cli.py build ...`
runs the CLI with every Parquet write to a path containing TEXT failing with ENOSPC, as pyarrow reports it."""

import errno
import os

import pyarrow.parquet as pq

from m3e_hq.flows.cli import app

FULL_DISK = os.environ["M3E_HQ_FULL_DISK"]
write_table = pq.ParquetWriter.write_table


def full_write_table(self: pq.ParquetWriter, table: object, row_group_size: int | None = None) -> None:
    if FULL_DISK in str(self.where):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    write_table(self, table, row_group_size)


pq.ParquetWriter.write_table = full_write_table
app(prog_name="m3e-hq")
