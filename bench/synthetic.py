"""Synthetic Chinese pairs shaped like the real sources, written in the sources' own native formats.

Four catalog sources stand for the task types of the M3E table: lcqmc (s2s classification, Parquet, label 1),
zhihu_kol (qa, Parquet), firefily (instruction, JSON lines) and news2016zh (corpus title → article, JSON lines).
Each side's length is log-normal per task type (medians and spreads below, from the real data's figures: LCQMC
questions of ~10 characters, Zhihu answers of a few hundred, news articles of ~600), characters are drawn by their
frequency in the shipped samples, and a tenth of the pairs are duplicates: half exact copies of an earlier pair, half
copies with one character changed on each side. Text is built as UTF-8 bytes in numpy, so 2 million pairs take
seconds.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
DUPLICATE_SHARE = 0.10
MAX_CHARS = 4_000


@dataclass(frozen=True)
class Shape:
    """One stand-in source: its share of the pairs, native layout and side lengths (log-normal median, sigma)."""

    source: str
    share: float
    path: str  # the native file, relative to the source's folder
    query_field: str
    pos_field: str
    query: tuple[float, float]
    pos: tuple[float, float]


SHAPES = (
    Shape("lcqmc", 0.25, "LCQMC/train/0000.parquet", "sentence1", "sentence2", (10, 0.4), (11, 0.4)),
    Shape("zhihu_kol", 0.25, "data/train-00000-of-00005-5f2e9b1c3d4a6e70.parquet", "INSTRUCTION", "RESPONSE", (16, 0.5), (220, 1.0)),
    Shape("firefily", 0.30, "firefly-train-1.1M.jsonl", "input", "target", (35, 0.8), (90, 1.0)),
    Shape("news2016zh", 0.20, "news2016zh_train.json", "title", "content", (18, 0.3), (600, 0.7)),
)
SOURCES = [s.source for s in SHAPES]


def char_frequencies() -> tuple[np.ndarray, np.ndarray]:
    """Code points of the BMP characters in the shipped samples' texts, and their probabilities."""
    counts: dict[int, int] = {}
    for path in SAMPLES.rglob("*"):
        if path.suffix in (".json", ".jsonl", ".csv", ".txt"):
            text = path.read_text(encoding="utf-8", errors="ignore")
            for ch in text:
                cp = ord(ch)
                if cp >= 0x4E00 and cp <= 0x9FFF or cp in (0xFF0C, 0x3002, 0xFF1F):  # CJK and ，。？
                    counts[cp] = counts.get(cp, 0) + 1
    points = np.array(sorted(counts), dtype=np.uint32)
    weights = np.array([counts[p] for p in points.tolist()], dtype=np.float64)
    return points, weights / weights.sum()


def texts(rng: np.random.Generator, n: int, median: float, sigma: float, points: np.ndarray,
          probs: np.ndarray) -> pa.Array:
    """`n` random texts of log-normal length (at least 2, at most MAX_CHARS characters), as an Arrow string array."""
    lengths = np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), 2, MAX_CHARS).astype(np.int64)
    chars = points[rng.choice(len(points), size=int(lengths.sum()), p=probs)]
    utf8 = np.empty((len(chars), 3), dtype=np.uint8)  # every drawn character is 3 bytes in UTF-8
    utf8[:, 0] = 0xE0 | (chars >> 12)
    utf8[:, 1] = 0x80 | ((chars >> 6) & 0x3F)
    utf8[:, 2] = 0x80 | (chars & 0x3F)
    offsets = np.concatenate([[0], np.cumsum(lengths * 3)]).astype(np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(utf8.tobytes())).cast(pa.string())


def with_duplicates(rng: np.random.Generator, query: pa.Array, pos: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The pairs with DUPLICATE_SHARE of them replaced by copies of other pairs: half exact, half with one
    character of each side changed."""
    n = len(query)
    rows = rng.choice(n, size=int(n * DUPLICATE_SHARE), replace=False)
    originals = rng.integers(0, n, size=len(rows))
    q, p = query.to_numpy(zero_copy_only=False).astype(object), pos.to_numpy(zero_copy_only=False).astype(object)
    half = len(rows) // 2
    for k, (row, original) in enumerate(zip(rows.tolist(), originals.tolist(), strict=True)):
        q[row], p[row] = q[original], p[original]
        if k >= half:
            q[row], p[row] = _edit(q[row], rng), _edit(p[row], rng)
    return pa.array(q, pa.string()), pa.array(p, pa.string())


def _edit(text: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(0, len(text)))
    return text[:i] + chr(0x4E00 + int(rng.integers(0, 3000))) + text[i + 1:]


def write_sources(folder: Path, n: int, seed: int = 7) -> dict[str, int]:
    """Write `n` pairs over the stand-in sources into `folder/<source>/` in their native formats; rows per source."""
    rng = np.random.default_rng(seed)
    points, probs = char_frequencies()
    counts = {}
    for k, shape in enumerate(SHAPES):
        rows = n - sum(counts.values()) if k == len(SHAPES) - 1 else int(n * shape.share)
        query, pos = with_duplicates(rng, texts(rng, rows, *shape.query, points, probs),
                                     texts(rng, rows, *shape.pos, points, probs))
        table = pa.table({shape.query_field: query, shape.pos_field: pos})
        if shape.source == "lcqmc":
            table = table.append_column("label", pa.array(np.ones(rows, dtype=np.int32)))
        path = folder / shape.source / shape.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(table, path)
        else:
            _write_jsonl(table, path)
        counts[shape.source] = rows
    return counts


def _write_jsonl(table: pa.Table, path: Path) -> None:
    """One JSON object per row, joined by Arrow's string functions (the synthetic texts need no escaping)."""
    with path.open("wb") as out:
        for batch in table.to_batches(max_chunksize=100_000):
            fields = [pc.binary_join_element_wise(f'"{name}": "', batch.column(name), '"', "")
                      for name in batch.schema.names if name != "label"]
            lines = pc.binary_join_element_wise("{", pc.binary_join_element_wise(*fields, ", "), "}\n", "")
            out.write("".join(lines.to_pylist()).encode("utf-8"))

