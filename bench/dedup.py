"""Near-duplicate detection benchmark: plain datasketch vs rensa vs ours (m3e_hq.flows.core.minhash), on the same texts.

    python bench/dedup.py [--n 20000] [--baselines-max 200000] [--memory-n 2000000]

Input: `n` Chinese texts. A tenth are edited copies (1-4 character substitutions, insertions or deletions, sometimes
a prefix or suffix) of other texts; the rest are real sentences from shared/data/real (cmrc2018 and Chinese-SQuAD
contexts, OCNLI, SimCLUE; a third of the texts up to the ~10,000 sentences there are) and synthetic texts of common
characters, 15-120 characters long. Truth: the planted
(original, copy) pairs whose exact character-shingle Jaccard is at least 0.8 (the copies below it are near misses
that must not be reported).

Each method runs in its own subprocess (so its peak RSS is its own) with 128 permutations and character 3-gram
shingles (2-grams under 10 characters):
- datasketch, the plain way: one `MinHash` per text, `update` per shingle, `MinHashLSH(threshold=0.8)` insert and
  query (one core);
- rensa: one `RMinHash` per text, `update` with the shingle list, `RMinHashLSH(0.8, 128, 16 bands)` insert and query
  (one core);
- ours: `flows.core.minhash.near_duplicates` (vectorised signatures on 2 threads, polars band grouping, exact Jaccard
  confirmation, connected components).

Recall: planted pairs reported (ours: the two texts end in one cluster). Precision: reported pairs (ours: confirmed
pairs) whose exact Jaccard is at least 0.8, planted or not (the real sentences hold near-duplicates of their own).
Ours is run once on a few texts before timing, so that numba's one-time compilation is not counted. rensa and ours
are timed 5 times each (up to 200,000 texts) and their best time counts; plain datasketch runs once.
Then ours alone on `memory_n` texts (default 2,000,000) for its peak memory. Prints a table, the ratio, the
figures at `memory_n`, and a last line of JSON.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from m3e_hq.flows.core.minhash import MinHashParams, jaccard, near_duplicates

REAL = ROOT.parent / "shared" / "data" / "real"
PARAMS = MinHashParams()
COMMON = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]


def real_sentences() -> list[str]:
    """Sentences of the real subsets in shared/data/real (empty when the folder is absent)."""
    out: list[str] = []
    for path in sorted(REAL.rglob("*.json*")) if REAL.is_dir() else []:
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            for part in line.replace('"', "\n").split("\n"):
                for sentence in part.split("。"):
                    if 12 <= len(sentence) <= 160 and sum("\u4e00" <= ch <= "\u9fff" for ch in sentence) > 8:
                        out.append(sentence)
    return sorted(set(out))


def edit(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op, k = rng.random(), rng.randrange(len(chars))
        if op < 0.5:
            chars[k] = rng.choice(COMMON)
        elif op < 0.75:
            chars.insert(k, rng.choice(COMMON))
        elif len(chars) > 2:
            del chars[k]
    if rng.random() < 0.1:
        chars = [*chars, "。"] if rng.random() < 0.5 else ["“", *chars, "”"]
    return "".join(chars)


def make_input(n: int, seed: int = 7) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The texts, each text's origin (the index of the text it copies, or itself), and the planted truth pairs."""
    rng = random.Random(seed)
    real = real_sentences()
    n_copies = n // 10
    base = []
    for i in range(n - n_copies):
        if i % 3 == 0 and i // 3 < len(real):  # each real sentence once: the rest is synthetic
            base.append(real[i // 3])
        else:
            base.append("".join(rng.choices(COMMON, k=rng.randint(15, 120))))
    texts, origin = list(base), list(range(len(base)))
    for _ in range(n_copies):
        j = rng.randrange(len(base))
        texts.append(edit(base[j], rng))
        origin.append(j)
    origin_arr = np.array(origin)
    copies = np.arange(len(base), n)
    sim = jaccard(texts, origin_arr[copies], copies, PARAMS)
    truth = np.stack([origin_arr[copies][sim >= PARAMS.threshold], copies[sim >= PARAMS.threshold]], axis=1)
    return texts, origin_arr, truth


def shingles(text: str) -> list[str]:
    n = PARAMS.short_ngram if len(text) < PARAMS.short_below else PARAMS.ngram
    return [text] if len(text) < n else [text[i:i + n] for i in range(len(text) - n + 1)]


def run_datasketch(texts: list[str]) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=PARAMS.threshold, num_perm=PARAMS.num_perm)
    hashes = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=PARAMS.num_perm)
        for s in shingles(text):
            m.update(s.encode("utf-8"))
        lsh.insert(i, m)
        hashes.append(m)
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def run_rensa(texts: list[str]) -> np.ndarray:
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(threshold=PARAMS.threshold, num_perm=PARAMS.num_perm, num_bands=PARAMS.bands)
    hashes = []
    for i, text in enumerate(texts):
        m = RMinHash(num_perm=PARAMS.num_perm, seed=42)
        m.update(shingles(text))
        lsh.insert(i, m)
        hashes.append(m)
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def run_ours(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    clusters = near_duplicates(texts, PARAMS, workers=2)
    return clusters.pairs.select("a", "b").to_numpy().astype(np.int64), clusters.labels


CORES = {"datasketch": 1, "rensa": 1, "ours": 2}
# The fast methods take a fraction of a second at the default n: each is timed this many times and its best time
# counts (the same rule for rensa and ours); plain datasketch takes seconds and runs once.
REPEATS = {"datasketch": 1, "rensa": 5, "ours": 5}
REPEAT_MAX_N = 200_000


def child(method: str, data: Path, out: Path) -> None:
    """Run one method on the texts in `data`; write its pairs (and clusters) and its best time to `out`."""
    texts = pq.read_table(data).column("text").to_pylist()
    if method == "ours":
        run_ours(texts[:100])  # compile (or load the cached compilation of) the numba kernel
    times = []
    for _ in range(REPEATS[method] if len(texts) <= REPEAT_MAX_N else 1):
        start = time.perf_counter()
        labels = None
        if method == "ours":
            pairs, labels = run_ours(texts)
        else:
            pairs = run_datasketch(texts) if method == "datasketch" else run_rensa(texts)
        times.append(time.perf_counter() - start)
    np.savez(out, pairs=pairs, labels=labels if labels is not None else np.zeros(0, dtype=np.int64))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    out.with_suffix(".json").write_text(json.dumps({"seconds": min(times), "first_seconds": times[0],
                                                    "peak_rss_gb": peak}))


def score(method: str, result: dict, texts: list[str], truth: np.ndarray) -> dict:
    pairs, labels = result["pairs"], result["labels"]
    if method == "ours":
        recall = float(np.mean(labels[truth[:, 0]] == labels[truth[:, 1]])) if len(truth) else 1.0
    else:
        found = {(int(a), int(b)) for a, b in pairs}
        recall = float(np.mean([(min(a, b), max(a, b)) in found for a, b in truth])) if len(truth) else 1.0
    precision = float(np.mean(jaccard(texts, pairs[:, 0], pairs[:, 1], PARAMS) >= PARAMS.threshold)) if len(
        pairs) else 1.0
    return {"recall": recall, "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of texts (default 20,000)")
    parser.add_argument("--baselines-max", type=int, default=200_000,
                        help="run the baselines only up to this n (plain datasketch does ~500 docs/s)")
    parser.add_argument("--memory-n", type=int, default=2_000_000,
                        help="also run ours on this many texts and print its peak memory (default 2,000,000; 0: skip)")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return

    texts, _, truth = make_input(args.n)
    print(f"input: {len(texts):,} texts, {len(truth):,} planted near-duplicate pairs with Jaccard ≥ "
          f"{PARAMS.threshold} ({args.n // 10 - len(truth):,} planted copies below it)")
    methods = ["datasketch", "rensa", "ours"] if args.n <= args.baselines_max else ["ours"]
    results = {method: run(method, texts, truth) for method in methods}
    print(f"{'method':<11}{'cores':>6}{'best s':>9}{'first s':>9}{'docs/s/core':>13}{'recall':>9}{'precision':>11}"
          f"{'peak GB':>9}")
    for method, r in results.items():
        print(f"{method:<11}{CORES[method]:>6}{r['seconds']:>9.3f}{r['first_seconds']:>9.3f}"
              f"{r['docs_per_s_per_core']:>13,.0f}{r['recall']:>9.4f}{r['precision']:>11.4f}{r['peak_rss_gb']:>9.2f}")
    ours = results["ours"]
    rensa = results.get("rensa")
    ratio = ours["docs_per_s_per_core"] / rensa["docs_per_s_per_core"] if rensa else None
    if ratio:
        first_ratio = rensa["first_seconds"] * CORES["rensa"] / (ours["first_seconds"] * CORES["ours"])
        print(f"ours / rensa: {ratio:.2f}x docs/s per core (best times; first runs: {first_ratio:.2f}x); "
              f"ours / datasketch: {ours['docs_per_s_per_core'] / results['datasketch']['docs_per_s_per_core']:.1f}x")
    memory = None
    if args.memory_n:
        big_texts, _, big_truth = make_input(args.memory_n)
        memory = run("ours", big_texts, big_truth)
        print(f"ours at {args.memory_n:,} texts: {memory['seconds']:.1f} s, "
              f"{memory['docs_per_s_per_core']:,.0f} docs/s/core, recall {memory['recall']:.4f}, "
              f"precision {memory['precision']:.4f}, peak RSS {memory['peak_rss_gb']:.2f} GB (target ≤ 4 GB)")
    print(json.dumps({
        "n": len(texts),
        "ours_docs_per_s_per_core": round(ours["docs_per_s_per_core"]),
        "rensa_docs_per_s_per_core": round(rensa["docs_per_s_per_core"]) if rensa else None,
        "datasketch_docs_per_s_per_core": round(results["datasketch"]["docs_per_s_per_core"]) if rensa else None,
        "ratio_vs_rensa": round(ratio, 3) if ratio else None,
        "recall": round(ours["recall"], 4),
        "precision": round(ours["precision"], 4),
        "peak_rss_gb": round(ours["peak_rss_gb"], 3),
        "memory_n": args.memory_n or None,
        "memory_n_peak_rss_gb": round(memory["peak_rss_gb"], 3) if memory else None,
    }))


def run(method: str, texts: list[str], truth: np.ndarray) -> dict:
    """Run one method in a subprocess on `texts`; its timing, peak RSS, recall and precision."""
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "texts.parquet", Path(tmp) / f"{method}.npz"
        pq.write_table(pa.table({"text": texts}), data)
        subprocess.run([sys.executable, __file__, "--child", method, str(data), str(out)], check=True)
        timing = json.loads(out.with_suffix(".json").read_text())
        with np.load(out) as arrays:
            found = {"pairs": arrays["pairs"], "labels": arrays["labels"]}
    per_core = len(texts) / timing["seconds"] / CORES[method]
    return {**timing, **score(method, found, texts, truth), "docs_per_s_per_core": per_core}


if __name__ == "__main__":
    main()
