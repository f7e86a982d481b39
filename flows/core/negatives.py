"""Hard-negative selection: from each query's search results (no model, no index here) to its negatives.

For a batch of Q queries the search gives K candidates each (pool indices, -1 for "no result" as FAISS pads, and
their scores, best first). Every candidate gets one outcome, the first rule that applies, in this order:

- `invalid`: a -1 result;
- `positive`: the query's own positive, by pool index or by normalised key (`flows.stages.dedup.key`: full-width and
  half-width forms, case, whitespace and punctuation do not matter), so that a copy of the positive under another
  pool index is never a negative;
- `near_duplicate`: the query's own text (by key), or, with MinHash signatures, a text whose estimated Jaccard
  (the share of equal signature slots) with the query or the positive reaches `near_threshold`;
- `repeat`: the same key as a better-ranked candidate, so that a query never gets one text twice;
- `window`: its rank among the candidates left so far is outside [range_min, range_max);
- `margin`: it scores above pos − |pos| · relative_margin or pos − absolute_margin (positive-aware mining: right for
  negative positive scores too);
- `ceiling`: it scores above max_score.

The candidates left are eligible; `top` sampling takes the best num_negatives of them, `random` sampling a sample
drawn with a generator seeded from (seed, query id), so a query's negatives do not depend on the batch it is in.
Eligible candidates not taken are `unused`. Selected negatives are returned in rank order.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from m3e_hq.flows.core.minhash import MinHashParams, signatures
from m3e_hq.flows.core.negative_params import NegativeParams
from m3e_hq.flows.core.text import key

SELECTED = "selected"
UNUSED = "unused"
INVALID = "invalid"
POSITIVE = "positive"
NEAR_DUPLICATE = "near_duplicate"
REPEAT = "repeat"
WINDOW = "window"
MARGIN = "margin"
CEILING = "ceiling"
REASONS = (INVALID, POSITIVE, NEAR_DUPLICATE, REPEAT, WINDOW, MARGIN, CEILING)
OUTCOMES = (SELECTED, UNUSED, *REASONS)  # Negatives.outcome holds indices into this tuple
_CODE = {name: np.int8(i) for i, name in enumerate(OUTCOMES)}
_OPEN = np.int8(-1)  # no outcome yet


@dataclass(frozen=True)
class Pool:
    """The candidate pool as the checks see it: a code per text (equal codes: equal keys), optional signatures."""

    codes: np.ndarray  # (N,) int64
    lookup: dict[str, int]  # key -> code
    signatures: np.ndarray | None = None  # (N, num_perm) uint32, MinHash of the keys

    @classmethod
    def of(cls, keys: Sequence[str], sigs: np.ndarray | None = None) -> "Pool":
        """The pool of these normalised keys (and their MinHash signatures)."""
        lookup: dict[str, int] = {}
        codes = np.fromiter((lookup.setdefault(k, len(lookup)) for k in keys), dtype=np.int64, count=len(keys))
        if sigs is not None and len(sigs) != len(keys):
            raise ValueError(f"{len(sigs)} signatures for a pool of {len(keys)} texts")
        return cls(codes, lookup, sigs)

    def code(self, keys: Sequence[str]) -> np.ndarray:
        """The codes of `keys`; -1 for a key no pool text has."""
        return np.fromiter((self.lookup.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))


@dataclass(frozen=True)
class Queries:
    """A batch of Q queries: what identifies them, and their positives."""

    ids: Sequence[str]  # stable ids (e.g. row ids): seed random sampling
    keys: Sequence[str]  # normalised keys of the queries
    pos_keys: Sequence[str]  # normalised keys of the positives
    pos_idx: np.ndarray  # (Q,) pool index of each positive, -1 when it is not in the pool
    pos_scores: np.ndarray  # (Q,) similarity of each query to its positive
    signatures: np.ndarray | None = None  # (Q, num_perm) MinHash of the query keys
    pos_signatures: np.ndarray | None = None  # (Q, num_perm) MinHash of the positive keys


@dataclass(frozen=True)
class Negatives:
    """Each query's negatives, and what became of every candidate."""

    idx: np.ndarray  # (Q, num_negatives) int64 pool indices in rank order, -1 padded
    scores: np.ndarray  # (Q, num_negatives) float32, nan padded
    outcome: np.ndarray  # (Q, K) int8: index into OUTCOMES of each candidate's outcome

    @property
    def shortfall(self) -> np.ndarray:
        """(Q,) how many fewer than num_negatives each query got."""
        return (self.idx < 0).sum(axis=1)

    def counts(self) -> dict[str, np.ndarray]:
        """Per outcome (selected, unused, then each removal reason), its (Q,) number of candidates."""
        return {name: (self.outcome == _CODE[name]).sum(axis=1) for name in OUTCOMES}

    def totals(self) -> dict[str, int]:
        """The batch's statistics: candidates per outcome, queries short of negatives, and negatives missing."""
        shortfall = self.shortfall
        return {**{name: int(c.sum()) for name, c in self.counts().items()},
                "queries_short": int((shortfall > 0).sum()), "missing": int(shortfall.sum())}


