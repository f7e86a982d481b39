"""Mine stage: m3e-hq rows → m3e-hq-with-score rows (hard negatives and teacher scores), across all sources.

    rows of a pool (a source, or all sources of one licence class) ─► distinct queries and distinct positives encoded once (cached)
      ─► top-k search of each query among the pool's positives (flows.core.search: FAISS GPU, torch CUDA or FAISS CPU)
      ─► negatives selected (flows.core.negatives: rank window, positive-aware margin, near-duplicate exclusion, seed)
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
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from m3e_hq import progress
from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.flows.core.mine_params import MineParams
from m3e_hq.flows.core.minhash import MinHashParams
from m3e_hq.flows.core.model_names import BI_ENCODER, COSINE_SCALE
from m3e_hq.flows.core.negatives import (
    Pool,
    Queries,
    keys_and_signatures,
    margin_limit,
    select_negatives,
)
from m3e_hq.flows.core.stage import Context, Reason, Scope, Stage, StageResult, Verdicts, sift
from m3e_hq.schemas import M3E_HQ_WITH_SCORE_SCHEMA
from m3e_hq.sources.catalog import Catalog, Source

STAGE = "mine"


class MineReason(Reason):
    LOW_PAIR_SCORE = "low_pair_score", "the teacher scores the pair below min_pair_score"
    NO_NEGATIVES = "no_negatives", "fewer than min_negatives negatives left; detail says how many the pool gave"


# Candidates fetched beyond range_max: room for the positive, near-duplicates and repeats the selection removes.
SEARCH_SLACK = 16
log = logging.getLogger("m3e_hq.mine")


@dataclass
class _Pool:
    """What mining found for a group's rows, whose pool is the distinct positives of the group."""

    texts: list[str]  # the pool: distinct positives
    neg_idx: np.ndarray  # (rows, num_negatives) indices into texts, -1 padded
    bi_pos: np.ndarray  # (rows,) encoder cosine of query and positive
    bi_neg: np.ndarray  # (rows, num_negatives) encoder cosine of query and each negative


@dataclass
class _Rows:
    """The rows of some m3e-hq stage outputs (the mine stage's input files), source after source in catalog
    order."""

    names: list[str]
    paths: dict[str, Path]  # the input file each source's rows were read from
    tables: dict[str, pa.Table]
    queries: list[str]
    positives: list[str]
    ids: list[str]

    @classmethod
    def read(cls, inputs: dict[str, Path], catalog: Catalog) -> "_Rows":
        names = [n for n in catalog.names if n in inputs]
        tables = {n: pq.read_table(inputs[n]) for n in names}
        return cls(names, {n: inputs[n] for n in names}, tables, [q for n in names for q in tables[n]["text"].to_pylist()],
                   [p for n in names for p in tables[n]["text_pos"].to_pylist()],
                   [i for n in names for i in tables[n]["id"].to_pylist()])


def groups(names: list[str], pool: str, catalog: Catalog) -> list[list[str]]:
    """The sources mined together, whose positives are one pool: each source on its own (pool "source"), or all
    sources of one licence class at once (pool "all"), so that a row's negatives are texts of sources that allow
    what its own source allows and a commercial export never carries a non-commercial negative."""
    if pool == "source":
        return [[n] for n in names]
    by_class: dict[str, list[str]] = {}
    for name in names:
        by_class.setdefault(licence_class(catalog.get(name)), []).append(name)
    return list(by_class.values())


def licence_class(source: Source) -> str:
    """`commercial` (commercial use allowed and a licence stated), `unstated` (commercial only when unstated
    licences are included) or `non-commercial`: the sources whose rows every commercial export takes together."""
    if source.commercial_use():
        return "commercial"
    return "unstated" if source.commercial_use(include_unknown_license=True) else "non-commercial"


