"""The `m3e-hq` command line: `sources` lists the catalog and what is cached, `download` fetches the sources,
`build` runs the build-m3e-hq flow locally."""

import errno
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, NoReturn, get_args, get_origin

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer
    from pydantic import ValidationError

    from m3e_hq.flows.pipeline.params import CliField
    from m3e_hq.sources.catalog import Source
    from m3e_hq.sources.fetch import Obtained

# Offline-safe Prefect defaults for local runs (set before prefect is imported; the user's settings win).
# The temporary server a local run starts logs harmless CancelledError tracebacks while it shuts down after the
# flow has finished; its log level is raised so that they do not bury the build summary.
for _key, _value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
                     "PREFECT_SERVER_UI_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)
# How long the temporary Prefect server may take to start when the user sets no
# PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: Prefect's 20 s are too few on a busy machine. Not an environment
# default: Prefect's settings take the environment over the profile, and a limit set in the profile must win too.
SERVER_STARTUP_SECONDS = 300
SERVER_FAILED = 4  # exit status of a command whose temporary Prefect server did not start

# Why a build output cannot be written: disk full or over quota, a file over the size limit, no permission,
# read-only, a file in the way.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                           errno.ENOTDIR, errno.EEXIST})
OUTPUT_FAILED = 3  # exit status of a build or export stopped by an output that could not be written
FOLDER_BUSY = 5  # exit status of a build whose folder another build holds
# What to do once space is freed or another folder chosen: a build whose flow had started or not, an export.
AFTER_STAGES = "then run the command again: the stages that completed are not run again"
BEFORE_STAGES = "then run the command again. No stage ran"
EXPORT_AGAIN = "then run the command again"
PUSH_FAILED = 6  # exit status of a build, export or push whose upload to the Hub failed (published locally)

app = typer.Typer(help="Build m3e-hq, the cleaned M3E Chinese text-pair dataset, from its 29 sources.",
                  no_args_is_help=True, add_completion=False)
# Wide enough for the source table when the output is a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=200)


def obtain_text(source: "Source") -> str:
    from m3e_hq.sources.catalog import HttpObtain, HubObtain

    obtain = source.obtain
    if isinstance(obtain, HubObtain):
        return f"hf {obtain.repo}" + ("" if obtain.ref == "main" else f" ({obtain.ref})")
    if isinstance(obtain, HttpObtain):
        return "http"
    return "unavailable" if obtain.unavailable else "manual"


def yes_no(value: bool) -> str:
    return "是" if value else "否"


def markdown_table(sources: list["Source"]) -> str:
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


@functools.cache
def build_options() -> dict[str, "CliField"]:
    """`m3e-hq build`'s options, by parameter name (`near` for --near/--no-near): the fields of BuildParams and its
    stage models marked with json_schema_extra={"cli": ...} (the names, help and defaults are the fields')."""
    from m3e_hq.flows.pipeline.params import cli_fields

    return {f.parameter: f for f in cli_fields()}


# Flags that set their field to the opposite, with their help (the field's description says what the field does).
INVERTED = {"--keep-eval-splits": "keep the native splits C-MTEB evaluates on (dropped by default)"}
# Where the README lists the fields of the stage models that --filters and --mine take, by option.
FIELDS_LISTED = {"--filters": "Quality filters", "--mine": "Mining: hard negatives and teacher scores"}


def option_help(field: "CliField") -> str:
    if field.model is not None:
        return (f"{field.info.description}: a YAML or JSON file of {field.model.__name__} fields, which the README "
                f"lists (section {FIELDS_LISTED[field.names[0]]}); the options given win")
    if field.names[0] in INVERTED:
        return INVERTED[field.names[0]]
    return field.info.description + (" (repeatable, or comma-separated)" if field.info.annotation == list[str] else "")


def option_annotation(field: "CliField") -> Any:
    """The option's type and typer.Option: the field's type, a file for a field holding a stage model, or a string
    for a choice (checked by BuildParams, so that a wrong one is reported as the others are)."""
    help_text = escape(option_help(field))
    if field.model is not None:
        return Annotated[Path | None, typer.Option(*field.names, metavar="FILE", help=help_text)]
    if get_origin(field.info.annotation) is Literal:
        choices = "|".join(get_args(field.info.annotation))
        return Annotated[str, typer.Option(*field.names, metavar=choices, help=help_text)]
    return Annotated[field.info.annotation, typer.Option(*field.names, help=help_text)]


