"""Near-duplicate detection (m3e_hq.flows.core.minhash) against plain-Python references on small inputs."""

import random

import numpy as np
import pytest

from m3e_hq.flows.core.minhash import (
    MinHashParams,
    ParquetTexts,
    matches,
    near_duplicates,
    shingle_sets,
    signatures,
)
from m3e_hq.flows.core.similarity import guarded, similarity

PARAMS = MinHashParams()
# Ideographs an edit may touch: not negations, numerals or traditional-only forms (see flows.core.similarity).
COMMON = [chr(c) for c in range(0x4E00, 0x4E00 + 2400) if not guarded()[c]][:2000]


def reference_shingles(text: str) -> set[str]:
    return {text} if len(text) < 2 else {text[i:i + 2] for i in range(len(text) - 1)}


def random_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(COMMON, k=rng.choice([1, 2, 3, 9, 10, 11, 40, 120]))) for _ in range(n)]


def edited(text: str, edits: int, rng: random.Random) -> str:
    """`edits` substitutions at distinct positions, with characters the text does not hold there."""
    chars = list(text)
    for i in rng.sample(range(len(chars)), edits):
        chars[i] = rng.choice([c for c in COMMON[:50] if c != chars[i]])
    return "".join(chars)


def test_shingles_are_bigrams_at_every_length():
    texts = [*random_texts(200), "好的", "好", "ab", "abcdefghij", "aaaaaaaaaaaa"]
    for text, hashes in zip(texts, shingle_sets(texts, PARAMS), strict=True):
        assert len(hashes) == len(reference_shingles(text)) >= 1, text
    nine, ten = shingle_sets(["一二三四五六七八九", "一二三四五六七八九十"], PARAMS)
    assert len(np.intersect1d(nine, ten)) == 8 and len(nine) == 8 and len(ten) == 9  # no switch at 10 characters


def test_the_nine_to_ten_character_boundary_is_continuous():
    texts = ["今天天气很好我们去", "今天天气很好我们去玩", "一二三四五六七八九", "一二三四五六七八九十",
             *random_texts(100, seed=6)]
    labels = near_duplicates(texts, PARAMS).labels
    assert labels[0] == labels[1]  # 9 and 10 characters, one inserted: similarity 0.9
    assert labels[2] != labels[3]  # a numeral added changes the number: never a near-duplicate


def test_signatures_are_deterministic_and_never_empty():
    texts = random_texts(500)
    sigs, keys = signatures(texts, PARAMS, workers=2)
    sigs1, keys1 = signatures(texts, PARAMS, workers=1)
    assert sigs.shape == (500, 128) and keys.shape == (500, 32)
    assert np.array_equal(sigs, sigs1) and np.array_equal(keys, keys1)
    assert (sigs.max(axis=1) < 2**32 - 1).all()  # every text, one character long included, has a real signature
    other = signatures(texts, MinHashParams(seed=1))[0]
    assert not np.array_equal(sigs, other)


def test_near_duplicates_are_clustered_and_near_misses_are_not():
    rng = random.Random(5)
    long = "".join(rng.choices(COMMON, k=60))
    short = "".join(rng.choices(COMMON, k=12))
    texts = [long, short, "好的", edited(long, 7, rng), edited(short, 2, rng), "好的", "好吗", edited(long, 8, rng),
             *random_texts(300, seed=9)]
    clusters = near_duplicates(texts, PARAMS)
    labels = clusters.labels
    assert labels[0] == labels[3]  # 7 edits in 60 characters: within one in eight
    assert labels[0] != labels[7]  # 8 edits: one too many
    assert labels[1] != labels[4]  # 2 edits in 12 characters: one too many
    assert labels[2] == labels[5] and labels[2] != labels[6]
    assert len(set(labels[8:])) == len(texts) - 8 - sum(  # random texts: only exact repeats cluster
        1 for i, t in enumerate(texts[8:]) if t in texts[8:8 + i] or t in texts[:8])
    assert (clusters.pairs["similarity"] >= PARAMS.threshold).all()


@pytest.mark.parametrize("length", [8, 12, 16, 30, 60, 200])
def test_recall_on_planted_copies_within_the_edit_budget(length):
    rng = random.Random(length)
    originals = ["".join(rng.choices(COMMON, k=length)) for _ in range(300)]
    budget = length // 8
    copies = [edited(t, rng.randint(1, budget), rng) for t in originals]
    misses = [edited(t, budget + 1, rng) for t in originals[:100]]
    clusters = near_duplicates(originals + copies + misses, PARAMS)
    labels = clusters.labels
    found = labels[:300] == labels[300:600]
    # The bigram Jaccard of `budget` scattered substitutions, at worst; an 8-character key with one: 5/9.
    worst = (length - 1 - 2 * budget) / (length - 1 + 2 * budget)
    assert found.mean() >= min(0.98, PARAMS.candidate_probability(worst) - 0.02), found.mean()
    confirmed = set(zip(clusters.pairs["a"].to_list(), clusters.pairs["b"].to_list(), strict=True))
    assert not confirmed & {(i, 600 + i) for i in range(100)}  # one edit too many: never a pair (a chain may join)


