"""The m3e-hq CLI as a person meets it: a start-up that imports none of the pipeline's heavy modules, help that lists
every choice, source names in any case, tables that fit 80 columns, messages that are true, and a README that shows
what the CLI prints."""

import json
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
from rich.console import Console
from typer.testing import CliRunner

from m3e_hq.flows import cli
from m3e_hq.flows.cli import FIELDS_LISTED, app, build_options
from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.flows.pipeline import build as build_module
from m3e_hq.flows.pipeline import download as download_module
from m3e_hq.flows.pipeline.build import SourceResult
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.sources.catalog import default_catalog

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
M3E_HQ = Path(sys.executable).parent / "m3e-hq"
# Modules the pipeline needs and a command line that only shows help, lists the catalog or rejects an argument does
# not: imported, each costs from a tenth of a second (huggingface_hub) to seconds (numba, datasets, torch).
HEAVY = ("numba", "polars", "datasketch", "scipy", "huggingface_hub", "torch", "prefect", "datasets", "matplotlib",
         "sentence_transformers", "faiss", "pyarrow", "m3e_hq.flows.pipeline.params")


def heavy_imported(*args: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after `m3e-hq ARGS` (no ARGS: after importing the CLI)."""
    run = f"\ntry:\n    app({list(args)!r})\nexcept SystemExit:\n    pass" if args else ""
    code = (f"import json, sys\nfrom m3e_hq.flows.cli import app{run}\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    return json.loads(done.stdout.strip().splitlines()[-1])


def m3e_hq(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    """The installed `m3e-hq` with ARGS on a terminal `columns` wide."""
    return subprocess.run([str(M3E_HQ), *args], capture_output=True, text=True, check=False, cwd="/",
                          env={"PATH": str(M3E_HQ.parent), "COLUMNS": str(columns), "HOME": str(Path.home())})


def flat(text: str) -> str:
    """Help or a table as one line: box characters dropped, runs of spaces and line breaks made one space."""
    return " ".join(re.sub(r"[│╭╮╰╯─┃━┏┓┗┛┡┩╇┳┻]", " ", text).split())


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """No temporary Prefect server: the flows these tests run are stand-ins."""
    monkeypatch.setattr(cli, "one_api_server", lambda runner="thread": nullcontext())


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, no_server: None) -> list[BuildParams]:
    """`m3e-hq build` with the flow replaced by one that records its BuildParams and returns its `summary`."""
    given: list[BuildParams] = []

    class Flow:
        def __init__(self) -> None:
            self.summary = {"results": [], "stages": {}, "manifest": "manifest.json", "published": {"folders": {}},
                            "problem": None}

        def with_options(self, **options: object) -> "Flow":
            return self

        def __call__(self, params: BuildParams) -> dict:
            given.append(params)
            return self.summary

    monkeypatch.setattr(build_module, "build_m3e_hq", Flow())
    return given


# --- start-up -------------------------------------------------------------------------------------------------------

def test_importing_the_cli_imports_none_of_the_heavy_modules():
    assert heavy_imported() == []


@pytest.mark.parametrize("args", [["--help"], ["sources", "--help"], ["buidl"],
                                  ["sources", "--bogus"], ["serve", "--limit", "0"]], ids=" ".join)
def test_help_and_argument_errors_import_none_of_the_heavy_modules(args):
    assert heavy_imported(*args) == []


def test_sources_imports_neither_the_stages_nor_prefect():
    # sources.fetch, which says what is cached, imports huggingface_hub, and pyarrow through the schemas.
    assert set(heavy_imported("sources")) <= {"huggingface_hub", "pyarrow"}


@pytest.mark.parametrize("args", [["build", "--help"], ["build", "--bogus"], ["build", "--max-chars", "0"],
                                  ["build", "--config", "CONFIG"]], ids=" ".join)
def test_build_help_and_its_argument_errors_import_no_stage_and_no_prefect(args, tmp_path):
    # build's options are BuildParams' fields, whose models are light (flows/core/*_params.py); the catalog that
    # checks source names imports pyarrow through the schemas.
    config = tmp_path / "config.json"
    config.write_text('{"sources": ["nosuch"]}', encoding="utf-8")
    args = [str(config) if arg == "CONFIG" else arg for arg in args]
    assert set(heavy_imported(*args)) <= {"pyarrow", "m3e_hq.flows.pipeline.params"}


def test_the_deferred_commands_take_their_options_when_run():
    done = m3e_hq("download", "--bogus")
    assert done.returncode == 2 and "No such option: --bogus" in done.stderr
    assert "--sources" in m3e_hq("download", "--help").stdout


# --- help text ------------------------------------------------------------------------------------------------------

def test_the_command_list_gives_each_command_one_line():
    done = m3e_hq("--help")
    assert done.returncode == 0
    listed = [line for line in done.stdout.splitlines() if re.match(r"│ [a-z]+ {2,}", line)]
    assert [line.split()[1] for line in listed] == ["sources", "download", "build", "serve", "export", "push"]
    rows = [line for line in done.stdout[done.stdout.index("Commands"):].splitlines() if line.startswith("│")]
    assert len(rows) == 6  # no summary wraps or breaks onto a second line


@pytest.mark.parametrize("command", ["sources", "download", "build", "serve", "export", "push"])
def test_each_commands_description_fills_the_lines_it_wraps_onto(command):
    done = m3e_hq(command, "--help")
    assert done.returncode == 0
    description = done.stdout[done.stdout.index("Usage:"):done.stdout.index("╭")].splitlines()[1:]
    paragraphs = "\n".join(line.strip() for line in description).strip().split("\n\n")
    assert len(paragraphs) >= 2, done.stdout  # a summary, then what the command does
    for paragraph in paragraphs:
        lines = paragraph.splitlines()
        assert all(len(line) > 60 for line in lines[:-1]), paragraph  # broken only where the terminal wraps


def test_build_help_lists_every_choice_and_the_ray_extra():
    done = m3e_hq("build", "--help", columns=250)
    assert done.returncode == 0
    text = flat(done.stdout)
    assert 'pip install "m3e-hq[ray]"' in text and "<thread|ray>" in text
    choices = [get_args(f.info.annotation) for f in build_options().values() if get_origin(f.info.annotation) is
               Literal]
    assert ("pair", "query", "query-s2p") in choices and ("auto", "faiss-gpu", "torch-cuda", "faiss-cpu") in choices
    for values in choices:
        assert "|".join(values) in text


def test_filters_and_mine_point_to_the_readme_section_that_lists_their_fields():
    text = flat(m3e_hq("build", "--help", columns=250).stdout)
    headings = [line.lstrip("#").strip() for line in README.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")]
    for section in FIELDS_LISTED.values():
        assert f"lists (section {section})" in text
        assert any(heading.startswith(section) for heading in headings), section


def test_sources_options_are_the_build_parameters():
    command = cli.typer.main.get_command(app).commands["sources"]
    helps = {p.name: p.help for p in command.params}
    for name in ("cache_dir", "manual_dir"):
        assert helps[name] == BuildParams.model_fields[name].description


# --- names ----------------------------------------------------------------------------------------------------------

def test_source_names_are_accepted_in_any_case_and_by_alias(runs, tmp_path):
    result = CliRunner().invoke(app, ["build", "--samples", "-s", "bq,FIREFLY", "-s", "simclue", "--out",
                                      str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert runs[0].sources == ["BQ", "firefily", "SimCLUE"]


def test_a_misspelt_source_gets_the_closest_name(runs):
    result = CliRunner().invoke(app, ["build", "--samples", "-s", "fierfly"])
    assert result.exit_code == 2 and runs == []
    assert result.output == ("error: --sources: unknown sources ['fierfly']; did you mean 'firefily'? (`m3e-hq "
                             "sources` lists the 29 names; any case works)\n")
    result = CliRunner().invoke(app, ["build", "--samples", "-s", "Bqq,ocnli,lcqmcc"])
    assert "unknown sources ['Bqq', 'lcqmcc']; did you mean 'BQ' for 'Bqq', 'lcqmc' for 'lcqmcc'?" in result.output


def test_download_resolves_the_names_too(monkeypatch, no_server):
    given = []
    monkeypatch.setattr(download_module, "download_m3e_hq_sources", lambda **kw: given.append(kw) or [])
    result = CliRunner().invoke(app, ["download", "-s", "Cmrc2018,firefly"])
    assert result.exit_code == 0, result.output
    assert given[0]["sources"] == ["cmrc2018", "firefily"]


# --- tables ---------------------------------------------------------------------------------------------------------

def full_build_summary() -> dict:
    """A summary of a build of all 29 sources at their M3E table sizes (one unavailable, one suspect)."""
    results, stages = [], {"ingest": [], "filter": [], "dedup": [], "mine": []}
    for source in default_catalog().sources:
        if source.name == "amazon_reviews_multi":
            results.append(SourceResult(source.name, "unavailable", "taken down"))
            continue
        read = source.reported_rows
        counts = StageCounts("ingest", source.name, read, read - 300, {"label_filtered": 200, "invalid_json": 100})
        status = "suspect" if source.name == "SimCLUE" else "ok"
        results.append(SourceResult(source.name, status, "invalid_json quarantined" if status != "ok" else None,
                                    counts=counts))
        stages["ingest"].append(counts)
        kept = counts.kept
        for stage in ("filter", "dedup", "mine"):
            stages[stage].append(StageCounts(stage, source.name, kept, kept * 9 // 10,
                                             {"too_short": kept - kept * 9 // 10}))
            kept = kept * 9 // 10
    summary = {"results": results, "stages": stages, "manifest": "manifest.json", "published": {"folders": {}}}
    return {**summary, "problem": build_module.sources_problem(summary)}


def test_the_build_tables_fit_80_columns(runs, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "console", Console(width=80))
    monkeypatch.setattr(build_module.build_m3e_hq, "summary", full_build_summary())
    result = CliRunner().invoke(app, ["build", "--samples", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output  # SimCLUE is suspect
    lines = result.output.splitlines()
    tables = result.output[:result.output.index("Manifest:")].splitlines()  # the one-line messages follow
    assert max(len(line) for line in tables) <= 80
    assert len(tables) < 100  # was 264 lines: a row per source and table, a few long names on two
    row = next(line for line in lines if line.startswith("│ webtext2019zh"))
    assert [cell.strip() for cell in row.split("│")[2:7]] == ["ok", "4,258,310", "4,258,010", "200", "100"]
    after = [line for line in lines if line.startswith("│ webtext2019zh")][1]
    assert [cell.strip() for cell in after.split("│")[2:6]] == ["4,258,010", "3,832,209", "3,448,988", "3,104,089"]
    assert "label_filtered" not in result.output.split("rows per stage")[0]  # the reasons per source: the manifest's


def test_the_sources_table_fits_80_columns(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "console", Console(width=80))
    result = CliRunner().invoke(app, ["sources", "--cache-dir", str(tmp_path), "--manual-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if line.startswith("│ ")]
    assert len(rows) == 29 and rows[6].split("│")[1].strip() == "amazon_reviews_multi"  # one line per source
    assert "--markdown shows every column" in flat(result.output)
    monkeypatch.setattr(cli, "console", Console(width=200))  # as on a pipe
    wide = CliRunner().invoke(app, ["sources", "--cache-dir", str(tmp_path)]).output
    assert "hf hfl/cmrc2018" in wide and "cc-by-sa-4.0" in wide


# --- messages -------------------------------------------------------------------------------------------------------

def test_a_file_in_the_way_of_the_build_folder_is_named_and_no_stage_ran(runs, tmp_path):
    (tmp_path / "parent").write_text("not a folder", encoding="utf-8")
    out = tmp_path / "parent" / "build"
    result = CliRunner().invoke(app, ["build", "--samples", "--out", str(out)])
    assert result.exit_code == 3 and runs == []
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error == (
        f"error: cannot write {out}: Not a directory. {tmp_path / 'parent'} is a file, not a folder: move it away, or "
        "choose another folder with --out DIR, then run the command again. No stage ran. Nothing was published: the "
        f"datasets in {out} (if any) are as they were.")


def test_export_looks_where_build_writes_and_names_the_builds_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    samples = tmp_path / "data" / "build" / "samples"
    samples.mkdir(parents=True)
    (samples / "manifest.json").write_text(json.dumps({}), encoding="utf-8")
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "export")])
    assert result.exit_code == 2
    assert flat(result.output) == (f"error: {tmp_path / 'data' / 'build' / 'full'} holds no finished build (no "
                                   f"manifest.json): pass --build {samples}")
    assert BuildParams().build_dir == tmp_path / "data" / "build" / "full"  # what `m3e-hq build` writes


# --- README and installs --------------------------------------------------------------------------------------------

def test_the_readme_shows_what_the_cli_prints(runs):
    readme = README.read_text(encoding="utf-8")
    printed = CliRunner().invoke(app, ["build", "--samples", "-s", "fierfly"]).output.strip()
    assert f"`` {printed} ``" in readme  # a code span that holds backticks


def test_the_quick_start_offers_the_lean_install_and_keeps_ci_s_two_commands():
    readme = README.read_text(encoding="utf-8")
    quick_start = readme[readme.index("## Quick start"):readme.index("## Commands")]
    blocks = re.findall(r"```bash\n(.*?)\n```", quick_start, flags=re.DOTALL)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    setup, tests = (line for line in ci.splitlines() if ".venv/bin/m3e-hq build --samples" in line or
                    line == ".venv/bin/python -m pytest")
    assert setup in blocks and tests in blocks and '.[dev]' in setup  # CI runs the contributors' commands
    lean = next(block for block in blocks if 'pip install -e .' in block)
    assert "[dev]" not in lean and lean.endswith(".venv/bin/m3e-hq build --samples")