def encode_jobs(inputs: dict[str, Path], params: MineParams, catalog: Catalog, shard: int = 0) -> list[tuple[str, str]]:
    """The distinct (prompt, text) pairs that `mine_sources` encodes (the queries with the query prompt, each pool's
    texts with the passage prompt) that fall in shard `shard` of `params.encode_shards` by a stable hash; the
    sources are read a group at a time, so that a shard holds only its own texts."""
    jobs: dict[tuple[str, str], None] = {}
    for group in groups([n for n in catalog.names if n in inputs], params.pool, catalog):
        rows = _Rows.read({n: inputs[n] for n in group}, catalog)
        found = [(params.query_prompt, q) for q in rows.queries]
        found += [(params.passage_prompt, t) for t in dict.fromkeys(rows.positives)]
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
    from m3e_hq.flows.core.encode import encode, shared_encoder

    model = shared_encoder(params.encoder, params.device)
    for prompt, texts in by_prompt.items():
        done = encode(model, texts, prompt, params.batch_size, cache_dir, params.encoder, f"encode shard {shard}")
        counts["encoded"] += done.encoded
        counts["cached"] += done.cached
    return counts


def mine_sources(inputs: dict[str, Path], out_dir: Path, params: MineParams, catalog: Catalog,
                 cache_dir: Path | None = None) -> StageResult:
    """Mine the m3e-hq rows `inputs` (source -> Parquet, the previous stage's kept rows) into `out_dir/mine/` in the m3e-hq-with-score schema.

    One group of sources at a time (`groups`: a source; all sources with pool="all"), each written before the next
    is read, so that memory holds one pool's rows and embeddings, not the build's."""
    return merge([_mine_group(_Rows.read({n: inputs[n] for n in group}, catalog), out_dir, params, cache_dir)
                  for group in groups([n for n in catalog.names if n in inputs], params.pool, catalog)], params)


def merge(results: list[StageResult], params: MineParams) -> StageResult:
    """One result for the build from the results of its groups (mined by `mine_sources` or as separate tasks):
    counts in order, figures added up, score distributions read back from the written rows."""
    counts = [c for r in results for c in r.counts]
    mined = [r.stats for r in results if "encode" in r.stats]
    if len(mined) <= 1:
        return StageResult(counts, mined[0] if mined else _settings(params))
    stats = _settings(params)
    for name in ("encode", "candidates"):
        stats[name] = {}
        for figures in mined:
            for key, value in figures[name].items():
                stats[name][key] = stats[name].get(key, 0) + value
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
    return StageResult(counts, stats)


def _settings(params: MineParams) -> dict[str, Any]:
    return {"encoder": params.encoder, "teacher": params.teacher, "pool": params.pool}


def _mine_group(data: _Rows, out_dir: Path, params: MineParams, cache_dir: Path | None) -> StageResult:
    """Mine one group of sources, whose pool is their distinct positives, and write their outputs (with the
    encoder and teacher this process shares between its tasks)."""
    from m3e_hq.flows.core.encode import encode, shared_encoder

    names, tables, queries, positives = data.names, data.tables, data.queries, data.positives
    stats = _settings(params)
    if not queries:
        return StageResult([_write(n, tables[n], data.paths[n], out_dir, {}, {}) for n in names], stats)
    start = time.perf_counter()
    model = shared_encoder(params.encoder, params.device)
    embedded_queries = encode(model, queries, params.query_prompt, params.batch_size, cache_dir, params.encoder,
                              f"encode {progress.label(names)} queries")
    stats["encode"] = {"queries": embedded_queries.distinct, "queries_cached": embedded_queries.cached}
    pool, stats["candidates"], backend = _mine_pool(data, embedded_queries.vectors, model, params, cache_dir,
                                                    stats["encode"])
    stats["search_backend"] = [backend]
    stats["mine_seconds"] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    scored = _teacher_scores(pool, queries, positives, params)
    stats["teacher_seconds"] = round(time.perf_counter() - start, 3)
    if params.teacher != BI_ENCODER:
        stats["teacher_oom_splits"] = scored["splits"]
    kept, dropped = _decide(pool, scored, params, stats)
    offsets = np.cumsum([0] + [tables[n].num_rows for n in names])
    counts = []
    for n, lo, hi in zip(names, offsets[:-1], offsets[1:], strict=True):
        source_kept = {i - lo: v for i, v in kept.items() if lo <= i < hi}
        source_dropped = {i - lo: v for i, v in dropped.items() if lo <= i < hi}
        counts.append(_write(n, tables[n], data.paths[n], out_dir, source_kept, source_dropped, scored["teacher"],
                             scored["scale"]))
    return StageResult(counts, stats)


