"""Publish a build as two Hugging Face dataset folders, m3e-hq and m3e-hq-with-score.

    <build>/dedup/<source>.parquet ─► <out>/m3e-hq/             data/<source>/, README.md, plots/, SHA256SUMS
    <build>/mine/<source>.parquet  ─► <out>/m3e-hq-with-score/  the same, data/triplets/, data/scored-pairs/, exports/

m3e-hq is the rows of the last curation stage, dedup (the filters run before it); m3e-hq-with-score the mine stage's.

Each source's rows are written once, as bounded shards `data/<source>/train-NNNNN-of-NNNNN.parquet`; the card's
`configs:` point `default` (every source), `commercial` (sources whose licence allows commercial use) and one config
per source at them with `data_files` globs. The with-score set adds trainer-ready configs (`triplets`,
`scored-pairs`) and FlagEmbedding and uniem JSON Lines exports. Both folders are built under hidden temporary names
in the output folder and swapped in only once both are complete: a failed publish leaves the previous one intact.
"""

import hashlib
import re
import shutil
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
from pydantic import BaseModel, ConfigDict, Field

from m3e_hq.schemas import M3E_HQ_SCHEMA, M3E_HQ_WITH_SCORE_SCHEMA, MANIFEST_NAME, Manifest, ObtainedSummary
from m3e_hq.sources.catalog import Catalog, HubObtain

M3E_HQ, WITH_SCORE = "m3e-hq", "m3e-hq-with-score"
DEFAULT, COMMERCIAL, TRIPLETS, SCORED_PAIRS = "default", "commercial", "triplets", "scored-pairs"
RESERVED_CONFIGS = {DEFAULT, COMMERCIAL, TRIPLETS, SCORED_PAIRS}
# The stages each dataset's rows went through, in the build's order, and the one whose kept rows it publishes.
STAGES = {M3E_HQ: ("ingest", "filter", "dedup"), WITH_SCORE: ("ingest", "filter", "dedup", "mine")}
STAGE_DIRS = {M3E_HQ: STAGES[M3E_HQ][-1], WITH_SCORE: STAGES[WITH_SCORE][-1]}
PRETTY_NAMES = {M3E_HQ: "M3E HQ", WITH_SCORE: "M3E HQ with scores"}
SUMS_NAME = "SHA256SUMS"
BATCH_ROWS = 10_000
TASK_CATEGORIES = ["sentence-similarity", "feature-extraction", "text-retrieval"]
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
LENGTH_EDGES = np.logspace(0, 5, 51)  # 1 to 100,000 characters
SCORE_BINS = 50
SCALE = re.compile(r"^(?P<name>[a-z]+)\[(?P<lo>-?\d+(?:\.\d+)?),(?P<hi>-?\d+(?:\.\d+)?)\]$")
FLAG_TYPES = {True: "symmetric_sts", False: "normal"}  # FlagEmbedding `type` by homogeneity (s2s, s2p)
FLAGEMBEDDING, UNIEM = "flagembedding", "uniem"
EXPORTS = (FLAGEMBEDDING, UNIEM)  # exports/<export>/<source>.jsonl
MINE_HIDDEN = ("device", "batch_size", "teacher_batch_size")  # mine settings that do not change the data
TRIPLETS_SCHEMA = pa.schema([pa.field(n, pa.string(), nullable=False) for n in ("anchor", "positive", "negative")]
                            + [pa.field(n, pa.float32(), nullable=False) for n in ("score_pos", "score_neg")])
SCORED_PAIRS_SCHEMA = pa.schema([pa.field("sentence1", pa.string(), nullable=False),
                                 pa.field("sentence2", pa.string(), nullable=False),
                                 pa.field("score", pa.float32(), nullable=False)])


