"""Publish a build as two Hugging Face dataset folders, m3e-hq and m3e-hq-with-score.

    <build>/dedup/<source>.parquet ─► <out>/m3e-hq/             data/<source>/, pairs/, README.md, plots/, SHA256SUMS
    <build>/mine/<source>.parquet  ─► <out>/m3e-hq-with-score/  the same, triplets/, scored-pairs/, distill/, exports/

m3e-hq is the rows of the last curation stage, dedup (the filters run before it); m3e-hq-with-score the mine stage's.

Each source's rows are written once, in build order, as bounded shards `data/<source>/train-NNNNN-of-NNNNN.parquet`;
the card's `configs:` point `default` (every source), `commercial` (sources whose licence allows commercial use) and
one config per source at them with `data_files` globs. The trainer configs hold only the columns a trainer takes, in
a seeded random order across sources (each its own top folder, so that every folder holds one schema): `pairs`
(text, text_pos) in both sets; `triplets`, `scored-pairs`, `distill` and `ntuples` (distill's files without the
label) in the with-score set, with FlagEmbedding and uniem JSON Lines exports. Both folders are built under hidden
temporary names in the output folder and swapped in only once both are complete: a failed publish leaves the
previous one intact.
"""

import hashlib
import math
import re
import shutil
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from m3e_hq.flows.core.accounting import OutputError, writing
from m3e_hq.flows.core.lineage import read_record, without_record
from m3e_hq.flows.core.model_names import DEFAULT_ENCODER
from m3e_hq.flows.core.publish_params import PublishParams
from m3e_hq.schemas import M3E_HQ_SCHEMA, M3E_HQ_WITH_SCORE_SCHEMA, MANIFEST_NAME, Manifest, ObtainedSummary
from m3e_hq.sources.catalog import Catalog, HubObtain

__all__ = ["PublishParams", "PublishResult", "publish"]

M3E_HQ, WITH_SCORE = "m3e-hq", "m3e-hq-with-score"
DEFAULT, COMMERCIAL = "default", "commercial"
PAIRS, TRIPLETS, SCORED_PAIRS, DISTILL, NTUPLES = "pairs", "triplets", "scored-pairs", "distill", "ntuples"
TRAINER_CONFIGS = {M3E_HQ: (PAIRS,), WITH_SCORE: (PAIRS, TRIPLETS, SCORED_PAIRS, DISTILL, NTUPLES)}
RESERVED_CONFIGS = {DEFAULT, COMMERCIAL, *TRAINER_CONFIGS[WITH_SCORE]}
# The stages each dataset's rows went through, in the build's order, and the one whose kept rows it publishes.
STAGES = {M3E_HQ: ("ingest", "filter", "dedup"), WITH_SCORE: ("ingest", "filter", "dedup", "mine")}
STAGE_DIRS = {M3E_HQ: STAGES[M3E_HQ][-1], WITH_SCORE: STAGES[WITH_SCORE][-1]}
PRETTY_NAMES = {M3E_HQ: "M3E HQ", WITH_SCORE: "M3E HQ with scores"}
SUMS_NAME = "SHA256SUMS"
LICENSES_NAME = "LICENSES.md"
BATCH_ROWS = 10_000
BUCKET_ROWS = 1_000_000  # rows of a trainer config shuffled in memory at once
SPILL_ROWS = 8_192  # rows a shuffle bucket holds before they are written to its spill file
TASK_CATEGORIES = ["sentence-similarity", "feature-extraction", "text-retrieval"]
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
LENGTH_EDGES = np.logspace(0, 5, 51)  # 1 to 100,000 characters
SCORE_BINS = 50
SCALE = re.compile(r"^(?P<name>[a-z]+)\[(?P<lo>-?\d+(?:\.\d+)?),(?P<hi>-?\d+(?:\.\d+)?)\]$")
LOGIT_EPS = 1e-6  # sigmoid scores are held to [eps, 1 - eps] before their logit is taken
FLAG_TYPES = {True: "symmetric_sts", False: "normal"}  # FlagEmbedding `type` by homogeneity (s2s, s2p)
FLAGEMBEDDING, UNIEM = "flagembedding", "uniem"
EXPORTS = (FLAGEMBEDDING, UNIEM)  # exports/<export>/<source>.jsonl
MINE_HIDDEN = ("device", "batch_size", "teacher_batch_size")  # mine settings that do not change the data


def _strings(*names: str) -> list[pa.Field]:
    return [pa.field(n, pa.string(), nullable=False) for n in names]


PAIRS_SCHEMA = pa.schema(_strings("text", "text_pos"))
TRIPLETS_SCHEMA = pa.schema(_strings("text", "text_pos", "text_neg"))
SCORED_PAIRS_SCHEMA = pa.schema(_strings("sentence1", "sentence2") + [pa.field("label", pa.float32(), nullable=False)])


def negative_columns(n: int) -> list[str]:
    return [f"text_neg_{i}" for i in range(1, n + 1)]


def distill_schema(n: int) -> pa.Schema:
    """(text, text_pos, text_neg_1..n, label): label is [score_pos, score_neg_1..n] on the build's scale."""
    return pa.schema(_strings("text", "text_pos", *negative_columns(n))
                     + [pa.field("label", pa.list_(pa.float32()), nullable=False)])


@dataclass
class PublishedDataset:
    """One published folder: rows per config and per source, the sources of its commercial config, its files."""

    folder: Path
    rows: dict[str, int]
    source_rows: dict[str, int]
    commercial_sources: list[str]
    files: dict[str, str]  # path in the folder -> sha256


@dataclass
class PublishResult:
    """Both published folders, and what was published: sources, sources left out, the score scale, teachers."""

    m3e_hq: PublishedDataset
    with_score: PublishedDataset
    sources: list[str]  # the sources published, in catalog order
    excluded: dict[str, str]  # sources left out -> why
    commercial_only: bool
    score_scale: str
    teachers: list[str]


@dataclass(frozen=True)
class Scale:
    """A score scale such as cosine[-1,1]: every score of a build lies in [lo, hi]."""

    text: str
    lo: float
    hi: float

    @classmethod
    def parse(cls, text: str) -> "Scale":
        match = SCALE.match(text)
        if match is None:
            raise ValueError(f"unknown score scale {text!r}; expected e.g. cosine[-1,1] or sigmoid[0,1]")
        return cls(text, float(match["lo"]), float(match["hi"]))

    @property
    def name(self) -> str:
        return self.text.split("[", 1)[0]

    def clip(self, values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Values held to [lo, hi] (float rounding can put a cosine at 1.0000001)."""
        lo, hi = pa.scalar(self.lo, values.type), pa.scalar(self.hi, values.type)
        return pc.max_element_wise(pc.min_element_wise(values, hi), lo)

    def logit(self, scores: pl.Expr, temperature: float) -> pl.Expr:
        """Scores as the logits a softmax over one query's group takes (FlagEmbedding's distillation targets):
        a sigmoid score's logit, log(p / (1 - p)); any other score divided by `temperature`."""
        if self.name == "sigmoid":
            p = scores.clip(LOGIT_EPS, 1 - LOGIT_EPS)
            return (p / (1 - p)).log()
        return scores / temperature

    def transform(self, temperature: float) -> str:
        """How `logits` maps a score, in words for the card."""
        return "log(p / (1 - p)) of each score p" if self.name == "sigmoid" else f"each score / {temperature:g}"