def option_default(field: "CliField") -> Any:
    if field.model is not None:
        return None
    default = field.info.get_default(call_default_factory=True)
    return not default if field.names[0] in INVERTED else default


def option_value(field: "CliField", value: Any) -> Any:
    """The field's value for the option's: the opposite for an inverted flag, names split at commas for a list."""
    if field.names[0] in INVERTED:
        return not value
    return split_names(value) if isinstance(value, list) else value


def flowing(doc: str | None) -> str | None:
    """A docstring as a command's help: each paragraph on one line, for the terminal to wrap (typer keeps a
    paragraph's line breaks, which then break the wrapping)."""
    return None if doc is None else "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


class Deferred(TyperCommand):
    """A command that takes options of `m3e-hq build`: its click command is made when it runs or shows its help.
    Those options come from BuildParams, which imports the catalog (pyarrow through the schemas); `m3e-hq --help`,
    `m3e-hq sources` and a mistyped command do not wait for it."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        return full_command(self.name).make_context(info_name, args, parent=parent, **extra)


# The Deferred commands by name, with the names of the `m3e-hq build` options each takes (empty: all of them).
DEFERRED: dict[str, tuple[Callable[..., None], tuple[str, ...]]] = {}


def with_build_options(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register the decorated command on `app` as a Deferred command that takes the `m3e-hq build` options `names`
    as its parameters of the same names (`cache_dir` for --cache-dir), or all of them as its **options."""

    def register(command: Callable[..., None]) -> Callable[..., None]:
        DEFERRED[command.__name__] = (command, names)
        app.command(command.__name__, cls=Deferred, help=flowing(command.__doc__))(lambda: None)
        return command

    return register


def full_signature(command: Callable[..., None], names: tuple[str, ...]) -> inspect.Signature:
    """`command`'s own parameters, then the `m3e-hq build` options `names` (all of them when none are named)."""
    options = build_options()
    taken = {n: f for n, f in options.items() if not names or f.names[0] in names}
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(command).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in taken]
    derived = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=option_annotation(field),
                                 default=option_default(field)) for name, field in taken.items()]
    return inspect.Signature([*own, *derived])


@functools.cache
def full_command(name: str) -> TyperCommand:
    """The click command of the Deferred command `name`, with its options of `m3e-hq build`."""
    command, names = DEFERRED[name]

    def run(**values: Any) -> None:
        command(**values)

    functools.update_wrapper(run, command)
    run.__signature__ = full_signature(command, names)
    info = typer.models.CommandInfo(name=name, callback=run, help=flowing(command.__doc__))
    return typer.main.get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                            rich_markup_mode=app.rich_markup_mode)


def status_text(o: "Obtained") -> str:
    """A source's cache status in a few words: cached (with the commit or hash), manual, failed or not downloaded."""
    if o.status == "cached":
        if o.revision:
            return f"cached @{o.revision[:12]}"
        return "cached sha256 " + ", ".join(h[:12] for h in o.sha256.values())
    if o.status == "present":
        return "manual: present" + (f" ({o.message})" if o.message else "")
    if o.status == "partial":
        return f"manual: partial (missing {', '.join(o.missing)})"
    if o.status == "skipped":
        return "missing (manual)"
    if o.status == "failed":
        return f"failed: {o.message}"
    return o.status


def manual_markdown_table(sources: list["Source"], manual_root: str = "data/manual") -> str:
    """The README's table of the sources downloaded by hand: where to get them, which files go where."""
    from m3e_hq.sources.catalog import ManualObtain

    lines = ["| source | download from | put these files | in |", "|---|---|---|---|"]
    for s in sources:
        obtain = s.obtain
        if isinstance(obtain, ManualObtain):
            note = f" ({obtain.unavailable})" if obtain.unavailable else (f" ({obtain.note})" if obtain.note else "")
            page = "unavailable" if obtain.unavailable else obtain.page
            files = ", ".join(f"`{f}`" for f in obtain.files)
            lines.append(f"| {s.name} | {page}{note} | {files} | `{manual_root}/{s.name}/` |")
    return "\n".join(lines)


