"""Dedup stage: evaluation data out, then exact and near-duplicate pairs, within and across all sources.

Reads every source's ingest output at once (duplicates cross sources), decides keep or drop for each row, and writes
per source `<build>/dedup/<source>.parquet` (kept) and `dedup/dropped/<source>.parquet` (reason, the m3e-hq row as
JSON, and for a duplicate the id of the row kept instead). Reasons, checked in this order:

- `eval_split`: the row comes from a split that C-MTEB evaluates (the catalog's `eval_splits`), unless
  `exclude_eval_splits` is off;
- `eval_overlap`: its query or positive is an exact or near duplicate of a text of the `decontaminate` file;
- `exact_duplicate`: it has the same normalised key as a better row (`flows.filters.normalize`: NFKC, so full-width
  and half-width forms agree, case folded, whitespace and punctuation removed); the key is the pair (query and
  positive) by default, the query alone with `on="query"` (or for s2p sources only with `on="query-s2p"`);
- `near_duplicate`: its key is a MinHash near-duplicate of a better row's (`flows.minhash`; in pair mode both the
  query and the positive must reach the Jaccard threshold), through a cluster of such pairs.

Which copy survives, among exact duplicates and within a near-duplicate cluster: the first by (commercial use yes,
unknown, no), then quality (excellent, good), then the source's position in the catalog, then the row id. It does
not depend on the order rows are read in, and a duplicate never costs the commercial export a row.
"""

import json
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows.accounting import StageCounts, StageWriter, dropped_rows
from flows.filters import normalize
from flows.minhash import MinHashParams, near_duplicates
from schemas import M3E_HQ_SCHEMA
from schemas.enums import Permission, Quality
from sources.catalog import Catalog

STAGE = "dedup"
EVAL_SPLIT = "eval_split"
EVAL_OVERLAP = "eval_overlap"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REASONS = (EVAL_SPLIT, EVAL_OVERLAP, EXACT_DUPLICATE, NEAR_DUPLICATE)
SEPARATOR = "\x1f"  # between the query and the positive in a pair key
SPILL_ABOVE_ROWS = 4_000_000  # more rows than this: band keys are grouped from Parquet, out of core
_COMMERCIAL_RANK = {Permission.YES.value: 0, Permission.UNKNOWN.value: 1, Permission.NO.value: 2}
_QUALITY_RANK = {Quality.EXCELLENT.value: 0, Quality.GOOD.value: 1}
EVAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
_COLUMNS = ["id", "source", "split", "text", "text_pos", "commercial", "quality", "homogeneous"]


class DedupParams(BaseModel):
    """What counts as a duplicate, and which evaluation data is kept out."""

    model_config = ConfigDict(extra="forbid")

    on: Literal["pair", "query", "query-s2p"] = Field(
        "pair", description="dedup key: the pair (query + positive); the query alone, so that a query keeps one "
        "positive; or the query alone for s2p sources only (the pair for s2s)")
    near: bool = Field(True, description="drop MinHash near-duplicates (after exact duplicates)")
    minhash: MinHashParams = Field(default_factory=MinHashParams, description="shingles, permutations, LSH bands "
                                   "and the confirming Jaccard threshold (default 0.8)")
    exclude_eval_splits: bool = Field(True, description="drop the native splits C-MTEB evaluates on (the "
                                      "catalog's eval_splits)")
    decontaminate: Path | None = Field(None, description="evaluation texts (JSONL, Parquet or TXT): drop rows whose "
                                       "query or positive is an exact or near duplicate of one")
    workers: int = Field(2, ge=1, description="threads for the MinHash kernels")

    @field_validator("decontaminate")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            if path.suffix.lower() not in EVAL_SUFFIXES:
                raise ValueError(f"decontamination file {path}: use {', '.join(EVAL_SUFFIXES)}")
            if not path.is_file():
                raise ValueError(f"decontamination file {path} not found")
        return path


@dataclass
class DedupResult:
    """Per-source counts, and what the duplicates were: the manifest's `dedup` statistics."""

    counts: list[StageCounts]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Decisions:
    """One entry per row of the combined table: the reason it is dropped (None: kept), the kept row, a detail."""

    reason: list[str | None]
    kept: np.ndarray  # index of the row kept instead (duplicates), else -1
    detail: list[str | None]

    @classmethod
    def empty(cls, n: int) -> "_Decisions":
        return cls([None] * n, np.full(n, -1, dtype=np.int64), [None] * n)

    def active(self) -> np.ndarray:
        return np.array([r is None for r in self.reason], dtype=bool)

    def drop(self, rows: np.ndarray, reason: str, kept: np.ndarray | None = None,
             details: Sequence[str | None] | None = None) -> None:
        for k, i in enumerate(rows.tolist()):
            self.reason[i] = reason
            if kept is not None:
                self.kept[i] = kept[k]
            if details is not None:
                self.detail[i] = details[k]


def key(text: str) -> str:
    """The normalised comparison key of a text; a text of punctuation only keeps its punctuation (NFKC, no
    whitespace), so that it never gets the empty key."""
    return normalize(text) or "".join(unicodedata.normalize("NFKC", text).split())


