"""Hard-negative selection (flows.core.negatives) on hand-made search results, and against a plain-Python reference."""

import random

import numpy as np
import pytest
from pydantic import ValidationError

from m3e_hq.flows.core.minhash import MinHashParams
from m3e_hq.flows.core.negatives import (
    CEILING,
    INVALID,
    MARGIN,
    NEAR_DUPLICATE,
    OUTCOMES,
    POSITIVE,
    REASONS,
    REPEAT,
    SELECTED,
    UNUSED,
    WINDOW,
    NegativeParams,
    Negatives,
    Pool,
    Queries,
    keys_and_signatures,
    select_negatives,
)

COMMON = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
FILLER = [f"负例文本第{i}号" for i in range(200)]  # distinct keys, no near-duplicates of each other


def setup(pool_texts: list[str], rows: list[tuple[str, str, int]], pos_scores: list[float],
          minhash: MinHashParams | None = None) -> tuple[Queries, Pool]:
    """A pool and a batch of queries; rows are (query, positive, positive's pool index); ids q0, q1, ..."""
    pool_keys, pool_sigs = keys_and_signatures(pool_texts, minhash)
    keys, sigs = keys_and_signatures([r[0] for r in rows], minhash)
    pos_keys, pos_sigs = keys_and_signatures([r[1] for r in rows], minhash)
    queries = Queries([f"q{i}" for i in range(len(rows))], keys, pos_keys, np.array([r[2] for r in rows]),
                      np.array(pos_scores, dtype=np.float32), sigs, pos_sigs)
    return queries, Pool.of(pool_keys, pool_sigs)


def params(**kwargs) -> NegativeParams:
    """No rank skip and no margin unless asked: each test turns on the rule it checks."""
    return NegativeParams(**{"range_min": 0, "range_max": 50, "relative_margin": None, **kwargs})


def descending(k: int, top: float = 0.9, step: float = 0.01) -> np.ndarray:
    return np.array([top - step * i for i in range(k)], dtype=np.float32)


def outcomes(result: Negatives, q: int = 0) -> list[str]:
    return [OUTCOMES[c] for c in result.outcome[q]]


def test_the_positive_is_never_a_negative_by_index_or_by_normalised_text():
    positive = "ABC手机的电池，能用多久？"
    pool = [positive, "ＡＢＣ手机的电池能用多久", "abc 手机的电池 能用多久!", "完全无关的另一段话", "再来一段无关的话"]
    queries, pool_ = setup(pool, [("手机电池续航", positive, 0), ("手机电池续航", positive, -1)], [0.9, 0.9])
    cand = np.array([[0, 1, 2, 3, 4]] * 2)
    result = select_negatives(cand, np.tile(descending(5), (2, 1)), queries, pool_, params(num_negatives=5))
    for q in range(2):
        assert result.idx[q].tolist() == [3, 4, -1, -1, -1]
        assert outcomes(result, q) == [POSITIVE, POSITIVE, POSITIVE, SELECTED, SELECTED]


def test_a_near_duplicate_of_the_positive_or_query_is_excluded_through_minhash():
    rng = random.Random(5)
    positive, query = "".join(rng.choices(COMMON, k=60)), "".join(rng.choices(COMMON, k=60))
    one_edit = positive[:30] + "错" + positive[31:]  # 3-gram Jaccard 55/61 ≈ 0.90, a different key
    query_edit = query[:30] + "错" + query[31:]
    pool = [positive, one_edit, query_edit, *FILLER[:4]]
    cand = np.array([[0, 1, 2, 3, 4, 5, 6]])
    scores = descending(7)[None]
    plain = select_negatives(cand, scores, *setup(pool, [(query, positive, 0)], [0.95]), params(num_negatives=4))
    assert plain.idx[0].tolist() == [1, 2, 3, 4]  # keys differ: only the MinHash check can catch these
    minhash = MinHashParams()
    result = select_negatives(cand, scores, *setup(pool, [(query, positive, 0)], [0.95], minhash),
                              params(num_negatives=4))
    assert result.idx[0].tolist() == [3, 4, 5, 6]
    assert outcomes(result)[:3] == [POSITIVE, NEAR_DUPLICATE, NEAR_DUPLICATE]
    lenient = select_negatives(cand, scores, *setup(pool, [(query, positive, 0)], [0.95], minhash),
                               params(num_negatives=4, near_threshold=0.99))
    assert lenient.idx[0].tolist() == [1, 2, 3, 4]