# The columns of the `sources` table, and those it keeps on a console narrower than WIDE_CONSOLE.
SOURCE_COLUMNS = ("source", "domain", "M3E rows", "task", "s2s", "commercial", "licence", "obtain", "status")
NARROW_SOURCE_COLUMNS = ("source", "M3E rows", "s2s", "commercial", "status")
WIDE_CONSOLE = 120


@app.command()
def sources(
    markdown: Annotated[bool, typer.Option(help="print the README's Markdown table instead")] = False,
    manual_markdown: Annotated[bool, typer.Option(help="print the README's table of manual sources instead")]
    = False,
    # Declared here rather than taken from BuildParams, which `m3e-hq sources` does not import (see Deferred).
    cache_dir: Annotated[Path | None, typer.Option(help="download cache; default $M3E_HQ_CACHE or ~/.cache/m3e-hq")]
    = None,
    manual_dir: Annotated[Path | None, typer.Option(help="hand-downloaded sources; default $M3E_HQ_MANUAL or "
                                                    "data/manual")] = None,
) -> None:
    """List the 29 sources and what is cached (no network).

    Each source's M3E table values, licence, how it is obtained and its cache status."""
    from m3e_hq.sources import cache
    from m3e_hq.sources.catalog import CatalogError, default_catalog
    from m3e_hq.sources.fetch import source_status

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
    columns = SOURCE_COLUMNS if console.width >= WIDE_CONSOLE else NARROW_SOURCE_COLUMNS
    left_out = "" if columns == SOURCE_COLUMNS else " (a wider terminal or --markdown shows every column)"
    table = Table(title=f"M3E sources ({len(catalog.sources)}); cache {cache_root}, manual folder {manual_root}"
                  f"{left_out}")
    for column in columns:
        table.add_column(column, justify="right" if column == "M3E rows" else "left", overflow="fold",
                         no_wrap=column == "M3E rows")
    for s in catalog.sources:
        status = source_status(s, cache_root, manual_root)
        row = {"source": s.name, "domain": s.domain.label_zh, "M3E rows": f"{s.reported_rows:,}",
               "task": " ".join(t.label_zh for t in s.task_types), "s2s": yes_no(s.homogeneous),
               "commercial": s.commercial.label_zh, "licence": s.license, "obtain": obtain_text(s),
               "status": status_text(status)}
        table.add_row(*(row[column] for column in columns))
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


class Layer(NamedTuple):
    """Build parameters from one place, nested as BuildParams: a file (--config, --filters, --mine) or an option."""

    origin: str  # the file's path or the option's name
    values: dict[str, Any]
    is_file: bool


def holds(values: Any, loc: tuple) -> bool:
    """Whether `values` sets the value at `loc` (a field path), or a value that contains it."""
    for part in loc:
        if not isinstance(values, dict):
            return True
        if part not in values:
            return False
        values = values[part]
    return True


def fail_on_invalid(exc: "ValidationError", layers: Sequence[Layer] = ()) -> NoReturn:
    """Print each error on one line, naming the file and field, or the option, its value came from; exit 2."""
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"] if part)
        message = err["msg"].removeprefix("Value error, ")
        origin = next((layer for layer in reversed(layers) if err["loc"] and holds(layer.values, err["loc"])), None)
        if origin is not None:
            prefix = f"{origin.origin}: {where}: " if origin.is_file else f"{origin.origin}: "
        else:
            prefix = f"{where}: " if where and err["type"] != "value_error" else ""
        console.print(f"[red]error:[/red] {escape(prefix + message)}", soft_wrap=True)
    raise typer.Exit(2) from None


def nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """`value` at `path`: nest(("dedup", "near"), False) == {"dedup": {"near": False}}."""
    for part in reversed(path[1:]):
        value = {part: value}
    return {path[0]: value}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with the values of `over`, mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def build_layers(config: Path | None, given: dict[str, Any]) -> list[Layer]:
    """The build's parameters, lowest precedence first: the --config file, the --filters and --mine files, then the
    other options given (`given`: option values by parameter name)."""
    layers = [Layer(str(config), read_mapping(config), True)] if config else []
    fields = {name: build_options()[name] for name in given}
    layers += [Layer(str(given[name]), nest(field.path, read_mapping(given[name])), True)
               for name, field in fields.items() if field.model is not None]
    layers += [Layer(field.names[0], nest(field.path, option_value(field, given[name])), False)
               for name, field in fields.items() if field.model is None]
    return layers


