"""The mine stage (flows.stages.mine) with tiny random BERT models built from a config: negatives, teacher scores, the
accounting, reproducibility, shortfalls, and clear failures on a GPU path without a GPU."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_dedup import rows_of

from m3e_hq.flows.core.encode import encode, load_encoder
from m3e_hq.flows.core.negatives import NegativeParams
from m3e_hq.flows.core.teacher import CrossEncoderTeacher
from m3e_hq.flows.core.text import key
from m3e_hq.flows.stages.mine import MineParams, MineReason, encode_shard, merge, mine_sources
from m3e_hq.schemas import M3E_HQ_SCHEMA, M3E_HQ_WITH_SCORE_SCHEMA

COMMON = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
# No margin: a random model's cosines say nothing about which text is the positive.
SMALL = NegativeParams(num_negatives=3, range_min=0, range_max=20, relative_margin=None)


def write_filtered(folder, catalog, source: str, pairs: list[tuple[str, str]]):
    """The source's pairs as m3e-hq rows in `folder/dedup/`, the mine stage's input (the last curation stage's
    output)."""
    path = folder / "dedup" / f"{source}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows_of(catalog, source, pairs), schema=M3E_HQ_SCHEMA), path)
    return path


def random_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [("".join(rng.choices(COMMON, k=rng.randint(6, 15))), "".join(rng.choices(COMMON, k=rng.randint(20, 60))))
            for _ in range(n)]


def kept_rows(folder, source: str) -> list[dict]:
    return pq.read_table(folder / "mine" / f"{source}.parquet").to_pylist()


@pytest.fixture
def two_sources(tmp_path, catalog):
    pairs = random_pairs(40, seed=1)
    # A copy of row 0's positive in full-width punctuation and with spaces, as row 1's positive: it must never be
    # row 0's negative (nor the other way round).
    pairs[1] = (pairs[1][0], " ".join(pairs[0][1][:10]) + "，" + pairs[0][1][10:])
    inputs = {"webqa": write_filtered(tmp_path, catalog, "webqa", pairs),
              "lawzhidao": write_filtered(tmp_path, catalog, "lawzhidao", random_pairs(25, seed=2))}
    return tmp_path, inputs


def test_every_row_gets_negatives_and_scores_or_a_reason(two_sources, catalog, tiny_encoder):
    folder, inputs = two_sources
    params = MineParams(encoder=str(tiny_encoder), negatives=SMALL, false_negative_margin=None)
    result = mine_sources(inputs, folder, params, catalog, folder / "cache")
    for counts in result.counts:
        counts.check()
        table = pq.read_table(counts.kept_path)
        assert table.schema.equals(M3E_HQ_WITH_SCORE_SCHEMA, check_metadata=False)
    rows = kept_rows(folder, "webqa")
    assert len(rows) == 40
    same_source = {r["text_pos"] for r in rows}
    for row in rows:
        assert len(row["text_neg"]) == len(row["score_neg"]) == 3
        assert all(neg in same_source for neg in row["text_neg"])  # pool: the source's own positives
        assert key(row["text_pos"]) not in {key(neg) for neg in row["text_neg"]}
        assert row["score_scale"] == "cosine[-1,1]" and row["teacher"] == f"bi-encoder:{tiny_encoder}"
    stats = result.stats
    assert stats["search_backend"] == ["faiss-cpu"]
    assert stats["candidates"]["positive"] >= 40  # each query's own positive (and row 0/1's copies) came up
    assert stats["scores"]["positive"]["count"] == 65 and stats["scores"]["negative"]["count"] == 65 * 3


def test_the_positive_aware_margin_holds_for_kept_negatives(tmp_path, catalog, tiny_encoder):
    # Positives that start with their query: closer to it than the other positives, even for a random model.
    pairs = [(q, q + p[:10]) for q, p in random_pairs(40, seed=5)]
    inputs = {"webqa": write_filtered(tmp_path, catalog, "webqa", pairs)}
    margin = SMALL.model_copy(update={"relative_margin": 0.01})
    result = mine_sources(inputs, tmp_path, MineParams(encoder=str(tiny_encoder), negatives=margin,
                                                       false_negative_margin=None), catalog)
    rows = kept_rows(tmp_path, "webqa")
    assert rows and all(s <= r["score_pos"] * 0.99 + 1e-6 for r in rows for s in r["score_neg"])
    assert result.counts[0].kept + result.counts[0].dropped.get(MineReason.NO_NEGATIVES, 0) == 40
    assert result.stats["candidates"]["margin"] > 0


def test_scores_are_the_encoder_cosines(two_sources, catalog, tiny_encoder):
    folder, inputs = two_sources
    mine_sources({"lawzhidao": inputs["lawzhidao"]}, folder, MineParams(encoder=str(tiny_encoder), negatives=SMALL),
                 catalog)
    model = load_encoder(str(tiny_encoder), "cpu")
    for row in kept_rows(folder, "lawzhidao")[:5]:
        vectors = encode(model, [row["text"], row["text_pos"], *row["text_neg"]]).vectors
        assert row["score_pos"] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-3)
        assert row["score_neg"] == pytest.approx((vectors[2:] @ vectors[0]).tolist(), abs=1e-3)


def test_same_seed_same_output_and_the_embedding_cache(two_sources, catalog, tiny_encoder, tmp_path_factory):
    folder, inputs = two_sources
    params = MineParams(encoder=str(tiny_encoder), false_negative_margin=None,
                        negatives=SMALL.model_copy(update={"sampling": "random", "seed": 7}))
    first = mine_sources(inputs, folder, params, catalog, folder / "cache")
    runs = [kept_rows(folder, "webqa")]
    again = mine_sources(inputs, tmp_path_factory.mktemp("again"), params, catalog, folder / "cache")
    runs.append(pq.read_table(next(c for c in again.counts if c.source == "webqa").kept_path).to_pylist())
    assert runs[0] == runs[1]
    assert first.stats["encode"]["queries_cached"] == 0
    assert again.stats["encode"]["queries_cached"] == again.stats["encode"]["queries"] == 65
    other_seed = params.model_copy(update={"negatives": params.negatives.model_copy(update={"seed": 8})})
    mine_sources(inputs, folder, other_seed, catalog, folder / "cache")
    assert kept_rows(folder, "webqa") != runs[0]


def test_shortfall_is_reported_and_rows_without_enough_negatives_are_dropped(tmp_path, catalog, tiny_encoder):
    inputs = {"webqa": write_filtered(tmp_path, catalog, "webqa", random_pairs(4, seed=3))}
    short = mine_sources(inputs, tmp_path, MineParams(encoder=str(tiny_encoder), negatives=SMALL,
                                                      false_negative_margin=None), catalog)
    assert short.counts[0].kept == 4 and short.stats["rows_short"] == 0  # 3 other positives: exactly 3 negatives
    fewer = SMALL.model_copy(update={"num_negatives": 5})
    result = mine_sources(inputs, tmp_path, MineParams(encoder=str(tiny_encoder), negatives=fewer, min_negatives=4,
                                                       false_negative_margin=None), catalog)
    assert result.counts[0].dropped == {MineReason.NO_NEGATIVES: 4}
    dropped = pq.read_table(result.counts[0].dropped_path).to_pylist()
    assert dropped[0]["detail"] == "3 negatives left of the 5 asked (pool of 4 texts)"
    assert json.loads(dropped[0]["raw"])["id"] == dropped[0]["id"]
    # The locators name the stage's input file and the row in it.
    assert [d["locator"] for d in dropped] == [f"dedup/webqa.parquet#{i}" for i in range(4)]


def test_cross_encoder_teacher_and_pair_consistency(two_sources, catalog, tiny_encoder, tiny_cross_encoder):
    folder, inputs = two_sources
    params = MineParams(encoder=str(tiny_encoder), teacher=str(tiny_cross_encoder), negatives=SMALL,
                        false_negative_margin=None)
    mine_sources(inputs, folder, params, catalog)
    rows = kept_rows(folder, "webqa")
    assert {r["score_scale"] for r in rows} == {"sigmoid[0,1]"}
    scores = np.array([r["score_pos"] for r in rows])
    assert ((scores > 0) & (scores < 1)).all()
    threshold = float(np.median(scores))
    consistent = params.model_copy(update={"min_pair_score": threshold})
    result = mine_sources(inputs, folder, consistent, catalog)
    webqa = next(c for c in result.counts if c.source == "webqa")
    assert webqa.dropped == {"low_pair_score": int((scores < threshold).sum())}


def test_teacher_scores_equal_cross_encoder_predict_and_oom_batches_are_split(tiny_cross_encoder, monkeypatch):
    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), "cpu", batch_size=8)
    pairs = [(q, p) for q, p in random_pairs(20, seed=4)] + [("好", "a" * 700)]
    want = teacher.model.predict(pairs, activation_fn=torch.nn.Sigmoid(), convert_to_numpy=True)
    assert np.allclose(teacher.score(pairs), want, atol=1e-5)
    forward = teacher.model.forward

    def small_batches_only(features, *args, **kwargs):
        if len(features["input_ids"]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(features, *args, **kwargs)

    monkeypatch.setattr(teacher.model, "forward", small_batches_only)
    scores, splits = teacher.score_counting(pairs)
    assert np.allclose(scores, want, atol=1e-5)
    assert splits > 0


def test_gpu_paths_without_a_gpu_fail_with_what_to_do(two_sources, catalog, tiny_encoder):
    folder, inputs = two_sources
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        mine_sources(inputs, folder, MineParams(encoder=str(tiny_encoder), device="cuda"), catalog)
    with pytest.raises(RuntimeError, match="torch-cuda"):
        mine_sources(inputs, folder, MineParams(encoder=str(tiny_encoder), search="torch-cuda"), catalog)


@pytest.mark.parametrize(("prompt", "include_prompt"), [("", True), ("查询：", True), ("查询：", False)])
def test_fast_encoding_equals_sentence_transformers_encode(tiny_encoder, prompt, include_prompt):
    from m3e_hq.flows.core.encode import embed

    model = load_encoder(str(tiny_encoder), "cpu")
    model[1].include_prompt = include_prompt  # False: the pooling leaves the prompt's tokens out
    texts = [q + p for q, p in random_pairs(50, seed=6)] + ["好", "", "a" * 600]
    want = model.encode(texts, prompt=prompt or None, normalize_embeddings=True, convert_to_numpy=True)
    seen = []
    got = embed(model, texts, prompt, max_tokens=300, max_texts=4, on_progress=seen.append)  # small batches
    assert np.allclose(got, want, atol=1e-5)
    assert sum(seen) == len(texts) and len(seen) > 5


def test_sources_mined_apart_and_merged_equal_one_run(two_sources, catalog, tiny_encoder, tmp_path_factory):
    folder, inputs = two_sources
    params = MineParams(encoder=str(tiny_encoder), negatives=SMALL)
    whole = mine_sources(inputs, folder, params, catalog, folder / "cache")
    apart_dir = tmp_path_factory.mktemp("apart")
    parts = [mine_sources({name: inputs[name]}, apart_dir, params, catalog, apart_dir / "cache")
             for name in ("webqa", "lawzhidao")]  # catalog order, as the flow's tasks
    merged = merge(parts, params)
    timing = ("mine_seconds", "teacher_seconds")
    assert {k: v for k, v in merged.stats.items() if k not in timing} == {
        k: v for k, v in whole.stats.items() if k not in timing}
    assert [(c.source, c.read, c.kept, c.dropped) for c in merged.counts] == [
        (c.source, c.read, c.kept, c.dropped) for c in whole.counts]
    for name in inputs:
        assert pq.read_table(apart_dir / "mine" / f"{name}.parquet").equals(
            pq.read_table(folder / "mine" / f"{name}.parquet"))


@pytest.mark.parametrize(("max_tokens", "max_texts", "include_prompt"),
                         [(256, 64, True), (32_768, None, True), (256, 64, False)])  # a CPU's limits, a GPU's
def test_a_texts_embedding_does_not_depend_on_the_texts_encoded_with_it(tiny_encoder, max_tokens, max_texts,
                                                                        include_prompt):
    from m3e_hq.flows.core.encode import embed

    model = load_encoder(str(tiny_encoder), "cpu")
    model[1].include_prompt = include_prompt
    texts = list(dict.fromkeys(t for pair in random_pairs(120, seed=9) for t in pair))
    alone = {t: embed(model, [t], "查询：", max_tokens, max_texts)[0] for t in texts[:10]}
    every = dict(zip(texts, embed(model, texts, "查询：", max_tokens, max_texts), strict=True))
    rng = random.Random(3)
    for size in (2, 7, 30, 150):
        some = rng.sample(texts, size)
        got = embed(model, some, "查询：", max_tokens, max_texts)
        assert [t for t, v in zip(some, got, strict=True) if not np.array_equal(v, every[t])] == []
    assert [t for t, v in alone.items() if not np.array_equal(v, every[t])] == []


def test_a_source_mined_from_a_cache_another_source_filled_equals_it_mined_alone(tmp_path, catalog):
    # lawzhidao holds some of webqa's pairs: mined after webqa, it finds their texts in the cache, encoded with
    # webqa's texts (in batches as wide as webqa's longest query); mined alone, it encodes them with its own. The
    # packaged encoder, whose float16 embeddings change in a batch of another width (the tiny one's rarely do).
    webqa = random_pairs(40, seed=11)
    shared = [(q, p) for q, p in webqa if len(q) <= 9][:10]
    lawzhidao = [(q[:9], p) for q, p in random_pairs(25, seed=12)] + shared
    params = MineParams(negatives=SMALL, false_negative_margin=None)
    alone, after = tmp_path / "alone", tmp_path / "after"
    mine_sources({"lawzhidao": write_filtered(alone, catalog, "lawzhidao", lawzhidao)}, alone, params, catalog,
                 alone / "cache")
    mine_sources({"webqa": write_filtered(after, catalog, "webqa", webqa)}, after, params, catalog, after / "cache")
    second = mine_sources({"lawzhidao": write_filtered(after, catalog, "lawzhidao", lawzhidao)}, after, params,
                          catalog, after / "cache")
    assert second.stats["encode"]["queries_cached"] == len(shared) == 10  # encoded with webqa's queries
    assert pq.read_table(after / "mine" / "lawzhidao.parquet").equals(pq.read_table(alone / "mine" / "lawzhidao.parquet"))


def test_encode_shards_give_the_embeddings_mining_alone_gives(two_sources, catalog, tmp_path_factory):
    folder, inputs = two_sources  # a shard encodes queries and positives together, mining each apart
    params = MineParams(negatives=SMALL, false_negative_margin=None)  # the packaged encoder, as above
    mine_sources(inputs, folder, params, catalog, folder / "cache")
    sharded_dir = tmp_path_factory.mktemp("sharded")
    sharded = params.model_copy(update={"encode_shards": 3})
    for shard in range(3):
        encode_shard(inputs, sharded, catalog, sharded_dir / "cache", shard)
    mined = mine_sources(inputs, sharded_dir, sharded, catalog, sharded_dir / "cache")
    assert mined.stats["encode"]["passages_cached"] == mined.stats["encode"]["passages"]
    for name in inputs:
        assert pq.read_table(sharded_dir / "mine" / f"{name}.parquet").equals(
            pq.read_table(folder / "mine" / f"{name}.parquet"))