@dataclass
class Histogram:
    edges: np.ndarray
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        """Count values, those outside the edges in the end bins."""
        array = np.clip(np.asarray(values, dtype=np.float64), self.edges[0], self.edges[-1])
        self.counts += np.histogram(array, self.edges)[0]

    @property
    def shares(self) -> np.ndarray:
        return self.counts / max(int(self.counts.sum()), 1)


@dataclass
class Config:
    """A dataset config: its name, data_files globs, rows, what it holds and the sources whose shards it reads."""

    name: str
    paths: list[str]
    rows: int
    about: str
    sources: list[str] = field(default_factory=list)
    schema: pa.Schema | None = None  # the rows' schema, when not the dataset's own
    columns: list[str] | None = None  # the columns the config reads of its files (all when None)
    num_bytes: int = 0  # the rows' Arrow size, as `datasets` counts a split's bytes


@dataclass
class Facts:
    """What one dataset's card says: its configs, sources, plots and, for the with-score set, scales and exports."""

    dataset: str
    configs: list[Config]
    source_rows: dict[str, int]
    excluded: dict[str, str]
    plots: list[str] = field(default_factory=list)
    scale: Scale | None = None
    teachers: list[str] = field(default_factory=list)
    exports: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> export -> lines
    foreign_negatives: int = 0  # negatives removed from a commercial export: texts of no source it publishes
    short_rows: int = 0  # rows with fewer negatives than asked, left out of distill and ntuples


class ShardWriter:
    """One config's Parquet shards `train-NNNNN-of-NNNNN.parquet` in `folder`, at most `shard_rows` rows each."""

    def __init__(self, folder: Path, shard_rows: int) -> None:
        self.folder, self.shard_rows = folder, shard_rows
        self.shards: list[Path] = []
        self.schema: pa.Schema | None = None
        self.writer: pq.ParquetWriter | None = None
        self.in_shard = 0
        self.rows = 0
        self.num_bytes = 0

    def write(self, table: pa.Table) -> None:
        self.schema = self.schema or table.schema
        table = table.cast(self.schema)
        self.num_bytes += table.nbytes
        while table.num_rows:
            with writing(self.folder):
                if self.writer is None:
                    self._open()
                take = min(self.shard_rows - self.in_shard, table.num_rows)
                self.writer.write_table(table.slice(0, take))
                self.in_shard += take
                self.rows += take
                table = table.slice(take)
                if self.in_shard == self.shard_rows:
                    self._close_shard()

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards.append(self.folder / f".shard-{len(self.shards):05d}.parquet")
        self.writer = pq.ParquetWriter(self.shards[-1], self.schema, compression="zstd")
        self.in_shard = 0

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> None:
        """Close the last shard and give every shard its final name (the count is known only now)."""
        with writing(self.folder):
            self._close_shard()
            n = len(self.shards)
            for i, shard in enumerate(self.shards):
                shard.rename(self.folder / f"train-{i:05d}-of-{n:05d}.parquet")


class ShuffledWriter:
    """A trainer config's shards, its rows in a seeded random order across everything written: each row goes to one
    of ~rows/BUCKET_ROWS spill buckets at random as it comes, then each bucket is permuted and written. Memory holds
    one bucket; the same rows written in the same order give the same bytes."""

    def __init__(self, folder: Path, shard_rows: int, seed: int, expected_rows: int) -> None:
        self.folder = folder
        self.rng = np.random.default_rng([seed, zlib.crc32(folder.name.encode())])
        self.buckets = max(1, math.ceil(expected_rows / BUCKET_ROWS))
        self.pending: list[list[pa.Table]] = [[] for _ in range(self.buckets)]
        self.spilled: dict[int, pq.ParquetWriter] = {}
        self.shards = ShardWriter(folder, shard_rows)

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        bucket = self.rng.integers(self.buckets, size=table.num_rows)
        for b in np.unique(bucket):
            self.pending[b].append(table.filter(pa.array(bucket == b)))
            if sum(t.num_rows for t in self.pending[b]) >= SPILL_ROWS:
                self._spill(int(b))

    def _spill(self, b: int) -> None:
        part = pa.concat_tables(self.pending[b])
        with writing(self._spill_path(b)):
            if b not in self.spilled:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.spilled[b] = pq.ParquetWriter(self._spill_path(b), part.schema)
            self.spilled[b].write_table(part)
        self.pending[b] = []

    def _spill_path(self, b: int) -> Path:
        return self.folder / f".spill-{b:05d}.parquet"

    def close(self) -> ShardWriter:
        """Write every bucket, permuted, as the config's shards; the spill files are removed."""
        for b in range(self.buckets):
            parts = []
            if b in self.spilled:
                with writing(self._spill_path(b)):
                    self.spilled.pop(b).close()
                    parts.append(pq.read_table(self._spill_path(b)))
                    self._spill_path(b).unlink()
            parts += self.pending[b]
            self.pending[b] = []
            if parts:
                rows = pa.concat_tables(parts)
                self.shards.write(rows.take(pa.array(self.rng.permutation(rows.num_rows))))
        self.shards.close()
        return self.shards


def publish(build_dir: Path, out_dir: Path, params: PublishParams, catalog: Catalog) -> PublishResult:
    """Publish the build in `build_dir` as `out_dir/m3e-hq/` and `out_dir/m3e-hq-with-score/`.

    Both folders are built completely before either replaces its predecessor; an error before then leaves the
    previous publish as it was and no temporary folder behind. What a publish killed midway left is cleared first."""
    manifest = read_manifest(build_dir)
    sources, excluded = plan_sources(manifest, catalog, params)
    check_made_from(build_dir, manifest, sources)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (M3E_HQ, WITH_SCORE):
            recover(out_dir / name)
    staged: dict[str, Path] = {}
    try:  # on success the staged folders have been renamed away and the clean-up finds nothing
        for name in (M3E_HQ, WITH_SCORE):
            staged[name] = out_dir / f".{name}.tmp-{uuid4().hex[:12]}"
            with writing(out_dir / name):
                staged[name].mkdir()
        plain = write_m3e_hq(staged[M3E_HQ], build_dir, manifest, catalog, params, sources, excluded)
        scored, scale, teachers = write_with_score(staged[WITH_SCORE], build_dir, manifest, catalog, params,
                                                   sources, excluded)
        for name, folder in staged.items():
            with writing(out_dir / name):
                swap_in(folder, out_dir / name)
    except OutputError as exc:
        raise final_names(exc, staged, out_dir) from exc.__cause__
    finally:
        for folder in staged.values():
            shutil.rmtree(folder, ignore_errors=True)
    plain.folder, scored.folder = out_dir / M3E_HQ, out_dir / WITH_SCORE
    return PublishResult(plain, scored, sources, excluded, params.commercial_only, scale.text, teachers)


