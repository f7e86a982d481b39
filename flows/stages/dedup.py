"""Dedup stage: evaluation data out, then exact and near-duplicate pairs, within and across all sources.

Reads every source's filter output (duplicates cross sources) a batch at a time, decides keep or drop for each row,
and writes per source `<build>/dedup/<source>.parquet` (kept) and `dedup/dropped/<source>.parquet` (reason, the
m3e-hq row as JSON, and for a duplicate the id of the row kept instead). No stage data is held as Python objects per
row: the normalised keys go to a temporary Parquet file that MinHash reads in batches, and the decisions are made on
columns (ranks, 64-bit key hashes, ids) and numpy arrays, about 100 bytes per row. Reasons, checked in this order:

- `eval_split`: the row comes from a split that C-MTEB evaluates (the catalog's `eval_splits`), unless
  `exclude_eval_splits` is off;
- `eval_overlap`: its query or positive is an exact or near duplicate (the same similarity as `near_duplicate`) of a
  text of the `decontaminate` file;
- `exact_duplicate`: it has the same normalised key (compared as 128 bits of hash) as a better row
  (`flows.core.text.key`: NFKC, so full-width and half-width forms agree, case folded, whitespace and punctuation
  removed); the key is the pair (query and positive) by default, the query alone with `on="query"` (or for s2p sources only with `on="query-s2p"`);
- `near_duplicate`: its key is a near-duplicate of a better row's, through a cluster of such pairs: MinHash candidates
  (`flows.core.minhash`), confirmed by edit similarity with a length-aware budget and guards on negations, numbers,
  Latin words and script (`flows.core.similarity`), compared on `flows.core.text.near_key` (the key without
  clause-final 吗 呢 啊). In pair mode both the query and the positive must be near-duplicates, so that two
  questions over one passage, or one query with two positives, stay two pairs.

Which copy survives, among exact duplicates and within a near-duplicate cluster: the first by (commercial use yes,
unknown, no), then quality (excellent, good), then the source's position in the catalog, then the row id. It does
not depend on the order rows are read in, and a duplicate never costs the commercial export a row.
"""

import json
import shutil
import tempfile
from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from m3e_hq.flows.core.accounting import BATCH_ROWS, StageCounts, parquet_batches
from m3e_hq.flows.core.dedup_params import EVAL_SUFFIXES, DedupParams
from m3e_hq.flows.core.minhash import ParquetTexts, matches, near_duplicates
from m3e_hq.flows.core.stage import Context, Reason, Scope, Stage, StageResult, Verdicts, sift
from m3e_hq.flows.core.text import key, near_key
from m3e_hq.schemas import M3E_HQ_SCHEMA
from m3e_hq.schemas.enums import Permission, Quality
from m3e_hq.sources.catalog import Catalog

STAGE = "dedup"


class DedupReason(Reason):
    EVAL_SPLIT = "eval_split", "the row comes from a native split C-MTEB evaluates on (the catalog's eval_splits)"
    EVAL_OVERLAP = "eval_overlap", "its query or positive is an exact or near duplicate of a decontamination text"
    EXACT_DUPLICATE = "exact_duplicate", "its key equals a better row's key"
    NEAR_DUPLICATE = "near_duplicate", "its key is a near-duplicate of a better row's, through a cluster of pairs"


REASONS = tuple(DedupReason)  # _Decisions.reason holds indices into this tuple
SEPARATOR = "\x1f"  # between the query and the positive in a pair key
SPILL_ABOVE_ROWS = 4_000_000  # more rows than this: band keys are grouped from Parquet, out of core
_COMMERCIAL_RANK = {Permission.YES.value: 0, Permission.UNKNOWN.value: 1, Permission.NO.value: 2}
_QUALITY_RANK = {Quality.EXCELLENT.value: 0, Quality.GOOD.value: 1}
_COLUMNS = ["id", "source", "split", "text", "text_pos", "commercial", "quality", "homogeneous"]
# The near keys compared, in a temporary file: the pair (or query-only) key and its two parts, which MinHash
# compares (a query-only key's second part is the query again), and the positive, which decontamination compares.
KEYS_SCHEMA = pa.schema([("pair", pa.string()), ("query", pa.string()), ("second", pa.string()),
                         ("positive", pa.string())])


