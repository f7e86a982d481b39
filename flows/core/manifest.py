"""The build manifest: per source where its rows came from, and per stage and source the accounting."""

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.sources.catalog import CATALOG_PATH

from m3e_hq.files import write_json_atomic

MANIFEST_NAME = "manifest.json"


def stage_totals(counts: list[StageCounts]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    for c in counts:
        for reason, n in c.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    return {
        "read": sum(c.read for c in counts),
        "kept": sum(c.kept for c in counts),
        "dropped": dict(sorted(dropped.items())),
    }


def write_manifest(build_dir: Path, params: dict[str, Any], sources: dict[str, dict[str, Any]],
                   stages: dict[str, list[StageCounts]], stats: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write `<build_dir>/manifest.json` atomically, after checking every stage's accounting identity.

    `stats`: per stage, what it found besides its counts (e.g. the dedup stage's duplicates by source pair)."""
    for counts in stages.values():
        for c in counts:
            c.check()
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog_sha256": hashlib.sha256(CATALOG_PATH.read_bytes()).hexdigest(),
        "params": params,
        "sources": sources,
        "stages": {
            stage: {"totals": stage_totals(counts), "sources": {c.source: c.to_dict() for c in counts},
                    **({"stats": (stats or {})[stage]} if stage in (stats or {}) else {})}
            for stage, counts in stages.items()
        },
    }
    path = build_dir / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path
