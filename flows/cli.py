"""The `m3e-hq` command line: `sources` lists the catalog, `build` runs the build-m3e-hq flow locally."""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from flows.clean import DEFAULT_MAX_CHARS
from sources.catalog import CatalogError, HttpObtain, HubObtain, Source, default_catalog

# Offline-safe Prefect defaults for local runs (set before prefect is imported; the user's settings win).
# The temporary server a local run starts logs harmless CancelledError tracebacks while it shuts down after the
# flow has finished; its log level is raised so that they do not bury the build summary.
for _key, _value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
                     "PREFECT_SERVER_UI_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)

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


@app.command()
def sources(markdown: Annotated[bool, typer.Option(help="print the README's Markdown table instead")] = False) -> None:
    """List the 29 sources of the catalog with their M3E table values and licence flags."""
    try:
        catalog = default_catalog()
    except CatalogError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if markdown:
        print(markdown_table(catalog.sources))
        return
    table = Table(title=f"M3E sources ({len(catalog.sources)})")
    for column in ("source", "domain", "M3E rows", "task", "prompt", "quality", "s2s", "commercial", "licence",
                   "obtain"):
        table.add_column(column, justify="right" if column == "M3E rows" else "left", overflow="fold")
    for s in catalog.sources:
        table.add_row(s.name, s.domain.label_zh, f"{s.reported_rows:,}", " ".join(t.label_zh for t in s.task_types),
                      s.prompt.label_zh, s.quality.label_zh, yes_no(s.homogeneous), s.commercial.label_zh, s.license,
                      obtain_text(s))
    console.print(table)


@app.command()
def build(
    samples: Annotated[bool, typer.Option("--samples", help="build from the shipped samples in data/samples/")] = False,
    raw_dir: Annotated[Path | None, typer.Option(help="build from native files at RAW_DIR/<source>/")] = None,
    source: Annotated[list[str] | None, typer.Option("--sources", "-s", help="a source to build (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option(help="build folder (default data/build/samples or data/build/local)")]
    = None,
    max_chars: Annotated[int, typer.Option(help="longest text kept per side, in characters")] = DEFAULT_MAX_CHARS,
) -> None:
    """Run the build-m3e-hq flow: ingest every selected source, print per-source counts, write the manifest."""
    from flows.params import BuildParams

    names = [n for value in source or [] for n in value.split(",") if n]
    try:
        params = BuildParams(samples=samples, raw_dir=raw_dir, sources=names, out_dir=out, max_chars=max_chars)
    except ValidationError as exc:
        for err in exc.errors():
            console.print(f"[red]error:[/red] {err['msg'].removeprefix('Value error, ')}")
        raise typer.Exit(2) from None

    from flows import progress
    from flows.build import build_m3e_hq

    console.print(f"Building m3e-hq from {params.input_dir} into {params.build_dir}")
    with progress.showing(console):
        summary = build_m3e_hq(samples=params.samples, raw_dir=str(params.raw_dir) if params.raw_dir else None,
                               sources=params.sources, out_dir=str(params.build_dir), max_chars=params.max_chars)
    results = summary["results"]
    console.print(summary_table(results))
    console.print(f"Manifest: {summary['manifest']}")
    problems = [r for r in results if r.status != "ok"]
    for r in problems:
        console.print(f"[yellow]{r.source}: {r.status}[/yellow] — {r.message}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def summary_table(results: list) -> Table:
    """Rows read, kept, filtered by the source's own rule, and quarantined as malformed, per source."""
    from flows.ingest import RULE_REASONS

    table = Table(title="ingest: rows per source")
    for column in ("source", "status", "read", "kept", "filtered", "quarantined", "reasons"):
        table.add_column(column, justify="left" if column in ("source", "status", "reasons") else "right")
    totals = [0, 0, 0, 0]
    for r in results:
        c = r.counts
        if c is None:
            table.add_row(r.source, r.status, "-", "-", "-", "-", "")
            continue
        filtered = sum(n for reason, n in c.dropped.items() if reason in RULE_REASONS)
        row = [c.read, c.kept, filtered, c.dropped_total - filtered]
        totals = [t + n for t, n in zip(totals, row)]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.dropped.items(), key=lambda kv: -kv[1]))
        table.add_row(r.source, r.status, *(f"{n:,}" for n in row), reasons)
    table.add_section()
    table.add_row("total", "", *(f"{n:,}" for n in totals), "")
    return table
