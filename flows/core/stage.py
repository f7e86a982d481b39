"""A stage as one typed object, the keep/drop loop every stage shares, and the one runner of a list of stages.

A `Stage` declares its name, its parameters model, its reason codes, whether it runs once per source or once over
all sources, and a plain function `run(inputs, params, context) -> StageResult`. `run_stages` executes a list of
them, each stage's kept files the next one's inputs, through an executor: `InProcess` (the plain Python API and the
benchmarks) or the Prefect flow's cached tasks (`flows.pipeline.build`). A stage that keeps or drops rows of a
Parquet input says only why (`Verdicts`); `sift` counts, writes and checks the accounting.
"""

import functools
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, Self

import pyarrow as pa
from pydantic import BaseModel

from m3e_hq import progress
from m3e_hq.flows.core.accounting import OutputError, StageCounts, StageWriter, dropped_rows
from m3e_hq.flows.core.lineage import recording
from m3e_hq.schemas.enums import TextEnum
from m3e_hq.sources.catalog import Catalog


class Reason(TextEnum):
    """A stage's reason codes: each member a code and the one-line description the README's tables give."""

    @property
    def description(self) -> str:
        return self.text


class Scope(StrEnum):
    """How a stage's work is cut: one unit per source, or one unit over every source."""

    SOURCE = "source"
    ALL = "all"


@dataclass
class StageResult:
    """What a stage did: its counts per source (in catalog order) and what it found besides (e.g. dedup's
    duplicates by source pair)."""

    counts: list[StageCounts]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> dict[str, Path]:
        """The kept rows of every source: the next stage's inputs."""
        return {c.source: Path(c.kept_path) for c in self.counts if c.kept_path}


@dataclass(frozen=True)
class Context:
    """What every stage is given besides its inputs and parameters."""

    build_dir: Path
    catalog: Catalog
    cache_dir: Path  # where models cache what they compute (embeddings)