def keys_and_signatures(texts: Sequence[str], minhash: MinHashParams | None = None,
                        workers: int = 2) -> tuple[list[str], np.ndarray | None]:
    """The normalised keys of `texts` and, with `minhash`, the (n, num_perm) MinHash signatures of the keys."""
    keys = [key(t) for t in texts]
    return keys, None if minhash is None else signatures(keys, minhash, workers)[0]


def select_negatives(cand_idx: np.ndarray, cand_scores: np.ndarray, queries: Queries, pool: Pool,
                     params: NegativeParams) -> Negatives:
    """Select each query's negatives from its search results: (Q, K) pool indices (-1: none) and their scores,
    in the search's order (best first)."""
    cand_idx = np.asarray(cand_idx, dtype=np.int64)
    cand_scores = np.asarray(cand_scores, dtype=np.float32)
    _check(cand_idx, cand_scores, queries, pool)
    valid = cand_idx >= 0
    safe = np.where(valid, cand_idx, 0)
    codes = np.where(valid, pool.codes[safe], -1 - np.arange(cand_idx.shape[1]))  # invalid: distinct, never a key
    pos_idx = np.asarray(queries.pos_idx, dtype=np.int64)

    outcome = np.full(cand_idx.shape, _OPEN, dtype=np.int8)
    _assign(outcome, ~valid, INVALID)
    _assign(outcome, valid & ((cand_idx == pos_idx[:, None]) | (codes == pool.code(queries.pos_keys)[:, None])),
            POSITIVE)
    _assign(outcome, valid & ((codes == pool.code(queries.keys)[:, None]) | _near(safe, queries, pool, params)),
            NEAR_DUPLICATE)
    _assign(outcome, valid & _repeats(codes), REPEAT)
    rank = np.cumsum(outcome == _OPEN, axis=1) - 1
    _assign(outcome, (rank < params.range_min) | (rank >= params.range_max), WINDOW)
    if params.relative_margin is not None or params.absolute_margin is not None:
        limit = margin_limit(queries.pos_scores, params.relative_margin, params.absolute_margin)
        _assign(outcome, ~(cand_scores <= limit[:, None]), MARGIN)
    if params.max_score is not None:
        _assign(outcome, ~(cand_scores <= params.max_score), CEILING)

    eligible = outcome == _OPEN
    chosen = _sample(eligible, queries.ids, params) if params.sampling == "random" else (
        eligible & (np.cumsum(eligible, axis=1) <= params.num_negatives))
    outcome[chosen] = _CODE[SELECTED]
    outcome[eligible & ~chosen] = _CODE[UNUSED]

    rows, cols = np.nonzero(chosen)
    slots = (np.cumsum(chosen, axis=1) - 1)[rows, cols]
    idx = np.full((len(cand_idx), params.num_negatives), -1, dtype=np.int64)
    scores = np.full(idx.shape, np.nan, dtype=np.float32)
    idx[rows, slots] = cand_idx[rows, cols]
    scores[rows, slots] = cand_scores[rows, cols]
    return Negatives(idx, scores, outcome)