def read_eval_texts(path: Path) -> list[str]:
    """The texts of an evaluation file: TXT (a text per line), JSONL (every string value of each object, or a
    string per line) or Parquet (every string column)."""
    if not path.is_file():
        raise FileNotFoundError(f"decontamination file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
        columns = [c for c, t in zip(table.column_names, table.schema.types, strict=True)
                   if pa.types.is_string(t) or pa.types.is_large_string(t)]
        if not columns:
            raise ValueError(f"{path} has no string column to decontaminate against")
        texts = [v for c in columns for v in table.column(c).to_pylist()]
    elif suffix in (".jsonl", ".json"):
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg}); use one JSON object per line") from None
            texts.extend(_strings(value))
    elif suffix == ".txt":
        texts = path.read_text(encoding="utf-8").splitlines()
    else:
        raise ValueError(f"decontamination file {path}: use {', '.join(EVAL_SUFFIXES)}")
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def dedup_sources(inputs: dict[str, Path], out_dir: Path, params: DedupParams, catalog: Catalog) -> DedupResult:
    """Dedup the ingest outputs `inputs` (source -> Parquet) into `out_dir/dedup/`; counts per source."""
    names = [n for n in catalog.names if n in inputs]
    table = pa.concat_tables([pq.read_table(inputs[n], columns=_COLUMNS) for n in names]) if names else (
        pa.table({c: pa.array([], M3E_HQ_SCHEMA.field(c).type) for c in _COLUMNS}))
    rows = table.to_pydict()
    n = table.num_rows
    decisions = _Decisions.empty(n)
    stats: dict[str, Any] = {}

    if params.exclude_eval_splits:
        eval_splits = {(s.name, split) for s in catalog.sources for split in s.eval_splits}
        pairs = zip(rows["source"], rows["split"], strict=True)
        decisions.drop(np.flatnonzero([p in eval_splits for p in pairs]), EVAL_SPLIT)

    query_keys = [key(t) for t in rows["text"]]
    pos_keys = [key(t) for t in rows["text_pos"]]
    if params.decontaminate is not None:
        stats["decontaminate"] = _decontaminate(params.decontaminate, query_keys, pos_keys, decisions, params)

    query_only = [params.on == "query" or (params.on == "query-s2p" and not h) for h in rows["homogeneous"]]
    pair_keys = [q if only else f"{q}{SEPARATOR}{p}"
                 for q, p, only in zip(query_keys, pos_keys, query_only, strict=True)]
    order = _survivor_order(rows, catalog)
    stats["exact_duplicate_keys"] = _duplicate_key_counts(query_keys, pos_keys, decisions.active())
    _exact(pair_keys, order, decisions)
    if params.near:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".dedup-") as spill:
            stats["near"] = _near(pair_keys, query_keys, pos_keys, query_only, order, decisions, params,
                                  Path(spill) if n > SPILL_ABOVE_ROWS else None)
    stats["duplicates_by_source"] = _overlap(rows["source"], decisions)
    counts = [_write(name, inputs[name], out_dir, decisions, offset, rows["id"])
              for name, offset in zip(names, _offsets(rows["source"], names), strict=True)]
    return DedupResult(counts, stats)


def _survivor_order(rows: dict[str, list], catalog: Catalog) -> np.ndarray:
    """Each row's rank (0 = survives first): commercial use, quality grade, catalog position, id."""
    position = {name: i for i, name in enumerate(catalog.names)}
    frame = pl.DataFrame({
        "commercial": [_COMMERCIAL_RANK.get(c, 1) for c in rows["commercial"]],
        "quality": [_QUALITY_RANK.get(q, 1) for q in rows["quality"]],
        "source": [position[s] for s in rows["source"]],
        "id": rows["id"],
    }, schema={"commercial": pl.Int8, "quality": pl.Int8, "source": pl.Int32, "id": pl.String})
    ranked = frame.with_row_index("row").sort(["commercial", "quality", "source", "id", "row"])
    rank = np.empty(len(frame), dtype=np.int64)
    rank[ranked["row"].to_numpy()] = np.arange(len(frame))
    return rank


def _duplicate_key_counts(query_keys: list[str], pos_keys: list[str], active: np.ndarray) -> dict[str, int]:
    """Rows (not dropped before dedup) whose normalised query, positive or pair repeats another row's."""
    frame = pl.DataFrame({"query": query_keys, "positive": pos_keys}).filter(pl.Series(active))
    return {"query": len(frame) - frame["query"].n_unique(), "positive": len(frame) - frame["positive"].n_unique(),
            "pair": len(frame) - frame.n_unique()}


def _exact(keys: list[str], rank: np.ndarray, decisions: _Decisions) -> None:
    """Drop every active row whose key an active row of better rank has."""
    frame = (pl.DataFrame({"key": keys, "rank": rank}).with_row_index("row").filter(pl.Series(decisions.active()))
             .sort("rank").with_columns(first=pl.col("row").first().over("key"))
             .filter(pl.col("row") != pl.col("first")))
    decisions.drop(frame["row"].to_numpy().astype(np.int64), EXACT_DUPLICATE, frame["first"].to_numpy())


