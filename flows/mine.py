"""Mine stage: m3e-hq rows → m3e-hq-with-score rows (hard negatives and teacher scores), across all sources.

    rows of a pool (a source, or all sources) ─► distinct queries and distinct positives encoded once (cached)
      ─► top-k search of each query among the pool's positives (flows.search: FAISS GPU, torch CUDA or FAISS CPU)
      ─► negatives selected (flows.negatives: rank window, positive-aware margin, near-duplicate exclusion, seed)
      ─► teacher scores of (query, positive) and each (query, negative), all pairs of the build in one pass
      ─► false negatives removed (a negative the teacher scores too close to the positive), pair-consistency
         filter (optional), rows left with too few negatives dropped

Dropped rows (reason codes): `low_pair_score` (the teacher scores the pair below `min_pair_score`) and
`no_negatives` (fewer than `min_negatives` negatives left; `detail` says how many the pool gave).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from flows import progress
from flows.accounting import StageCounts, StageWriter, dropped_rows
from flows.encode import DEFAULT_ENCODER, encode, load_encoder
from flows.filters import LOW_PAIR_SCORE
from flows.minhash import MinHashParams
from flows.negatives import NegativeParams, Pool, Queries, keys_and_signatures, margin_limit, select_negatives
from flows.search import search
from flows.teacher import BI_ENCODER, COSINE_SCALE, CrossEncoderTeacher, cosine
from schemas import M3E_HQ_WITH_SCORE_SCHEMA
from sources.catalog import Catalog

STAGE = "mine"
NO_NEGATIVES = "no_negatives"
REASONS = (LOW_PAIR_SCORE, NO_NEGATIVES)
# Candidates fetched beyond range_max: room for the positive, near-duplicates and repeats the selection removes.
SEARCH_SLACK = 16
log = logging.getLogger("m3e_hq.mine")


class MineParams(BaseModel):
    """Models, search and selection of the mine stage."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(DEFAULT_ENCODER, description="sentence-transformers model that embeds queries and "
                         "passages for the search (a Hub id such as moka-ai/m3e-base or a local folder; the default "
                         "is the packaged all-MiniLM-L6-v2, a demo that maps many Chinese characters to [UNK])")
    query_prompt: str = Field("", description="text put before every query when encoding")
    passage_prompt: str = Field("", description="text put before every passage when encoding")
    device: str | None = Field(None, description="torch device (cpu, cuda, cuda:1); default cuda when available")
    batch_size: int = Field(64, ge=1, description="encoding batch size")
    search: Literal["auto", "faiss-gpu", "torch-cuda", "faiss-cpu"] = Field(
        "auto", description="search backend: auto takes faiss-gpu, then torch-cuda, then faiss-cpu; a backend named "
        "but not available fails")
    pool: Literal["source", "all"] = Field("source", description="where negatives come from: the positives of the "
                                           "query's own source (in-domain), or of all sources")
    negatives: NegativeParams = Field(default_factory=NegativeParams, description="how negatives are selected")
    near_duplicates: bool = Field(True, description="exclude candidates that are MinHash near-duplicates of the "
                                  "query or the positive (normalised equality is always excluded)")
    teacher: str = Field(BI_ENCODER, description="'bi-encoder' (cosine of the encoder's embeddings) or a "
                         "cross-encoder model (e.g. BAAI/bge-reranker-base) that scores every pair")
    teacher_batch_size: int = Field(256, ge=1, description="cross-encoder batch size (halved on running out of "
                                    "GPU memory)")
    false_negative_margin: float | None = Field(
        0.05, ge=0, description="drop a negative whose teacher score is above pos - |pos| * margin (a likely false "
        "negative); None: off")
    min_pair_score: float | None = Field(None, description="drop a pair whose teacher score is below this "
                                         "(pair consistency, as C-Pack did; calibrate per teacher); None: off")
    min_negatives: int = Field(1, ge=0, description="drop a row left with fewer negatives than this")


@dataclass
class MineResult:
    counts: list[StageCounts]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Pool:
    """One pool's rows (a slice of the build's rows) and what mining found for them."""

    rows: np.ndarray  # indices into the build's rows
    texts: list[str]  # the pool: distinct positives
    neg_idx: np.ndarray  # (rows, num_negatives) indices into texts, -1 padded
    bi_pos: np.ndarray  # (rows,) encoder cosine of query and positive
    bi_neg: np.ndarray  # (rows, num_negatives) encoder cosine of query and each negative