class _Decisions:
    """One entry per row of the build (sources in catalog order): the reason it is dropped (-1: kept), the row kept
    instead (duplicates; else -1), and a detail for the few rows that have one."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, -1, dtype=np.int8)
        self.kept = np.full(n, -1, dtype=np.int64)
        self.detail: dict[int, str] = {}

    def active(self) -> np.ndarray:
        return self.reason < 0

    def drop(self, rows: np.ndarray, reason: str, kept: np.ndarray | None = None,
             details: Sequence[str] | None = None) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.reason[rows] = REASONS.index(reason)
        if kept is not None:
            self.kept[rows] = kept
        if details is not None:
            self.detail.update(zip(rows.tolist(), details, strict=True))


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


def dedup_sources(inputs: dict[str, Path], out_dir: Path, params: DedupParams, catalog: Catalog) -> StageResult:
    """Dedup the filter outputs `inputs` (source -> Parquet) into `out_dir/dedup/`; counts per source.

    Out of core: the sources are read a batch at a time, once for the keys (written to a temporary Parquet file
    beside the output, with each row's ranks and key hashes kept in columnar memory) and once to write the result.
    """
    names = [n for n in catalog.names if n in inputs]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".dedup-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".dedup-") as tmp:
        spill = Path(tmp)
        eval_texts = read_eval_texts(params.decontaminate) if params.decontaminate else []
        eval_keys = {key(t) for t in eval_texts}
        rows = _read_keys(inputs, names, catalog, params, spill / "keys.parquet", eval_keys)
        decisions = _Decisions(len(rows))
        if params.exclude_eval_splits:
            decisions.drop(np.flatnonzero(rows["eval_split"].to_numpy()), DedupReason.EVAL_SPLIT)
        if params.decontaminate is not None:
            stats["decontaminate"] = _decontaminate(params.decontaminate, rows, spill / "keys.parquet",
                                                    sorted({near_key(t) for t in eval_texts}), decisions, params)
        rank = _survivor_order(rows)
        stats["exact_duplicate_keys"] = _duplicate_key_counts(rows, decisions.active())
        _exact(rows, rank, decisions)
        if params.near:
            stats["near"] = _near(spill / "keys.parquet", rank, decisions, params,
                                  spill if len(rows) > SPILL_ABOVE_ROWS else None)
    stats["duplicates_by_source"] = _overlap(rows["source"].to_numpy(), names, decisions)
    ids = rows["id"]
    counts = [_write(name, inputs[name], out_dir, decisions, offset, ids)
              for name, offset in zip(names, _offsets(rows["source"].to_numpy(), len(names)), strict=True)]
    return StageResult(counts, stats)


def _read_keys(inputs: dict[str, Path], names: list[str], catalog: Catalog, params: DedupParams, keys_path: Path,
               eval_keys: set[str]) -> pl.DataFrame:
    """Every row's normalised keys, written to `keys_path` (columns pair, query, positive: the texts MinHash
    compares), and a frame of what dedup decides on: source position, evaluation split, decontamination hit, ranks,
    id, and 64-bit hashes of the keys."""
    eval_splits = {s.name: set(s.eval_splits) for s in catalog.sources}
    frames = []
    with pq.ParquetWriter(keys_path, KEYS_SCHEMA) as writer:
        for position, name in enumerate(names):
            for batch in parquet_batches(inputs[name], BATCH_ROWS, _COLUMNS):
                keys, frame = _batch_keys(batch, position, params, eval_splits[name], eval_keys)
                writer.write_table(keys)
                frames.append(frame)
    schema = {"source": pl.Int32, "eval_split": pl.Boolean, "eval_hit": pl.String, "commercial": pl.Int8,
              "quality": pl.Int8, "id": pl.String, "pair_hash": pl.UInt64, "pair_hash2": pl.UInt64,
              "query_hash": pl.UInt64, "positive_hash": pl.UInt64}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _batch_keys(batch: pa.RecordBatch, position: int, params: DedupParams, eval_splits: set[str],
                eval_keys: set[str]) -> tuple[pa.Table, pl.DataFrame]:
    """The keys table and the decision frame of one batch of a source's rows."""
    query_texts, positive_texts = batch.column("text").to_pylist(), batch.column("text_pos").to_pylist()
    queries, positives = [key(t) for t in query_texts], [key(t) for t in positive_texts]
    near_queries = [near_key(t, k) for t, k in zip(query_texts, queries, strict=True)]
    near_positives = [near_key(t, k) for t, k in zip(positive_texts, positives, strict=True)]
    homogeneous = batch.column("homogeneous").to_pylist()
    query_only = [params.on == "query" or (params.on == "query-s2p" and not h) for h in homogeneous]
    pairs = _pair_keys(near_queries, near_positives, query_only)
    second = [q if only else p for q, p, only in zip(near_queries, near_positives, query_only, strict=True)]
    hits = [("exact: query" if q in eval_keys else "exact: positive" if p in eval_keys else None)
            for q, p in zip(queries, positives, strict=True)] if eval_keys else [None] * len(queries)
    pair = pl.Series(_pair_keys(queries, positives, query_only), dtype=pl.String)
    frame = pl.DataFrame({
        "source": pl.Series([position] * batch.num_rows, dtype=pl.Int32),
        "eval_split": pl.Series(batch.column("split")).is_in(sorted(eval_splits)),
        "eval_hit": pl.Series(hits, dtype=pl.String),
        "commercial": pl.Series(batch.column("commercial")).replace_strict(_COMMERCIAL_RANK, default=1,
                                                                          return_dtype=pl.Int8),
        "quality": pl.Series(batch.column("quality")).replace_strict(_QUALITY_RANK, default=1, return_dtype=pl.Int8),
        "id": pl.Series(batch.column("id")),
        "pair_hash": pair.hash(seed=0), "pair_hash2": pair.hash(seed=1),
        "query_hash": pl.Series(queries, dtype=pl.String).hash(seed=0),
        "positive_hash": pl.Series(positives, dtype=pl.String).hash(seed=0),
    })
    keys = {"pair": pairs, "query": near_queries, "second": second, "positive": near_positives}
    return pa.table(keys, schema=KEYS_SCHEMA), frame


