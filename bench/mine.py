"""Hard-negative mining benchmark: sentence-transformers `mine_hard_negatives` vs ours (flows.stages.mine), and teacher
scoring: sentence-transformers `CrossEncoder.predict` vs ours (flows.core.teacher), on the same pairs, models and device.

    python bench/mine.py [--n 2000] [--device cpu|cuda] [--shape tiny|m3e-base]

Input: `n` synthetic Chinese pairs (query 8-24 characters, passage 40-200 characters of common ideographs). Models:
BERT with random weights built from a config (bench/random_models.py; speed and code paths are real, the scores
mean nothing): `m3e-base` is moka-ai/m3e-base's shape (BERT-base, 21,128-token vocabulary), `tiny` a 2-layer,
32-wide one for a quick CPU run. Default: m3e-base on CUDA, tiny on the CPU. fp16 on CUDA for both sides.

Mining, like for like: 5 negatives per query from the rank window 10-50 among all positives, top sampling, no margin
and no cross-encoder (sentence-transformers only calls its cross-encoder when a margin or score ceiling is set);
sentence-transformers with `use_faiss=True` and output_format n-tuple, ours `mine_sources` (pool all, bi-encoder
teacher scores, MinHash near-duplicate exclusion on, no embedding cache). Each is timed from loading the model to
its output. Encoder TFLOP/s: ours' encoding of the distinct texts, timed alone, with the usual forward count
(2 × weights × tokens + 4 × layers × width × Σ sequence length² of the attention).

Teacher: a one-label cross-encoder of the same shape scores (query, positive) and 5 (query, random passage) pairs
per query: `CrossEncoder.predict(batch_size=256)` vs ours `CrossEncoderTeacher.score` (length-sorted batches).

Prints a table and a last line of JSON.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from random_models import M3E_BASE_SHAPE, TINY_SHAPE, build_cross_encoder, build_encoder

from m3e_hq.flows.core.encode import encode, load_encoder
from m3e_hq.flows.core.negatives import NegativeParams
from m3e_hq.flows.core.teacher import CrossEncoderTeacher
from m3e_hq.flows.stages.ingest import tags
from m3e_hq.flows.stages.mine import MineParams, mine_sources
from m3e_hq.schemas import M3E_HQ_SCHEMA, row_id
from m3e_hq.sources.catalog import default_catalog

COMMON = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]
NEGATIVES, RANGE_MIN, RANGE_MAX = 5, 10, 50
SHAPES = {"tiny": TINY_SHAPE, "m3e-base": M3E_BASE_SHAPE}


def make_pairs(n: int, seed: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [("".join(rng.choices(COMMON, k=rng.randint(8, 24))), "".join(rng.choices(COMMON, k=rng.randint(40, 200))))
            for _ in range(n)]


def run_st(model_dir: Path, pairs: list[tuple[str, str]], device: str) -> float:
    """Seconds for sentence-transformers' mine_hard_negatives, from loading the model."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    start = time.perf_counter()
    model = SentenceTransformer(str(model_dir), device=device)
    if device.startswith("cuda"):
        model.half()
    dataset = Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    mined = mine_hard_negatives(dataset, model, range_min=RANGE_MIN, range_max=RANGE_MAX, num_negatives=NEGATIVES,
                                sampling_strategy="top", output_format="n-tuple", use_faiss=True, verbose=False)
    seconds = time.perf_counter() - start
    print(f"sentence-transformers: {len(mined):,} rows with negatives")
    return seconds


def run_ours(model_dir: Path, pairs: list[tuple[str, str]], device: str, folder: Path) -> float:
    """Seconds for our mine stage, from loading the model."""
    catalog = default_catalog()
    source = catalog.get("webqa")
    rows = [{"id": row_id("webqa", "train", str(i), q, p), "text": q, "text_pos": p, "split": "train",
             **tags(source)} for i, (q, p) in enumerate(pairs)]
    path = folder / "filter" / "webqa.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=M3E_HQ_SCHEMA), path)
    params = MineParams(encoder=str(model_dir), device=device, pool="all", false_negative_margin=None,
                        batch_size=256 if device.startswith("cuda") else 64,
                        negatives=NegativeParams(num_negatives=NEGATIVES, range_min=RANGE_MIN, range_max=RANGE_MAX,
                                                 relative_margin=None))
    start = time.perf_counter()
    result = mine_sources({"webqa": path}, folder, params, catalog)
    seconds = time.perf_counter() - start
    print(f"ours: {result.counts[0].kept:,} rows with negatives ({result.stats['search_backend']})")
    return seconds