def _check(cand_idx: np.ndarray, cand_scores: np.ndarray, queries: Queries, pool: Pool) -> None:
    """Raise on inputs of mismatched shapes, pool indices out of range, or signatures on one side only."""
    q = len(queries.ids)
    if cand_idx.ndim != 2 or cand_idx.shape != cand_scores.shape or len(cand_idx) != q:
        raise ValueError(f"search results of shapes {cand_idx.shape} and {cand_scores.shape} for {q} queries")
    sides = {"keys": queries.keys, "pos_keys": queries.pos_keys, "pos_idx": queries.pos_idx,
             "pos_scores": queries.pos_scores}
    for name, side in sides.items():
        if len(side) != q:
            raise ValueError(f"{len(side)} {name} for {q} queries")
    n = len(pool.codes)
    if (cand_idx >= n).any() or (np.asarray(queries.pos_idx) >= n).any():
        raise ValueError(f"a pool index out of range for a pool of {n} texts")
    query_sigs = [queries.signatures, queries.pos_signatures]
    if pool.signatures is None:
        if any(s is not None for s in query_sigs):
            raise ValueError("query signatures given for a pool without signatures")
    elif any(s is None or s.shape != (q, pool.signatures.shape[1]) for s in query_sigs):
        raise ValueError(f"the MinHash check needs ({q}, {pool.signatures.shape[1]}) signatures of the queries and "
                         "of the positives")


def _assign(outcome: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Give outcome `name` to the candidates in `mask` that have none yet."""
    outcome[(outcome == _OPEN) & mask] = _CODE[name]


def _near(safe: np.ndarray, queries: Queries, pool: Pool, params: NegativeParams) -> np.ndarray:
    """(Q, K): the candidate's estimated Jaccard with the query or the positive reaches the threshold (none without
    signatures). One column of candidates at a time, to hold (Q, num_perm) slots, not (Q, K, num_perm)."""
    near = np.zeros(safe.shape, dtype=bool)
    if pool.signatures is None:
        return near
    for j in range(safe.shape[1]):
        cand = pool.signatures[safe[:, j]]
        jaccard = np.maximum((cand == queries.signatures).mean(axis=1), (cand == queries.pos_signatures).mean(axis=1))
        near[:, j] = jaccard >= params.near_threshold
    return near


def _repeats(codes: np.ndarray) -> np.ndarray:
    """(Q, K): the code occurs earlier in its row."""
    order = np.argsort(codes, axis=1, kind="stable")  # equal codes stay in column order
    ordered = np.take_along_axis(codes, order, axis=1)
    repeat = np.zeros(codes.shape, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    out = np.empty_like(repeat)
    np.put_along_axis(out, order, repeat, axis=1)
    return out


def margin_limit(pos_scores: np.ndarray, relative_margin: float | None,
                 absolute_margin: float | None = None) -> np.ndarray:
    """(Q,) the highest score a negative may have under the margins: pos - |pos| * relative and pos - absolute."""
    pos = np.asarray(pos_scores, dtype=np.float64)
    limit = np.full(pos.shape, np.inf)
    if relative_margin is not None:
        limit = np.minimum(limit, pos - np.abs(pos) * relative_margin)
    if absolute_margin is not None:
        limit = np.minimum(limit, pos - absolute_margin)
    return limit


def _rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator of its own for each (seed, query id): the same draws in any batch, on any machine."""
    digest = hashlib.blake2b(query_id.encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest, dtype=np.uint32).tolist()])


def _sample(eligible: np.ndarray, ids: Sequence[str], params: NegativeParams) -> np.ndarray:
    """(Q, K): for each query, num_negatives of its eligible candidates drawn at random (all when fewer)."""
    chosen = np.zeros(eligible.shape, dtype=bool)
    for q, query_id in enumerate(ids):
        cols = np.flatnonzero(eligible[q])
        if len(cols) > params.num_negatives:
            cols = _rng(params.seed, query_id).choice(cols, params.num_negatives, replace=False)
        chosen[q, cols] = True
    return chosen