def _near(pair_keys: list[str], query_keys: list[str], pos_keys: list[str], query_only: list[bool],
          rank: np.ndarray, decisions: _Decisions, params: DedupParams, spill_dir: Path | None) -> dict[str, Any]:
    """Drop every active row in a near-duplicate cluster but the cluster's best-ranked row."""
    rows = np.flatnonzero(decisions.active())
    texts = [pair_keys[i] for i in rows]
    # Pair keys are confirmed side by side; a query-only key is its query, so its "positive" part is the query too.
    parts = [[query_keys[i] for i in rows], [query_keys[i] if query_only[i] else pos_keys[i] for i in rows]]
    clusters = near_duplicates(texts, params.minhash, params.workers, parts=parts, spill_dir=spill_dir)
    frame = (pl.DataFrame({"row": rows, "rank": rank[rows], "label": clusters.labels})
             .filter(pl.len().over("label") > 1).sort("rank")
             .with_columns(first=pl.col("row").first().over("label"), size=pl.len().over("label")))
    dropped = frame.filter(pl.col("row") != pl.col("first"))
    details = [f"cluster of {s}" for s in dropped["size"].to_list()]
    decisions.drop(dropped["row"].to_numpy(), NEAR_DUPLICATE, dropped["first"].to_numpy(), details)
    return {"texts": len(rows), "candidate_pairs": clusters.candidates, "confirmed_pairs": len(clusters.pairs),
            "clusters": frame["label"].n_unique(), "rows_in_clusters": len(frame)}


def _decontaminate(path: Path, query_keys: list[str], pos_keys: list[str], decisions: _Decisions,
                   params: DedupParams) -> dict[str, Any]:
    """Drop active rows whose query or positive key equals, or is a near duplicate of, an evaluation text's key."""
    eval_keys = sorted({key(t) for t in read_eval_texts(path)})
    eval_set = set(eval_keys)
    rows = np.flatnonzero(decisions.active())
    hit: dict[int, str] = {}
    for i in rows.tolist():
        if query_keys[i] in eval_set or pos_keys[i] in eval_set:
            hit[i] = "exact: " + ("query" if query_keys[i] in eval_set else "positive")
    if params.near and eval_keys:
        sides = [query_keys[i] for i in rows] + [pos_keys[i] for i in rows]
        clusters = near_duplicates(eval_keys + sides, params.minhash, params.workers)
        m = len(eval_keys)
        for a, b in clusters.pairs.select("a", "b").iter_rows():
            if (a < m) != (b < m):  # a confirmed pair of an evaluation text and a row's side
                side = max(a, b) - m
                row = int(rows[side % len(rows)])
                hit.setdefault(row, "near: " + ("query" if side < len(rows) else "positive"))
    dropped = np.array(sorted(hit), dtype=np.int64)
    decisions.drop(dropped, EVAL_OVERLAP, details=[hit[i] for i in dropped.tolist()])
    return {"file": str(path), "eval_texts": len(eval_keys), "rows_dropped": len(dropped)}


def _overlap(sources: list[str], decisions: _Decisions) -> dict[str, dict[str, int]]:
    """Per source, its rows dropped as duplicates of a row kept in each source (itself included)."""
    counter: Counter[tuple[str, str]] = Counter()
    for i in np.flatnonzero(decisions.kept >= 0).tolist():
        counter[sources[i], sources[int(decisions.kept[i])]] += 1
    out: dict[str, dict[str, int]] = {}
    for (dup, kept), count in sorted(counter.items()):
        out.setdefault(dup, {})[kept] = count
    return out


def _offsets(sources: list[str], names: list[str]) -> list[int]:
    """Where each source's rows start in the combined table (sources are concatenated in `names` order)."""
    counts = Counter(sources)
    return np.concatenate([[0], np.cumsum([counts[n] for n in names])])[:-1].astype(int).tolist()


def _write(name: str, path: Path, out_dir: Path, decisions: _Decisions, offset: int, ids: list[str]) -> StageCounts:
    """Write one source's kept and dropped rows (its rows are offset, offset + 1, ... of the combined table)."""
    table = pq.read_table(path)
    n = table.num_rows
    reasons = decisions.reason[offset:offset + n]
    with StageWriter(out_dir / STAGE, STAGE, name, M3E_HQ_SCHEMA) as writer:
        writer.read(n)
        writer.keep_table(table.filter(pa.array([r is None for r in reasons])))
        dropped = [i for i, r in enumerate(reasons) if r is not None]
        if dropped:
            kept = [int(decisions.kept[offset + i]) for i in dropped]
            writer.drop_table(dropped_rows(
                table, name, f"ingest/{name}.parquet", dropped, [reasons[i] for i in dropped],
                [decisions.detail[offset + i] for i in dropped], [ids[k] if k >= 0 else None for k in kept]))
    return writer.counts