def _pair_keys(queries: list[str], positives: list[str], query_only: list[bool]) -> list[str]:
    """Each row's dedup key: its query alone where `query_only`, else query and positive joined by SEPARATOR."""
    return [q if only else f"{q}{SEPARATOR}{p}" for q, p, only in zip(queries, positives, query_only, strict=True)]


def _survivor_order(rows: pl.DataFrame) -> np.ndarray:
    """Each row's rank (0 = survives first): commercial use, quality grade, catalog position, id."""
    ranked = rows.select("commercial", "quality", "source", "id").with_row_index("row").sort(
        ["commercial", "quality", "source", "id", "row"])
    rank = np.empty(len(rows), dtype=np.int64)
    rank[ranked["row"].to_numpy()] = np.arange(len(rows))
    return rank


def _duplicate_key_counts(rows: pl.DataFrame, active: np.ndarray) -> dict[str, int]:
    """Rows (not dropped before dedup) whose normalised query, positive or pair repeats another row's."""
    frame = rows.select("query_hash", "positive_hash").filter(pl.Series(active))
    return {"query": len(frame) - frame["query_hash"].n_unique(),
            "positive": len(frame) - frame["positive_hash"].n_unique(), "pair": len(frame) - frame.n_unique()}


def _exact(rows: pl.DataFrame, rank: np.ndarray, decisions: _Decisions) -> None:
    """Drop every active row whose key (128 bits of hash) an active row of better rank has."""
    frame = (rows.select("pair_hash", "pair_hash2").with_columns(rank=rank).with_row_index("row")
             .filter(pl.Series(decisions.active())).sort("rank")
             .with_columns(first=pl.col("row").first().over("pair_hash", "pair_hash2"))
             .filter(pl.col("row") != pl.col("first")))
    decisions.drop(frame["row"].to_numpy().astype(np.int64), DedupReason.EXACT_DUPLICATE, frame["first"].to_numpy())


def _near(keys_path: Path, rank: np.ndarray, decisions: _Decisions, params: DedupParams,
          spill_dir: Path | None) -> dict[str, Any]:
    """Drop every active row in a near-duplicate cluster but the cluster's best-ranked row."""
    rows = np.flatnonzero(decisions.active())
    # Pair keys are confirmed side by side: the query and the positive (a query-only key: its query twice).
    texts, queries, seconds = (ParquetTexts(keys_path, column, rows) for column in ("pair", "query", "second"))
    clusters = near_duplicates(texts, params.minhash, params.workers, parts=[queries, seconds],
                               spill_dir=spill_dir)
    frame = (pl.DataFrame({"row": rows, "rank": rank[rows], "label": clusters.labels})
             .filter(pl.len().over("label") > 1).sort("rank")
             .with_columns(first=pl.col("row").first().over("label"), size=pl.len().over("label")))
    dropped = frame.filter(pl.col("row") != pl.col("first"))
    details = [f"cluster of {s}" for s in dropped["size"].to_list()]
    decisions.drop(dropped["row"].to_numpy(), DedupReason.NEAR_DUPLICATE, dropped["first"].to_numpy(), details)
    return {"texts": len(rows), "candidate_pairs": clusters.candidates, "confirmed_pairs": len(clusters.pairs),
            "clusters": frame["label"].n_unique(), "rows_in_clusters": len(frame)}