def test_banding_must_cover_the_signature():
    with pytest.raises(ValueError, match="bands × rows must equal num_perm"):
        MinHashParams(bands=10, rows=8)
    with pytest.raises(ValueError, match="ngram must be 1, 2 or 3"):
        MinHashParams(ngram=4)
    assert MinHashParams().candidate_probability(0.55) == pytest.approx(0.96, abs=0.01)


def test_signatures_are_datasketch_affine32_minhashes():
    from datasketch import MinHash

    texts = [*random_texts(50, seed=4), "好", "", "作为一个AI语言模型,我不能"]
    sigs, _ = signatures(texts, PARAMS)
    for text, hashes, sig in zip(texts, shingle_sets(texts, PARAMS), sigs, strict=True):
        m = MinHash(num_perm=PARAMS.num_perm, seed=PARAMS.seed, scheme="affine32", hashfunc=int)
        m.update_batch(hashes.tolist())
        assert np.array_equal(m.hashvalues, sig), text


def test_pairs_count_only_when_every_part_is_a_near_duplicate():
    rng = random.Random(8)
    passage = "".join(rng.choices(COMMON, k=300))
    q1, q2 = "".join(rng.choices(COMMON, k=12)), "".join(rng.choices(COMMON, k=12))
    queries = [q1, q2, q1, *random_texts(40, seed=2)]
    positives = [passage, passage, edited(passage, 5, rng), *random_texts(40, seed=3)]
    joined = [f"{q}\x1f{p}" for q, p in zip(queries, positives, strict=True)]
    assert near_duplicates(joined, PARAMS).labels[0] == near_duplicates(joined, PARAMS).labels[1]  # joined: close
    labels = near_duplicates(joined, PARAMS, parts=[queries, positives]).labels
    assert labels[0] != labels[1]  # two questions on one passage are two pairs
    assert labels[0] == labels[2]  # one question, one passage with five characters changed: one pair


def test_band_keys_spilled_to_parquet_give_the_same_clusters(tmp_path, monkeypatch):
    import m3e_hq.flows.core.minhash

    rng = random.Random(12)
    originals = ["".join(rng.choices(COMMON, k=60)) for _ in range(300)]
    texts = originals + [edited(t, 1, rng) for t in originals[:100]]
    want = near_duplicates(texts, PARAMS)
    monkeypatch.setattr(m3e_hq.flows.core.minhash, "BATCH_TEXTS", 64)  # several batches, several files
    got = near_duplicates(texts, PARAMS, spill_dir=tmp_path)
    assert len(list(tmp_path.glob("*.parquet"))) == 7
    assert np.array_equal(want.labels, got.labels) and want.pairs.equals(got.pairs)
    assert len(set(got.labels)) == 300


def test_texts_read_from_parquet_in_batches_give_the_same_clusters(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import m3e_hq.flows.core.minhash

    rng = random.Random(13)
    originals = ["".join(rng.choices(COMMON, k=50)) for _ in range(200)]
    texts = originals + [edited(t, 1, rng) for t in originals[:80]]
    rows = np.array(sorted(rng.sample(range(len(texts)), 240)))  # a subset of the file's rows, in order
    path = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=50)
    monkeypatch.setattr(m3e_hq.flows.core.minhash, "BATCH_TEXTS", 37)  # batches that do not line up with the rows
    subset = [texts[i] for i in rows]
    want = near_duplicates(subset, PARAMS)
    got = near_duplicates(ParquetTexts(path, "text", rows), PARAMS, parts=[ParquetTexts(path, "text", rows)])
    assert np.array_equal(want.labels, got.labels) and want.pairs.equals(got.pairs)
    assert len(got.pairs) > 10
    assert ParquetTexts(path, "text", rows).take(np.array([0, 5, 239])) == [subset[0], subset[5], subset[239]]


def test_matches_finds_every_near_duplicate_of_a_few_queries_in_a_corpus(monkeypatch):
    import m3e_hq.flows.core.minhash

    rng = random.Random(14)
    corpus = ["".join(rng.choices(COMMON, k=rng.choice([9, 12, 40, 90]))) for _ in range(400)]
    chosen = [i for i, t in enumerate(corpus) if len(t) == 9][:3] + [i for i, t in enumerate(corpus) if len(t) == 90][:3]
    queries = [edited(corpus[i], 1, rng) for i in chosen] + ["".join(rng.choices(COMMON, k=30))]
    monkeypatch.setattr(m3e_hq.flows.core.minhash, "BATCH_TEXTS", 64)
    found = matches(queries, corpus, PARAMS)
    a = np.repeat(np.arange(len(queries)), len(corpus))
    b = np.tile(np.arange(len(corpus)), len(queries)) + len(queries)
    sim = similarity([[*queries, *corpus]], a, b, PARAMS.threshold)  # every pair, without LSH
    want = {(int(q), int(t) - len(queries)) for q, t in zip(a[sim >= PARAMS.threshold], b[sim >= PARAMS.threshold],
                                                            strict=True)}
    assert set(zip(found["query"].to_list(), found["text"].to_list(), strict=True)) == want
    assert {t for _, t in want} >= set(chosen)  # 9- and 90-character texts with one edit, none missed by LSH