def concat(results: list[StageResult], params: Any) -> StageResult:
    """One result from the units' results: counts in order, statistics of a single unit kept as they are."""
    stats = [r.stats for r in results if r.stats]
    return StageResult([c for r in results for c in r.counts], stats[0] if len(stats) == 1 else {})


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    `params_of` picks the stage's parameters out of the build's; `scope` may depend on them (mining pools either
    way). `isolated`: an error in one source's unit fails that source only, not the build (ingest). `prepare`
    (named `prepare_name`), run in `prepare_shards(params)` concurrent units before the stage when that is more
    than one, fills a cache the stage then reads (mining's encode shards); `device(params)` says which torch
    device the stage's models use (for the GPU requests of a Ray task runner).
    """

    name: str
    params: type[BaseModel]
    params_of: Callable[[Any], BaseModel]
    reasons: type[Reason]
    run: Callable[[dict[str, Any], Any, Context], StageResult]
    scope: Scope | Callable[[Any], Scope] = Scope.SOURCE
    merge: Callable[[list[StageResult], Any], StageResult] = concat
    isolated: bool = False
    prepare: Callable[[dict[str, Any], Any, Context, int], Any] | None = None
    prepare_name: str = "prepare"
    prepare_shards: Callable[[Any], int] = lambda params: 1
    device: Callable[[Any], str | None] | None = None

    def scope_for(self, params: Any) -> Scope:
        return self.scope if isinstance(self.scope, Scope) else self.scope(params)

    def units(self, inputs: dict[str, Any], params: Any, catalog: Catalog) -> list[dict[str, Any]]:
        """The stage's units of work: its inputs one source at a time, or all at once, in catalog order."""
        names = [n for n in catalog.names if n in inputs]
        if self.scope_for(params) is Scope.SOURCE:
            return [{n: inputs[n]} for n in names]
        return [{n: inputs[n] for n in names}]


@dataclass(frozen=True)
class Failed:
    """A unit of an isolated stage that raised: its source and the error in one line."""

    source: str
    message: str

    @classmethod
    def of(cls, unit: dict[str, Any], exc: Exception) -> Self:
        return cls(", ".join(unit), "".join(traceback.format_exception_only(exc)).strip())


def attempt(stage: Stage, unit: dict[str, Any], call: Callable[[], StageResult]) -> StageResult | Failed:
    """`call()`, or for an isolated stage the failure it raised (an OutputError, which every unit would meet
    alike, always stops the build)."""
    try:
        return call()
    except OutputError:
        raise
    except Exception as exc:  # reported per source: one broken source does not stop the build
        if not stage.isolated:
            raise
        return Failed.of(unit, exc)


StageRun = Callable[[dict[str, Any], Any, Context], StageResult]


def unit_run(stage: Stage) -> StageRun:
    """`stage.run` for one unit of work: the `seconds` of each source in its result the time the whole unit took
    (reading, deciding and writing, not only the writing), shared out by rows read when a unit holds several sources
    (dedup, mining with one pool over all sources); the unit's sources named on the stage's progress bar while it
    runs; what its outputs are made from recorded in them (`flows.core.lineage`: the stage, its parameters and the
    identity of every file the unit reads)."""
    @functools.wraps(stage.run)
    def unit(inputs: dict[str, Any], params: Any, context: Context) -> StageResult:
        start = time.perf_counter()
        with progress.unit(stage.name, list(inputs)), recording(stage.name, params, inputs):
            result = stage.run(inputs, params, context)
        share_seconds(result.counts, time.perf_counter() - start)
        return result

    return unit


def share_seconds(counts: list[StageCounts], seconds: float) -> None:
    """Give each source its part of `seconds`, by rows read (equal parts when none were read)."""
    read = sum(c.read for c in counts)
    for c in counts:
        c.seconds = round(seconds * (c.read / read if read else 1 / len(counts)), 3)


class Executor(Protocol):
    """Runs a stage's units: here, one after the other, or as Prefect tasks."""

    def map(self, stage: Stage, units: list[dict[str, Any]], params: Any,
            context: Context) -> list[StageResult | Failed]: ...

    def prepare(self, stage: Stage, inputs: dict[str, Any], params: Any, context: Context, shards: int) -> None: ...


class InProcess:
    """Every unit in this process, one after the other."""

    def map(self, stage: Stage, units: list[dict[str, Any]], params: Any,
            context: Context) -> list[StageResult | Failed]:
        run = unit_run(stage)
        return [attempt(stage, unit, lambda unit=unit: run(unit, params, context)) for unit in units]

    def prepare(self, stage: Stage, inputs: dict[str, Any], params: Any, context: Context, shards: int) -> None:
        assert stage.prepare is not None
        for shard in range(shards):
            stage.prepare(inputs, params, context, shard)


@dataclass
class PipelineRun:
    """The result of each stage that ran and the parameters it ran with (as JSON), and the sources whose unit failed
    (and so left the build)."""

    results: dict[str, StageResult] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def run_stages(stages: Sequence[Stage], inputs: dict[str, Any], build_params: Any, context: Context,
               executor: Executor | None = None, on_stage: Callable[[Stage, PipelineRun], None] | None = None,
               ) -> PipelineRun:
    """Run `stages` in order from `inputs` (source -> the first stage's input), each stage's kept files the next
    one's inputs; `on_stage` is called after each with the run so far (and may stop it by raising)."""
    executor = executor or InProcess()
    run = PipelineRun()
    for stage in stages:
        params = stage.params_of(build_params)
        shards = stage.prepare_shards(params)
        if stage.prepare is not None and shards > 1:
            executor.prepare(stage, inputs, params, context, shards)
        units = stage.units(inputs, params, context.catalog)
        with progress.stage(stage.name, sum(map(len, units))):
            outcomes = executor.map(stage, units, params, context)
        run.failed |= {o.source: o.message for o in outcomes if isinstance(o, Failed)}
        result = stage.merge([o for o in outcomes if isinstance(o, StageResult)], params)
        run.results[stage.name] = result
        run.params[stage.name] = params.model_dump(mode="json")
        inputs = result.outputs
        if on_stage is not None:
            on_stage(stage, run)
    return run


# --- the keep/drop loop ----------------------------------------------------------------------------------------------


@dataclass
class Verdicts:
    """What a stage decided for a table of its input rows: a reason per row (None: kept), for dropped rows by
    position a detail and the id of the row kept instead when there are any, and the kept rows as written when the
    stage adds to them."""

    reasons: Sequence[str | None]
    details: Mapping[int, str | None] | None = None
    kept_ids: Mapping[int, str | None] | None = None
    kept: pa.Table | None = None


def sift(tables: Iterable[pa.Table], decide: Callable[[pa.Table, int], Verdicts], stage_dir: Path, stage: str,
         source: str, schema: pa.Schema, stage_input: str) -> StageCounts:
    """Write one source's kept and dropped rows into `stage_dir`: `decide(table, offset)` gives the verdicts on
    each table of the input (whose first row is row `offset` of the stage's input file `stage_input`); the rows
    are counted, the dropped ones written with their reason and locator, and the accounting checked."""
    with StageWriter(stage_dir, stage, source, schema) as writer:
        offset = 0
        for table in tables:
            verdicts = decide(table, offset)
            writer.read(table.num_rows)
            if verdicts.kept is None:
                writer.keep_table(table.filter(pa.array([r is None for r in verdicts.reasons], pa.bool_())))
            elif verdicts.kept.num_rows:
                writer.keep_table(verdicts.kept)
            dropped = [i for i, r in enumerate(verdicts.reasons) if r is not None]
            if dropped:
                writer.drop_table(dropped_rows(
                    table, source, stage_input, dropped, [verdicts.reasons[i] for i in dropped],
                    [verdicts.details.get(i) for i in dropped] if verdicts.details is not None else None,
                    [verdicts.kept_ids.get(i) for i in dropped] if verdicts.kept_ids is not None else None,
                    table_offset=offset))
            offset += table.num_rows
    return writer.counts