def encoder_tflops(model_dir: Path, pairs: list[tuple[str, str]], device: str, shape: dict) -> float:
    """TFLOP/s of our encoding of the distinct queries and passages (model loaded and warmed up beforehand)."""
    model = load_encoder(str(model_dir), device)
    texts = list(dict.fromkeys([t for pair in pairs for t in pair]))
    encode(model, texts[:64])
    tokenizer = model.tokenizer
    lengths = np.array([min(len(ids), model.max_seq_length)
                        for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]], dtype=np.float64)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    encode(model, texts, batch_size=256 if device.startswith("cuda") else 64)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    weights = layers * (4 * h * h + 2 * h * shape["intermediate_size"])
    flops = 2 * weights * lengths.sum() + 4 * layers * h * (lengths**2).sum()
    return flops / seconds / 1e12


def teacher_rates(cross_dir: Path, pairs: list[tuple[str, str]], device: str) -> tuple[float, float, int]:
    """Pairs/s of sentence-transformers' CrossEncoder.predict and of ours, on the same pairs."""
    from sentence_transformers import CrossEncoder

    rng = random.Random(5)
    scored = [pair for q, p in pairs for pair in [(q, p)] + [(q, rng.choice(pairs)[1]) for _ in range(NEGATIVES)]]
    ours = CrossEncoderTeacher(str(cross_dir), device, batch_size=256)
    ours.score(scored[:256])
    start = time.perf_counter()
    ours.score(scored)
    ours_seconds = time.perf_counter() - start
    st = CrossEncoder(str(cross_dir), device=device, num_labels=1)
    if device.startswith("cuda"):
        st.model.half()
    st.predict(scored[:256], batch_size=256, show_progress_bar=False)
    start = time.perf_counter()
    st.predict(scored, batch_size=256, show_progress_bar=False)
    st_seconds = time.perf_counter() - start
    return len(scored) / ours_seconds, len(scored) / st_seconds, len(scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2_000, help="number of pairs (default 2,000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="model shape (default m3e-base on cuda, else tiny)")
    args = parser.parse_args()
    shape_name = args.shape or ("m3e-base" if args.device.startswith("cuda") else "tiny")
    shape = SHAPES[shape_name]
    pairs = make_pairs(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        encoder_dir = build_encoder(folder / "encoder", shape)
        cross_dir = build_cross_encoder(folder / "cross-encoder", shape)
        run_ours(encoder_dir, pairs[:256], args.device, folder / "warm")  # load libraries and kernels once
        st_seconds = run_st(encoder_dir, pairs, args.device)
        ours_seconds = run_ours(encoder_dir, pairs, args.device, folder / "ours")
        tflops = encoder_tflops(encoder_dir, pairs, args.device, shape)
        ours_teacher, st_teacher, scored = teacher_rates(cross_dir, pairs, args.device)
    ours_rate, st_rate = args.n / ours_seconds, args.n / st_seconds
    print(f"{args.n:,} pairs, {shape_name} model on {args.device}, {NEGATIVES} negatives from ranks "
          f"{RANGE_MIN}-{RANGE_MAX}")
    print(f"{'':<24}{'seconds':>10}{'pairs/s':>12}")
    print(f"{'sentence-transformers':<24}{st_seconds:>10.2f}{st_rate:>12,.0f}")
    print(f"{'ours':<24}{ours_seconds:>10.2f}{ours_rate:>12,.0f}")
    print(f"ours / sentence-transformers: {ours_rate / st_rate:.2f}x; our encoder: {tflops:.3f} TFLOP/s")
    print(f"teacher on {scored:,} pairs: ours {ours_teacher:,.0f} pairs/s, CrossEncoder.predict {st_teacher:,.0f} "
          f"pairs/s ({ours_teacher / st_teacher:.2f}x)")
    print(json.dumps({
        "n": args.n, "device": args.device, "shape": shape_name,
        "ours_pairs_per_s": round(ours_rate, 1), "st_pairs_per_s": round(st_rate, 1),
        "ratio": round(ours_rate / st_rate, 3), "encoder_tflops": round(tflops, 4),
        "teacher_pairs_per_s": round(ours_teacher, 1), "st_teacher_pairs_per_s": round(st_teacher, 1),
        "teacher_ratio": round(ours_teacher / st_teacher, 3),
    }))


if __name__ == "__main__":
    main()