def final_names(exc: OutputError, staged: dict[str, Path], out_dir: Path) -> OutputError:
    """`exc` naming the file it could not write by its place in the dataset folder's final name (the staged folder
    it was in is removed)."""
    where = Path(exc.filename)
    folder = next((out_dir / name / where.relative_to(f) for name, f in staged.items() if where.is_relative_to(f)),
                  where)
    return OutputError(exc.errno, exc.strerror, str(folder))


def read_manifest(build_dir: Path) -> Manifest:
    """The build's manifest; it must hold the stages whose rows are published (dedup and mine)."""
    manifest = Manifest.read(build_dir)
    missing = [stage for stage in STAGE_DIRS.values() if stage not in manifest.stages]
    if missing:
        raise ValueError(f"{build_dir / MANIFEST_NAME} has no {' or '.join(missing)} stage: the build did not finish")
    return manifest


class StaleOutputsError(ValueError):
    """Stage outputs to publish that the build the manifest describes did not write: a later build into the folder,
    with other settings or inputs, rewrote them and did not finish."""


def check_made_from(build_dir: Path, manifest: Manifest, sources: list[str]) -> None:
    """Raise StaleOutputsError unless every stage output to publish records the identity (what it was made from:
    `flows.core.lineage`) that the manifest records for it."""
    stale = []
    for stage in STAGE_DIRS.values():
        summary = manifest.stages[stage]
        for source in sources:
            counts, path = summary.sources.get(source), build_dir / stage / f"{source}.parquet"
            if counts is None or not path.is_file():
                continue  # read_source says what is wrong
            if counts.made_from is None:
                raise StaleOutputsError(f"{build_dir / MANIFEST_NAME} does not record what its outputs were made "
                                        "from (written by an older m3e-hq): build again, then publish; nothing was "
                                        "published")
            record = read_record(path)
            if record is None:
                stale.append((f"{stage}/{source}.parquet", "records nothing it was made from (not written by a build)"))
            elif record["id"] != counts.made_from:
                stale.append((f"{stage}/{source}.parquet", f"was {difference(record, summary.params)}"))
    if stale:
        (first, why), others = stale[0], [name for name, _ in stale[1:]]
        more = f" (and {len(others)} more: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else ""
        raise StaleOutputsError(f"{build_dir / first} {why}{more}: these are not the outputs of the build that "
                                f"{build_dir / MANIFEST_NAME} describes (a later build into this folder did not "
                                "finish); run that build again to finish it, then publish; nothing was published")


def difference(record: dict[str, Any], params: dict[str, Any] | None) -> str:
    """How a stage output's record (`flows.core.lineage`) differs from the manifest's stage: the settings that
    differ (`mine.negatives.num_negatives 3 (the manifest's build: 7)`), else that its inputs do."""
    prefix = f"{record['stage']}."
    here, there = dict(flatten(record["params"], prefix)), dict(flatten(params or {}, prefix))
    if params is not None and here != there:
        changed = [f"{k} {here.get(k)!r} (the manifest's build: {there.get(k)!r})"
                   for k in sorted(here.keys() | there.keys()) if here.get(k) != there.get(k)]
        return f"made with {', '.join(changed)}"
    return "made from other inputs (a stage before it ran again with other settings or files)"


def plan_sources(manifest: Manifest, catalog: Catalog, params: PublishParams) -> tuple[list[str], dict[str, str]]:
    """The sources m3e-hq's stage (dedup) saw, in catalog order, and those left out (commercial_only) with why."""
    built = set(manifest.stages[STAGE_DIRS[M3E_HQ]].sources)
    unknown = sorted(built - set(catalog.names))
    if unknown:
        raise ValueError(f"the build holds sources the catalog does not know: {unknown}")
    clashes = sorted(built & RESERVED_CONFIGS)
    if clashes:
        raise ValueError(f"source names {clashes} clash with the configs {sorted(RESERVED_CONFIGS)}")
    sources, excluded = [], {}
    for source in catalog.select(sorted(built)):
        if params.commercial_only and not source.commercial_use(params.include_unknown_license):
            excluded[source.name] = f"commercial use: {source.commercial}, licence: {source.license}"
        else:
            sources.append(source.name)
    if not sources:
        raise ValueError("no source to publish: none of the built sources allows commercial use")
    return sources, excluded


def read_source(build_dir: Path, stage: str, source: str, manifest: Manifest, params: PublishParams,
                columns: list[str] | None = None) -> Iterator[pa.Table]:
    """One source's rows of a stage (`columns` of them, which must hold `source` and `commercial`), in batches; with
    commercial_only, only rows whose own `commercial` value allows it. The file must hold the rows the manifest
    counts, all of this source."""
    path = build_dir / stage / f"{source}.parquet"
    expected = manifest.stage_kept(stage, source)
    parquet = pq.ParquetFile(path, pre_buffer=False)
    if parquet.metadata.num_rows != expected:
        raise ValueError(f"{path} has {parquet.metadata.num_rows} rows but the manifest says {expected}: the files "
                         f"and the manifest come from different builds")
    for batch in parquet.iter_batches(BATCH_ROWS, columns=columns):
        table = without_record(pa.Table.from_batches([batch]))
        if pc.any(pc.not_equal(table["source"], source)).as_py():
            raise ValueError(f"{path} holds rows of other sources than {source}")
        if params.commercial_only:
            table = table.filter(pc.is_in(table["commercial"], pa.array(params.allowed)))
        if table.num_rows:
            yield table


def write_sources(folder: Path, build_dir: Path, dataset: str, manifest: Manifest, params: PublishParams,
                  sources: list[str], on_batch: Callable[[str, pa.Table], pa.Table],
                  ) -> tuple[dict[str, ShardWriter], dict[str, int]]:
    """Write each source's rows to `data/<source>/`, each batch as `on_batch` returns it (which feeds the trainer
    configs); returns each source's writer and its rows whose own `commercial` value allows commercial use."""
    written, commercial = {}, {}
    for source in sources:
        writer = ShardWriter(folder / "data" / source, params.shard_rows)
        commercial[source] = 0
        for table in read_source(build_dir, STAGE_DIRS[dataset], source, manifest, params):
            table = on_batch(source, table)
            writer.write(table)
            commercial[source] += pc.sum(pc.is_in(table["commercial"], pa.array(params.allowed))).as_py() or 0
        writer.close()
        written[source] = writer
    return written, commercial


def source_configs(written: dict[str, ShardWriter], commercial: dict[str, int], catalog: Catalog,
                   params: PublishParams) -> tuple[list[Config], list[Config]]:
    """`default` and `commercial` (sources the catalog and every row mark commercial), and one config per source
    with rows."""
    with_rows = [s for s, w in written.items() if w.rows]
    if not with_rows:
        raise ValueError("no rows to publish")
    usable = [s for s in with_rows
              if catalog.get(s).commercial_use(params.include_unknown_license) and commercial[s] == written[s].rows]
    shared = [source_config(DEFAULT, with_rows, written, "every published source, in build order")]
    if usable:
        shared.append(source_config(COMMERCIAL, usable, written, "sources that allow commercial use"))
    return shared, [source_config(s, [s], written, f"source {s} only") for s in with_rows]


