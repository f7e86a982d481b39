"""What an adapter produces: candidate pairs, or the reason a native record cannot become one."""

from dataclasses import dataclass
from typing import Any

from m3e_hq.sources.readers import NativeRecord


@dataclass(frozen=True, slots=True)
class Candidate:
    """A (text, text_pos) pair taken from a native record, before clean-up and validation.

    `text` and `text_pos` are the native values as found (possibly None or not a string: ingest decides).
    When the adapter itself rejects the record, `reason` is set. `raw` is the native record, kept for quarantine.
    """

    split: str
    locator: str
    text: Any = None
    text_pos: Any = None
    reason: str | None = None
    raw: Any = None


def rejected(native: NativeRecord, split: str, reason: str | None = None) -> Candidate:
    """A candidate that carries only the reason its native record was rejected."""
    raw = native.raw if native.reason else native.record
    return Candidate(split, native.locator, reason=reason or native.reason, raw=raw)