def mine_sources(inputs: dict[str, Path], out_dir: Path, params: MineParams, catalog: Catalog,
                 cache_dir: Path | None = None) -> MineResult:
    """Mine the filter outputs `inputs` (source -> Parquet) into `out_dir/mine/` in the m3e-hq-with-score schema."""
    names = [n for n in catalog.names if n in inputs]
    tables = {n: pq.read_table(inputs[n]) for n in names}
    queries = [q for n in names for q in tables[n]["text"].to_pylist()]
    positives = [p for n in names for p in tables[n]["text_pos"].to_pylist()]
    ids = [i for n in names for i in tables[n]["id"].to_pylist()]
    sources = np.array([n for n in names for _ in range(tables[n].num_rows)], dtype=object)
    stats: dict[str, Any] = {"encoder": params.encoder, "teacher": params.teacher, "pool": params.pool}
    if not queries:
        return MineResult([_write(n, tables[n], out_dir, {}, {}) for n in names], stats)

    start = time.perf_counter()
    model = load_encoder(params.encoder, params.device)
    embedded_queries = encode(model, queries, params.query_prompt, params.batch_size, cache_dir, params.encoder,
                              progress.counter("encode queries", "texts"))
    stats["encode"] = {"queries": embedded_queries.distinct, "queries_cached": embedded_queries.cached}
    groups = [np.flatnonzero(sources == n) for n in names] if params.pool == "source" else [np.arange(len(queries))]
    pools, totals, backends = [], {}, set()
    passage_progress = progress.counter("encode passages", "texts")
    for rows in groups:
        pool, batch_totals, backend = _mine_pool(rows, queries, positives, ids, embedded_queries.vectors, model,
                                                 params, cache_dir, stats["encode"], passage_progress)
        pools.append(pool)
        backends.add(backend)
        for name, value in batch_totals.items():
            totals[name] = totals.get(name, 0) + value
    stats["search_backend"] = sorted(backends)
    stats["candidates"] = totals
    stats["mine_seconds"] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    scored = _teacher_scores(pools, queries, positives, params)
    stats["teacher_seconds"] = round(time.perf_counter() - start, 3)
    kept, dropped = _decide(pools, scored, params, len(queries), stats)
    offsets = np.cumsum([0] + [tables[n].num_rows for n in names])
    counts = []
    for n, lo, hi in zip(names, offsets[:-1], offsets[1:], strict=True):
        source_kept = {i - lo: v for i, v in kept.items() if lo <= i < hi}
        source_dropped = {i - lo: v for i, v in dropped.items() if lo <= i < hi}
        counts.append(_write(n, tables[n], out_dir, source_kept, source_dropped, scored["teacher"],
                             scored["scale"]))
    return MineResult(counts, stats)


def _mine_pool(rows: np.ndarray, queries: list[str], positives: list[str], ids: list[str], query_vectors: np.ndarray,
               model: Any, params: MineParams, cache_dir: Path | None, encode_stats: dict[str, int],
               on_progress: Callable[[int], None] | None) -> tuple[_Pool, dict[str, int], str]:
    """Search and select the negatives of one pool's rows."""
    texts = list(dict.fromkeys(positives[i] for i in rows))
    position = {t: i for i, t in enumerate(texts)}
    pos_idx = np.array([position[positives[i]] for i in rows], dtype=np.int64)
    passages = encode(model, texts, params.passage_prompt, params.batch_size, cache_dir, params.encoder,
                      on_progress)
    encode_stats["passages"] = encode_stats.get("passages", 0) + passages.distinct
    encode_stats["passages_cached"] = encode_stats.get("passages_cached", 0) + passages.cached
    q_vectors = query_vectors[rows]
    bi_pos = cosine(q_vectors, passages.vectors[pos_idx])
    k = min(len(texts), params.negatives.range_max + SEARCH_SLACK)
    scores, cand_idx, backend = search(q_vectors, passages.vectors, k, backend=params.search)
    minhash = MinHashParams() if params.near_duplicates else None
    pool_keys, pool_sigs = keys_and_signatures(texts, minhash)
    query_keys, query_sigs = keys_and_signatures([queries[i] for i in rows], minhash)
    batch = Queries(ids=[ids[i] for i in rows], keys=query_keys, pos_keys=[pool_keys[i] for i in pos_idx],
                    pos_idx=pos_idx, pos_scores=bi_pos, signatures=query_sigs,
                    pos_signatures=None if pool_sigs is None else pool_sigs[pos_idx])
    negatives = select_negatives(cand_idx, scores, batch, Pool.of(pool_keys, pool_sigs), params.negatives)
    return _Pool(rows, texts, negatives.idx, bi_pos, negatives.scores), negatives.totals(), backend