@with_build_options("--sources", "--cache-dir", "--manual-dir", "--require-all")
def download(sources: list[str] | None = None, cache_dir: Path | None = None, manual_dir: Path | None = None,
             require_all: bool = False) -> None:
    """Download the selected sources into the cache; no build.

    Hub and HTTP sources are downloaded (the download-m3e-hq-sources flow); the hand-downloaded ones are looked for in
    the manual folder."""
    from pydantic import ValidationError

    from m3e_hq import progress
    from m3e_hq.flows.pipeline.download import MissingSourcesError, download_m3e_hq_sources
    from m3e_hq.flows.pipeline.params import BuildParams

    try:
        params = BuildParams(sources=split_names(sources), cache_dir=cache_dir, manual_dir=manual_dir)
    except ValidationError as exc:
        fail_on_invalid(exc)
    console.print(f"Downloading into {params.cache_root} (manual sources from {params.manual_root})")
    try:
        with one_api_server(), progress.showing(console):
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


@with_build_options()
def build(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", metavar="FILE", help="YAML or JSON file of build "
                                                "parameters, nested as BuildParams (as the deployment's params); the "
                                                "options given win")] = None,
    runner: Annotated[Literal["thread", "ray"], typer.Option("--task-runner", help=escape(
                                                             'where the tasks run: 4 threads here, or Ray (pip '
                                                             'install "m3e-hq[ray]")'))] = "thread",
    ray_address: Annotated[str | None, typer.Option(help="the Ray cluster for --task-runner ray, e.g. "
                                                    "ray://head:10001 (default: a local Ray instance)")] = None,
    **options: Any,
) -> None:
    """Build m3e-hq and m3e-hq-with-score (the build-m3e-hq flow).

    Obtain (download) and ingest every selected source, filter the pairs, dedup them, mine hard negatives and teacher
    scores, print per-source and per-stage counts, write the manifest. Without --samples or --raw-dir the sources are
    downloaded into the cache first. The parameters are BuildParams': its defaults, then the --config file, then the
    options given."""
    from pydantic import ValidationError

    from m3e_hq.flows.pipeline.params import BuildParams

    # The options given on the command line (typer vendors click, whose ParameterSource it does not export).
    given = {name: value for name, value in options.items() if ctx.get_parameter_source(name).name == "COMMANDLINE"}
    try:
        layers = build_layers(config, given)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        params = BuildParams.model_validate(functools.reduce(merged, (layer.values for layer in layers), {}))
    except ValidationError as exc:
        fail_on_invalid(exc, layers)
    # The folders resolved here, so that the flow's tasks (on Ray workers too) and the manifest have the same ones.
    params = params.model_copy(update={"out_dir": params.build_dir, "cache_dir": params.cache_root,
                                       "manual_dir": params.manual_root})

    from m3e_hq import progress
    from m3e_hq.flows.core.accounting import check_writable
    from m3e_hq.flows.pipeline.build import SuspectSourcesError, TaskRunnerError, build_m3e_hq, task_runner
    from m3e_hq.flows.pipeline.download import MissingSourcesError
    from m3e_hq.flows.pipeline.lock import BuildFolderBusy, build_lock

    try:
        flow = build_m3e_hq.with_options(task_runner=task_runner(runner, ray_address))
    except TaskRunnerError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    origin = params.input_dir or f"downloads in {params.cache_root} and manual sources in {params.manual_root}"
    console.print(f"Building m3e-hq from {origin} into {params.build_dir}")
    try:
        check_writable(params.build_dir)
    except OSError as exc:
        console.print(f"[red]error:[/red] {escape(output_failure(exc, params.build_dir, BEFORE_STAGES))}",
                      soft_wrap=True)
        raise typer.Exit(OUTPUT_FAILED) from None
    try:
        with build_lock(params.build_dir), progress.showing(console), quiet_output_errors(), one_api_server(runner):
            summary = flow(params)
    except BuildFolderBusy as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(FOLDER_BUSY) from None
    except (MissingSourcesError, SuspectSourcesError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except OSError as exc:
        if not output_problem(exc):
            raise
        console.print(f"[red]error:[/red] {escape(output_failure(exc, params.build_dir, AFTER_STAGES))}",
                      soft_wrap=True)
        raise typer.Exit(OUTPUT_FAILED) from None
    results = summary["results"]
    console.print(ingest_table(results))
    later = later_table(results, summary["stages"])
    if later is not None:
        console.print(later)
    console.print(stage_table(summary["stages"]))
    console.print(f"Manifest: {summary['manifest']}")
    print_published(summary["published"])
    for r in results:
        if r.status != "ok":
            console.print(f"[yellow]{r.source}: {r.status}[/yellow] — {escape(str(r.message))}", soft_wrap=True)
        elif r.message:
            console.print(f"{r.source}: {escape(r.message)}", soft_wrap=True)
    problem = summary["problem"]
    if problem:
        console.print(f"[red]error:[/red] {problem}", soft_wrap=True)
    if "push_failed" in summary["published"]:
        fail_push(summary["published"]["push_failed"], params.build_dir, params.push_to_hub)
    if problem:
        raise typer.Exit(1)


def fail_push(why: str, folder: Path, repo_id: str) -> NoReturn:
    """Say that the upload failed, what is kept and how to retry it alone; exit PUSH_FAILED."""
    console.print(f"[red]error:[/red] {escape(why)}. The datasets stay published in {folder / 'm3e-hq'} and "
                  f"{folder / 'm3e-hq-with-score'}; retry the upload alone with `m3e-hq push {repo_id} --folder "
                  f"{folder}`", soft_wrap=True)
    raise typer.Exit(PUSH_FAILED)


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


def output_failure(exc: OSError, folder: Path, then: str) -> str:
    """What could not be written in or beside `folder` (the build folder, or export's --out) and why, what to do and
    `then`, and that nothing was published."""
    where = Path(exc.filename) if exc.filename else folder
    option = "--out DIR" if where.is_relative_to(folder) else "--cache-dir DIR"
    return (f"cannot write {where}: {os_reason(exc)}. {remedy(exc, where)}, or choose another folder with "
            f"{option}, {then}. Nothing was published: the datasets in {folder} (if any) are as they were.")


def os_reason(exc: OSError) -> str:
    """Why a write failed: the errno's text, else the error's own."""
    return os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)