def test_the_query_itself_is_a_near_duplicate_and_a_repeated_text_is_taken_once():
    pool = ["手机电池续航怎么样", "手机电池续航怎么样？", FILLER[0], "负例文本 第0号！", FILLER[1]]
    queries, pool_ = setup(pool, [("手机电池续航怎么样", "正例", -1)], [0.95])
    result = select_negatives(np.array([[0, 1, 2, 3, 4]]), descending(5)[None], queries, pool_, params())
    assert outcomes(result) == [NEAR_DUPLICATE, NEAR_DUPLICATE, SELECTED, REPEAT, SELECTED]
    assert result.idx[0, :2].tolist() == [2, 4]


SCORES = [0.85, 0.79, 0.75, 0.5, -0.05, -0.19, -0.205, -0.209, -0.211, -0.3]


@pytest.mark.parametrize(("pos", "relative", "absolute", "kept"), [
    (-0.2, 0.05, None, [-0.211, -0.3]),  # limit -0.21 (pos * 0.95 would be -0.19, above the positive)
    (0.8, 0.05, None, SCORES[2:]),  # limit 0.76
    (0.8, None, 0.2, SCORES[3:]),  # limit 0.6
    (0.8, 0.05, 0.2, SCORES[3:]),  # the stricter of the two
    (-0.2, None, 0.1, [-0.3]),  # limit -0.3
    (0.8, None, None, SCORES),
])
def test_the_margins_hold_for_positive_and_negative_positive_scores(pos, relative, absolute, kept):
    scores = np.array([SCORES], dtype=np.float32)
    queries, pool = setup(FILLER[:10], [("查询", "正例", -1)], [pos])
    result = select_negatives(np.arange(10)[None], scores, queries, pool,
                              params(num_negatives=10, relative_margin=relative, absolute_margin=absolute))
    assert np.allclose(result.scores[0, :len(kept)], kept) and np.isnan(result.scores[0, len(kept):]).all()
    assert result.counts()[MARGIN][0] == 10 - len(kept)


def test_the_ceiling_drops_candidates_scoring_above_it():
    queries, pool = setup(FILLER[:5], [("查询", "正例", -1)], [0.95])
    result = select_negatives(np.arange(5)[None], descending(5, 0.9, 0.1)[None], queries, pool,
                              params(max_score=0.65))
    assert outcomes(result) == [CEILING, CEILING, CEILING, SELECTED, SELECTED]


def test_ranks_count_after_removing_invalid_positive_near_duplicate_and_repeated_candidates():
    pool = ["正例", "正例！", "查询", *FILLER[:12]]
    # candidates: -1, the positive, the query, the positive's text again, filler 0..11 (filler 1 twice)
    cand = np.array([[-1, 3, 0, 4, 2, 5, 1, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    queries, pool_ = setup(pool, [("查询", "正例", 0)], [0.99])
    result = select_negatives(cand, descending(17)[None], queries, pool_,
                              params(num_negatives=3, range_min=2, range_max=6))
    # open candidates in order: 3, 4, 5, 6, 7, 8, ... (ranks 0, 1, 2, ...); ranks 2..5 are 5, 6, 7, 8
    assert result.idx[0].tolist() == [5, 6, 7]
    assert outcomes(result) == [INVALID, WINDOW, POSITIVE, WINDOW, NEAR_DUPLICATE, SELECTED, POSITIVE, REPEAT,
                                SELECTED, SELECTED, UNUSED, *[WINDOW] * 6]


def test_the_window_comes_before_the_margin():
    queries, pool = setup(FILLER[:8], [("查询", "正例", -1)], [0.5])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.45, 0.4, 0.3, 0.2]], dtype=np.float32)
    result = select_negatives(np.arange(8)[None], scores, queries, pool,
                              params(num_negatives=2, range_min=2, range_max=6, relative_margin=0.05))
    assert outcomes(result) == [WINDOW, WINDOW, MARGIN, MARGIN, SELECTED, SELECTED, WINDOW, WINDOW]


def test_minus_one_results_are_masked_not_read_as_the_last_pool_text():
    queries, pool = setup(FILLER[:4], [("查询", "正例", -1)], [0.95])
    cand = np.array([[0, -1, 1, -1, -1]])
    scores = np.array([[0.5, -3.4e38, 0.4, -3.4e38, -3.4e38]], dtype=np.float32)
    result = select_negatives(cand, scores, queries, pool, params(num_negatives=4))
    assert result.idx[0].tolist() == [0, 1, -1, -1]
    assert result.counts()[INVALID][0] == 3 and result.shortfall[0] == 2
    assert 3 not in result.idx  # the last pool text