def _decontaminate(path: Path, rows: pl.DataFrame, keys_path: Path, eval_near_keys: list[str], decisions: _Decisions,
                   params: DedupParams) -> dict[str, Any]:
    """Drop active rows whose query or positive key equals (found while reading the keys), or whose near key is a
    near duplicate of, an evaluation text's key."""
    active = decisions.active()
    exact = rows["eval_hit"].to_numpy()
    hit = {int(i): str(exact[i]) for i in np.flatnonzero(active & rows["eval_hit"].is_not_null().to_numpy())}
    if params.near and eval_near_keys:
        candidates = np.flatnonzero(active)
        for side, column in (("query", "query"), ("positive", "positive")):
            found = matches(eval_near_keys, ParquetTexts(keys_path, column, candidates), params.minhash,
                            params.workers)
            for row in np.unique(candidates[found["text"].to_numpy()]).tolist():
                hit.setdefault(row, f"near: {side}")
    dropped = np.array(sorted(hit), dtype=np.int64)
    decisions.drop(dropped, DedupReason.EVAL_OVERLAP, details=[hit[i] for i in dropped.tolist()])
    return {"file": str(path), "eval_texts": len(eval_near_keys), "rows_dropped": len(dropped)}


def _overlap(sources: np.ndarray, names: list[str], decisions: _Decisions) -> dict[str, dict[str, int]]:
    """Per source, its rows dropped as duplicates of a row kept in each source (itself included)."""
    dup = np.flatnonzero(decisions.kept >= 0)
    frame = pl.DataFrame({"dup": sources[dup], "kept": sources[decisions.kept[dup]]}).group_by("dup", "kept").len()
    out: dict[str, dict[str, int]] = {}
    for d, k, count in sorted(frame.iter_rows(), key=lambda r: (names[r[0]], names[r[1]])):
        out.setdefault(names[d], {})[names[k]] = count
    return out


def _offsets(sources: np.ndarray, n_sources: int) -> list[int]:
    """Where each source's rows start in the build's rows (sources are read in catalog order)."""
    counts = np.bincount(sources, minlength=n_sources) if len(sources) else np.zeros(n_sources, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)])[:-1].astype(int).tolist()


def _write(name: str, path: Path, out_dir: Path, decisions: _Decisions, offset: int, ids: pl.Series) -> StageCounts:
    """Write one source's kept and dropped rows (its rows are offset, offset + 1, ... of the build's rows), a batch
    at a time."""
    def decide(table: pa.Table, position: int) -> Verdicts:
        start = offset + position
        reasons = decisions.reason[start:start + table.num_rows]
        dropped = np.flatnonzero(reasons >= 0)
        rows = dropped + start
        kept = decisions.kept[rows]
        kept_ids = ids.gather(np.maximum(kept, 0)).to_list()
        return Verdicts([REASONS[r] if r >= 0 else None for r in reasons.tolist()],
                        {i: decisions.detail.get(row) for i, row in zip(dropped.tolist(), rows.tolist(), strict=True)},
                        {i: k_id if k >= 0 else None
                         for i, k, k_id in zip(dropped.tolist(), kept.tolist(), kept_ids, strict=True)})

    tables = (pa.Table.from_batches([batch]) for batch in parquet_batches(path, BATCH_ROWS))
    return sift(tables, decide, out_dir / STAGE, STAGE, name, M3E_HQ_SCHEMA, f"{path.parent.name}/{path.name}")


def run(inputs: dict[str, Path], params: DedupParams, context: Context) -> StageResult:
    """The stage function: dedup every input source together."""
    return dedup_sources(inputs, context.build_dir, params, context.catalog)


DEDUP = Stage(STAGE, DedupParams, attrgetter("dedup"), DedupReason, run, scope=Scope.ALL)