def _mine_pool(data: _Rows, query_vectors: np.ndarray, model: Any, params: MineParams, cache_dir: Path | None,
               encode_stats: dict[str, int]) -> tuple[_Pool, dict[str, int], str]:
    """Search and select the negatives of a group's rows among its distinct positives."""
    from m3e_hq.flows.core.encode import encode
    from m3e_hq.flows.core.search import search
    from m3e_hq.flows.core.teacher import cosine

    queries, positives = data.queries, data.positives
    texts = list(dict.fromkeys(positives))
    position = {t: i for i, t in enumerate(texts)}
    pos_idx = np.array([position[p] for p in positives], dtype=np.int64)
    passages = encode(model, texts, params.passage_prompt, params.batch_size, cache_dir, params.encoder,
                      f"encode {progress.label(data.names)} passages")
    encode_stats["passages"] = passages.distinct
    encode_stats["passages_cached"] = passages.cached
    bi_pos = cosine(query_vectors, passages.vectors[pos_idx])
    k = min(len(texts), params.negatives.range_max + SEARCH_SLACK)
    scores, cand_idx, backend = search(query_vectors, passages.vectors, k, backend=params.search)
    minhash = MinHashParams() if params.near_duplicates else None
    pool_keys, pool_sigs = keys_and_signatures(texts, minhash)
    query_keys, query_sigs = keys_and_signatures(queries, minhash)
    batch = Queries(ids=data.ids, keys=query_keys, pos_keys=[pool_keys[i] for i in pos_idx],
                    pos_idx=pos_idx, pos_scores=bi_pos, signatures=query_sigs,
                    pos_signatures=None if pool_sigs is None else pool_sigs[pos_idx])
    negatives = select_negatives(cand_idx, scores, batch, Pool.of(pool_keys, pool_sigs), params.negatives)
    return _Pool(texts, negatives.idx, bi_pos, negatives.scores), negatives.totals(), backend


def _teacher_scores(pool: _Pool, queries: list[str], positives: list[str], params: MineParams) -> dict[str, Any]:
    """Teacher scores of every row's (query, positive) and (query, negative) pairs, on one scale, and the
    cross-encoder's batches split on running out of GPU memory."""
    if params.teacher == BI_ENCODER:
        return {"teacher": f"{BI_ENCODER}:{params.encoder}", "scale": COSINE_SCALE, "pos": pool.bi_pos,
                "neg": pool.bi_neg}
    from m3e_hq.flows.core.teacher import shared_teacher

    teacher = shared_teacher(params.teacher, params.device, params.teacher_batch_size)
    rows, slots = np.nonzero(pool.neg_idx >= 0)  # row by row, in slot order: as the scores are read back
    pairs = list(zip(queries, positives, strict=True))
    pairs += [(queries[r], pool.texts[pool.neg_idx[r, k]]) for r, k in zip(rows, slots, strict=True)]
    flat, splits = teacher.score_counting(pairs)
    neg = np.full(pool.neg_idx.shape, np.nan, dtype=np.float32)
    neg[pool.neg_idx >= 0] = flat[len(queries):]
    return {"teacher": params.teacher, "scale": teacher.scale, "pos": flat[:len(queries)], "neg": neg,
            "splits": splits}