def _teacher_scores(pools: list[_Pool], queries: list[str], positives: list[str],
                    params: MineParams) -> dict[str, Any]:
    """Teacher scores of every row's (query, positive) and (query, negative) pairs, on one scale."""
    if params.teacher == BI_ENCODER:
        return {"teacher": f"{BI_ENCODER}:{params.encoder}", "scale": COSINE_SCALE,
                "pos": [p.bi_pos for p in pools], "neg": [p.bi_neg for p in pools]}
    teacher = CrossEncoderTeacher(params.teacher, params.device, params.teacher_batch_size)
    pairs: list[tuple[str, str]] = []
    for p in pools:
        pairs += [(queries[i], positives[i]) for i in p.rows]
        rows, slots = np.nonzero(p.neg_idx >= 0)  # row by row, in slot order: as the scores are read back
        pairs += [(queries[p.rows[r]], p.texts[p.neg_idx[r, k]]) for r, k in zip(rows, slots, strict=True)]
    flat = teacher.score(pairs)
    pos_scores, neg_scores, at = [], [], 0
    for p in pools:
        pos_scores.append(flat[at:at + len(p.rows)])
        at += len(p.rows)
        neg = np.full(p.neg_idx.shape, np.nan, dtype=np.float32)
        mask = p.neg_idx >= 0
        neg[mask] = flat[at:at + int(mask.sum())]
        at += int(mask.sum())
        neg_scores.append(neg)
    return {"teacher": params.teacher, "scale": teacher.scale, "pos": pos_scores, "neg": neg_scores,
            "oom_splits": teacher.oom_splits}


def _decide(pools: list[_Pool], scored: dict[str, Any], params: MineParams, n: int,
            stats: dict[str, Any]) -> tuple[dict[int, dict], dict[int, tuple[str, str]]]:
    """Per build row: its negatives and scores (kept), or a reason and detail (dropped)."""
    kept: dict[int, dict] = {}
    dropped: dict[int, tuple[str, str]] = {}
    false_negatives = 0
    all_pos, all_neg = [], []
    for p, pos, neg in zip(pools, scored["pos"], scored["neg"], strict=True):
        usable = p.neg_idx >= 0
        if params.false_negative_margin is not None:
            too_close = usable & ~(neg <= margin_limit(pos, params.false_negative_margin)[:, None])
            false_negatives += int(too_close.sum())
            usable &= ~too_close
        for r, row in enumerate(p.rows.tolist()):
            if params.min_pair_score is not None and pos[r] < params.min_pair_score:
                dropped[row] = (LOW_PAIR_SCORE, f"teacher score {pos[r]:.4f} < {params.min_pair_score}")
                continue
            cols = np.flatnonzero(usable[r])
            if len(cols) < params.min_negatives:
                detail = (f"{len(cols)} negatives left of the {params.negatives.num_negatives} asked "
                          f"(pool of {len(p.texts)} texts)")
                dropped[row] = (NO_NEGATIVES, detail)
                continue
            kept[row] = {"text_neg": [p.texts[j] for j in p.neg_idx[r, cols]], "score_pos": float(pos[r]),
                         "score_neg": [float(s) for s in neg[r, cols]]}
            all_pos.append(pos[r])
            all_neg.extend(neg[r, cols].tolist())
    stats["false_negatives_removed"] = false_negatives
    stats["rows_short"] = sum(1 for v in kept.values() if len(v["text_neg"]) < params.negatives.num_negatives)
    stats["scores"] = {"scale": scored["scale"], "positive": _distribution(all_pos),
                       "negative": _distribution(all_neg)}
    if "oom_splits" in scored:
        stats["teacher_oom_splits"] = scored["oom_splits"]
    assert len(kept) + len(dropped) == n
    return kept, dropped


def _distribution(values: list[float]) -> dict[str, float | int]:
    """Count, mean and quantiles of scores."""
    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=np.float64)
    quantiles = np.quantile(array, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"count": len(array), "mean": round(float(array.mean()), 4),
            **{f"p{q}": round(float(v), 4) for q, v in zip((5, 25, 50, 75, 95), quantiles, strict=True)}}


def _write(name: str, table: pa.Table, out_dir: Path, kept: dict[int, dict], dropped: dict[int, tuple[str, str]],
           teacher: str = "", scale: str = "") -> StageCounts:
    """Write one source's m3e-hq-with-score rows and its dropped rows."""
    with StageWriter(out_dir / STAGE, STAGE, name, M3E_HQ_WITH_SCORE_SCHEMA) as writer:
        writer.read(table.num_rows)
        rows = sorted(kept)
        if rows:
            extra = [kept[r] for r in rows]
            writer.keep_table(table.take(rows).append_column("text_neg", pa.array([e["text_neg"] for e in extra]))
                              .append_column("score_pos", pa.array([e["score_pos"] for e in extra], pa.float32()))
                              .append_column("score_neg", pa.array([e["score_neg"] for e in extra],
                                                                   pa.list_(pa.float32())))
                              .append_column("teacher", pa.array([teacher] * len(rows)))
                              .append_column("score_scale", pa.array([scale] * len(rows))))
        if dropped:
            positions = sorted(dropped)
            writer.drop_table(dropped_rows(table, name, f"filter/{name}.parquet", positions,
                                           [dropped[i][0] for i in positions], [dropped[i][1] for i in positions]))
    return writer.counts
