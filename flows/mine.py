"""Mine stage: m3e-hq rows → m3e-hq-with-score rows (hard negatives and teacher scores), across all sources.

    rows of a pool (a source, or all sources) ─► distinct queries and distinct positives encoded once (cached)
      ─► top-k search of each query among the pool's positives (flows.search: FAISS GPU, torch CUDA or FAISS CPU)
      ─► negatives selected (flows.negatives: rank window, positive-aware margin, near-duplicate exclusion, seed)
      ─► teacher scores of (query, positive) and each (query, negative), a pool at a time (one teacher, one scale)
      ─► false negatives removed (a negative the teacher scores too close to the positive), pair-consistency
         filter (optional), rows left with too few negatives dropped

Dropped rows (reason codes): `low_pair_score` (the teacher scores the pair below `min_pair_score`) and
`no_negatives` (fewer than `min_negatives` negatives left; `detail` says how many the pool gave).

`encode_shard` encodes one of `encode_shards` shards of the same texts into the embedding cache beforehand (one task
per GPU), so that the mine stage finds them all cached.
"""

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    encode_shards: int = Field(1, ge=1, description="encode the texts in this many tasks (one GPU each under the "
                               "Ray task runner) into the embedding cache before mining; 1: the mine task encodes "
                               "them itself")
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


@dataclass
class _Rows:
    """The rows of the build's filter outputs, source after source in catalog order."""

    names: list[str]
    tables: dict[str, pa.Table]
    queries: list[str]
    positives: list[str]
    ids: list[str]
    sources: np.ndarray  # each row's source name

    @classmethod
    def read(cls, inputs: dict[str, Path], catalog: Catalog) -> "_Rows":
        names = [n for n in catalog.names if n in inputs]
        tables = {n: pq.read_table(inputs[n]) for n in names}
        return cls(names, tables, [q for n in names for q in tables[n]["text"].to_pylist()],
                   [p for n in names for p in tables[n]["text_pos"].to_pylist()],
                   [i for n in names for i in tables[n]["id"].to_pylist()],
                   np.array([n for n in names for _ in range(tables[n].num_rows)], dtype=object))

    def pools(self, pool: str) -> list[np.ndarray]:
        """Each pool's row indices: one pool per source, or one of all rows."""
        if pool == "source":
            return [np.flatnonzero(self.sources == n) for n in self.names]
        return [np.arange(len(self.queries))]


def _pool_texts(positives: list[str], rows: np.ndarray) -> list[str]:
    """A pool's texts: the distinct positives of its rows."""
    return list(dict.fromkeys(positives[i] for i in rows))


def groups(names: list[str], pool: str) -> list[list[str]]:
    """The sources mined together: each on its own (pool "source"), or all at once (pool "all")."""
    return [[n] for n in names] if pool == "source" else [names]


def encode_jobs(inputs: dict[str, Path], params: MineParams, catalog: Catalog, shard: int = 0) -> list[tuple[str, str]]:
    """The distinct (prompt, text) pairs that `mine_sources` encodes (the queries with the query prompt, each pool's
    texts with the passage prompt) that fall in shard `shard` of `params.encode_shards` by a stable hash; the
    sources are read a group at a time, so that a shard holds only its own texts."""
    jobs: dict[tuple[str, str], None] = {}
    for group in groups([n for n in catalog.names if n in inputs], params.pool):
        rows = _Rows.read({n: inputs[n] for n in group}, catalog)
        found = [(params.query_prompt, q) for q in rows.queries]
        found += [(params.passage_prompt, t) for pool in rows.pools(params.pool)
                  for t in _pool_texts(rows.positives, pool)]
        jobs.update((job, None) for job in found if _shard_of(job, params.encode_shards) == shard)
    return list(jobs)


def _shard_of(job: tuple[str, str], shards: int) -> int:
    return zlib.crc32(f"{job[0]}\x1f{job[1]}".encode("utf-8", "surrogatepass")) % shards


