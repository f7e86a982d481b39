"""Near-duplicate detection (m3e_hq.flows.core.minhash) against plain-Python references on small inputs."""

import random

import numpy as np
import pytest

from m3e_hq.flows.core.minhash import (
    MinHashParams,
    ParquetTexts,
    jaccard,
    matches,
    near_duplicates,
    shingle_sets,
    signatures,
)

PARAMS = MinHashParams()
COMMON = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]


def reference_shingles(text: str) -> set[str]:
    n = 2 if len(text) < 10 else 3
    return {text} if len(text) < n else {text[i:i + n] for i in range(len(text) - n + 1)}


def random_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(COMMON, k=rng.choice([1, 2, 3, 9, 10, 11, 40, 120]))) for _ in range(n)]


def test_shingles_and_jaccard_match_a_plain_python_reference():
    texts = [*random_texts(200), "好的", "好", "ab", "abcdefghij", "aaaaaaaaaaaa"]
    for text, hashes in zip(texts, shingle_sets(texts, PARAMS), strict=True):
        assert len(hashes) == len(reference_shingles(text)) >= 1, text
    rng = random.Random(3)
    a = np.array([rng.randrange(len(texts)) for _ in range(300)])
    b = np.array([rng.randrange(len(texts)) for _ in range(300)])
    want = [len(reference_shingles(texts[i]) & reference_shingles(texts[j]))
            / len(reference_shingles(texts[i]) | reference_shingles(texts[j])) for i, j in zip(a, b, strict=True)]
    assert np.allclose(jaccard(texts, a, b, PARAMS), want)


def test_signatures_are_deterministic_and_never_empty():
    texts = random_texts(500)
    sigs, keys = signatures(texts, PARAMS, workers=2)
    sigs1, keys1 = signatures(texts, PARAMS, workers=1)
    assert sigs.shape == (500, 128) and keys.shape == (500, 16)
    assert np.array_equal(sigs, sigs1) and np.array_equal(keys, keys1)
    assert (sigs.max(axis=1) < 2**32 - 1).all()  # every text, one character long included, has a real signature
    other = signatures(texts, MinHashParams(seed=1))[0]
    assert not np.array_equal(sigs, other)


def test_near_duplicates_are_clustered_and_near_misses_are_not():
    rng = random.Random(5)
    long = "".join(rng.choices(COMMON, k=60))
    one_edit = long[:30] + "错" + long[31:]  # 3-gram Jaccard 55/61 ≈ 0.90
    short = "".join(rng.choices(COMMON, k=20))
    short_edit = short[:10] + "错" + short[11:]  # 3-gram Jaccard 15/21 ≈ 0.71: below 0.8
    texts = [long, short, "好的", one_edit, short_edit, "好的", "好吗", *random_texts(300, seed=9)]
    clusters = near_duplicates(texts, PARAMS)
    labels = clusters.labels
    assert labels[0] == labels[3]
    assert labels[1] != labels[4]
    assert labels[2] == labels[5] and labels[2] != labels[6]
    assert len(set(labels[7:])) == len(texts) - 7 - sum(  # random texts: only exact repeats cluster
        1 for i, t in enumerate(texts[7:]) if t in texts[7:7 + i] or t in texts[:7])
    assert (clusters.pairs["jaccard"] >= PARAMS.threshold).all()


def test_recall_on_planted_copies_above_the_threshold():
    rng = random.Random(11)
    originals = ["".join(rng.choices(COMMON, k=rng.randint(40, 120))) for _ in range(400)]
    copies = []
    for text in originals:
        chars = list(text)
        chars[rng.randrange(len(chars))] = rng.choice(COMMON)
        copies.append("".join(chars))
    texts = originals + copies
    sim = jaccard(texts, np.arange(400), np.arange(400, 800), PARAMS)
    labels = near_duplicates(texts, PARAMS).labels
    planted = sim >= PARAMS.threshold
    found = labels[:400] == labels[400:]
    assert planted.sum() > 350 and found[planted].mean() >= 0.98
    assert not found[~planted].any()


def test_banding_must_cover_the_signature():
    with pytest.raises(ValueError, match="bands × rows must equal num_perm"):
        MinHashParams(bands=10, rows=8)
    assert MinHashParams().candidate_probability(0.8) == pytest.approx(0.947, abs=1e-3)


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
    positives = [passage, passage, passage[:150] + "错" + passage[151:], *random_texts(40, seed=3)]
    joined = [f"{q}\x1f{p}" for q, p in zip(queries, positives, strict=True)]
    assert near_duplicates(joined, PARAMS).labels[0] == near_duplicates(joined, PARAMS).labels[1]  # joined: ≈0.96
    labels = near_duplicates(joined, PARAMS, parts=[queries, positives]).labels
    assert labels[0] != labels[1]  # two questions on one passage are two pairs
    assert labels[0] == labels[2]  # one question, one passage with one character changed: one pair


def test_band_keys_spilled_to_parquet_give_the_same_clusters(tmp_path, monkeypatch):
    import m3e_hq.flows.core.minhash

    rng = random.Random(12)
    originals = ["".join(rng.choices(COMMON, k=60)) for _ in range(300)]
    texts = originals + [t[:20] + "错" + t[21:] for t in originals[:100]]
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
    texts = originals + [t[:10] + "错" + t[11:] for t in originals[:80]]
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
    corpus = ["".join(rng.choices(COMMON, k=rng.choice([12, 40, 90]))) for _ in range(400)]
    long = [i for i, t in enumerate(corpus) if len(t) == 90][:3]
    queries = [corpus[i][:5] + "错" + corpus[i][6:] for i in long] + ["".join(rng.choices(COMMON, k=30))]
    monkeypatch.setattr(m3e_hq.flows.core.minhash, "BATCH_TEXTS", 64)
    found = matches(queries, corpus, PARAMS)
    a = np.repeat(np.arange(len(queries)), len(corpus))
    b = np.tile(np.arange(len(corpus)), len(queries)) + len(queries)
    sim = jaccard([*queries, *corpus], a, b, PARAMS)
    want = {(int(q), int(t) - len(queries)) for q, t in zip(a[sim >= PARAMS.threshold], b[sim >= PARAMS.threshold],
                                                            strict=True)}
    assert set(zip(found["query"].to_list(), found["text"].to_list(), strict=True)) == want
    assert {t for _, t in want} >= set(long)  # the long edited copies reach 0.8, and LSH missed none of the pairs
