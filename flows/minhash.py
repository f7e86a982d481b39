"""Near-duplicate detection with MinHash over character shingles, vectorised with numpy over whole batches.

    texts ─► shingles (character 3-grams; 2-grams under `short_below` characters; a 1-character text is its own
             shingle, so no text gets an empty signature) ─► 32-bit shingle hashes
          ─► signatures: `num_perm` hash permutations (odd-multiplier affine maps mod 2**32 followed by an xor-shift,
             each a bijection of the 32-bit space), minimum per text: one compiled loop (numba) over texts in parallel,
             the only non-numpy step, because numpy's (shingles × permutations) temporaries make it memory-bound
          ─► band keys: `bands` × `rows` = `num_perm`, one 64-bit key per band (in the same compiled loop)
          ─► candidate pairs: texts sharing a band key (grouped with polars, not an in-memory LSH index)
          ─► confirmed pairs: exact Jaccard of the shingle sets ≥ `threshold`
          ─► clusters: connected components of the confirmed pairs

Hashes are seeded and computed with fixed integer arithmetic, so the same texts give the same clusters on every
run and machine. The signature scheme is this module's own: do not mix its signatures with datasketch's or rensa's.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

U32 = np.uint32
U64 = np.uint64


@dataclass(frozen=True)
class MinHashParams:
    """The near-duplicate definition: shingling, signature size, LSH banding and the confirming Jaccard."""

    ngram: int = 3
    short_ngram: int = 2
    short_below: int = 10  # texts with fewer characters use `short_ngram`
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    threshold: float = 0.8
    seed: int = 20230601

    def __post_init__(self) -> None:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands × rows must equal num_perm: {self.bands} × {self.rows} != {self.num_perm}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    def candidate_probability(self, jaccard: float) -> float:
        """The chance that two texts of this Jaccard similarity share at least one band key."""
        return 1 - (1 - jaccard**self.rows) ** self.bands


def _codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' code points in one uint32 array (plus two zeros of padding), and each text's start (n + 1)."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=U32)
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return np.concatenate([codes, np.zeros(2, dtype=U32)]), starts


@numba.njit(inline="always")
def _shingle_count(length: int, ngram: int, short_ngram: int, short_below: int) -> tuple[int, int]:
    """(number of shingles, shingle width) of a text: a text shorter than its n-gram is one shingle."""
    width = short_ngram if length < short_below else ngram
    width = min(width, max(length, 1))
    return max(length - width + 1, 1), width


@numba.njit(inline="always")
def _shingle_hash(codes: np.ndarray, pos: int, width: int, empty: bool) -> np.uint64:
    """The 32-bit hash of the `width` code points at `pos` (murmur3's finaliser over a weighted sum)."""
    c0 = np.uint64(0) if empty else np.uint64(codes[pos])
    c1 = np.uint64(codes[pos + 1]) if width >= 2 else np.uint64(0)
    c2 = np.uint64(codes[pos + 2]) if width >= 3 else np.uint64(0)
    mask = np.uint64(0xFFFFFFFF)
    h = (c0 * np.uint64(0x9E3779B1) + c1 * np.uint64(0x85EBCA77) + c2 * np.uint64(0xC2B2AE3D)
         + np.uint64(empty) + np.uint64(width) * np.uint64(0x27D4EB2F)) & mask
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & mask
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & mask
    h ^= h >> np.uint64(16)
    return h


@numba.njit(cache=True)
def _text_shingles(codes: np.ndarray, start: int, length: int, ngram: int, short_ngram: int,
                   short_below: int) -> np.ndarray:
    """The sorted, distinct shingle hashes of one text."""
    count, width = _shingle_count(length, ngram, short_ngram, short_below)
    out = np.empty(count, dtype=np.uint64)
    for i in range(count):
        out[i] = _shingle_hash(codes, start + i, width, length == 0)
    return np.unique(out)


def shingle_sets(texts: Sequence[str], params: MinHashParams) -> list[np.ndarray]:
    """Each text's sorted, distinct shingle hashes (for inspection and tests)."""
    codes, starts = _codes(texts)
    return [_text_shingles(codes, starts[i], starts[i + 1] - starts[i], params.ngram, params.short_ngram,
                           params.short_below) for i in range(len(texts))]


def _use_threads(workers: int) -> None:
    """Run the parallel kernels on `workers` threads (at most the threads numba was started with)."""
    numba.set_num_threads(max(1, min(workers, numba.config.NUMBA_NUM_THREADS)))


def _permutations(params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(params.seed)
    a = rng.integers(1, 2**32, size=params.num_perm, dtype=np.uint64) | np.uint64(1)  # odd: a bijection mod 2**32
    b = rng.integers(0, 2**32, size=params.num_perm, dtype=np.uint64)
    return a, b


@numba.njit(parallel=True, cache=True, nogil=True)
def _signature_kernel(codes: np.ndarray, starts: np.ndarray, ngram: int, short_ngram: int, short_below: int,
                      a: np.ndarray, b: np.ndarray, rows: int, out: np.ndarray, keys: np.ndarray) -> None:
    """For each text d (in parallel): out[d, k] = min over its shingle hashes h of xorshift((a[k] * h + b[k]) mod
    2**32); keys[d, j] = a 64-bit hash of band j, out[d, j * rows:(j + 1) * rows], distinct per band."""
    mask = np.uint64(0xFFFFFFFF)
    for d in numba.prange(len(starts) - 1):
        start, length = starts[d], starts[d + 1] - starts[d]
        count, width = _shingle_count(length, ngram, short_ngram, short_below)
        row = out[d]
        row[:] = 0xFFFFFFFF
        for i in range(count):
            h = _shingle_hash(codes, start + i, width, length == 0)
            for k in range(len(a)):
                v = (h * a[k] + b[k]) & mask
                v ^= v >> np.uint64(15)
                row[k] = min(row[k], v)
        for j in range(keys.shape[1]):
            key = np.uint64(0xCBF29CE484222325) ^ (np.uint64(j) * np.uint64(0x9E3779B97F4A7C15))
            for r in range(j * rows, (j + 1) * rows):
                key ^= np.uint64(row[r])
                key *= np.uint64(0x100000001B3)
                key ^= key >> np.uint64(29)
            keys[d, j] = key


def signatures(texts: Sequence[str], params: MinHashParams, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The (n, num_perm) uint32 MinHash signatures and the (n, bands) uint64 band keys, on `workers` threads.

    Equal band keys mean equal band rows (up to 64-bit hash collisions, which the Jaccard check removes).
    """
    return _signatures(*_codes(texts), params, workers)


def _signatures(codes: np.ndarray, starts: np.ndarray, params: MinHashParams,
                workers: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = _permutations(params)
    n = len(starts) - 1
    sigs = np.empty((n, params.num_perm), dtype=U32)
    keys = np.empty((n, params.bands), dtype=U64)
    _use_threads(workers)
    _signature_kernel(codes, starts, params.ngram, params.short_ngram, params.short_below, a, b, params.rows, sigs,
                      keys)
    return sigs, keys


def candidate_pairs(keys: np.ndarray) -> pl.DataFrame:
    """Pairs (a < b) of texts sharing a band key: the texts of each key chained in index order, deduplicated."""
    n, bands = keys.shape
    frame = pl.LazyFrame({"key": keys.reshape(-1), "idx": np.repeat(np.arange(n, dtype=np.int64), bands)})
    return (
        frame.filter(pl.col("key").is_duplicated())
        .sort(["key", "idx"])
        .with_columns(prev=pl.col("idx").shift(1), same=pl.col("key") == pl.col("key").shift(1))
        .filter(pl.col("same"))
        .select(a=pl.col("prev"), b=pl.col("idx"))
        .filter(pl.col("a") != pl.col("b"))
        .unique()
        .sort(["a", "b"])
        .collect(engine="streaming")
    )


@numba.njit(parallel=True, cache=True, nogil=True)
def _jaccard_kernel(codes: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray, ngram: int,
                    short_ngram: int, short_below: int, out: np.ndarray) -> None:
    for k in numba.prange(len(a)):
        x = _text_shingles(codes, starts[a[k]], starts[a[k] + 1] - starts[a[k]], ngram, short_ngram, short_below)
        y = _text_shingles(codes, starts[b[k]], starts[b[k] + 1] - starts[b[k]], ngram, short_ngram, short_below)
        i = j = inter = 0
        while i < len(x) and j < len(y):
            if x[i] == y[j]:
                inter += 1
                i += 1
                j += 1
            elif x[i] < y[j]:
                i += 1
            else:
                j += 1
        out[k] = inter / (len(x) + len(y) - inter)


def jaccard(texts: Sequence[str], a: np.ndarray, b: np.ndarray, params: MinHashParams,
            workers: int = 2) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of texts a[k] and b[k], for every k."""
    return _jaccard(*_codes(texts), a, b, params, workers)


def _jaccard(codes: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray, params: MinHashParams,
             workers: int) -> np.ndarray:
    out = np.zeros(len(a))
    _use_threads(workers)
    _jaccard_kernel(codes, starts, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), params.ngram,
                    params.short_ngram, params.short_below, out)
    return out


@dataclass(frozen=True)
class Clusters:
    """Near-duplicate clusters: a component label per text, and the confirmed pairs with their Jaccard."""

    labels: np.ndarray
    pairs: pl.DataFrame  # a, b, jaccard (confirmed: jaccard ≥ threshold)
    candidates: int


def near_duplicates(texts: Sequence[str], params: MinHashParams | None = None, workers: int = 2) -> Clusters:
    """Cluster `texts` into near-duplicate groups (texts without a near-duplicate are clusters of one)."""
    params = params or MinHashParams()
    codes, starts = _codes(texts)
    _, keys = _signatures(codes, starts, params, workers)
    candidates = candidate_pairs(keys)
    a, b = candidates["a"].to_numpy(), candidates["b"].to_numpy()
    sim = _jaccard(codes, starts, a, b, params, workers)
    keep = sim >= params.threshold
    pairs = pl.DataFrame({"a": a[keep], "b": b[keep], "jaccard": sim[keep]})
    n = len(texts)
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (a[keep], b[keep])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return Clusters(labels, pairs, len(candidates))