def encode_shard(inputs: dict[str, Path], params: MineParams, catalog: Catalog, cache_dir: Path,
                 shard: int) -> dict[str, int]:
    """Encode shard `shard` (of `params.encode_shards`) of the texts `mine_sources` encodes into the embedding cache
    under `cache_dir`, where mining then finds them; how many texts the shard had, encoded and found cached."""
    jobs = encode_jobs(inputs, params, catalog, shard)
    counts = {"texts": len(jobs), "encoded": 0, "cached": 0}
    if not jobs:
        return counts
    by_prompt: dict[str, list[str]] = {}
    for prompt, text in jobs:
        by_prompt.setdefault(prompt, []).append(text)
    model = load_encoder(params.encoder, params.device)
    on_progress = progress.counter(f"encode shard {shard}", "texts")
    for prompt, texts in by_prompt.items():
        done = encode(model, texts, prompt, params.batch_size, cache_dir, params.encoder, on_progress)
        counts["encoded"] += done.encoded
        counts["cached"] += done.cached
    return counts


def mine_sources(inputs: dict[str, Path], out_dir: Path, params: MineParams, catalog: Catalog,
                 cache_dir: Path | None = None) -> MineResult:
    """Mine the filter outputs `inputs` (source -> Parquet) into `out_dir/mine/` in the m3e-hq-with-score schema.

    One pool at a time (a source; all sources with pool="all"), each written before the next is read, so that
    memory holds one pool's rows and embeddings, not the build's."""
    names = [n for n in catalog.names if n in inputs]
    stats: dict[str, Any] = {"encoder": params.encoder, "teacher": params.teacher, "pool": params.pool}
    models = _Models(params)
    totals = _Totals()
    counts = [c for group in groups(names, params.pool)
              for c in _mine_group(_Rows.read({n: inputs[n] for n in group}, catalog), out_dir, params, cache_dir,
                                   models, totals)]
    if totals.rows:
        stats.update(totals.stats(params, models))
    return MineResult(counts, stats)


def merge(results: list[MineResult]) -> MineResult:
    """One result for the build from the results of its pool groups (mined apart, e.g. as separate tasks): counts
    in order, figures added up, score distributions read back from the written rows."""
    counts = [c for r in results for c in r.counts]
    stats: dict[str, Any] = dict(results[0].stats) if results else {}
    mined = [r.stats for r in results if "encode" in r.stats]
    if len(results) > 1 and mined:
        for name in ("encode", "candidates"):
            stats[name] = {}
            for figures in mined:
                _add(stats[name], figures[name])
        stats["search_backend"] = sorted({b for figures in mined for b in figures["search_backend"]})
        for name in ("mine_seconds", "teacher_seconds", "false_negatives_removed", "rows_short", "teacher_oom_splits"):
            if name in mined[0]:
                stats[name] = round(sum(figures[name] for figures in mined), 3)
        pos, neg = [], []
        for c in counts:
            scores = pq.read_table(c.kept_path, columns=["score_pos", "score_neg"])
            pos.append(scores["score_pos"].to_numpy())
            neg.append(pc.list_flatten(scores["score_neg"]).to_numpy())
        stats["scores"] = {"scale": mined[0]["scores"]["scale"], "positive": _distribution(pos),
                           "negative": _distribution(neg)}
    return MineResult(counts, stats)


class _Models:
    """The encoder and the cross-encoder teacher, each loaded once, when first needed."""

    def __init__(self, params: MineParams) -> None:
        self.params = params
        self._encoder: Any = None
        self._teacher: CrossEncoderTeacher | None = None

    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = load_encoder(self.params.encoder, self.params.device)
        return self._encoder

    def teacher(self) -> CrossEncoderTeacher:
        if self._teacher is None:
            p = self.params
            self._teacher = CrossEncoderTeacher(p.teacher, p.device, p.teacher_batch_size)
        return self._teacher


@dataclass
class _Totals:
    """What the pools mined, added up for the manifest's `mine` statistics."""

    rows: int = 0
    encode: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    backends: set[str] = field(default_factory=set)
    mine_seconds: float = 0.0
    teacher_seconds: float = 0.0
    false_negatives: int = 0
    rows_short: int = 0
    scale: str = ""
    pos: list[np.ndarray] = field(default_factory=list)  # kept rows' teacher scores, float32
    neg: list[np.ndarray] = field(default_factory=list)

    def stats(self, params: MineParams, models: "_Models") -> dict[str, Any]:
        out = {"encode": self.encode, "search_backend": sorted(self.backends), "candidates": self.candidates,
               "mine_seconds": round(self.mine_seconds, 3), "teacher_seconds": round(self.teacher_seconds, 3),
               "false_negatives_removed": self.false_negatives, "rows_short": self.rows_short,
               "scores": {"scale": self.scale, "positive": _distribution(self.pos),
                          "negative": _distribution(self.neg)}}
        if params.teacher != BI_ENCODER:
            out["teacher_oom_splits"] = models.teacher().oom_splits
        return out