class PublishParams(BaseModel):
    """What to publish and how to cut it."""

    model_config = ConfigDict(extra="forbid")

    shard_rows: int = Field(100_000, ge=1, description="most rows in one Parquet shard")
    commercial_only: bool = Field(False, description="publish only rows of sources that allow commercial use (the "
                                  "M3E table says yes and the source states a licence); every config then holds "
                                  "only those rows", json_schema_extra={"cli": "--commercial-only"})
    include_unknown_license: bool = Field(False, description="also count sources whose commercial use or licence "
                                          "is unstated as commercial, in the commercial config and commercial_only",
                                          json_schema_extra={"cli": "--include-unknown-license"})
    plots: bool = Field(True, description="draw PNG plots (rows by stage, text lengths, scores) for the cards")

    @property
    def allowed(self) -> list[str]:
        """The `commercial` values that count as commercial use."""
        return ["yes", "unknown"] if self.include_unknown_license else ["yes"]


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

    def clip(self, values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Values held to [lo, hi] (float rounding can put a cosine at 1.0000001)."""
        lo, hi = pa.scalar(self.lo, values.type), pa.scalar(self.hi, values.type)
        return pc.max_element_wise(pc.min_element_wise(values, hi), lo)


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


class ShardWriter:
    """One config's Parquet shards `train-NNNNN-of-NNNNN.parquet` in `folder`, at most `shard_rows` rows each."""

    def __init__(self, folder: Path, shard_rows: int) -> None:
        self.folder, self.shard_rows = folder, shard_rows
        self.shards: list[Path] = []
        self.schema: pa.Schema | None = None
        self.writer: pq.ParquetWriter | None = None
        self.in_shard = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.schema = self.schema or table.schema
        table = table.cast(self.schema)
        while table.num_rows:
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
        self._close_shard()
        n = len(self.shards)
        for i, shard in enumerate(self.shards):
            shard.rename(self.folder / f"train-{i:05d}-of-{n:05d}.parquet")


def publish(build_dir: Path, out_dir: Path, params: PublishParams, catalog: Catalog) -> PublishResult:
    """Publish the build in `build_dir` as `out_dir/m3e-hq/` and `out_dir/m3e-hq-with-score/`.

    Both folders are built completely before either replaces its predecessor; an error before then leaves the
    previous publish as it was and no temporary folder behind. What a publish killed midway left is cleared first."""
    manifest = read_manifest(build_dir)
    sources, excluded = plan_sources(manifest, catalog, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (M3E_HQ, WITH_SCORE):
        recover(out_dir / name)
    staged: dict[str, Path] = {}
    try:  # on success the staged folders have been renamed away and the clean-up finds nothing
        for name in (M3E_HQ, WITH_SCORE):
            staged[name] = out_dir / f".{name}.tmp-{uuid4().hex[:12]}"
            staged[name].mkdir()
        plain = write_m3e_hq(staged[M3E_HQ], build_dir, manifest, catalog, params, sources, excluded)
        scored, scale, teachers = write_with_score(staged[WITH_SCORE], build_dir, manifest, catalog, params,
                                                   sources, excluded)
        for name, folder in staged.items():
            swap_in(folder, out_dir / name)
    finally:
        for folder in staged.values():
            shutil.rmtree(folder, ignore_errors=True)
    plain.folder, scored.folder = out_dir / M3E_HQ, out_dir / WITH_SCORE
    return PublishResult(plain, scored, sources, excluded, params.commercial_only, scale.text, teachers)


def read_manifest(build_dir: Path) -> Manifest:
    """The build's manifest; it must hold the stages whose rows are published (dedup and mine)."""
    manifest = Manifest.read(build_dir)
    missing = [stage for stage in STAGE_DIRS.values() if stage not in manifest.stages]
    if missing:
        raise ValueError(f"{build_dir / MANIFEST_NAME} has no {' or '.join(missing)} stage: the build did not finish")
    return manifest


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


def read_source(build_dir: Path, stage: str, source: str, manifest: Manifest,
                params: PublishParams) -> Iterator[pa.Table]:
    """One source's rows of a stage, in batches; with commercial_only, only rows whose own `commercial` value
    allows it. The file must hold the rows the manifest counts, all of this source."""
    path = build_dir / stage / f"{source}.parquet"
    expected = manifest.stage_kept(stage, source)
    parquet = pq.ParquetFile(path, pre_buffer=False)
    if parquet.metadata.num_rows != expected:
        raise ValueError(f"{path} has {parquet.metadata.num_rows} rows but the manifest says {expected}: the files "
                         f"and the manifest come from different builds")
    for batch in parquet.iter_batches(BATCH_ROWS):
        table = pa.Table.from_batches([batch])
        if pc.any(pc.not_equal(table["source"], source)).as_py():
            raise ValueError(f"{path} holds rows of other sources than {source}")
        if params.commercial_only:
            table = table.filter(pc.is_in(table["commercial"], pa.array(params.allowed)))
        if table.num_rows:
            yield table


def write_sources(folder: Path, build_dir: Path, dataset: str, manifest: Manifest, params: PublishParams,
                  sources: list[str],
                  on_batch: Callable[[str, pa.Table], None]) -> tuple[dict[str, int], dict[str, int]]:
    """Write each source's rows to `data/<source>/`, passing every batch to `on_batch`; returns rows per source and
    rows per source whose own `commercial` value allows commercial use."""
    rows, commercial = {}, {}
    for source in sources:
        writer = ShardWriter(folder / "data" / source, params.shard_rows)
        commercial[source] = 0
        for table in read_source(build_dir, STAGE_DIRS[dataset], source, manifest, params):
            writer.write(table)
            commercial[source] += pc.sum(pc.is_in(table["commercial"], pa.array(params.allowed))).as_py() or 0
            on_batch(source, table)
        writer.close()
        rows[source] = writer.rows
    return rows, commercial


def source_configs(rows: dict[str, int], commercial: dict[str, int], catalog: Catalog,
                   params: PublishParams) -> tuple[list[Config], list[Config]]:
    """`default` and `commercial` (sources the catalog and every row mark commercial), and one config per source
    with rows."""
    with_rows = [s for s, n in rows.items() if n]
    if not with_rows:
        raise ValueError("no rows to publish")
    usable = [s for s in with_rows
              if catalog.get(s).commercial_use(params.include_unknown_license) and commercial[s] == rows[s]]
    shared = [source_config(DEFAULT, with_rows, rows, "every published source")]
    if usable:
        shared.append(source_config(COMMERCIAL, usable, rows, "sources that allow commercial use"))
    return shared, [source_config(s, [s], rows, f"source {s} only") for s in with_rows]


def source_config(name: str, sources: list[str], rows: dict[str, int], about: str) -> Config:
    return Config(name, [f"data/{s}/*.parquet" for s in sources], sum(rows[s] for s in sources), about, sources)


def length_histograms(names: Iterable[str]) -> dict[str, Histogram]:
    return {name: Histogram(LENGTH_EDGES) for name in names}


def write_m3e_hq(folder: Path, build_dir: Path, manifest: Manifest, catalog: Catalog, params: PublishParams,
                 sources: list[str], excluded: dict[str, str]) -> PublishedDataset:
    """The m3e-hq folder: per-source shards, plots, card, checksums."""
    lengths = length_histograms(["query", "positive"])

    def on_batch(_source: str, table: pa.Table) -> None:
        lengths["query"].add(pc.utf8_length(table["text"]))
        lengths["positive"].add(pc.utf8_length(table["text_pos"]))

    rows, commercial = write_sources(folder, build_dir, M3E_HQ, manifest, params, sources, on_batch)
    shared, per_source = source_configs(rows, commercial, catalog, params)
    facts = Facts(M3E_HQ, shared + per_source, rows, excluded)
    if params.plots:
        facts.plots = [plot_rows_by_stage(folder, manifest, M3E_HQ, sources),
                       plot_lengths(folder, lengths)]
    return finish(folder, facts, manifest, catalog, params)


class ScoredSinks:
    """What the with-score rows feed besides their own shards: trainer configs, exports and histograms."""

    def __init__(self, folder: Path, params: PublishParams, catalog: Catalog, query_prompt: str) -> None:
        self.folder, self.catalog, self.query_prompt = folder, catalog, query_prompt
        self.triplets = ShardWriter(folder / "data" / TRIPLETS, params.shard_rows)
        self.pairs = ShardWriter(folder / "data" / SCORED_PAIRS, params.shard_rows)
        self.lengths = length_histograms(["query", "positive", "negative"])
        self.scores: dict[str, Histogram] = {}
        self.scale: Scale | None = None
        self.teachers: set[str] = set()
        self.exports: dict[str, dict[str, int]] = {}  # source -> export -> lines

    def add(self, source: str, table: pa.Table) -> None:
        """Take one batch of a source's rows."""
        self._check_scale(table)
        self.teachers.update(pc.unique(table["teacher"]).to_pylist())
        table = clip_scores(table, self.scale)
        self.lengths["query"].add(pc.utf8_length(table["text"]))
        self.lengths["positive"].add(pc.utf8_length(table["text_pos"]))
        self.lengths["negative"].add(pc.utf8_length(pc.list_flatten(table["text_neg"])))
        self.scores["positive"].add(table["score_pos"])
        self.scores["negative"].add(pc.list_flatten(table["score_neg"]))
        pairs = scored_pairs(table)
        self.triplets.write(triplets(table))
        self.pairs.write(pairs)
        homogeneous = self.catalog.get(source).homogeneous
        prompt = "" if homogeneous else self.query_prompt
        self._export(FLAGEMBEDDING, source, flagembedding_lines(table, prompt, FLAG_TYPES[homogeneous]))
        self._export(UNIEM, source, pl.from_arrow(pairs).rename({"score": "label"}))

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
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            lines.write_ndjson(f)
        counts = self.exports.setdefault(source, {})
        counts[kind] = counts.get(kind, 0) + lines.height

    def configs(self) -> list[Config]:
        """The trainer-ready configs that got rows."""
        self.triplets.close()
        self.pairs.close()
        made = [Config(TRIPLETS, [f"data/{TRIPLETS}/*.parquet"], self.triplets.rows,
                       "anchor, positive, negative (one row per negative), score_pos, score_neg"),
                Config(SCORED_PAIRS, [f"data/{SCORED_PAIRS}/*.parquet"], self.pairs.rows,
                       "sentence1, sentence2, score: every (query, positive) and (query, negative) pair")]
        return [c for c in made if c.rows]


def clip_scores(table: pa.Table, scale: Scale) -> pa.Table:
    """The rows with `score_pos` and every `score_neg` held to the scale's range."""
    table = table.combine_chunks()
    neg = table["score_neg"].chunk(0)
    clipped = pa.ListArray.from_arrays(neg.offsets, scale.clip(neg.values))
    table = table.set_column(table.schema.get_field_index("score_neg"), "score_neg", clipped)
    return table.set_column(table.schema.get_field_index("score_pos"), "score_pos", scale.clip(table["score_pos"]))


def triplets(table: pa.Table) -> pa.Table:
    """One row per (pair, negative): anchor, positive, negative, score_pos, score_neg."""
    parent = pc.list_parent_indices(table["text_neg"])
    return pa.Table.from_arrays([table["text"].take(parent), table["text_pos"].take(parent),
                                 pc.list_flatten(table["text_neg"]), table["score_pos"].take(parent),
                                 pc.list_flatten(table["score_neg"])], schema=TRIPLETS_SCHEMA)


def scored_pairs(table: pa.Table) -> pa.Table:
    """One row per (query, positive) and per (query, negative): sentence1, sentence2, score."""
    neg = triplets(table)
    return pa.concat_tables([
        pa.Table.from_arrays([table["text"], table["text_pos"], table["score_pos"]], schema=SCORED_PAIRS_SCHEMA),
        pa.Table.from_arrays([neg["anchor"], neg["negative"], neg["score_neg"]], schema=SCORED_PAIRS_SCHEMA),
    ])


def flagembedding_lines(table: pa.Table, prompt: str, kind: str) -> pl.DataFrame:
    """FlagEmbedding training lines; rows without negatives are left out (an empty `neg` breaks its sampler)."""
    table = table.filter(pc.greater(pc.list_value_length(table["text_neg"]), 0))
    frame = pl.from_arrow(table.select(["text", "text_pos", "text_neg", "score_pos", "score_neg"]))
    return frame.select(query="text", pos=pl.concat_list("text_pos"), neg="text_neg",
                        pos_scores=pl.concat_list("score_pos"), neg_scores="score_neg", prompt=pl.lit(prompt),
                        type=pl.lit(kind))


def write_with_score(folder: Path, build_dir: Path, manifest: Manifest, catalog: Catalog,
                     params: PublishParams, sources: list[str],
                     excluded: dict[str, str]) -> tuple[PublishedDataset, Scale, list[str]]:
    """The m3e-hq-with-score folder: per-source shards, trainer configs, exports, plots, card, checksums."""
    sinks = ScoredSinks(folder, params, catalog, manifest.settings("mine").get("query_prompt", ""))
    rows, commercial = write_sources(folder, build_dir, WITH_SCORE, manifest, params, sources, sinks.add)
    shared, per_source = source_configs(rows, commercial, catalog, params)
    assert sinks.scale is not None  # set by the first batch, and source_configs saw rows
    facts = Facts(WITH_SCORE, shared + sinks.configs() + per_source, rows, excluded, scale=sinks.scale,
                  teachers=sorted(sinks.teachers), exports=sinks.exports)
    if params.plots:
        facts.plots = [plot_rows_by_stage(folder, manifest, WITH_SCORE, sources),
                       plot_lengths(folder, sinks.lengths), plot_scores(folder, sinks.scores, sinks.scale)]
    return finish(folder, facts, manifest, catalog, params), sinks.scale, facts.teachers


def finish(folder: Path, facts: Facts, manifest: Manifest, catalog: Catalog,
           params: PublishParams) -> PublishedDataset:
    """Write the card, then the checksums of every file."""
    (folder / "README.md").write_text(card(facts, manifest, catalog, params), encoding="utf-8")
    commercial = next((c.sources for c in facts.configs if c.name == COMMERCIAL), [])
    return PublishedDataset(folder, {c.name: c.rows for c in facts.configs}, facts.source_rows, commercial,
                            write_sums(folder))


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_sums(folder: Path) -> dict[str, str]:
    """`SHA256SUMS` (sha256sum's format) for every other file in `folder`; returns path -> sha256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS_NAME)
    sums = {p.relative_to(folder).as_posix(): sha256(p) for p in files}
    (folder / SUMS_NAME).write_text("".join(f"{digest}  {rel}\n" for rel, digest in sums.items()), encoding="utf-8")
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
    path.parent.mkdir(exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path.relative_to(folder).as_posix()


def plot_rows_by_stage(folder: Path, manifest: Manifest, dataset: str, sources: list[str]) -> str:
    stages = STAGES[dataset]
    fig = Figure(figsize=(9, 1.5 + 0.3 * len(sources) * len(stages) / 2), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(stages)
    y = np.arange(len(sources))
    for i, stage in enumerate(stages):
        ax.barh(y + i * height, [manifest.stage_kept(stage, s) or 0 for s in sources], height, label=stage)
    ax.set_yticks(y + height * (len(stages) - 1) / 2, sources)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(xlabel="rows kept (log scale)", title="Rows per source after each stage")
    ax.legend()
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
                filters_section(manifest, facts.dataset), mining_section(facts, manifest) if facts.scale else "",
                revisions_section(facts, manifest, catalog), plots_section(facts), usage_section(facts),
                f"## Files\n\nEvery file is listed with its sha256 in `{SUMS_NAME}` (`sha256sum -c {SUMS_NAME}`)."]
    return "\n\n".join(s for s in sections if s) + "\n"


def pretty_name(dataset: str, params: PublishParams) -> str:
    return PRETTY_NAMES[dataset] + (" (commercial use)" if params.commercial_only else "")


def size_category(rows: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "1B<n<10B")


def front_matter(facts: Facts, params: PublishParams) -> str:
    tags = ["embeddings", "text-pairs", "m3e"] + (["hard-negatives"] if facts.scale else [])
    meta = {"pretty_name": pretty_name(facts.dataset, params), "license": "other", "language": ["zh"],
            "task_categories": TASK_CATEGORIES, "size_categories": [size_category(facts.configs[0].rows)],
            "tags": tags, "configs": [config_entry(c) for c in facts.configs],
            "dataset_info": [{"config_name": c.name, "features": features(facts.dataset, c.name),
                              "splits": [{"name": "train", "num_examples": c.rows}]} for c in facts.configs]}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def features(dataset: str, config: str) -> list[dict[str, Any]]:
    """The card's `features` of a config, as `datasets` writes them."""
    schema = {TRIPLETS: TRIPLETS_SCHEMA, SCORED_PAIRS: SCORED_PAIRS_SCHEMA}.get(
        config, M3E_HQ_SCHEMA if dataset == M3E_HQ else M3E_HQ_WITH_SCORE_SCHEMA)
    return datasets.Features.from_arrow_schema(schema)._to_yaml_list()


def config_entry(config: Config) -> dict[str, Any]:
    paths = config.paths[0] if len(config.paths) == 1 else config.paths
    return {"config_name": config.name, **({"default": True} if config.name == DEFAULT else {}),
            "data_files": [{"split": "train", "path": paths}]}


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
    built = (f"Built by the m3e-hq builder on {manifest.created} from the source catalog "
             f"with sha256 `{manifest.catalog_sha256}`.")
    lines = [f"# {pretty_name(facts.dataset, params)}", "", about, "", built, ""]
    if params.commercial_only:
        left_out = ", ".join(f"{s} ({why})" for s, why in facts.excluded.items()) or "none"
        lines.append(f"**This is the commercial-only export.** It holds only rows of sources that {rule}, and of "
                     f"those only rows whose own `commercial` column is {allowed}. Left out: {left_out}. Each "
                     f"included source's licence is listed below; check each source's terms before use.")
    else:
        lines.append(f"Licences differ per source (below). The `commercial` config holds the sources that {rule}; "
                     f"check each source's terms before use.")
    return "\n".join(lines)


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
    lines = ["## Licences", "", "The dataset's licence is `other`: each row keeps its source's licence (column `license`).",
             ""]
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


def mining_section(facts: Facts, manifest: Manifest) -> str:
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
    return "\n\n".join(["## Models and mining", models, settings_table(mine, MINE_HIDDEN), found, distributions])


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


def usage_section(facts: Facts) -> str:
    lines = ["## Use", "", "```python", "from datasets import load_dataset", "",
             f'REPO = "<org>/{facts.dataset}"  # the Hub repo, or this folder\'s path',
             'pairs = load_dataset(REPO, "default", split="train")']
    if not facts.scale:
        return "\n".join([*lines, "```"])
    scale = (f"`{SCORED_PAIRS}` scores are on the build's scale `{facts.scale.text}` (CoSENT needs only their "
             f"order; CosineSimilarityLoss needs [-1, 1]).")
    exports = ("Exports, one JSON Lines file per source: `exports/flagembedding/` (`query, pos, neg, pos_scores, "
               "neg_scores, prompt, type`; rows without negatives left out; `prompt` is the build's query prompt "
               "for s2p sources and empty for s2s ones; `type` is `symmetric_sts` for s2s and `normal` for s2p; "
               "pass the folder to `--train_data`) and `exports/uniem/` (`sentence1, sentence2, label`, the label "
               "being the score: uniem's scored pairs).")
    files = table(["source", *EXPORTS], ([s, *(count(n.get(kind)) for kind in EXPORTS)]
                                         for s, n in facts.exports.items()))
    return "\n".join([
        *lines, f'triplets = load_dataset(REPO, "{TRIPLETS}", split="train")',
        'triplets = triplets.select_columns(["anchor", "positive", "negative"])  # MultipleNegativesRankingLoss',
        f'scored = load_dataset(REPO, "{SCORED_PAIRS}", split="train")  # CoSENTLoss', "```", "",
        scale, "", exports, "", files])