def remedy(exc: OSError, where: Path) -> str:
    """What to do about an output that cannot be written at `where`: free space, allow larger files, remove a file
    in the way, or make the folder writable."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free some space there"
    if exc.errno == errno.EFBIG:
        return "Raise the file-size limit (`ulimit -f`) or use a file system that takes larger files"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        in_the_way = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None)
        if in_the_way is not None:
            return f"{in_the_way} is a file, not a folder: move it away"
    return "Make it writable"


def server_startup_seconds() -> int:
    """How long the temporary Prefect server may take to start: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    where the user set it (environment, .env, prefect.toml or Prefect profile), else SERVER_STARTUP_SECONDS."""
    from prefect.settings import get_current_settings

    ephemeral = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return ephemeral.startup_timeout_seconds
    return SERVER_STARTUP_SECONDS


def server_failure(why: str, limit: int, exit_code: int | None) -> str:
    """Why the temporary Prefect server is not there, and what to do."""
    if exit_code is not None:
        return (f"the temporary Prefect server exited with status {exit_code} while starting; nothing was run. Run "
                "`prefect server start` to see why, or point PREFECT_API_URL at a running Prefect server")
    return (f"the temporary Prefect server {why}; nothing was run. On a busy machine allow it longer, e.g. "
            f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS={max(2 * limit, SERVER_STARTUP_SECONDS)}, or start "
            "one (`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api; then run the command "
            "again")


def start_server() -> "SubprocessASGIServer":
    """Prefect's temporary server (SubprocessASGIServer, the one Prefect's clients use), started within
    server_startup_seconds(); if it does not start, one line and exit SERVER_FAILED."""
    import httpx
    from prefect.server.api.server import SubprocessASGIServer

    server, limit = SubprocessASGIServer(), server_startup_seconds()
    try:
        server.start(timeout=limit)
    except (RuntimeError, httpx.HTTPError) as exc:  # RuntimeError: "Timed out while attempting to connect to ..."
        exit_code = server.server_process.poll() if server.server_process else None
        server.stop()
        why = (f"did not start within {limit} s" if isinstance(exc, RuntimeError)
               else f"did not answer its health check ({type(exc).__name__}: {exc})")
        console.print(f"[red]error:[/red] {escape(server_failure(why, limit, exit_code))}", soft_wrap=True)
        raise typer.Exit(SERVER_FAILED) from None
    return server


@contextmanager
def one_api_server(runner: str = "thread") -> Iterator[None]:
    """Without PREFECT_API_URL (and with Prefect's ephemeral mode on): start the temporary Prefect server here, with
    server_startup_seconds() to do it, before the flow would. Under the Ray task runner, point the settings, which
    Ray's worker processes receive, at it; each worker would otherwise start a server of its own."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield
        return
    server = start_server()
    if runner != "ray":
        yield
        return
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield


def ingest_table(results: list) -> Table:
    """Per source: its status, rows read, kept by ingest, filtered by the source's own rule, quarantined as
    malformed. The totals are the stage table's; the reasons, per source, the manifest's."""
    from m3e_hq.flows.stages.ingest import RULE_REASONS

    table = counts_table("rows per source: ingest", ("status", "read", "ingested", "filtered", "quarantined"))
    for r in results:
        c = r.counts
        if c is None:
            table.add_row(r.source, r.status, *["-"] * 4)
            continue
        filtered = sum(n for reason, n in c.dropped.items() if reason in RULE_REASONS)
        table.add_row(r.source, r.status, *(f"{n:,}" for n in (c.read, c.kept, filtered, c.dropped_total - filtered)))
    return table


def later_table(results: list, stages: dict) -> Table | None:
    """Per ingested source: the rows left after each stage after ingest, in the order they ran (None: none ran)."""
    later = {stage: {c.source: c.kept for c in counts} for stage, counts in stages.items() if stage != "ingest"}
    if not later:
        return None
    table = counts_table("rows per source: after each stage", ("ingested", *(f"after {s}" for s in later)))
    for r in results:
        if r.counts is not None:
            table.add_row(r.source, *(f"{n:,}" for n in (r.counts.kept, *(kept.get(r.source, 0)
                                                                         for kept in later.values()))))
    return table


def counts_table(title: str, columns: Sequence[str]) -> Table:
    """A table of a source column, then `columns`: text columns that wrap, and numbers that do not, to fit 80
    columns (`status` is text, the others numbers)."""
    table = Table(title=title)
    table.add_column("source", overflow="fold")
    for column in columns:
        text = column == "status"
        table.add_column(column, justify="left" if text else "right", no_wrap=not text, overflow="fold")
    return table


def stage_table(stages: dict) -> Table:
    """Per stage: rows read, kept and dropped, and the drop reasons; read = kept + dropped for every stage."""
    from m3e_hq.flows.core.manifest import stage_totals

    table = Table(title="rows per stage")
    for column in ("stage", "read", "kept", "dropped", "reasons"):
        text = column in ("stage", "reasons")
        table.add_column(column, justify="left" if text else "right", no_wrap=not text)
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
    """Serve the Prefect deployment build-m3e-hq/build-m3e-hq.

    It runs until SIGTERM or Ctrl-C, which cancel the runs in progress. Needs a Prefect server (`prefect server start`) and PREFECT_API_URL set (http://127.0.0.1:4200/api)."""
    from m3e_hq.flows.pipeline.deploy import RUN_EXAMPLE, ServeError, check_api
    from m3e_hq.flows.pipeline.deploy import serve as serve_deployment

    try:
        url = check_api()
    except ServeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"Serving build-m3e-hq through {url}, {limit} run(s) at a time. Trigger a run with:\n"
                  f"  {RUN_EXAMPLE}", soft_wrap=True, markup=False)
    serve_deployment(limit)