def source_config(name: str, sources: list[str], written: dict[str, ShardWriter], about: str) -> Config:
    return Config(name, [f"data/{s}/*.parquet" for s in sources], sum(written[s].rows for s in sources), about,
                  sources, num_bytes=sum(written[s].num_bytes for s in sources))


def trainer_config(name: str, shards: ShardWriter, schema: pa.Schema, about: str) -> Config:
    return Config(name, [f"{shards.folder.name}/*.parquet"], shards.rows, about, schema=schema,
                  num_bytes=shards.num_bytes)


def length_histograms(names: Iterable[str]) -> dict[str, Histogram]:
    return {name: Histogram(LENGTH_EDGES) for name in names}


def expected_rows(manifest: Manifest, dataset: str, sources: list[str]) -> int:
    """The rows the manifest counts for these sources in the dataset's stage (what the trainer configs get, about)."""
    return sum(manifest.stage_kept(STAGE_DIRS[dataset], s) or 0 for s in sources)


def pairs_of(table: pa.Table) -> pa.Table:
    return pa.Table.from_arrays([table["text"], table["text_pos"]], schema=PAIRS_SCHEMA)


PAIRS_ABOUT = "text, text_pos: every pair, shuffled across sources"


def write_m3e_hq(folder: Path, build_dir: Path, manifest: Manifest, catalog: Catalog, params: PublishParams,
                 sources: list[str], excluded: dict[str, str]) -> PublishedDataset:
    """The m3e-hq folder: per-source shards, the pairs config, plots, card, checksums."""
    lengths = length_histograms(["query", "positive"])
    pairs = ShuffledWriter(folder / PAIRS, params.shard_rows, params.seed, expected_rows(manifest, M3E_HQ, sources))

    def on_batch(_source: str, table: pa.Table) -> pa.Table:
        lengths["query"].add(pc.utf8_length(table["text"]))
        lengths["positive"].add(pc.utf8_length(table["text_pos"]))
        pairs.write(pairs_of(table))
        return table

    written, commercial = write_sources(folder, build_dir, M3E_HQ, manifest, params, sources, on_batch)
    shared, per_source = source_configs(written, commercial, catalog, params)
    trainers = [trainer_config(PAIRS, pairs.close(), PAIRS_SCHEMA, PAIRS_ABOUT)]
    facts = Facts(M3E_HQ, shared + trainers + per_source, {s: w.rows for s, w in written.items()}, excluded)
    if params.plots:
        facts.plots = [plot_rows_by_stage(folder, manifest, M3E_HQ, sources),
                       plot_lengths(folder, lengths)]
    return finish(folder, facts, manifest, catalog, params)


class ScoredSinks:
    """What the with-score rows feed besides their own shards: trainer configs, exports and histograms."""

    def __init__(self, folder: Path, params: PublishParams, catalog: Catalog, mine: dict[str, Any], expected: int,
                 allowed: np.ndarray | None) -> None:
        self.folder, self.params, self.catalog, self.allowed = folder, params, catalog, allowed
        self.query_prompt: str = mine.get("query_prompt", "")
        self.negatives = num_negatives(mine)
        n, shuffled = self.negatives, lambda name, rows: ShuffledWriter(folder / name, params.shard_rows,
                                                                        params.seed, rows)
        self.pairs, self.triplets = shuffled(PAIRS, expected), shuffled(TRIPLETS, expected * n)
        self.scored, self.distill = shuffled(SCORED_PAIRS, expected * (n + 1)), shuffled(DISTILL, expected)
        self.lengths = length_histograms(["query", "positive", "negative"])
        self.scores: dict[str, Histogram] = {}
        self.scale: Scale | None = None
        self.teachers: set[str] = set()
        self.exports: dict[str, dict[str, int]] = {}  # source -> export -> lines
        self.foreign = 0
        self.short = 0

    def add(self, source: str, table: pa.Table) -> pa.Table:
        """Take one batch of a source's rows; returns them as published: scores clipped to the scale, and in a
        commercial export without negatives that are no text of the sources it publishes."""
        self._check_scale(table)
        self.teachers.update(pc.unique(table["teacher"]).to_pylist())
        table = clip_scores(table, self.scale)
        if self.allowed is not None:
            table, removed = drop_foreign_negatives(table, self.allowed)
            self.foreign += removed
        self.lengths["query"].add(pc.utf8_length(table["text"]))
        self.lengths["positive"].add(pc.utf8_length(table["text_pos"]))
        self.lengths["negative"].add(pc.utf8_length(pc.list_flatten(table["text_neg"])))
        self.scores["positive"].add(table["score_pos"])
        self.scores["negative"].add(pc.list_flatten(table["score_neg"]))
        per_negative = triplets(table)
        scored = scored_pairs(table, per_negative)
        self.pairs.write(pairs_of(table))
        self.triplets.write(per_negative)
        self.scored.write(scored)
        tuples = distill_rows(table, self.negatives)
        self.distill.write(tuples)
        self.short += table.num_rows - tuples.num_rows
        homogeneous = self.catalog.get(source).homogeneous
        prompt = None if not self.query_prompt else "" if homogeneous else self.query_prompt
        self._export(FLAGEMBEDDING, source, flagembedding_lines(table, prompt, FLAG_TYPES[homogeneous], self.scale,
                                                                self.params.teacher_temperature))
        self._export(UNIEM, source, pl.from_arrow(scored))
        return table

    def _check_scale(self, table: pa.Table) -> None:
        scales = set(pc.unique(table["score_scale"]).to_pylist())
        if self.scale is None:
            self.scale = Scale.parse(min(scales))
            edges = np.linspace(self.scale.lo, self.scale.hi, SCORE_BINS + 1)
            self.scores = {"positive": Histogram(edges), "negative": Histogram(edges)}
        if scales != {self.scale.text}:
            raise ValueError(f"scores on several scales ({sorted(scales | {self.scale.text})}): every score of a "
                             f"build must share one scale")

    def _export(self, kind: str, source: str, lines: pl.DataFrame) -> None:
        """Append JSON Lines (UTF-8, non-ASCII as is) to `exports/<kind>/<source>.jsonl`; no lines, no file."""
        if not lines.height:
            return
        path = self.folder / "exports" / kind / f"{source}.jsonl"
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                lines.write_ndjson(f)
        counts = self.exports.setdefault(source, {})
        counts[kind] = counts.get(kind, 0) + lines.height

    def configs(self) -> list[Config]:
        """The trainer configs that got rows (ntuples: distill's files without the label)."""
        n = self.negatives
        schema = distill_schema(n)
        made = [trainer_config(PAIRS, self.pairs.close(), PAIRS_SCHEMA, PAIRS_ABOUT),
                trainer_config(TRIPLETS, self.triplets.close(), TRIPLETS_SCHEMA,
                               "text, text_pos, text_neg: one row per (pair, negative)"),
                trainer_config(SCORED_PAIRS, self.scored.close(), SCORED_PAIRS_SCHEMA,
                               "sentence1, sentence2, label (the teacher score): every (query, positive) and "
                               "(query, negative) pair"),
                trainer_config(DISTILL, self.distill.close(), schema,
                               f"text, text_pos, text_neg_1..{n}, label [score_pos, score_neg_1..{n}]: the rows "
                               f"with {n} negatives")]
        distill = made[-1]
        names = [f.name for f in schema if f.name != "label"]
        made.append(Config(NTUPLES, distill.paths, distill.rows, f"text, text_pos, text_neg_1..{n}: distill "
                           f"without the label", schema=pa.schema([schema.field(c) for c in names]), columns=names,
                           num_bytes=distill.num_bytes - distill_label_bytes(distill.rows, n)))
        return [c for c in made if c.rows]