def test_shortfall_is_reported_when_the_pool_is_small():
    pool = ["正例", *FILLER[:3]]
    queries, pool_ = setup(pool, [("甲", "正例", 0), ("乙", "正例", 0)], [0.9, 0.9])
    cand = np.array([[0, 1, 2, 3, -1, -1], [1, 0, 2, -1, -1, -1]])
    result = select_negatives(cand, np.tile(descending(6), (2, 1)), queries, pool_, params(num_negatives=7))
    assert result.shortfall.tolist() == [4, 5]
    assert result.totals()["queries_short"] == 2 and result.totals()["missing"] == 9


def random_batch(q: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, Queries, Pool]:
    """Search results over a pool with repeated texts, -1 padding, positives in and out of the pool."""
    rng = np.random.default_rng(seed)
    pool_texts = [FILLER[i] for i in rng.integers(0, n // 2, size=n)]  # about half the texts repeat
    cand = np.stack([rng.permutation(n)[:k] for _ in range(q)])
    cand[rng.random((q, k)) < 0.1] = -1
    scores = -np.sort(-rng.uniform(-0.5, 0.9, size=(q, k)), axis=1).astype(np.float32)
    pos_idx = np.where(rng.random(q) < 0.7, cand[:, 0], -1)
    in_pool = [pool_texts[c] if c >= 0 and i % 5 == 0 else f"查询{i}" for i, c in enumerate(cand[:, 2])]
    rows = [(query, pool_texts[p] if p >= 0 else f"正例{i}", int(p))
            for i, (query, p) in enumerate(zip(in_pool, pos_idx, strict=True))]
    queries, pool = setup(pool_texts, rows, rng.uniform(-0.3, 1.0, size=q).tolist())
    return cand, scores, queries, pool


def reference(cand: np.ndarray, scores: np.ndarray, queries: Queries, pool_keys: list[str],
              p: NegativeParams) -> list[list[str]]:
    """Each candidate's outcome, one query and one candidate at a time (top sampling, no signatures)."""
    out = []
    for q in range(len(cand)):
        pos = float(queries.pos_scores[q])
        limit = min(np.inf if p.relative_margin is None else pos - abs(pos) * p.relative_margin,
                    np.inf if p.absolute_margin is None else pos - p.absolute_margin)
        seen, rank, taken, row = set(), 0, 0, []
        for i, s in zip(cand[q].tolist(), scores[q].tolist(), strict=True):
            if i < 0:
                row.append(INVALID)
            elif i == queries.pos_idx[q] or pool_keys[i] == queries.pos_keys[q]:
                row.append(POSITIVE)
            elif pool_keys[i] == queries.keys[q]:
                row.append(NEAR_DUPLICATE)
            elif pool_keys[i] in seen:
                row.append(REPEAT)
            else:
                seen.add(pool_keys[i])
                rank += 1
                if not p.range_min <= rank - 1 < p.range_max:
                    row.append(WINDOW)
                elif s > limit:
                    row.append(MARGIN)
                elif p.max_score is not None and s > p.max_score:
                    row.append(CEILING)
                else:
                    row.append(SELECTED if taken < p.num_negatives else UNUSED)
                    taken += 1
        out.append(row)
    return out


@pytest.mark.parametrize("p", [
    params(num_negatives=3, range_min=2, range_max=12, relative_margin=0.05),
    params(num_negatives=5, range_min=0, range_max=30, absolute_margin=0.1, max_score=0.6),
    NegativeParams(),
])
def test_outcomes_match_a_plain_python_reference_and_the_counts_add_up(p):
    cand, scores, queries, pool = random_batch(q=60, k=40, n=120, seed=3)
    result = select_negatives(cand, scores, queries, pool, p)
    pool_keys = list(pool.lookup)  # codes are assigned in first-seen order
    assert [outcomes(result, q) for q in range(len(cand))] == reference(
        cand, scores, queries, [pool_keys[c] for c in pool.codes], p)
    counts = result.counts()
    assert set(counts) == {SELECTED, UNUSED, *REASONS}
    assert (sum(counts.values()) == cand.shape[1]).all()  # every candidate has exactly one outcome
    assert (counts[SELECTED] == (result.idx >= 0).sum(axis=1)).all()
    assert (result.shortfall == p.num_negatives - counts[SELECTED]).all()
    for q in range(len(cand)):
        picked = np.flatnonzero(result.outcome[q] == OUTCOMES.index(SELECTED))
        assert result.idx[q, :len(picked)].tolist() == cand[q, picked].tolist()
        assert np.array_equal(result.scores[q, :len(picked)], scores[q, picked])
    totals = result.totals()
    assert sum(totals[name] for name in OUTCOMES) == cand.size
    assert totals["missing"] == result.shortfall.sum()


def test_random_sampling_is_seeded_per_query_and_independent_of_batches():
    cand, scores, queries, pool = random_batch(q=40, k=40, n=120, seed=7)
    p = params(num_negatives=4, range_max=30, sampling="random")
    one = select_negatives(cand, scores, queries, pool, p)
    again = select_negatives(cand, scores, queries, pool, p)
    assert np.array_equal(one.idx, again.idx) and np.array_equal(one.outcome, again.outcome)
    other = select_negatives(cand, scores, queries, pool, p.model_copy(update={"seed": 43}))
    assert not np.array_equal(one.idx, other.idx)
    top = select_negatives(cand, scores, queries, pool, p.model_copy(update={"sampling": "top"}))
    assert not np.array_equal(one.idx, top.idx)
    # random sampling draws among the same eligible candidates as top sampling, and keeps rank order
    assert np.array_equal(np.isin(one.outcome, [0, 1]), np.isin(top.outcome, [0, 1]))
    picked = [np.flatnonzero(row == 0) for row in one.outcome]
    assert all(one.idx[q, :len(c)].tolist() == cand[q, c].tolist() for q, c in enumerate(picked))

    q = len(cand)  # the first query under q ids: only the ids tell them apart
    copies = Queries(queries.ids, [queries.keys[0]] * q, [queries.pos_keys[0]] * q, np.repeat(queries.pos_idx[:1], q),
                     np.repeat(queries.pos_scores[:1], q))
    alike = select_negatives(np.repeat(cand[:1], q, axis=0), np.repeat(scores[:1], q, axis=0), copies, pool, p)
    assert (alike.counts()[UNUSED] > 0).all() and len({tuple(row) for row in alike.idx.tolist()}) > 1

    def part(lo: int, hi: int) -> Negatives:
        sub = Queries(queries.ids[lo:hi], queries.keys[lo:hi], queries.pos_keys[lo:hi], queries.pos_idx[lo:hi],
                      queries.pos_scores[lo:hi])
        return select_negatives(cand[lo:hi], scores[lo:hi], sub, pool, p)

    halves = [part(0, 13), part(13, 40)]
    assert np.array_equal(np.concatenate([h.idx for h in halves]), one.idx)
    assert np.array_equal(np.concatenate([h.scores for h in halves]), one.scores, equal_nan=True)
    assert np.array_equal(np.concatenate([h.outcome for h in halves]), one.outcome)


def test_params_validate_and_document_every_field():
    assert all(f.description for f in NegativeParams.model_fields.values())
    defaults = NegativeParams()
    assert (defaults.num_negatives, defaults.range_min, defaults.range_max) == (7, 10, 50)
    assert (defaults.relative_margin, defaults.near_threshold, defaults.seed) == (0.05, 0.8, 42)
    with pytest.raises(ValidationError, match="narrower"):
        NegativeParams(range_min=10, range_max=15, num_negatives=7)
    with pytest.raises(ValidationError):
        NegativeParams(margin=0.1)
    with pytest.raises(ValidationError):
        NegativeParams(sampling="bottom")


def test_inputs_that_do_not_fit_are_refused():
    queries, pool = setup(FILLER[:4], [("查询", "正例", -1)], [0.9])
    with pytest.raises(ValueError, match="out of range"):
        select_negatives(np.array([[0, 4]]), descending(2)[None], queries, pool, params(num_negatives=1))
    with pytest.raises(ValueError, match="shapes"):
        select_negatives(np.array([[0, 1]]), descending(3)[None], queries, pool, params(num_negatives=1))
    signed, signed_pool = setup(FILLER[:4], [("查询", "正例", -1)], [0.9], MinHashParams())
    with pytest.raises(ValueError, match="signatures"):
        select_negatives(np.array([[0, 1]]), descending(2)[None], queries, signed_pool, params(num_negatives=1))
    with pytest.raises(ValueError, match="signatures"):
        select_negatives(np.array([[0, 1]]), descending(2)[None], signed, pool, params(num_negatives=1))
