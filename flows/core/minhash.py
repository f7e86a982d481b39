"""Near-duplicate detection: MinHash candidates over character bigrams (datasketch's MinHash, computed in one
compiled loop), confirmed by the edit similarity of `flows.core.similarity`.

    keys ─► shingles (character bigrams at every length: no width switch, so a 9-character key and its 10-character
            variant share 8 of 9 bigrams; a 1-character key is one shingle) ─► 32-bit shingle hashes
         ─► signatures: datasketch 2.0's `affine32` scheme with datasketch's own permutation parameters for `seed`
            (each hash pre-mixed with murmur3's finaliser, then a * h + b mod 2**32, minimum per permutation), so
            `signatures(texts)[0][i]` equals `MinHash(num_perm, seed, scheme="affine32", hashfunc=identity)
            .update_batch(shingle hashes of text i)`: one compiled loop (numba) over texts in parallel instead of a
            MinHash object per text
         ─► band keys: `bands` × `rows` = `num_perm` (32 × 4: a pair at bigram Jaccard 0.55, an 8-character key
            with one character changed, is a candidate with probability 0.96; at 0.67 with 0.999), one 64-bit key per
            band (in the same compiled loop)
         ─► candidate pairs: texts sharing a band key, grouped with polars (streaming; from Parquet for big inputs),
            not an in-memory LSH index
         ─► confirmed pairs: every part (e.g. the query and the positive of a pair) a near-duplicate by
            `flows.core.similarity` (edit similarity ≥ `threshold`, guards on negations, numbers, Latin words, script)
         ─► clusters: connected components of the confirmed pairs

Hashes are seeded and computed with fixed integer arithmetic, so the same texts give the same clusters on every
run and machine. datasketch is pinned: 2.0 changed its default scheme, and signatures of different schemes (or of
rensa) must not be mixed.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from m3e_hq.flows.core.accounting import parquet_batches
from m3e_hq.flows.core.minhash_params import MinHashParams
from m3e_hq.flows.core.similarity import codes_of, similarity, use_threads

U32 = np.uint32
U64 = np.uint64


@numba.njit(inline="always")
def _shingle_count(length: int, ngram: int) -> tuple[int, int]:
    """(number of shingles, shingle width) of a text: a text shorter than its n-gram is one shingle."""
    width = min(ngram, max(length, 1))
    return max(length - width + 1, 1), width


@numba.njit(inline="always")
def _shingle_hash(codes: np.ndarray, pos: int, width: int, empty: bool) -> np.uint64:
    """The 32-bit hash of the `width` code points at `pos` (murmur3's finaliser over a weighted sum)."""
    c0 = np.uint64(0) if empty else np.uint64(codes[pos])
    c1 = np.uint64(codes[pos + 1]) if width >= 2 else np.uint64(0)
    c2 = np.uint64(codes[pos + 2]) if width >= 3 else np.uint64(0)
    mask = np.uint64(0xFFFFFFFF)
    h = (c0 * np.uint64(0x9E3779B1) + c1 * np.uint64(0x85EBCA77) + c2 * np.uint64(0xC2B2AE3D)
         + np.uint64(empty)) & mask
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & mask
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & mask
    h ^= h >> np.uint64(16)
    return h


@numba.njit(cache=True)
def _text_shingles(codes: np.ndarray, start: int, length: int, ngram: int) -> np.ndarray:
    """The sorted, distinct shingle hashes of one text."""
    count, width = _shingle_count(length, ngram)
    out = np.empty(count, dtype=np.uint64)
    for i in range(count):
        out[i] = _shingle_hash(codes, start + i, width, length == 0)
    return np.unique(out)


def shingle_sets(texts: Sequence[str], params: MinHashParams) -> list[np.ndarray]:
    """Each text's sorted, distinct shingle hashes (for inspection and tests)."""
    codes, starts = codes_of(texts)
    return [_text_shingles(codes, starts[i], starts[i + 1] - starts[i], params.ngram) for i in range(len(texts))]


def permutations(params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for `num_perm` and `seed`, as uint32 arrays."""
    a, b = MinHash(num_perm=params.num_perm, seed=params.seed, scheme="affine32").permutations
    return np.ascontiguousarray(a, dtype=U32), np.ascontiguousarray(b, dtype=U32)


@numba.njit(inline="always")
def _fmix32(h: np.uint64) -> np.uint32:
    """MurmurHash3's 32-bit finaliser: datasketch's pre-mix of each hash value before its permutations."""
    mask = np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & mask
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & mask
    h ^= h >> np.uint64(16)
    return np.uint32(h)


@numba.njit(parallel=True, cache=True, nogil=True)
def _signature_kernel(codes: np.ndarray, starts: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray, rows: int,
                      out: np.ndarray, keys: np.ndarray) -> None:
    """For each text d (in parallel): out[d, k] = min over its shingle hashes h of (a[k] * fmix32(h) + b[k]) mod
    2**32 (datasketch's affine32 MinHash); keys[d, j] = a 64-bit hash of band j, out[d, j * rows:(j + 1) * rows],
    distinct per band."""
    num_perm = len(a)
    for d in numba.prange(len(starts) - 1):
        start, length = starts[d], starts[d + 1] - starts[d]
        count, width = _shingle_count(length, ngram)
        row = np.full(num_perm, 0xFFFFFFFF, dtype=np.uint32)
        for i in range(count):
            h = _fmix32(_shingle_hash(codes, start + i, width, length == 0))
            for k in range(num_perm):
                row[k] = min(row[k], np.uint32(a[k] * h + b[k]))
        out[d] = row
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
    return _signatures(*codes_of(texts), params, workers)


def _signatures(codes: np.ndarray, starts: np.ndarray, params: MinHashParams,
                workers: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = permutations(params)
    n = len(starts) - 1
    sigs = np.empty((n, params.num_perm), dtype=U32)
    keys = np.empty((n, params.bands), dtype=U64)
    use_threads(workers)
    _signature_kernel(codes, starts, params.ngram, a, b, params.rows, sigs, keys)
    return sigs, keys


GROUP_ROWS = 4_000_000  # band keys grouped at once by candidate_pairs (band keys are distinct across bands)


def candidate_pairs(keys: np.ndarray | pl.LazyFrame, bucket_all_pairs_max: int = 32) -> pl.DataFrame:
    """Pairs (a < b) of texts sharing a band key, deduplicated and sorted.

    `keys`: an (n, bands) array, or a LazyFrame as `band_frame` makes (columns idx, b0, b1, ...), e.g. scanned
    from Parquet so that the grouping runs out of core. Bands are grouped a few at a time (at most
    GROUP_ROWS keys at once), so that memory stays bounded however many texts there are. A bucket (texts sharing a
    key) of at most `bucket_all_pairs_max` texts gives all its pairs; a bigger one gives its first text paired with
    each other one, so that a key shared by thousands of texts does not give millions of pairs.
    """
    frame = band_frame(keys) if isinstance(keys, np.ndarray) else keys
    bands = [name for name in frame.collect_schema().names() if name != "idx"]
    n = frame.select(pl.len()).collect().item()
    per_group = max(1, GROUP_ROWS // max(n, 1))
    pairs = [_band_pairs(pl.concat([frame.select("idx", key=pl.col(band)) for band in bands[g:g + per_group]]),
                         bucket_all_pairs_max) for g in range(0, len(bands), per_group)]
    return (pl.concat(pairs) if pairs else pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64})).unique().sort(
        ["a", "b"])


def _band_pairs(frame: pl.LazyFrame, bucket_all_pairs_max: int) -> pl.DataFrame:
    """The candidate pairs of one band (columns idx, key)."""
    sizes = frame.group_by("key").agg(size=pl.len(), first=pl.col("idx").min()).filter(pl.col("size") > 1)
    # Only texts in shared buckets are held in memory from here on.
    buckets = frame.join(sizes, on="key").collect(engine="streaming").lazy()
    small = buckets.filter(pl.col("size") <= bucket_all_pairs_max).select("key", "idx")
    all_pairs = (small.join(small, on="key", suffix="_b").filter(pl.col("idx") < pl.col("idx_b"))
                 .select(a=pl.col("idx"), b=pl.col("idx_b")))
    star = (buckets.filter((pl.col("size") > bucket_all_pairs_max) & (pl.col("idx") != pl.col("first")))
            .select(a=pl.col("first"), b=pl.col("idx")))
    return pl.concat([all_pairs, star]).cast(pl.Int64).unique().collect(engine="streaming")


def band_frame(keys: np.ndarray, offset: int = 0) -> pl.LazyFrame:
    """The band keys of texts offset, offset + 1, ... as a LazyFrame: idx, then one column per band (b0, b1, ...)."""
    n, bands = keys.shape
    return pl.LazyFrame({"idx": np.arange(offset, offset + n, dtype=np.int64),
                         **{f"b{j}": keys[:, j] for j in range(bands)}})


@dataclass(frozen=True)
class Clusters:
    """Near-duplicate clusters: a component label per text, and the confirmed pairs with their similarity."""

    labels: np.ndarray
    pairs: pl.DataFrame  # a, b, similarity (confirmed: ≥ threshold; the lowest over the parts)
    candidates: int


BATCH_TEXTS = 65_536


class ParquetTexts:
    """The texts at `rows` (sorted file positions; default all) of a string column of a Parquet file, read a batch
    at a time: a corpus `near_duplicates` can go through without holding it in memory."""

    def __init__(self, path: Path, column: str, rows: np.ndarray | None = None) -> None:
        self.path, self.column = path, column
        self.rows = np.arange(pq.ParquetFile(path).metadata.num_rows) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self) -> Iterator[tuple[int, list[str]]]:
        """(position of the batch's first text, its texts), in order."""
        return self._read(self.rows)

    def take(self, positions: np.ndarray) -> list[str]:
        """The texts at `positions` (sorted, distinct) of this corpus."""
        return [text for _, texts in self._read(self.rows[positions]) for text in texts]

    def _read(self, wanted: np.ndarray) -> Iterator[tuple[int, list[str]]]:
        """The texts at file positions `wanted` (sorted), a Parquet batch at a time, each run with the index in
        `wanted` of its first text."""
        start = 0
        for batch in parquet_batches(self.path, BATCH_TEXTS, [self.column]):
            end = start + batch.num_rows
            lo, hi = np.searchsorted(wanted, [start, end])
            if hi > lo:
                yield int(lo), batch.column(0).take(pa.array(wanted[lo:hi] - start)).to_pylist()
            start = end


class ListTexts:
    """Texts held in memory, with ParquetTexts' interface."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def batches(self) -> Iterator[tuple[int, Sequence[str]]]:
        for lo in range(0, len(self.texts), BATCH_TEXTS):
            yield lo, self.texts[lo:lo + BATCH_TEXTS]

    def take(self, positions: np.ndarray) -> list[str]:
        return [self.texts[i] for i in positions.tolist()]


Corpus = ParquetTexts | ListTexts


def corpus(texts: Sequence[str] | Corpus) -> Corpus:
    return texts if isinstance(texts, ParquetTexts | ListTexts) else ListTexts(texts)


def near_duplicates(texts: Sequence[str] | Corpus, params: MinHashParams | None = None, workers: int = 2,
                    parts: Sequence[Sequence[str] | Corpus] | None = None, spill_dir: Path | None = None) -> Clusters:
    """Cluster `texts` into near-duplicate groups (texts without a near-duplicate are clusters of one).

    Candidates come from the band keys of `texts`; a candidate counts when each of `parts` (default: `texts`
    itself) is a near-duplicate (`flows.core.similarity`), e.g. the queries and the positives of pairs whose `texts`
    join the two, so that two questions on one long passage are not taken for one pair. Texts are a list or a
    ParquetTexts column; signatures are computed BATCH_TEXTS at a time and only their band keys kept (with
    `spill_dir`, in Parquet files there, grouped out of core), and only the candidates' texts are read to confirm.
    """
    params = params or MinHashParams()
    texts = corpus(texts)
    n = len(texts)
    frames = []
    for lo, batch in texts.batches():
        _, keys = _signatures(*codes_of(batch), params, workers)
        frame = band_frame(keys, offset=lo)
        if spill_dir is not None:
            path = spill_dir / f"band-keys-{lo:012d}.parquet"
            frame.sink_parquet(path)
            frame = pl.scan_parquet(path)
        frames.append(frame)
    candidates = candidate_pairs(pl.concat(frames) if frames else band_frame(np.zeros((0, params.bands), U64)),
                                 params.bucket_all_pairs_max)
    a, b = candidates["a"].to_numpy(), candidates["b"].to_numpy()
    used = np.unique(np.concatenate([a, b]))
    local_a, local_b = np.searchsorted(used, a), np.searchsorted(used, b)
    compared = [corpus(p) for p in parts] if parts is not None else [texts]
    for part in compared:
        if len(part) != n:
            raise ValueError(f"a part has {len(part)} texts for {n} texts")
    sim = similarity([part.take(used) for part in compared], local_a, local_b, params.threshold, workers)
    keep = sim >= params.threshold
    pairs = pl.DataFrame({"a": a[keep], "b": b[keep], "similarity": sim[keep]})
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (a[keep], b[keep])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return Clusters(labels, pairs, len(candidates))


def matches(queries: Sequence[str], texts: Sequence[str] | Corpus, params: MinHashParams | None = None,
            workers: int = 2) -> pl.DataFrame:
    """The near-duplicate pairs between a few `queries` (e.g. evaluation texts) and a big corpus `texts`, read a
    batch at a time: columns query, text (positions) and similarity (≥ threshold)."""
    params = params or MinHashParams()
    _, query_keys = signatures(queries, params, workers)
    index = _long(band_frame(query_keys)).collect()
    found = [pl.DataFrame(schema={"query": pl.Int64, "text": pl.Int64, "similarity": pl.Float64})]
    for lo, batch in corpus(texts).batches():
        _, keys = signatures(batch, params, workers)
        pairs = (_long(band_frame(keys)).join(index.lazy(), on="key", suffix="_q")
                 .select(query=pl.col("idx_q"), text=pl.col("idx")).unique().sort("query", "text").collect())
        q, t = pairs["query"].to_numpy(), pairs["text"].to_numpy()
        sim = similarity([[*queries, *batch]], q, t + len(queries), params.threshold, workers)
        keep = sim >= params.threshold
        found.append(pl.DataFrame({"query": q[keep], "text": t[keep] + lo, "similarity": sim[keep]}))
    return pl.concat(found)


def _long(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Band keys one per row (idx, key): keys are distinct across bands, so a join on key alone matches bands."""
    return frame.unpivot(index="idx", value_name="key").select("idx", "key")