def num_negatives(mine: dict[str, Any]) -> int:
    """The build's negatives per row, from its mine settings (7, NegativeParams' default, when they do not say)."""
    return mine.get("negatives", {}).get("num_negatives", 7)


def distill_label_bytes(rows: int, n: int) -> int:
    """The Arrow bytes of `rows` labels of n + 1 float32 scores (offsets included)."""
    return rows * ((n + 1) * 4 + 4) + (4 if rows else 0)


def clip_scores(table: pa.Table, scale: Scale) -> pa.Table:
    """The rows with `score_pos` and every `score_neg` held to the scale's range."""
    table = table.combine_chunks()
    neg = table["score_neg"].chunk(0)
    clipped = pa.ListArray.from_arrays(neg.offsets, scale.clip(neg.flatten()))
    table = table.set_column(table.schema.get_field_index("score_neg"), table.schema.field("score_neg"),
                             clipped.cast(table.schema.field("score_neg").type))
    return table.set_column(table.schema.get_field_index("score_pos"), table.schema.field("score_pos"),
                            scale.clip(table["score_pos"]))


def text_hashes(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each text (polars' hash, fixed seed: equal texts, equal hashes, within one process)."""
    return pl.Series(texts, dtype=pl.String).hash(seed=0).to_numpy()


def published_positives(build_dir: Path, manifest: Manifest, params: PublishParams, sources: list[str]) -> np.ndarray:
    """The hashes of the positives of every m3e-hq row a commercial export publishes: the pool a mined negative of
    those sources must come from (a negative is some row's positive)."""
    parts = [text_hashes(t["text_pos"]) for s in sources for t in
             read_source(build_dir, STAGE_DIRS[M3E_HQ], s, manifest, params, ["source", "commercial", "text_pos"])]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)


def drop_foreign_negatives(table: pa.Table, allowed: np.ndarray) -> tuple[pa.Table, int]:
    """The rows without the negatives (and their scores) whose text is not among `allowed` hashes; how many went."""
    table = table.combine_chunks()
    texts = pc.list_flatten(table["text_neg"]).combine_chunks()
    scores = pc.list_flatten(table["score_neg"]).combine_chunks()
    keep = np.isin(text_hashes(texts), allowed)
    if keep.all():
        return table, 0
    parents = pc.list_parent_indices(table["text_neg"]).to_numpy()
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.bincount(parents[keep], minlength=table.num_rows))]),
                       pa.int32())
    mask = pa.array(keep)
    for name, values in (("text_neg", texts), ("score_neg", scores)):
        column = pa.ListArray.from_arrays(offsets, values.filter(mask)).cast(table.schema.field(name).type)
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), column)
    return table, int((~keep).sum())


def triplets(table: pa.Table) -> pa.Table:
    """One row per (pair, negative): text, text_pos, text_neg."""
    parent = pc.list_parent_indices(table["text_neg"])
    return pa.Table.from_arrays([table["text"].take(parent), table["text_pos"].take(parent),
                                 pc.list_flatten(table["text_neg"])], schema=TRIPLETS_SCHEMA)


def scored_pairs(table: pa.Table, per_negative: pa.Table) -> pa.Table:
    """One row per (query, positive) and per (query, negative), the latter from the rows' `triplets`: sentence1,
    sentence2, label (the score); a row's pairs are shuffled apart by the writer."""
    return pa.concat_tables([
        pa.Table.from_arrays([table["text"], table["text_pos"], table["score_pos"]], schema=SCORED_PAIRS_SCHEMA),
        pa.Table.from_arrays([per_negative["text"], per_negative["text_neg"], pc.list_flatten(table["score_neg"])],
                             schema=SCORED_PAIRS_SCHEMA),
    ])


def distill_rows(table: pa.Table, n: int) -> pa.Table:
    """The rows with n negatives as (text, text_pos, text_neg_1..n, label [score_pos, score_neg_1..n])."""
    full = table.filter(pc.greater_equal(pc.list_value_length(table["text_neg"]), n))
    negatives = [pc.list_element(full["text_neg"], i) for i in range(n)]
    scores = np.column_stack([np.asarray(full["score_pos"], dtype=np.float32)]
                             + [np.asarray(pc.list_element(full["score_neg"], i), dtype=np.float32)
                                for i in range(n)])
    label = pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel(), pa.float32()), n + 1).cast(
        pa.list_(pa.float32()))
    return pa.Table.from_arrays([full["text"], full["text_pos"], *negatives, label], schema=distill_schema(n))


def flagembedding_lines(table: pa.Table, prompt: str | None, kind: str, scale: Scale,
                        temperature: float) -> pl.DataFrame:
    """FlagEmbedding training lines, the scores as the logits its softmax takes (`Scale.logit`); `prompt` only
    when the build has a query prompt (FlagEmbedding prefers a line's prompt to --query_instruction_for_retrieval);
    rows without negatives are left out (an empty `neg` breaks its sampler)."""
    table = table.filter(pc.greater(pc.list_value_length(table["text_neg"]), 0))
    frame = pl.from_arrow(table.select(["text", "text_pos", "text_neg", "score_pos", "score_neg"]))
    columns = {"query": pl.col("text"), "pos": pl.concat_list("text_pos"), "neg": pl.col("text_neg"),
               "pos_scores": pl.concat_list(scale.logit(pl.col("score_pos").cast(pl.Float64), temperature)),
               "neg_scores": pl.col("score_neg").list.eval(scale.logit(pl.element().cast(pl.Float64), temperature))}
    if prompt is not None:
        columns["prompt"] = pl.lit(prompt)
    return frame.select(**columns, type=pl.lit(kind))