def finished(build_dir: Path) -> bool:
    from m3e_hq.schemas import MANIFEST_NAME

    return (build_dir / MANIFEST_NAME).is_file()


def unfinished_build(build_dir: Path) -> str:
    """Why `export` cannot export `build_dir`, and what to do: the default build folders that hold a build."""
    from m3e_hq.flows.pipeline.params import Mode, default_build_dir

    others = [folder for mode in get_args(Mode) if finished(folder := default_build_dir(mode))]
    hint = f"pass --build {' or '.join(map(str, others))}" if others else "run `m3e-hq build` first, or pass --build DIR"
    return f"{build_dir} holds no finished build (no manifest.json): {hint}"


def print_published(published: dict) -> None:
    """Where the datasets are, how to load them, and where they were uploaded."""
    if "skipped" in published:
        console.print(f"[yellow]not published:[/yellow] {published['skipped']}")
    for name, folder in published["folders"].items():
        console.print(f"{name}: {folder}  (datasets.load_dataset({str(folder)!r}))", soft_wrap=True)
    for repo, url in published.get("hub", {}).items():
        console.print(f"uploaded {repo}: {url}", soft_wrap=True)


@with_build_options("--commercial-only", "--include-unknown-license", "--push-to-hub")
def export(
    out: Annotated[Path, typer.Option(help="folder for the exported m3e-hq/ and m3e-hq-with-score/")],
    build: Annotated[Path | None, typer.Option(help="a finished build folder; default data/build/full, as "
                                                "`m3e-hq build` without --out")] = None,
    commercial_only: bool = False,
    include_unknown_license: bool = False,
    push_to_hub: str | None = None,
) -> None:
    """Publish both datasets again from a finished build.

    E.g. the commercial-only subset. The datasets go into OUT; with --push-to-hub, to the Hub too."""
    from m3e_hq.flows.pipeline.build import push_both
    from m3e_hq.flows.pipeline.params import default_build_dir
    from m3e_hq.flows.pipeline.push import PushError, check_repo_id
    from m3e_hq.flows.stages.publish import PublishParams, publish
    from m3e_hq.sources.catalog import default_catalog

    build = build or default_build_dir("full")
    if not finished(build):
        console.print(f"[red]error:[/red] {escape(unfinished_build(build))}", soft_wrap=True)
        raise typer.Exit(2)
    try:
        if push_to_hub:
            check_repo_id(push_to_hub)
    except PushError as exc:
        console.print(f"[red]error:[/red] --push-to-hub: {escape(str(exc))}")
        raise typer.Exit(2) from None
    params = PublishParams(commercial_only=commercial_only, include_unknown_license=include_unknown_license)
    try:
        result = publish(build, out, params, default_catalog())
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        if not output_problem(exc):
            raise
        console.print(f"[red]error:[/red] {escape(output_failure(exc, out, EXPORT_AGAIN))}", soft_wrap=True)
        raise typer.Exit(OUTPUT_FAILED) from None
    for source, why in result.excluded.items():
        console.print(f"left out {source}: {why}", soft_wrap=True)
    print_published({"folders": {"m3e-hq": result.m3e_hq.folder, "m3e-hq-with-score": result.with_score.folder}})
    if push_to_hub:
        try:
            print_published({"folders": {}, "hub": push_both(out, push_to_hub)})
        except PushError as exc:
            fail_push(str(exc), out, push_to_hub)


@app.command()
def push(
    repo_id: Annotated[str, typer.Argument(metavar="ORG/NAME", help="m3e-hq goes to ORG/NAME, m3e-hq-with-score to "
                                           "ORG/NAME-with-score")],
    folder: Annotated[Path | None, typer.Option(help="the folder holding the published m3e-hq/ and "
                                                "m3e-hq-with-score/: a build's --out or an export's; default "
                                                "data/build/full")] = None,
) -> None:
    """Upload published datasets to the Hub again; no build.

    E.g. after a failed --push-to-hub. Each folder is checked against its SHA256SUMS; token: HF_TOKEN or hf auth login."""
    from m3e_hq.flows.pipeline.build import push_both
    from m3e_hq.flows.pipeline.params import default_build_dir
    from m3e_hq.flows.pipeline.push import PushError

    try:
        hub = push_both(folder or default_build_dir("full"), repo_id)
    except PushError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(PUSH_FAILED) from None
    print_published({"folders": {}, "hub": hub})


for _command in app.registered_commands:  # the commands declared with @app.command(): their docstrings as help
    _command.help = _command.help or flowing(_command.callback.__doc__)