def _decide(pool: _Pool, scored: dict[str, Any], params: MineParams,
            stats: dict[str, Any]) -> tuple[dict[int, dict], dict[int, tuple[str, str]]]:
    """Per row of the group: its negatives and scores (kept), or a reason and detail (dropped); the figures go into
    `stats`."""
    kept: dict[int, dict] = {}
    dropped: dict[int, tuple[str, str]] = {}
    pos, neg = scored["pos"], scored["neg"]
    usable = pool.neg_idx >= 0
    false_negatives = 0
    if params.false_negative_margin is not None:
        too_close = usable & ~(neg <= margin_limit(pos, params.false_negative_margin)[:, None])
        false_negatives = int(too_close.sum())
        usable &= ~too_close
    all_pos, all_neg = [], []
    for r in range(len(pos)):
        if params.min_pair_score is not None and pos[r] < params.min_pair_score:
            dropped[r] = (MineReason.LOW_PAIR_SCORE, f"teacher score {pos[r]:.4f} < {params.min_pair_score}")
            continue
        cols = np.flatnonzero(usable[r])
        if len(cols) < params.min_negatives:
            detail = (f"{len(cols)} negatives left of the {params.negatives.num_negatives} asked "
                      f"(pool of {len(pool.texts)} texts)")
            dropped[r] = (MineReason.NO_NEGATIVES, detail)
            continue
        kept[r] = {"text_neg": [pool.texts[j] for j in pool.neg_idx[r, cols]], "score_pos": float(pos[r]),
                   "score_neg": [float(s) for s in neg[r, cols]]}
        all_pos.append(pos[r])
        all_neg.extend(neg[r, cols].tolist())
    stats["false_negatives_removed"] = false_negatives
    stats["rows_short"] = sum(1 for v in kept.values() if len(v["text_neg"]) < params.negatives.num_negatives)
    stats["scores"] = {"scale": scored["scale"],
                       "positive": _distribution([np.asarray(all_pos, dtype=np.float32)]),
                       "negative": _distribution([np.asarray(all_neg, dtype=np.float32)])}
    return kept, dropped


def _distribution(parts: list[np.ndarray]) -> dict[str, float | int]:
    """Count, mean and quantiles of scores."""
    array = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    if not len(array):
        return {"count": 0}
    quantiles = np.quantile(array, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"count": len(array), "mean": round(float(array.mean()), 4),
            **{f"p{q}": round(float(v), 4) for q, v in zip((5, 25, 50, 75, 95), quantiles, strict=True)}}


def _write(name: str, table: pa.Table, path: Path, out_dir: Path, kept: dict[int, dict],
           dropped: dict[int, tuple[str, str]], teacher: str = "", scale: str = "") -> StageCounts:
    """Write one source's m3e-hq-with-score rows and its dropped rows; `table` holds the rows of the stage's input
    file `path`, which the dropped rows' locators name."""
    rows = sorted(kept)
    extra = [kept[r] for r in rows]
    scored = (table.take(pa.array(rows, pa.int64()))
              .append_column("text_neg", pa.array([e["text_neg"] for e in extra], pa.list_(pa.string())))
              .append_column("score_pos", pa.array([e["score_pos"] for e in extra], pa.float32()))
              .append_column("score_neg", pa.array([e["score_neg"] for e in extra], pa.list_(pa.float32())))
              .append_column("teacher", pa.array([teacher] * len(rows), pa.string()))
              .append_column("score_scale", pa.array([scale] * len(rows), pa.string())))
    verdicts = Verdicts([dropped[i][0] if i in dropped else None for i in range(table.num_rows)],
                        {i: why[1] for i, why in dropped.items()}, kept=scored)
    return sift([table], lambda _table, _offset: verdicts, out_dir / STAGE, STAGE, name, M3E_HQ_WITH_SCORE_SCHEMA,
                f"{path.parent.name}/{path.name}")


def run(inputs: dict[str, Path], params: MineParams, context: Context) -> StageResult:
    """The stage function: mine the input sources, a pool at a time."""
    return mine_sources(inputs, context.build_dir, params, context.catalog, context.cache_dir)


def prepare(inputs: dict[str, Path], params: MineParams, context: Context, shard: int) -> dict[str, int]:
    """Encode shard `shard` of the texts mining needs into the embedding cache."""
    return encode_shard(inputs, params, context.catalog, context.cache_dir, shard)


MINE = Stage(STAGE, MineParams, attrgetter("mine"), MineReason, run, scope=lambda params: Scope(params.pool),
             merge=merge, prepare=prepare, prepare_name="encode", prepare_shards=attrgetter("encode_shards"),
             device=attrgetter("device"))