def write_with_score(folder: Path, build_dir: Path, manifest: Manifest, catalog: Catalog,
                     params: PublishParams, sources: list[str],
                     excluded: dict[str, str]) -> tuple[PublishedDataset, Scale, list[str]]:
    """The m3e-hq-with-score folder: per-source shards, trainer configs, exports, plots, card, checksums."""
    allowed = published_positives(build_dir, manifest, params, sources) if params.commercial_only else None
    sinks = ScoredSinks(folder, params, catalog, manifest.settings("mine"),
                        expected_rows(manifest, WITH_SCORE, sources), allowed)
    written, commercial = write_sources(folder, build_dir, WITH_SCORE, manifest, params, sources, sinks.add)
    shared, per_source = source_configs(written, commercial, catalog, params)
    assert sinks.scale is not None  # set by the first batch, and source_configs saw rows
    facts = Facts(WITH_SCORE, shared + sinks.configs() + per_source, {s: w.rows for s, w in written.items()},
                  excluded, scale=sinks.scale, teachers=sorted(sinks.teachers), exports=sinks.exports,
                  foreign_negatives=sinks.foreign, short_rows=sinks.short)
    if params.plots:
        facts.plots = [plot_rows_by_stage(folder, manifest, WITH_SCORE, sources),
                       plot_lengths(folder, sinks.lengths), plot_scores(folder, sinks.scores, sinks.scale)]
    return finish(folder, facts, manifest, catalog, params), sinks.scale, facts.teachers


def finish(folder: Path, facts: Facts, manifest: Manifest, catalog: Catalog,
           params: PublishParams) -> PublishedDataset:
    """Write the card, then the checksums of every file."""
    write_text(folder / "README.md", card(facts, manifest, catalog, params))
    write_text(folder / LICENSES_NAME, licences_section(facts, catalog) + "\n")
    commercial = next((c.sources for c in facts.configs if c.name == COMMERCIAL), [])
    return PublishedDataset(folder, {c.name: c.rows for c in facts.configs}, facts.source_rows, commercial,
                            write_sums(folder))


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file; OutputError when it cannot be written."""
    with writing(path):
        path.write_text(text, encoding="utf-8")


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_sums(folder: Path) -> dict[str, str]:
    """`SHA256SUMS` (sha256sum's format) for every other file in `folder`; returns path -> sha256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS_NAME)
    sums = {p.relative_to(folder).as_posix(): sha256(p) for p in files}
    write_text(folder / SUMS_NAME, "".join(f"{digest}  {rel}\n" for rel, digest in sums.items()))
    return sums


def recover(final: Path) -> None:
    """Clear what a publish killed before it finished left beside `final`: its staged folders, and the previous
    folder it had moved aside, which is put back when nothing replaced it."""
    for staged in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(staged)
    for old in final.parent.glob(f".{final.name}.old-*"):
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)


def swap_in(staged: Path, final: Path) -> None:
    """Put `staged` at `final`; a folder already there is moved aside first and deleted once the new one is in."""
    old = final.with_name(f".{final.name}.old-{uuid4().hex[:12]}") if final.exists() else None
    if old is not None:
        final.rename(old)
    try:
        staged.rename(final)
    except BaseException:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old)


# Plots (matplotlib's Agg canvas, no global pyplot state).

def save(fig: Figure, folder: Path, name: str) -> str:
    """Write `fig` as `plots/<name>`; returns the path in the folder."""
    path = folder / "plots" / name
    FigureCanvasAgg(fig)
    with writing(path):
        path.parent.mkdir(exist_ok=True)
        fig.savefig(path, dpi=100)
    return path.relative_to(folder).as_posix()


def plot_rows_by_stage(folder: Path, manifest: Manifest, dataset: str, sources: list[str]) -> str:
    stages = STAGES[dataset]
    fig = Figure(figsize=(9, 1.5 + 0.3 * len(sources) * len(stages) / 2), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(stages)
    y = np.arange(len(sources))
    for i, stage in enumerate(stages):
        kept = [manifest.stage_kept(stage, s) or 0 for s in sources]
        bars = ax.barh(y + i * height, kept, height, label=stage)
        ax.bar_label(bars, [f"{n:,}" for n in kept], padding=2, fontsize=6)  # a source at 0 rows shows "0"
    ax.set_yticks(y + height * (len(stages) - 1) / 2, sources)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1)  # log above 1 row, so that 0 has a place
    ax.set_xlim(0, None)
    ax.margins(x=0.15)
    ax.set(xlabel="rows kept (log scale above 1)", title="Rows per source after each stage")
    ax.legend(loc="lower right")
    return save(fig, folder, "rows-by-stage.png")


def plot_lengths(folder: Path, histograms: dict[str, Histogram]) -> str:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, hist in histograms.items():
        ax.stairs(hist.shares, hist.edges, label=name)
    used = np.flatnonzero(sum(h.counts for h in histograms.values()))
    ax.set_xscale("log")
    ax.set(xlim=(LENGTH_EDGES[used[0]], LENGTH_EDGES[used[-1] + 1]), xlabel="characters (log scale)",
           ylabel="share of texts", title="Text lengths")
    ax.legend()
    return save(fig, folder, "text-lengths.png")


def plot_scores(folder: Path, histograms: dict[str, Histogram], scale: Scale) -> str:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, hist in histograms.items():
        ax.stairs(hist.shares, hist.edges, label=f"{name} pairs")
    ax.set(xlabel=f"teacher score ({scale.text})", ylabel="share of pairs", title="Teacher scores")
    ax.legend()
    return save(fig, folder, "scores.png")


# The dataset card.

def card(facts: Facts, manifest: Manifest, catalog: Catalog, params: PublishParams) -> str:
    """README.md: YAML front matter (configs, licence, language, tasks, size) and the body."""
    sections = [front_matter(facts, params), intro(facts, manifest, params), configs_section(facts),
                sources_section(facts, manifest, catalog), licences_section(facts, catalog),
                filters_section(manifest, facts.dataset), mining_section(facts, manifest, params) if facts.scale else "",
                revisions_section(facts, manifest, catalog), plots_section(facts), usage_section(facts, manifest, params),
                f"## Files\n\nEvery file is listed with its sha256 in `{SUMS_NAME}` (`sha256sum -c {SUMS_NAME}`)."]
    return "\n\n".join(s for s in sections if s) + "\n"


def pretty_name(dataset: str, params: PublishParams) -> str:
    return PRETTY_NAMES[dataset] + (" (commercial use)" if params.commercial_only else "")


def size_category(rows: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "1B<n<10B")


def front_matter(facts: Facts, params: PublishParams) -> str:
    tags = ["embeddings", "text-pairs", "m3e"] + (["hard-negatives"] if facts.scale else [])
    meta = {"pretty_name": pretty_name(facts.dataset, params), "license": "other",
            "license_name": "per-source", "license_link": LICENSES_NAME, "language": ["zh"],
            "task_categories": TASK_CATEGORIES, "size_categories": [size_category(facts.configs[0].rows)],
            "tags": tags, "configs": [config_entry(c) for c in facts.configs],
            "dataset_info": [{"config_name": c.name, "features": features(facts.dataset, c),
                              "splits": [{"name": "train", "num_bytes": c.num_bytes, "num_examples": c.rows}]}
                             for c in facts.configs]}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def features(dataset: str, config: Config) -> list[dict[str, Any]]:
    """The card's `features` of a config, as `datasets` writes them."""
    schema = config.schema or (M3E_HQ_SCHEMA if dataset == M3E_HQ else M3E_HQ_WITH_SCORE_SCHEMA)
    return datasets.Features.from_arrow_schema(schema)._to_yaml_list()


