"""Near-duplicate detection benchmark: plain datasketch vs rensa vs ours (m3e_hq.flows.core.minhash), on the same texts.

    python bench/dedup.py [--n 20000] [--baselines-max 200000] [--memory-n 2000000]

Input: `n` Chinese comparison keys (letters and digits only, no punctuation or spaces: `flows.core.text.key`, as
dedup compares them). The base texts are the keys of real sentences from shared/data/real (cmrc2018 and
Chinese-SQuAD contexts, OCNLI, SimCLUE; a third of the base texts up to the ~10,000 there are) and synthetic texts
of 15-120 characters drawn by frequency from POOL; a tenth of the texts are edited copies of base texts:
- two thirds TRUE copies: e distinct edits (substitutions, insertions, deletions) with 1 ≤ e ≤ floor(len / 8), len
  the length of the base (so at most floor(len / 8) of the longer text, the new definition's budget);
- a third NEAR MISSES: budget + 1 to budget + 3 edits (budget = floor(len / 8) of the longer text), which must not be
  reported.
Edits use POOL: common simplified characters (the ~2,500 most frequent in the real keys) that
`flows.core.similarity.guarded()` does not flag (no negation, digit, numeral, Latin letter, traditional-only
character), that are in no antonym pair and that zhconv never converts; they never substitute or delete such a
character either, so a planted copy differs from its base by its edits only. Every planted pair is checked with the
reference below (a near miss whose edits cancel is redrawn).

Reference definition (plain Python here, not our kernel): keys x, y of longer length m are near-duplicates when x ==
y, or when the Levenshtein distance (Hyyrö's bit-parallel form of the textbook DP, checked against the DP) is at most
floor((1 - 0.875) m) (0 under 8 characters, 1 from 8, 2 from 16...), their guarded characters (`guarded()`'s flags)
are the same in the same order, their differing middle is not an antonym swap (similarity's ANTONYMS /
ANTONYM_WORDS), and zhconv does not simplify them to one text (script-only difference).

Each method runs in its own subprocess (so its peak RSS is its own), with 128 permutations over character bigrams:
- datasketch, the plain way: one `MinHash` per text, `update` per shingle, then `MinHashLSH(threshold=t)` insert
  and query, the candidates reported as they come (one core);
- rensa: one `RMinHash` per text, `update` with the shingle list, then `RMinHashLSH(t, 128, 32 bands)` insert and
  query, the candidates confirmed by their estimated Jaccard ≥ t (one core);
  each baseline at every t of GRID; its figures are those of the t with the best F1 (all printed);
- ours: `near_duplicates` with the default MinHashParams (signatures on 2 threads, polars band grouping, the edit
  similarity confirmation, connected components), and a mirror of it in this file (`ours_phased`) that times its
  phases: signatures and band keys, candidate pairs (polars grouping), confirmation (`similarity` on the
  candidates), components.

Recall: planted true pairs reported (ours: the two texts end in one cluster). Precision: reported pairs (ours:
confirmed pairs) that are near-duplicates by the reference, planted or not (the real sentences hold near-duplicates
of their own). Ours is run once on a few texts before timing, so that numba's one-time compilation is not counted.
rensa and ours are timed 5 times each (up to 200,000 texts) and their best time counts (a baseline's time at t: its
hashing plus its index, query and confirmation at t); plain datasketch runs once. Docs/s/core: texts / best time /
cores (ours: 2 threads). Then ours alone on `memory_n` texts (default 2,000,000): time, its phases (confirmation:
take + similarity), candidates, confirmed pairs, recall, precision over all its confirmed pairs, peak RSS (taken
before the mirror runs). Prints tables, the ratio, the figures at `memory_n`, and a last line of JSON. About 4
minutes on 2 cores, most of it building the 2M texts and checking their pairs in Python.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import zhconv
import zhconv.zhconv
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from m3e_hq.flows.core.minhash import MinHashParams, band_frame, candidate_pairs, corpus, near_duplicates, signatures
from m3e_hq.flows.core.similarity import ANTONYM_WORDS, ANTONYMS, guarded, lexical_edit, similarity
from m3e_hq.flows.core.text import key

REAL = ROOT.parent / "shared" / "data" / "real"
PARAMS = MinHashParams()
GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the baselines' thresholds (Jaccard)
POOL_SIZE = 2500
NEAR_MISS_SHARE = 1 / 3


# --- the reference definition -----------------------------------------------------------------------------------

@cache
def guarded_chars() -> frozenset[str]:
    return frozenset(chr(c) for c in np.flatnonzero(guarded()).tolist())


@cache
def antonym_pairs() -> frozenset[tuple[str, str]]:
    pairs = [(w[0], w[1]) for w in ANTONYMS.split()] + [tuple(w.split("/")) for w in ANTONYM_WORDS.split()]
    return frozenset(p for x, y in pairs for p in ((x, y), (y, x)))


@cache
def unsafe_chars() -> frozenset[str]:
    """Characters an edit never writes, substitutes or deletes: guarded ones, antonym characters, and those zhconv
    converts (alone or inside a word)."""
    out = set(guarded_chars()) | {ch for pair in antonym_pairs() for word in pair for ch in word} | set("吗呢啊")
    for k, v in zhconv.zhconv.getdict("zh-cn").items():
        out.update(k if len(k) != len(v) else (a for a, b in zip(k, v, strict=True) if a != b))
    return frozenset(out)


def levenshtein(a: str, b: str) -> int:
    """Levenshtein distance (Hyyrö 2003's bit-parallel column of the DP: bit i of pv / mv is +1 / -1 from row i to
    i + 1, in Python's unbounded ints)."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | 1 << i
    full, top = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = full, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


def levenshtein_dp(a: str, b: str) -> int:
    """The textbook DP (to check `levenshtein`)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def budget(x: str, y: str) -> int:
    """Edits allowed between x and y: floor((1 - threshold) × the longer length), floor(len / 8) by default."""
    return int((1 - PARAMS.threshold) * max(len(x), len(y)) + 1e-9)


def reference_near(x: str, y: str) -> bool:
    """Whether keys x, y are near-duplicates by the reference definition (module docstring)."""
    if x == y:
        return True
    allowed = budget(x, y)
    if allowed == 0 or abs(len(x) - len(y)) > allowed:
        return False
    g = guarded_chars()
    if [c for c in x if c in g] != [c for c in y if c in g]:
        return False
    if levenshtein(x, y) > allowed:
        return False
    prefix = 0
    while prefix < min(len(x), len(y)) and x[prefix] == y[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(x), len(y)) - prefix and x[-1 - suffix] == y[-1 - suffix]:
        suffix += 1
    if (x[prefix:len(x) - suffix], y[prefix:len(y) - suffix]) in antonym_pairs():
        return False
    return zhconv.convert(x, "zh-cn") != zhconv.convert(y, "zh-cn")


# --- input ------------------------------------------------------------------------------------------------------

def real_sentences() -> list[str]:
    """The keys (`flows.core.text.key`: letters and digits) of sentences of the real subsets in shared/data/real,
    8 characters or more (empty when the folder is absent)."""
    out: set[str] = set()
    for path in sorted(REAL.rglob("*.json*")) if REAL.is_dir() else []:
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            for part in line.replace('"', "\n").split("\n"):
                for sentence in part.split("。"):
                    if 12 <= len(sentence) <= 160 and sum("\u4e00" <= ch <= "\u9fff" for ch in sentence) > 8:
                        k = key(sentence)
                        if len(k) >= 8:
                            out.add(k)
    return sorted(out)


def pool(real: list[str]) -> tuple[list[str], list[int]]:
    """The edit and synthetic characters (most frequent first) and their counts in the real keys."""
    unsafe = unsafe_chars()
    counts = Counter(ch for text in real for ch in text if "\u4e00" <= ch <= "\u9fff" and ch not in unsafe)
    if len(counts) < POOL_SIZE:  # no real data: common-range ideographs, evenly
        for c in range(0x4E00, 0x9FA5):
            if chr(c) not in unsafe and len(counts) < POOL_SIZE:
                counts.setdefault(chr(c), 1)
    chars, weights = zip(*counts.most_common(POOL_SIZE), strict=True)
    return list(chars), list(weights)


def edit(text: str, edits: int, chars: list[str], rng: random.Random) -> str | None:
    """`text` with `edits` edits at distinct positions (substitute / delete a safe character, insert before any
    position), or None when it has too few safe characters."""
    unsafe = unsafe_chars()
    safe = [i for i, ch in enumerate(text) if ch not in unsafe]
    ops = [rng.choices("sid", weights=(2, 1, 1))[0] for _ in range(edits)]
    n_sd = sum(op != "i" for op in ops)
    if n_sd > len(safe) or n_sd >= len(text):
        return None
    positions = rng.sample(safe, n_sd)
    taken = set(positions)
    slots = [i for i in range(len(text) + 1) if i not in taken]
    inserts = rng.sample(slots, edits - n_sd)
    plan = sorted([*zip(positions, [op for op in ops if op != "i"], strict=True), *((i, "i") for i in inserts)],
                  reverse=True)
    out = list(text)
    for pos, op in plan:
        if op == "s":
            new = out[pos]
            while new == out[pos]:
                new = rng.choice(chars)
            out[pos] = new
        elif op == "d":
            del out[pos]
        else:
            out.insert(pos, rng.choice(chars))
    return "".join(out)


def make_input(n: int, seed: int = 7) -> tuple[list[str], np.ndarray, np.ndarray, Counter]:
    """The texts, the planted true pairs (base, copy), the planted near-miss pairs, and how many drafts were
    redrawn because the reference disagreed with their edit count."""
    rng = random.Random(seed)
    real = real_sentences()
    chars, weights = pool(real)
    cum = list(np.cumsum(weights).tolist())
    n_copies = n // 10
    base = []
    for i in range(n - n_copies):
        if i % 3 == 0 and i // 3 < len(real):  # each real sentence once: the rest is synthetic
            base.append(real[i // 3])
        else:
            base.append("".join(rng.choices(chars, cum_weights=cum, k=rng.randint(15, 120))))
    texts, true_pairs, misses, redrawn = list(base), [], [], Counter()
    while len(texts) < n:
        j = rng.randrange(len(base))
        src = base[j]
        allowed = budget(src, src)
        near_miss = rng.random() < NEAR_MISS_SHARE
        if not near_miss and allowed == 0:
            continue
        edits = allowed + rng.randint(1, 3) if near_miss else rng.randint(1, allowed)
        copy = edit(src, edits, chars, rng)
        if copy is None or copy == src or (near_miss and edits <= budget(src, copy)):  # insertions raised the budget
            continue
        if reference_near(src, copy) == near_miss:  # a near miss whose edits cancel (or a disagreeing check)
            redrawn["near miss" if near_miss else "true"] += 1
            continue
        (misses if near_miss else true_pairs).append((j, len(texts)))
        texts.append(copy)
    return (texts, np.array(true_pairs, dtype=np.int64).reshape(-1, 2), np.array(misses, dtype=np.int64).reshape(-1, 2),
            redrawn)


# --- the methods ------------------------------------------------------------------------------------------------

def shingles(text: str) -> list[str]:
    return [text] if len(text) < 2 else [text[i:i + 2] for i in range(len(text) - 1)]


def run_datasketch(texts: list[str]) -> tuple[float, dict[float, tuple[float, np.ndarray]]]:
    """Hashing seconds, and per threshold (index + query seconds, pairs)."""
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    hashes = []
    for text in texts:
        m = MinHash(num_perm=PARAMS.num_perm)
        for s in shingles(text):
            m.update(s.encode("utf-8"))
        hashes.append(m)
    hashing = time.perf_counter() - start
    out = {}
    for threshold in GRID:
        start = time.perf_counter()
        lsh = MinHashLSH(threshold=threshold, num_perm=PARAMS.num_perm)
        for i, m in enumerate(hashes):
            lsh.insert(i, m)
        pairs = {(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}
        out[threshold] = (time.perf_counter() - start, np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2))
    return hashing, out


def run_rensa(texts: list[str]) -> tuple[float, dict[float, tuple[float, np.ndarray]]]:
    """Hashing seconds, and per threshold (index + query + confirmation seconds, pairs)."""
    from rensa import RMinHash, RMinHashLSH

    start = time.perf_counter()
    hashes = []
    for text in texts:
        m = RMinHash(num_perm=PARAMS.num_perm, seed=42)
        m.update(shingles(text))
        hashes.append(m)
    hashing = time.perf_counter() - start
    out = {}
    for threshold in GRID:
        start = time.perf_counter()
        lsh = RMinHashLSH(threshold=threshold, num_perm=PARAMS.num_perm, num_bands=PARAMS.bands)
        for i, m in enumerate(hashes):
            lsh.insert(i, m)
        pairs = {(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m)
                 if j != i and m.jaccard(hashes[j]) >= threshold}
        out[threshold] = (time.perf_counter() - start, np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2))
    return hashing, out


def run_ours(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    clusters = near_duplicates(texts, PARAMS, workers=2)
    return clusters.pairs.select("a", "b").to_numpy().astype(np.int64), clusters.labels, clusters.candidates


def ours_phased(texts: list[str]) -> tuple[dict[str, float], np.ndarray]:
    """`near_duplicates(texts, PARAMS, workers=2)` step by step (lists, no parts, no spill), timing each phase; its
    confirmed pairs."""
    t0 = time.perf_counter()
    texts_c = corpus(texts)
    frames = [band_frame(signatures(batch, PARAMS, 2)[1], offset=lo) for lo, batch in texts_c.batches()]
    t1 = time.perf_counter()
    candidates = candidate_pairs(pl.concat(frames), PARAMS.bucket_all_pairs_max)
    t2 = time.perf_counter()
    a, b = candidates["a"].to_numpy(), candidates["b"].to_numpy()
    used = np.unique(np.concatenate([a, b]))
    local_a, local_b = np.searchsorted(used, a), np.searchsorted(used, b)
    taken = texts_c.take(used)
    t3 = time.perf_counter()
    sim = similarity([taken], local_a, local_b, PARAMS.threshold, 2)
    keep = sim >= PARAMS.threshold
    t4 = time.perf_counter()
    n = len(texts)
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (a[keep], b[keep])), shape=(n, n))
    connected_components(graph, directed=False)
    t5 = time.perf_counter()
    phases = {"signatures": t1 - t0, "candidates": t2 - t1, "take": t3 - t2, "similarity": t4 - t3,
              "components": t5 - t4}
    return phases, np.stack([a[keep], b[keep]], axis=1).astype(np.int64)


CORES = {"datasketch": 1, "rensa": 1, "ours": 2}
# The fast methods take a fraction of a second at the default n: each is timed this many times and its best time
# counts (the same rule for rensa and ours); plain datasketch takes seconds and runs once.
REPEATS = {"datasketch": 1, "rensa": 5, "ours": 5}
REPEAT_MAX_N = 200_000


def warm_up(texts: list[str]) -> None:
    """Compile (or load the cached compilation of) the numba kernels and build the guard and script tables (on a few
    texts, a one-character variant of one, and a script-only pair), so that no timed run pays for them."""
    sample = texts[:100]
    unsafe = unsafe_chars()
    longest = max(sample, key=len)
    k = next(i for i, ch in enumerate(longest) if ch not in unsafe)
    sample.append(longest[:k] + ("的" if longest[k] != "的" else "是") + longest[k + 1:])
    run_ours(sample)
    ours_phased(sample)
    lexical_edit("沿著这条路一直往前走", "沿着这条路一直往前走")


def child(method: str, data: Path, out: Path) -> None:
    """Run one method on the texts in `data`; write its pairs (and clusters), times and peak RSS to `out`."""
    texts = pq.read_table(data).column("text").to_pylist()
    repeats = REPEATS[method] if len(texts) <= REPEAT_MAX_N else 1
    arrays: dict[str, np.ndarray] = {}
    report: dict = {}
    if method == "ours":
        warm_up(texts)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pairs, labels, candidates = run_ours(texts)
            times.append(time.perf_counter() - start)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, before the mirror runs
        phases: dict[str, float] = {}
        for _ in range(repeats):
            run_phases, phased_pairs = ours_phased(texts)
            phases = {k: min(v, phases.get(k, v)) for k, v in run_phases.items()}
        same = {tuple(p) for p in phased_pairs.tolist()} == {tuple(p) for p in pairs.tolist()}
        arrays = {"pairs": pairs, "labels": labels}
        report = {"seconds": min(times), "first_seconds": times[0], "peak_rss_gb": peak, "phases": phases,
                  "candidates": candidates, "confirmed": len(pairs), "mirror_matches": same}
    else:
        best: dict[float, float] = {}
        first: dict[float, float] = {}
        for rep in range(repeats):
            hashing, per_threshold = run_datasketch(texts) if method == "datasketch" else run_rensa(texts)
            for threshold, (seconds, pairs) in per_threshold.items():
                best[threshold] = min(best.get(threshold, np.inf), hashing + seconds)
                if rep == 0:
                    first[threshold] = hashing + seconds
                    arrays[f"pairs_{threshold}"] = pairs
        report = {"seconds": {str(t): s for t, s in best.items()}, "first_seconds": {str(t): s for t, s in first.items()},
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    np.savez(out, **arrays)
    out.with_suffix(".json").write_text(json.dumps(report))


# --- scoring ----------------------------------------------------------------------------------------------------

class Reference:
    """`reference_near` of pairs of `texts`, cached across methods and thresholds."""

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.cache = texts, {}

    def __call__(self, a: int, b: int) -> bool:
        if (a, b) not in self.cache:
            self.cache[(a, b)] = reference_near(self.texts[a], self.texts[b])
        return self.cache[(a, b)]


def score_pairs(pairs: np.ndarray, truth: np.ndarray, misses: np.ndarray, reference: Reference,
                labels: np.ndarray | None = None, sample: int | None = None) -> dict:
    """Recall over the planted true pairs (by pair, or by cluster with `labels`), precision by the reference over
    the reported pairs (over a seeded sample of `sample` of them when there are more), planted near misses
    reported, F1."""
    found = {(int(a), int(b)) for a, b in pairs.tolist()}
    if labels is not None:
        recall = float(np.mean(labels[truth[:, 0]] == labels[truth[:, 1]])) if len(truth) else 1.0
    else:
        recall = float(np.mean([(min(a, b), max(a, b)) in found for a, b in truth.tolist()])) if len(truth) else 1.0
    checked = pairs
    if sample is not None and len(pairs) > sample:
        checked = pairs[np.random.default_rng(0).choice(len(pairs), sample, replace=False)]
    precision = float(np.mean([reference(int(a), int(b)) for a, b in checked.tolist()])) if len(checked) else 1.0
    missed = sum((min(a, b), max(a, b)) in found for a, b in misses.tolist())
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return {"recall": recall, "precision": precision, "f1": f1, "reported": len(pairs), "near_misses_reported": missed,
            "precision_checked": len(checked)}


def run(method: str, texts: list[str], truth: np.ndarray, misses: np.ndarray, reference: Reference,
        sample: int | None = None) -> dict:
    """Run one method in a subprocess on `texts`; its timing, peak RSS, recall and precision (baselines: at each
    threshold of GRID, and at the best by F1)."""
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "texts.parquet", Path(tmp) / f"{method}.npz"
        pq.write_table(pa.table({"text": texts}), data)
        subprocess.run([sys.executable, __file__, "--child", method, str(data), str(out)], check=True)
        timing = json.loads(out.with_suffix(".json").read_text())
        with np.load(out) as arrays:
            found = {k: arrays[k] for k in arrays.files}
    if method == "ours":
        scores = score_pairs(found["pairs"], truth, misses, reference, labels=found["labels"], sample=sample)
        return {**timing, **scores, "docs_per_s_per_core": len(texts) / timing["seconds"] / CORES[method]}
    grid = {}
    for t in GRID:
        seconds = timing["seconds"][str(t)]
        grid[t] = {**score_pairs(found[f"pairs_{t}"], truth, misses, reference, sample=sample), "seconds": seconds,
                   "first_seconds": timing["first_seconds"][str(t)],
                   "docs_per_s_per_core": len(texts) / seconds / CORES[method]}
    best = max(GRID, key=lambda t: (grid[t]["f1"], -t))
    return {**grid[best], "threshold": best, "grid": grid, "peak_rss_gb": timing["peak_rss_gb"]}


def check_levenshtein() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        a, b = ("".join(rng.choices("abc的是", k=rng.randint(0, 14))) for _ in range(2))
        assert levenshtein(a, b) == levenshtein_dp(a, b), (a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of texts (default 20,000)")
    parser.add_argument("--baselines-max", type=int, default=200_000,
                        help="run the baselines only up to this n (plain datasketch does ~1,500 docs/s)")
    parser.add_argument("--memory-n", type=int, default=2_000_000,
                        help="also run ours on this many texts and print its peak memory (default 2,000,000; 0: skip)")
    parser.add_argument("--memory-precision-sample", type=int, default=0,
                        help="at --memory-n, check the precision of only this many confirmed pairs (a seeded "
                             "sample; default 0: all of them, about 20 s at 2M)")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return

    check_levenshtein()
    texts, truth, misses, redrawn = make_input(args.n)
    reference = Reference(texts)
    print(f"input: {len(texts):,} keys (mean {np.mean([len(t) for t in texts]):.0f} characters), {len(truth):,} "
          f"planted true near-duplicate pairs (1 to floor(len/8) edits), {len(misses):,} planted near misses "
          f"(budget + 1 to + 3 edits); drafts redrawn because the reference disagreed with their edit count: "
          f"{redrawn['near miss']} near misses (edits that cancel), {redrawn['true']} true copies (should be 0)")
    methods = ["datasketch", "rensa", "ours"] if args.n <= args.baselines_max else ["ours"]
    results = {method: run(method, texts, truth, misses, reference) for method in methods}
    for method in ("datasketch", "rensa"):
        if method in results:
            print(f"{method} over its thresholds (best F1 at {results[method]['threshold']}):")
            print(f"  {'t':>4}{'best s':>9}{'recall':>9}{'precision':>11}{'F1':>8}{'reported':>10}{'near misses':>13}")
            for t, g in results[method]["grid"].items():
                print(f"  {t:>4}{g['seconds']:>9.3f}{g['recall']:>9.4f}{g['precision']:>11.4f}{g['f1']:>8.4f}"
                      f"{g['reported']:>10,}{g['near_misses_reported']:>13,}")
    print(f"{'method':<11}{'t':>5}{'cores':>6}{'best s':>9}{'first s':>9}{'docs/s/core':>13}{'recall':>9}"
          f"{'precision':>11}{'near misses':>13}{'peak GB':>9}")
    for method, r in results.items():
        t = f"{r['threshold']}" if "threshold" in r else "-"
        print(f"{method:<11}{t:>5}{CORES[method]:>6}{r['seconds']:>9.3f}{r['first_seconds']:>9.3f}"
              f"{r['docs_per_s_per_core']:>13,.0f}{r['recall']:>9.4f}{r['precision']:>11.4f}"
              f"{r['near_misses_reported']:>13,}{r['peak_rss_gb']:>9.2f}")
    ours = results["ours"]
    phases = ours["phases"]
    confirm = phases["take"] + phases["similarity"]
    print(f"ours' phases (mirror of near_duplicates, best of runs; mirror's pairs equal: {ours['mirror_matches']}): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items())
          + f"; {ours['candidates']:,} candidates, {ours['confirmed']:,} confirmed")
    rensa = results.get("rensa")
    ratio = ours["docs_per_s_per_core"] / rensa["docs_per_s_per_core"] if rensa else None
    if ratio:
        first_ratio = rensa["first_seconds"] * CORES["rensa"] / (ours["first_seconds"] * CORES["ours"])
        print(f"ours / rensa (at its best t = {rensa['threshold']}): {ratio:.2f}x docs/s per core (best times; first "
              f"runs: {first_ratio:.2f}x); ours / datasketch: "
              f"{ours['docs_per_s_per_core'] / results['datasketch']['docs_per_s_per_core']:.1f}x")
    memory = None
    if args.memory_n:
        start = time.perf_counter()
        big_texts, big_truth, big_misses, _ = make_input(args.memory_n)
        made = time.perf_counter() - start
        memory = run("ours", big_texts, big_truth, big_misses, Reference(big_texts),
                     sample=args.memory_precision_sample or None)
        m_phases = memory["phases"]
        print(f"ours at {args.memory_n:,} texts (input built in {made:.0f} s): {memory['seconds']:.1f} s, "
              f"{memory['docs_per_s_per_core']:,.0f} docs/s/core; phases (mirror): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in m_phases.items())
              + f"; confirmation (take + similarity) {m_phases['take'] + m_phases['similarity']:.2f} s; "
              f"{memory['candidates']:,} candidates, {memory['confirmed']:,} confirmed; recall {memory['recall']:.4f} "
              f"(of {len(big_truth):,} planted true pairs), precision {memory['precision']:.4f} (over "
              f"{memory['precision_checked']:,} confirmed pairs), near misses reported "
              f"{memory['near_misses_reported']:,} of {len(big_misses):,}; peak RSS {memory['peak_rss_gb']:.2f} GB")
    print(json.dumps({
        "n": len(texts),
        "ours_docs_per_s_per_core": round(ours["docs_per_s_per_core"]),
        "rensa_docs_per_s_per_core": round(rensa["docs_per_s_per_core"]) if rensa else None,
        "datasketch_docs_per_s_per_core": round(results["datasketch"]["docs_per_s_per_core"]) if rensa else None,
        "ratio_vs_rensa": round(ratio, 3) if ratio else None,
        "recall": round(ours["recall"], 4),
        "precision": round(ours["precision"], 4),
        "ours_confirm_s": round(confirm, 4),
        "ours_candidates": ours["candidates"],
        "rensa_threshold": rensa["threshold"] if rensa else None,
        "rensa_recall": round(rensa["recall"], 4) if rensa else None,
        "rensa_precision": round(rensa["precision"], 4) if rensa else None,
        "datasketch_threshold": results["datasketch"]["threshold"] if rensa else None,
        "datasketch_recall": round(results["datasketch"]["recall"], 4) if rensa else None,
        "datasketch_precision": round(results["datasketch"]["precision"], 4) if rensa else None,
        "peak_rss_gb": round(ours["peak_rss_gb"], 3),
        "memory_n": args.memory_n or None,
        "memory_n_seconds": round(memory["seconds"], 2) if memory else None,
        "memory_n_confirm_s": round(m_phases["take"] + m_phases["similarity"], 2) if memory else None,
        "memory_n_candidates": memory["candidates"] if memory else None,
        "memory_n_pairs": memory["confirmed"] if memory else None,
        "memory_n_recall": round(memory["recall"], 4) if memory else None,
        "memory_n_precision": round(memory["precision"], 4) if memory else None,
        "memory_n_peak_rss_gb": round(memory["peak_rss_gb"], 3) if memory else None,
    }))


if __name__ == "__main__":
    main()
