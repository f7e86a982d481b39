"""The Arrow schemas of an m3e-hq row, an m3e-hq-with-score row and a dropped row, and the row id."""

import hashlib

import pyarrow as pa

M3E_HQ_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("text_pos", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("homogeneous", pa.bool_(), nullable=False),
        pa.field("commercial", pa.string(), nullable=False),
        pa.field("research_use", pa.string(), nullable=False),
        pa.field("license", pa.string(), nullable=False),
        pa.field("quality", pa.string(), nullable=False),
        pa.field("lang", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ],
    metadata={"name": "m3e-hq", "version": "1"},
)

M3E_HQ_WITH_SCORE_SCHEMA = pa.schema(
    list(M3E_HQ_SCHEMA)
    + [
        pa.field("text_neg", pa.list_(pa.string()), nullable=False),
        pa.field("score_pos", pa.float32(), nullable=False),
        pa.field("score_neg", pa.list_(pa.float32()), nullable=False),
        pa.field("teacher", pa.string(), nullable=False),
        # e.g. "cosine[-1,1]" or "sigmoid[0,1]": every score of a build is on this one scale.
        pa.field("score_scale", pa.string(), nullable=False),
    ],
    metadata={"name": "m3e-hq-with-score", "version": "1"},
)

# A row a stage did not keep. `raw` holds the row as JSON (native row for ingest, the m3e-hq row later);
# `kept_id` names the row kept instead (duplicates).
DROPPED_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("locator", pa.string(), nullable=False),
        pa.field("id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("kept_id", pa.string()),
    ],
    metadata={"name": "m3e-hq-dropped", "version": "1"},
)

ID_HEX_CHARS = 24


def row_id(source: str, split: str, locator: str, text: str, text_pos: str) -> str:
    """A deterministic id: the same native row (source, split, position, content) always gets the same id."""
    h = hashlib.blake2b(digest_size=ID_HEX_CHARS // 2)
    for part in (source, split, locator, text, text_pos):
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()