def config_entry(config: Config) -> dict[str, Any]:
    paths = config.paths[0] if len(config.paths) == 1 else config.paths
    return {"config_name": config.name, **({"default": True} if config.name == DEFAULT else {}),
            "data_files": [{"split": "train", "path": paths}],
            **({"columns": config.columns} if config.columns else {})}


def intro(facts: Facts, manifest: Manifest, params: PublishParams) -> str:
    allowed = " or ".join(f"`{a}`" for a in params.allowed)
    rule = ("are not marked as barring commercial use (sources whose commercial use or licence is unstated "
            "included on request)" if params.include_unknown_license else
            "the M3E table marks for commercial use and that state a licence for their data (sources whose licence "
            "is unstated are left out unless included on request)")
    if facts.scale:
        about = (f"m3e-hq plus mined hard negatives (`text_neg`) and teacher scores (`score_pos`, `score_neg`) on "
                 f"the scale `{facts.scale.text}` (teacher {', '.join(f'`{t}`' for t in facts.teachers)}). Every "
                 f"score shares that scale, so scores compare across queries, as CoSENT expects.")
    else:
        about = ("Chinese text pairs (`text`, `text_pos`) from the public sources of the M3E dataset table, cleaned: "
                 "ingested and normalised, quality-filtered, then deduplicated across sources (exact and MinHash "
                 "near-duplicates, the survivor of each chosen among the rows the filters kept; the splits C-MTEB "
                 "evaluates on left out). Every row carries its source's domain, "
                 "task type, prompt, homogeneity (s2s / s2p), licence and commercial-use flag.")
    built = (f"Built by the m3e-hq builder on {manifest.created} from {built_from(manifest)} and the source "
             f"catalog with sha256 `{manifest.catalog_sha256}`.")
    lines = [f"# {pretty_name(facts.dataset, params)}", "", about, "", built, ""]
    if facts.scale and manifest.settings("mine").get("encoder") == DEFAULT_ENCODER:
        lines += [(f"**The scores and negatives come from the demo encoder `{DEFAULT_ENCODER}`** (all-MiniLM-L6-v2, "
                  "packaged so that a build runs offline). Its vocabulary maps most Chinese characters to [UNK], so "
                  "its similarities say little about Chinese text: do not train on them. A real build names a "
                  "Chinese encoder and teacher (`--encoder moka-ai/m3e-base --teacher BAAI/bge-reranker-base`)."), ""]
    if params.commercial_only:
        left_out = ", ".join(f"{s} ({why})" for s, why in facts.excluded.items()) or "none"
        lines.append(f"**This is the commercial-only export.** It holds only rows of sources that {rule}, and of "
                     f"those only rows whose own `commercial` column is {allowed}. Left out: {left_out}. Each "
                     f"included source's licence is listed below; check each source's terms before use.")
    else:
        lines.append(f"Licences differ per source (below). The `commercial` config holds the sources that {rule}; "
                     f"check each source's terms before use.")
    return "\n".join(lines)


def built_from(manifest: Manifest) -> str:
    """What the build read, in words: the shipped samples, native files held locally, or the real sources."""
    build = manifest.params
    if build.get("samples"):
        return ("**the shipped samples** (`data/samples/`: a few dozen rows per source, planted defects "
                "included, for trying the builder; not the real dataset)")
    if build.get("raw_dir"):
        return f"native files held locally (`--raw-dir {Path(build['raw_dir']).name}`)"
    return "the sources as downloaded (Hub, HTTP) and downloaded by hand"


def table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A markdown table; cells are escaped for pipes and newlines."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def configs_section(facts: Facts) -> str:
    rows = [(f"`{c.name}`", f"{c.rows:,}", f"`{c.paths[0]}`" if len(c.paths) == 1 else
             f"`data/<source>/*.parquet` of {len(c.paths)} sources", c.about) for c in facts.configs]
    return "## Configs\n\nOne split, `train`, per config.\n\n" + table(["config", "rows", "data_files", "holds"],
                                                                        rows)


def count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def sources_section(facts: Facts, manifest: Manifest, catalog: Catalog) -> str:
    stages = STAGES[facts.dataset]
    rows = []
    for name, published in facts.source_rows.items():
        s = catalog.get(name)
        rows.append([name, f"{s.domain.value} ({s.domain.label_zh})", ", ".join(t.value for t in s.task_types),
                     s.prompt.value, "s2s" if s.homogeneous else "s2p", s.license, s.commercial.value,
                     *(count(manifest.stage_kept(stage, name)) for stage in stages), f"{published:,}"])
    header = ["source", "domain", "task", "prompt", "s2s/s2p", "licence", "commercial", *stages, "published"]
    empty = [s for s, n in facts.source_rows.items() if not n]
    note = f"\n\nNo rows, so no config: {', '.join(empty)}." if empty else ""
    return ("## Sources\n\nRows kept after each stage of the build, and rows published here.\n\n"
            + table(header, rows) + note)


def licences_section(facts: Facts, catalog: Catalog) -> str:
    lines = ["## Licences", "", (f"The dataset's licence is `other` (`{LICENSES_NAME}`): each row keeps its source's "
             "licence (column `license`)."), ""]
    for name in facts.source_rows:
        s = catalog.get(name)
        lines.append(f"- **{name}** ({s.provider}, {s.url}): {s.license}; research use: {s.research_use.value}; "
                     f"commercial use: {s.commercial.value}")
    return "\n".join(lines)


