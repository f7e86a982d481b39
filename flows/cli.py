"""The `m3e-hq` command line: `sources` lists the catalog and what is cached, `download` fetches the sources,
`build` runs the build-m3e-hq flow locally."""

import errno
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer
from m3e_hq.flows.core.minhash import MinHashParams
from m3e_hq.flows.core.clean import DEFAULT_MAX_CHARS
from m3e_hq.sources import cache
from m3e_hq.sources.catalog import CatalogError, HttpObtain, HubObtain, ManualObtain, Source, default_catalog
from m3e_hq.sources.fetch import Obtained, source_status
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Offline-safe Prefect defaults for local runs (set before prefect is imported; the user's settings win).
# The temporary server a local run starts logs harmless CancelledError tracebacks while it shuts down after the
# flow has finished; its log level is raised so that they do not bury the build summary.
for _key, _value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
                     "PREFECT_SERVER_UI_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)

# Why a build output cannot be written: disk full or over quota, no permission, read-only, a file in the way.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                           errno.EEXIST})
OUTPUT_FAILED = 3  # exit status of a build stopped by an output that could not be written

app = typer.Typer(help="Build m3e-hq, the cleaned M3E Chinese text-pair dataset, from its 29 sources.",
                  no_args_is_help=True, add_completion=False)
# Wide enough for the source table when the output is a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=200)


def obtain_text(source: Source) -> str:
    obtain = source.obtain
    if isinstance(obtain, HubObtain):
        return f"hf {obtain.repo}" + ("" if obtain.ref == "main" else f" ({obtain.ref})")
    if isinstance(obtain, HttpObtain):
        return "http"
    return "unavailable" if obtain.unavailable else "manual"


def yes_no(value: bool) -> str:
    return "是" if value else "否"


def markdown_table(sources: list[Source]) -> str:
    """The README's source table, generated from the catalog."""
    lines = [
        "| # | source | domain | M3E rows | task | prompt | quality | s2s | research | commercial | licence | obtain |",
        "|---|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(sources, start=1):
        tasks = " ".join(t.label_zh for t in s.task_types)
        lines.append(
            f"| {i} | {s.name} | {s.domain.label_zh} | {s.reported_rows:,} | {tasks} | {s.prompt.label_zh} "
            f"| {s.quality.label_zh} | {yes_no(s.homogeneous)} | {s.research_use.label_zh} | {s.commercial.label_zh} "
            f"| {s.license} | {obtain_text(s)} |"
        )
    return "\n".join(lines)


CacheOption = Annotated[Path | None, typer.Option(help=f"download cache (default ${cache.CACHE_ENV} or "
                                                     "~/.cache/m3e-hq)")]
ManualOption = Annotated[Path | None, typer.Option(help=f"folder of hand-downloaded sources, <dir>/<source>/ "
                                                      f"(default ${cache.MANUAL_ENV} or data/manual)")]
SourcesOption = Annotated[list[str] | None, typer.Option("--sources", "-s", help="a source to use (repeatable, or "
                                                         "comma-separated); default all")]
CommercialOption = Annotated[bool, typer.Option("--commercial-only", help="publish only rows of sources that allow "
                                                "commercial use (the M3E table says yes and a licence is stated)")]
UnknownLicenseOption = Annotated[bool, typer.Option("--include-unknown-license", help="with --commercial-only, also "
                                                    "include sources whose commercial use or licence is unstated")]
PushOption = Annotated[str | None, typer.Option("--push-to-hub", help="ORG/NAME: upload m3e-hq there and "
                                                "m3e-hq-with-score to ORG/NAME-with-score (token from HF_TOKEN)")]
RequireAllOption = Annotated[bool, typer.Option("--require-all", help="fail when a selected source cannot be "
                                                "obtained (sources the catalog marks unavailable excepted)")]


def status_text(o: Obtained) -> str:
    """A source's cache status in a few words: cached (with the commit or hash), manual, failed or not downloaded."""
    if o.status == "cached":
        if o.revision:
            return f"cached @{o.revision[:12]}"
        return "cached sha256 " + ", ".join(h[:12] for h in o.sha256.values())
    if o.status == "present":
        return "manual: present"
    if o.status == "partial":
        return f"manual: partial (missing {', '.join(o.missing)})"
    if o.status == "skipped":
        return "missing (manual)"
    if o.status == "failed":
        return f"failed: {o.message}"
    return o.status


def manual_markdown_table(sources: list[Source], manual_root: str = "data/manual") -> str:
    """The README's table of the sources downloaded by hand: where to get them, which files go where."""
    lines = ["| source | download from | put these files | in |", "|---|---|---|---|"]
    for s in sources:
        obtain = s.obtain
        if isinstance(obtain, ManualObtain):
            note = f" ({obtain.unavailable})" if obtain.unavailable else (f" ({obtain.note})" if obtain.note else "")
            page = "unavailable" if obtain.unavailable else obtain.page
            files = ", ".join(f"`{f}`" for f in obtain.files)
            lines.append(f"| {s.name} | {page}{note} | {files} | `{manual_root}/{s.name}/` |")
    return "\n".join(lines)


@app.command()
def sources(
    markdown: Annotated[bool, typer.Option(help="print the README's Markdown table instead")] = False,
    manual_markdown: Annotated[bool, typer.Option(help="print the README's table of manual sources instead")]
    = False,
    cache_dir: CacheOption = None,
    manual_dir: ManualOption = None,
) -> None:
    """List the 29 sources with their M3E table values, licence flags and cache status (no network)."""
    try:
        catalog = default_catalog()
    except CatalogError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if markdown:
        print(markdown_table(catalog.sources))
        return
    if manual_markdown:
        print(manual_markdown_table(catalog.sources))
        return
    cache_root, manual_root = cache.cache_dir(cache_dir), cache.manual_dir(manual_dir)
    table = Table(title=f"M3E sources ({len(catalog.sources)}); cache {cache_root}, manual folder {manual_root}")
    for column in ("source", "domain", "M3E rows", "task", "s2s", "commercial", "licence", "obtain", "status"):
        table.add_column(column, justify="right" if column == "M3E rows" else "left", overflow="fold")
    for s in catalog.sources:
        status = source_status(s, cache_root, manual_root)
        table.add_row(s.name, s.domain.label_zh, f"{s.reported_rows:,}", " ".join(t.label_zh for t in s.task_types),
                      yes_no(s.homogeneous), s.commercial.label_zh, s.license, obtain_text(s), status_text(status))
    console.print(table)


def split_names(values: list[str] | None) -> list[str]:
    return [n for value in values or [] for n in value.split(",") if n]


def read_mapping(path: Path) -> dict:
    """A YAML or JSON file holding one mapping (JSON is YAML)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of setting: value")  # noqa: TRY004 - reported as bad input
    return data


def fail_on_invalid(exc: ValidationError) -> NoReturn:
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"] if part)
        message = err["msg"].removeprefix("Value error, ")
        console.print(f"[red]error:[/red] {f'{where}: ' if where and err['type'] != 'value_error' else ''}{message}")
    raise typer.Exit(2) from None


@app.command()
def download(
    source: SourcesOption = None,
    cache_dir: CacheOption = None,
    manual_dir: ManualOption = None,
    require_all: RequireAllOption = False,
) -> None:
    """Download the selected sources into the cache (Hub and HTTP) and check the manual folder; no build."""
    from m3e_hq.flows.pipeline.download import MissingSourcesError, download_m3e_hq_sources
    from m3e_hq.flows.pipeline.params import BuildParams

    from m3e_hq import progress

    try:
        params = BuildParams(sources=split_names(source), cache_dir=cache_dir, manual_dir=manual_dir)
    except ValidationError as exc:
        fail_on_invalid(exc)
    console.print(f"Downloading into {params.cache_root} (manual sources from {params.manual_root})")
    try:
        with progress.showing(console):
            obtained = download_m3e_hq_sources(sources=params.sources, cache_dir=str(params.cache_root),
                                               manual_dir=str(params.manual_root), require_all=require_all)
    except MissingSourcesError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    table = Table(title="sources")
    for column in ("source", "status", "files", "bytes", "note"):
        table.add_column(column, justify="right" if column in ("files", "bytes") else "left", overflow="fold")
    for o in obtained:
        table.add_row(o.source, status_text(o) if o.status == "cached" else o.status, f"{len(o.files):,}",
                      f"{sum(o.files.values()):,}", o.message or "")
    console.print(table)
    if any(o.status == "failed" for o in obtained):
        raise typer.Exit(1)


@app.command()
def build(
    samples: Annotated[bool, typer.Option("--samples", help="build from the shipped samples in data/samples/")] = False,
    raw_dir: Annotated[Path | None, typer.Option(help="build from native files at RAW_DIR/<source>/")] = None,
    source: SourcesOption = None,
    out: Annotated[Path | None, typer.Option(help="build folder (default data/build/full, samples or local)")] = None,
    max_chars: Annotated[int, typer.Option(help="longest text kept per side, in characters")] = DEFAULT_MAX_CHARS,
    cache_dir: CacheOption = None,
    manual_dir: ManualOption = None,
    require_all: RequireAllOption = False,
    dedup_on: Annotated[str, typer.Option(help="dedup key: pair (query + positive), query (one positive per query), "
                                          "or query-s2p (the query for s2p sources, the pair for s2s)")] = "pair",
    near_threshold: Annotated[float, typer.Option(help="Jaccard of character shingles from which two keys are "
                                                  "near-duplicates")] = MinHashParams().threshold,
    near: Annotated[bool, typer.Option(help="drop near-duplicates (--no-near: exact duplicates only)")] = True,
    keep_eval_splits: Annotated[bool, typer.Option("--keep-eval-splits", help="keep the native splits C-MTEB "
                                                   "evaluates on (dropped by default)")] = False,
    decontaminate: Annotated[Path | None, typer.Option(help="evaluation texts (.jsonl, .parquet or .txt): drop rows "
                                                       "whose query or positive is an exact or near duplicate of "
                                                       "one")] = None,
    filters: Annotated[Path | None, typer.Option(help="YAML or JSON file of quality-filter thresholds to change "
                                                 "(FilterParams fields)")] = None,
    encoder: Annotated[str | None, typer.Option(help="sentence-transformers model for mining (e.g. moka-ai/m3e-base; "
                                                "default: the packaged all-MiniLM-L6-v2 demo)")] = None,
    teacher: Annotated[str | None, typer.Option(help="'bi-encoder' (default) or a cross-encoder model (e.g. "
                                                "BAAI/bge-reranker-base)")] = None,
    device: Annotated[str | None, typer.Option(help="torch device for the models (default cuda when available)")]
    = None,
    search: Annotated[str | None, typer.Option(help="search backend: auto, faiss-gpu, torch-cuda or faiss-cpu")]
    = None,
    num_negatives: Annotated[int | None, typer.Option(help="hard negatives per pair (default 7)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of random negative sampling")] = None,
    min_pair_score: Annotated[float | None, typer.Option(help="drop pairs the teacher scores below this")] = None,
    encode_shards: Annotated[int | None, typer.Option(min=1, help="encode the texts in this many tasks before "
                                                      "mining (one GPU each under --task-runner ray; default 1)")]
    = None,
    mine: Annotated[Path | None, typer.Option("--mine", help="YAML or JSON file of mine-stage settings (MineParams "
                                              "fields; the options above win)")] = None,
    commercial_only: CommercialOption = False,
    include_unknown_license: UnknownLicenseOption = False,
    push_to_hub: PushOption = None,
    runner: Annotated[Literal["thread", "ray"], typer.Option("--task-runner", help="where the tasks run: 4 threads "
                                                             'here, or Ray (pip install "m3e-hq[ray]")')] = "thread",
    ray_address: Annotated[str | None, typer.Option(help="the Ray cluster for --task-runner ray, e.g. "
                                                    "ray://head:10001 (default: a local Ray instance)")] = None,
) -> None:
    """Run the build-m3e-hq flow: obtain (download) and ingest every selected source, dedup them, filter the pairs,
    mine hard negatives and teacher scores, print per-source and per-stage counts, write the manifest. Without --samples or --raw-dir the sources are
    downloaded into the cache first."""
    from m3e_hq.flows.core.negatives import NegativeParams
    from m3e_hq.flows.pipeline.download import MissingSourcesError
    from m3e_hq.flows.pipeline.params import BuildParams
    from m3e_hq.flows.stages.dedup import DedupParams
    from m3e_hq.flows.stages.filters import FilterParams
    from m3e_hq.flows.stages.mine import MineParams
    from m3e_hq.flows.stages.publish import PublishParams

    try:
        dedup = DedupParams(on=dedup_on, near=near, minhash=MinHashParams(threshold=near_threshold),
                            exclude_eval_splits=not keep_eval_splits, decontaminate=decontaminate)
        mine_settings = read_mapping(mine) if mine else {}
        negative_settings = mine_settings.pop("negatives", {})
        negative_settings |= {k: v for k, v in {"num_negatives": num_negatives, "seed": seed}.items() if v is not None}
        mine_settings |= {k: v for k, v in {"encoder": encoder, "teacher": teacher, "device": device, "search": search,
                                            "min_pair_score": min_pair_score,
                                            "encode_shards": encode_shards}.items() if v is not None}
        params = BuildParams(samples=samples, raw_dir=raw_dir, sources=split_names(source), out_dir=out,
                             max_chars=max_chars, cache_dir=cache_dir, manual_dir=manual_dir,
                             require_all=require_all, dedup=dedup,
                             filters=FilterParams(**read_mapping(filters)) if filters else FilterParams(),
                             mine=MineParams(**mine_settings, negatives=NegativeParams(**negative_settings)),
                             publish=PublishParams(commercial_only=commercial_only,
                                                   include_unknown_license=include_unknown_license),
                             push_to_hub=push_to_hub)
    except ValidationError as exc:
        fail_on_invalid(exc)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    from m3e_hq.flows.core.accounting import check_writable
    from m3e_hq.flows.pipeline.build import TaskRunnerError, build_m3e_hq, task_runner

    from m3e_hq import progress

    try:
        flow = build_m3e_hq.with_options(task_runner=task_runner(runner, ray_address))
    except TaskRunnerError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    origin = params.input_dir or f"downloads in {params.cache_root} and manual sources in {params.manual_root}"
    console.print(f"Building m3e-hq from {origin} into {params.build_dir}")
    try:
        check_writable(params.build_dir)
        with progress.showing(console), quiet_output_errors(), one_api_server(runner):
            summary = flow(
                samples=params.samples, raw_dir=str(params.raw_dir) if params.raw_dir else None,
                sources=params.sources, out_dir=str(params.build_dir), max_chars=params.max_chars,
                cache_dir=str(params.cache_root), manual_dir=str(params.manual_root), require_all=require_all,
                dedup=params.dedup, filters=params.filters, mine=params.mine, publish_settings=params.publish,
                push_to_hub=params.push_to_hub)
    except MissingSourcesError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except OSError as exc:
        if not output_problem(exc):
            raise
        console.print(f"[red]error:[/red] {escape(output_failure(exc, params.build_dir))}", soft_wrap=True)
        raise typer.Exit(OUTPUT_FAILED) from None
    results = summary["results"]
    console.print(summary_table(results, summary["stages"]))
    console.print(stage_table(summary["stages"]))
    console.print(f"Manifest: {summary['manifest']}")
    print_published(summary["published"])
    for r in results:
        if r.status != "ok":
            console.print(f"[yellow]{r.source}: {r.status}[/yellow] — {escape(str(r.message))}")
        elif r.message:
            console.print(f"{r.source}: {escape(r.message)}")
    failed = [r.source for r in results if r.status == "failed"]
    if failed:
        console.print(f"[red]error:[/red] {len(failed)} of {len(results)} sources failed: {', '.join(failed)} (why "
                      "above); the other sources were built", soft_wrap=True)
        raise typer.Exit(1)


def output_problem(exc: OSError) -> bool:
    """Whether `exc` says that a build output could not be written (rather than a bug)."""
    from m3e_hq.flows.core.accounting import OutputError

    return isinstance(exc, OutputError) or exc.errno in OUTPUT_ERRNOS


class _OutputErrorTracebacks(logging.Filter):
    """Drops the records of tasks and flows stopped by an output error, tracebacks included."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, OSError) and output_problem(exc))


@contextmanager
def quiet_output_errors() -> Iterator[None]:
    """Keep Prefect's tracebacks of an output error off the console, where the CLI reports it in one line (the
    Prefect API still gets them)."""
    handlers, quiet = list(logging.getLogger().handlers), _OutputErrorTracebacks()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def output_failure(exc: OSError, build_dir: Path) -> str:
    """What could not be written and why, what to do, and that nothing was published."""
    where = Path(exc.filename) if exc.filename else build_dir
    remedy = "free some space there" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    option = "--out DIR" if where.is_relative_to(build_dir) else "--cache-dir DIR"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return (f"cannot write {where}: {reason}. {remedy.capitalize()}, or choose another folder with "
            f"{option}, then run the command again: the stages that completed are not run again. Nothing was "
            f"published: the datasets in {build_dir} (if any) are as they were.")


@contextmanager
def one_api_server(runner: str) -> Iterator[None]:
    """Under the Ray task runner without PREFECT_API_URL: start the temporary Prefect server here and point the
    settings, which Ray's worker processes receive, at it; each worker would otherwise start a server of its own."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if runner != "ray" or PREFECT_API_URL.value():
        yield
        return
    server = SubprocessASGIServer()
    server.start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield


def summary_table(results: list, stages: dict) -> Table:
    """Per source: rows read, kept by ingest, filtered by the source's own rule, quarantined as malformed, and
    left after dedup and after the quality filters."""
    from m3e_hq.flows.stages.ingest import RULE_REASONS

    later = {stage: {c.source: c.kept for c in counts} for stage, counts in stages.items() if stage != "ingest"}
    table = Table(title="rows per source")
    columns = ("source", "status", "read", "ingested", "filtered", "quarantined", *(f"after {s}" for s in later),
               "ingest reasons")
    for column in columns:
        table.add_column(column, justify="left" if column in ("source", "status", "ingest reasons") else "right")
    totals = [0] * (4 + len(later))
    for r in results:
        c = r.counts
        if c is None:
            table.add_row(r.source, r.status, *["-"] * (len(columns) - 3), "")
            continue
        filtered = sum(n for reason, n in c.dropped.items() if reason in RULE_REASONS)
        row = [c.read, c.kept, filtered, c.dropped_total - filtered, *(kept.get(r.source, 0) for kept in
                                                                      later.values())]
        totals = [t + n for t, n in zip(totals, row, strict=True)]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.dropped.items(), key=lambda kv: -kv[1]))
        table.add_row(r.source, r.status, *(f"{n:,}" for n in row), reasons)
    table.add_section()
    table.add_row("total", "", *(f"{n:,}" for n in totals), "")
    return table


def stage_table(stages: dict) -> Table:
    """Per stage: rows read, kept and dropped, and the drop reasons; read = kept + dropped for every stage."""
    from m3e_hq.flows.core.manifest import stage_totals

    table = Table(title="rows per stage")
    for column in ("stage", "read", "kept", "dropped", "reasons"):
        table.add_column(column, justify="left" if column in ("stage", "reasons") else "right")
    for stage, counts in stages.items():
        totals = stage_totals(counts)
        dropped = sum(totals["dropped"].values())
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(totals["dropped"].items(), key=lambda kv: -kv[1]))
        table.add_row(stage, f"{totals['read']:,}", f"{totals['kept']:,}", f"{dropped:,}", reasons)
    return table


@app.command()
def serve(
    limit: Annotated[int, typer.Option(min=1, help="flow runs at a time")] = 1,
) -> None:
    """Serve the build-m3e-hq flow as the Prefect deployment build-m3e-hq/build-m3e-hq until interrupted; needs a
    Prefect server (`prefect server start`) and PREFECT_API_URL set (http://127.0.0.1:4200/api)."""
    from m3e_hq.flows.pipeline.deploy import RUN_COMMAND, ServeError, check_api
    from m3e_hq.flows.pipeline.deploy import serve as serve_deployment

    try:
        url = check_api()
    except ServeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"Serving build-m3e-hq through {url}, {limit} run(s) at a time. Trigger a run with:\n"
                  f"  {RUN_COMMAND} -p samples=true", soft_wrap=True)
    serve_deployment(limit)


def print_published(published: dict) -> None:
    """Where the datasets are, how to load them, and where they were uploaded."""
    if "skipped" in published:
        console.print(f"[yellow]not published:[/yellow] {published['skipped']}")
    for name, folder in published["folders"].items():
        console.print(f"{name}: {folder}  (datasets.load_dataset({str(folder)!r}))", soft_wrap=True)
    for repo, url in published.get("hub", {}).items():
        console.print(f"uploaded {repo}: {url}", soft_wrap=True)


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="folder for the exported m3e-hq/ and m3e-hq-with-score/")],
    build: Annotated[Path, typer.Option(help="a finished build folder")] = Path("data/build/full"),
    commercial_only: CommercialOption = False,
    include_unknown_license: UnknownLicenseOption = False,
    push_to_hub: PushOption = None,
) -> None:
    """Publish both datasets again from a finished build, e.g. the commercial-only subset, into OUT."""
    from m3e_hq.flows.pipeline.build import push_both
    from m3e_hq.flows.pipeline.push import PushError
    from m3e_hq.flows.stages.publish import PublishParams, publish

    if not (build / "manifest.json").is_file():
        console.print(f"[red]error:[/red] {build} holds no finished build (no manifest.json): run `m3e-hq build` "
                      "first, or pass --build DIR")
        raise typer.Exit(2)
    params = PublishParams(commercial_only=commercial_only, include_unknown_license=include_unknown_license)
    try:
        result = publish(build, out, params, default_catalog())
        hub = push_both(result, push_to_hub) if push_to_hub else {}
    except (ValueError, PushError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    for source, why in result.excluded.items():
        console.print(f"left out {source}: {why}", soft_wrap=True)
    print_published({"folders": {"m3e-hq": result.m3e_hq.folder, "m3e-hq-with-score": result.with_score.folder},
                     "hub": hub})
