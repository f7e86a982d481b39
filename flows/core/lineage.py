"""What each stage output was made from, so that publish and export take only the outputs of the build that
`manifest.json` describes.

Every stage output (`<stage>/<source>.parquet` and `<stage>/dropped/<source>.parquet`) carries in its Parquet
metadata a record (`MadeFrom`) of its stage, its source, the stage's parameters and the identity of each file the
unit of work read: another stage output's own identity, or a native file's size and modification time. Its identity
is a hash of that record, so it changes with any parameter of the stage or of a stage before it, and with any input
file. The manifest records every output's identity. A later build into the same folder that did not finish (killed,
failed) may have rewritten some outputs: their identities then differ from the manifest's, and publish refuses them.

The runner of a unit of work (`flows.core.stage`) says what the unit is made from (`recording`); the writer of every
stage output (`flows.core.accounting.StageWriter`) reads it (`made_from`), so no stage passes it along.
"""

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"m3e_hq.made_from"  # the key of the record in a stage output's Parquet metadata


@dataclass(frozen=True)
class MadeFrom:
    """What one stage output was made from: the stage, the source, the stage's parameters (as JSON) and the
    identity of every file its unit of work read (by path)."""

    stage: str
    source: str
    params: dict[str, Any]
    inputs: dict[str, str]

    @property
    def id(self) -> str:
        """The output's identity: a hash of the record."""
        text = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def metadata(self) -> dict[bytes, bytes]:
        """The Parquet metadata that records it: the record with its identity."""
        return {METADATA_KEY: json.dumps(asdict(self) | {"id": self.id}, ensure_ascii=False).encode("utf-8")}


@dataclass(frozen=True)
class Unit:
    """What a unit of work is made from: its stage, the stage's parameters and the identity of every input file."""

    stage: str
    params: dict[str, Any]
    inputs: dict[str, str]

    def of(self, source: str) -> MadeFrom:
        return MadeFrom(self.stage, source, self.params, self.inputs)


_unit: ContextVar[Unit | None] = ContextVar("m3e_hq_unit", default=None)


@contextmanager
def recording(stage: str, params: Any, inputs: Mapping[str, Any]) -> Iterator[Unit]:
    """While the block runs, the outputs written in this context record that they were made by `stage` with
    `params` (a pydantic model) from the files named in `inputs` (source -> a stage output's path, or a list of
    native files)."""
    unit = Unit(stage, params.model_dump(mode="json"), identities(inputs))
    token = _unit.set(unit)
    try:
        yield unit
    finally:
        _unit.reset(token)


def made_from(source: str) -> MadeFrom | None:
    """What the output of `source` now being written is made from (None outside a recorded unit of work)."""
    unit = _unit.get()
    return None if unit is None else unit.of(source)


def identities(inputs: Mapping[str, Any]) -> dict[str, str]:
    """Every file a unit reads, by name, and its identity: a stage output (a path) `<stage>/<source>.parquet` and the
    identity it records; a native file (a SourceFile: never opened here, its reader judges it) its path, and its
    size and modification time."""
    found = {}
    for value in inputs.values():
        for item in value if isinstance(value, list | tuple) else [value]:
            record = read_record(item) if isinstance(item, Path) else None
            if record is not None:
                found[f"{item.parent.name}/{item.name}"] = record["id"]
            else:
                path = Path(getattr(item, "path", item))
                stat = path.stat()
                found[str(path)] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return found


def read_record(path: Path) -> dict[str, Any] | None:
    """The MadeFrom record of a stage output, with its `id` (None for a file that holds none, or is no Parquet)."""
    if path.suffix != ".parquet":
        return None
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None


def without_record(table: pa.Table) -> pa.Table:
    """`table` without the MadeFrom record of the stage output it was read from (its other metadata kept)."""
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != METADATA_KEY}
    return table.replace_schema_metadata(metadata or None)