def _add(into: dict[str, int], figures: dict[str, int]) -> None:
    for name, value in figures.items():
        into[name] = into.get(name, 0) + value


def _mine_group(data: "_Rows", out_dir: Path, params: MineParams, cache_dir: Path | None, models: _Models,
                totals: _Totals) -> list[StageCounts]:
    """Mine one group of sources (whose pools are `data.pools`) and write their outputs."""
    names, tables, queries, positives, ids = data.names, data.tables, data.queries, data.positives, data.ids
    if not queries:
        return [_write(n, tables[n], out_dir, {}, {}) for n in names]
    totals.rows += len(queries)
    start = time.perf_counter()
    model = models.encoder()
    embedded_queries = encode(model, queries, params.query_prompt, params.batch_size, cache_dir, params.encoder,
                              progress.counter("encode queries", "texts"))
    _add(totals.encode, {"queries": embedded_queries.distinct, "queries_cached": embedded_queries.cached})
    pools = []
    passage_progress = progress.counter("encode passages", "texts")
    for rows in data.pools(params.pool):
        pool, batch_totals, backend = _mine_pool(rows, queries, positives, ids, embedded_queries.vectors, model,
                                                 params, cache_dir, totals.encode, passage_progress)
        pools.append(pool)
        totals.backends.add(backend)
        _add(totals.candidates, batch_totals)
    totals.mine_seconds += time.perf_counter() - start

    start = time.perf_counter()
    scored = _teacher_scores(pools, queries, positives, params, models)
    totals.teacher_seconds += time.perf_counter() - start
    kept, dropped = _decide(pools, scored, params, len(queries), totals)
    offsets = np.cumsum([0] + [tables[n].num_rows for n in names])
    counts = []
    for n, lo, hi in zip(names, offsets[:-1], offsets[1:], strict=True):
        source_kept = {i - lo: v for i, v in kept.items() if lo <= i < hi}
        source_dropped = {i - lo: v for i, v in dropped.items() if lo <= i < hi}
        counts.append(_write(n, tables[n], out_dir, source_kept, source_dropped, scored["teacher"],
                             scored["scale"]))
    return counts


def _mine_pool(rows: np.ndarray, queries: list[str], positives: list[str], ids: list[str], query_vectors: np.ndarray,
               model: Any, params: MineParams, cache_dir: Path | None, encode_stats: dict[str, int],
               on_progress: Callable[[int], None] | None) -> tuple[_Pool, dict[str, int], str]:
    """Search and select the negatives of one pool's rows."""
    texts = _pool_texts(positives, rows)
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


def _teacher_scores(pools: list[_Pool], queries: list[str], positives: list[str], params: MineParams,
                    models: _Models) -> dict[str, Any]:
    """Teacher scores of every row's (query, positive) and (query, negative) pairs, on one scale."""
    if params.teacher == BI_ENCODER:
        return {"teacher": f"{BI_ENCODER}:{params.encoder}", "scale": COSINE_SCALE,
                "pos": [p.bi_pos for p in pools], "neg": [p.bi_neg for p in pools]}
    teacher = models.teacher()
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
    return {"teacher": params.teacher, "scale": teacher.scale, "pos": pos_scores, "neg": neg_scores}


def _decide(pools: list[_Pool], scored: dict[str, Any], params: MineParams, n: int,
            totals: _Totals) -> tuple[dict[int, dict], dict[int, tuple[str, str]]]:
    """Per row of the group: its negatives and scores (kept), or a reason and detail (dropped)."""
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
    totals.false_negatives += false_negatives
    totals.rows_short += sum(1 for v in kept.values() if len(v["text_neg"]) < params.negatives.num_negatives)
    totals.scale = scored["scale"]
    totals.pos.append(np.asarray(all_pos, dtype=np.float32))
    totals.neg.append(np.asarray(all_neg, dtype=np.float32))
    assert len(kept) + len(dropped) == n
    return kept, dropped


def _distribution(parts: list[np.ndarray]) -> dict[str, float | int]:
    """Count, mean and quantiles of scores."""
    array = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    if not len(array):
        return {"count": 0}
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