def flatten(settings: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def render(value: Any) -> str:
    if value is None:
        return "off"
    if value == "":
        return "—"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "—"
    return str(value).lower() if isinstance(value, bool) else str(value)


def settings_table(settings: dict[str, Any], leave_out: Collection[str] = ()) -> str:
    return table(["setting", "value"], ((f"`{k}`", render(v)) for k, v in flatten(settings) if k not in leave_out))


def filters_section(manifest: Manifest, dataset: str) -> str:
    dedup = dict(manifest.settings("dedup"))
    if dedup.get("decontaminate"):
        dedup["decontaminate"] = Path(dedup["decontaminate"]).name
    totals = [(stage, f"{s.totals.read:,}", f"{s.totals.kept:,}",
               ", ".join(f"{r} {n:,}" for r, n in s.totals.dropped.items()) or "—")
              for stage, s in manifest.stages.items() if stage in STAGES[dataset]]
    order = ("Rows of the whole build by stage, in the order the stages ran: the quality filters before dedup, so "
             "that a duplicate's survivor is always a row the filters kept.")
    return "\n\n".join(["## Filters and thresholds", order,
                         table(["stage", "read", "kept", "dropped by reason"], totals),
                         "### Quality filters", settings_table(manifest.settings("filters")),
                         "### Dedup", settings_table(dedup, {"workers"})])


def mining_section(facts: Facts, manifest: Manifest, params: PublishParams) -> str:
    mine = manifest.settings("mine")
    stats = manifest.stages["mine"].stats or {}
    scores = stats.get("scores", {})
    columns = ["count", "mean", "p5", "p25", "p50", "p75", "p95"]
    models = (f"Encoder `{mine.get('encoder')}`, teacher `{mine.get('teacher')}`, search backend "
              f"{render(stats.get('search_backend'))}, scores on the scale `{facts.scale.text}`.")
    outcomes = ", ".join(f"{k} {v:,}" for k, v in stats.get("candidates", {}).items()) or "—"
    found = (f"Candidate negatives by outcome: {outcomes}. Likely false negatives removed: "
             f"{stats.get('false_negatives_removed', 0):,}; rows with fewer negatives than asked: "
             f"{stats.get('rows_short', 0):,}.")
    distributions = table(["scores", *columns], ([kind, *(scores[kind].get(c, "—") for c in columns)]
                                                 for kind in ("positive", "negative") if kind in scores))
    pools = ("Negatives come from the positives of the row's own source (`pool: source`)."
             if mine.get("pool", "source") == "source" else
             "Negatives come from the positives of every source of the row's licence class (`pool: all`): sources "
             "that allow commercial use among themselves, those whose licence is unstated among themselves, the "
             "others among themselves, so that no commercial row carries a non-commercial negative.")
    if params.commercial_only:
        pools += (f" Every negative of this export was checked to be the text of a row it publishes: "
                  f"{facts.foreign_negatives:,} that were not (a build mined before negatives kept to their "
                  f"licence class) were removed with their scores.")
    return "\n\n".join(["## Models and mining", models, pools, settings_table(mine, MINE_HIDDEN), found,
                         distributions])


def revisions_section(facts: Facts, manifest: Manifest, catalog: Catalog) -> str:
    rows = []
    for name in facts.source_rows:
        obtain = catalog.get(name).obtain
        summary = manifest.sources.get(name)
        obtained = summary.obtained if summary else None
        where = obtain.repo if isinstance(obtain, HubObtain) else obtain.kind
        rows.append([name, where, obtained.status if obtained else "—", revision(obtained)])
    return "## Source revisions\n\n" + table(["source", "from", "obtained", "revision / sha256"], rows)


def revision(obtained: ObtainedSummary | None) -> str:
    """The Hub commit, else the sha256 of each downloaded file, as a table cell ("—" when there is none)."""
    version = obtained and (obtained.revision or ", ".join(obtained.sha256.values()))
    return f"`{version}`" if version else "—"


def plots_section(facts: Facts) -> str:
    if not facts.plots:
        return ""
    return "## Plots\n\n" + "\n\n".join(f"![{Path(p).stem}]({p})" for p in facts.plots)


def usage_section(facts: Facts, manifest: Manifest, params: PublishParams) -> str:
    lines = ["## Use", "", "```python", "from datasets import load_dataset", "",
             f'REPO = "<org>/{facts.dataset}"  # the Hub repo, or this folder\'s path',
             'rows = load_dataset(REPO, "default", split="train")  # every column, source by source',
             f'pairs = load_dataset(REPO, "{PAIRS}", split="train")  # text, text_pos']
    order = (f"The trainer configs are shuffled across sources (seed {params.seed}); `default` and the per-source "
             "configs are in build order, source by source. sentence-transformers takes a config's text columns "
             "by position and `label` as the label, so every trainer config trains as loaded; with in-batch "
             "negatives use `batch_sampler=BatchSamplers.NO_DUPLICATES`, since one query has several rows. uniem "
             f"detects `{PAIRS}` (text, text_pos) as pair records"
             + (f", `{TRIPLETS}` (text, text_pos, text_neg) as triplet records and `{SCORED_PAIRS}` (sentence1, "
                "sentence2, label) as scored pairs" if facts.scale else "") + ".")
    if not facts.scale:
        return "\n".join([*lines, "```", "", order])
    has_distill = any(c.name == DISTILL for c in facts.configs)
    mine = manifest.settings("mine")
    negatives = num_negatives(mine)
    lines += [f'triplets = load_dataset(REPO, "{TRIPLETS}", split="train")  # MultipleNegativesRankingLoss, uniem',
              f'scored = load_dataset(REPO, "{SCORED_PAIRS}", split="train")  # CoSENTLoss, uniem',
              f'ntuples = load_dataset(REPO, "{NTUPLES}", split="train")  # MNRL with {negatives} hard negatives',
              f'distill = load_dataset(REPO, "{DISTILL}", split="train")  # MarginMSELoss, DistillKLDivLoss',
              "```"]
    scale = facts.scale
    scores = (f"Scores are on the build's scale `{scale.text}` everywhere but the FlagEmbedding export. CoSENT "
              f"needs only their order (`{SCORED_PAIRS}`); CosineSimilarityLoss needs [-1, 1]. `{DISTILL}`'s "
              f"`label` is [score_pos, score_neg_1..{negatives}]: MarginMSELoss takes the margins score_pos - "
              "score_neg as they are; DistillKLDivLoss softmaxes label / teacher_temperature, so give it a "
              "temperature that suits the scale (for cosine scores, e.g. `DistillKLDivLoss(model, "
              f"temperature={params.teacher_temperature:g})`). {f'{facts.short_rows:,} rows with fewer negatives are not in it.' if has_distill else ''}")
    flag_prompt = ("`prompt` is the build's query prompt for s2p sources and empty for s2s ones (FlagEmbedding uses "
                   "a line's prompt instead of `--query_instruction_for_retrieval`, when that is given)"
                   if mine.get("query_prompt") else
                   "no `prompt` key, since the build had no query prompt: FlagEmbedding then uses "
                   "`--query_instruction_for_retrieval`")
    exports = ("Exports, one JSON Lines file per source: `exports/flagembedding/` (`query, pos, neg, pos_scores, "
               f"neg_scores, type`; rows without negatives left out; {flag_prompt}; `type` is `symmetric_sts` for "
               "s2s and `normal` for s2p; pass the folder to `--train_data`). FlagEmbedding softmaxes "
               "`pos_scores`/`neg_scores` as they are (`--knowledge_distillation True`), so they are the teacher's "
               f"logits: {scale.transform(params.teacher_temperature)} (on a cosine scale, the temperature "
               "FlagEmbedding trains with by default; with another `--temperature` T, multiply them by "
               f"{params.teacher_temperature:g} / T). `exports/uniem/` holds `sentence1, sentence2, label` (the "
               f"label is the score on `{scale.text}`: uniem's scored pairs).")
    files = table(["source", *EXPORTS], ([s, *(count(k.get(kind)) for kind in EXPORTS)]
                                         for s, k in facts.exports.items()))
    return "\n".join([*lines, "", order, "", scores, "", exports, "", files])
