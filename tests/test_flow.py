"""The build-m3e-hq Prefect flow and the m3e-hq CLI, run for real against a temporary Prefect server."""

import inspect
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness
from prefect_server import STARTUP_SECONDS
from pydantic import ValidationError
from typer.testing import CliRunner

from m3e_hq.flows.cli import app, manual_markdown_table, markdown_table
from m3e_hq.flows.core.minhash import MinHashParams
from m3e_hq.flows.core.negatives import NegativeParams
from m3e_hq.flows.pipeline.build import FLOW_NAME, build_m3e_hq
from m3e_hq.flows.pipeline.deploy import RUN_COMMAND
from m3e_hq.flows.pipeline.lock import build_lock
from m3e_hq.flows.pipeline.params import BuildParams, cli_fields
from m3e_hq.flows.stages.mine import MineParams
from m3e_hq.flows.stages.publish import PublishParams
from m3e_hq.sources import adapters
from m3e_hq.sources.layout import SAMPLES_DIR

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=STARTUP_SECONDS):
        yield


def test_flow_ingests_the_selected_sources_and_writes_the_manifest(prefect_server, tmp_path):
    assert build_m3e_hq.name == FLOW_NAME == "build-m3e-hq"
    summary = build_m3e_hq(BuildParams(samples=True, sources=["ocnli", "Chinese-SQuAD", "Zhuiyi-NL2SQL"],
                                       out_dir=tmp_path))
    assert [r.source for r in summary["results"]] == ["ocnli", "Zhuiyi-NL2SQL", "Chinese-SQuAD"]
    assert all(r.status == "ok" for r in summary["results"])
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["stages"]["ingest"]["sources"]) == {"ocnli", "Chinese-SQuAD", "Zhuiyi-NL2SQL"}
    assert sorted(p.name for p in (tmp_path / "ingest").glob("*.parquet")) == [
        "Chinese-SQuAD.parquet", "Zhuiyi-NL2SQL.parquet", "ocnli.parquet"]


def test_a_failing_source_does_not_stop_the_others(prefect_server, tmp_path, monkeypatch):
    def broken(files, spec):
        raise ValueError("adapter exploded")

    monkeypatch.setitem(adapters.ADAPTERS, "squad", broken)
    result = CliRunner().invoke(app, ["build", "--samples", "-s", "Chinese-SQuAD,SimCLUE", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "Chinese-SQuAD: failed — ValueError: adapter exploded" in result.output
    assert result.output.rstrip().splitlines()[-1] == ("error: 1 of 2 sources failed: Chinese-SQuAD (why above); the "
                                                      "other sources were built")
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sources"]["Chinese-SQuAD"]["status"] == "failed"
    assert manifest["sources"]["SimCLUE"]["status"] == "ok"
    assert (tmp_path / "ingest" / "SimCLUE.parquet").exists()
    assert not (tmp_path / "ingest" / "Chinese-SQuAD.parquet").exists()


def test_a_failed_download_is_reported_and_the_other_sources_published(prefect_server, mock_hub, tmp_path,
                                                                        tiny_encoder):
    del mock_hub.repos["hfl/cmrc2018"]  # taken down: a permanent failure, reported at once
    mock_hub.fail["GET /api/datasets/clue/clue/revision/main"] = 1  # a transient one, retried by huggingface_hub
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "-s", "cmrc2018,ocnli,lcqmc", "--out", str(out), "--cache-dir",
                                      str(tmp_path / "cache"), "--manual-dir", str(tmp_path / "manual"),
                                      "--encoder", str(tiny_encoder)])
    assert result.exit_code == 1, result.output
    output = result.output.replace("\n", "")
    assert "cmrc2018: failed — HubError: dataset repo hfl/cmrc2018 not found on the Hub" in output
    assert output.rstrip().endswith("error: 1 of 3 sources failed: cmrc2018 (why above); the other sources were built")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert {s: r["status"] for s, r in manifest["sources"].items()} == {"cmrc2018": "failed", "ocnli": "ok",
                                                                         "lcqmc": "ok"}
    assert mock_hub.fail == {"GET /api/datasets/clue/clue/revision/main": 0}  # ocnli got past its failure
    assert "not found on the Hub" in manifest["sources"]["cmrc2018"]["message"]
    published = {p.name for p in (out / "m3e-hq" / "data").iterdir()}
    assert published == {"ocnli", "lcqmc"}


def test_an_offline_build_fails_fast_and_its_last_line_says_nothing_was_built(prefect_server, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://nosuch.invalid")
    start = time.monotonic()
    summary = build_m3e_hq(BuildParams(sources=["cmrc2018", "ocnli"], out_dir=tmp_path / "out",
                                       cache_dir=tmp_path / "cache"))
    assert time.monotonic() - start < 120  # no retries: 13.7 minutes for 19 sources before
    assert all(r.status == "failed" and "no network: cannot resolve nosuch.invalid" in r.message
               for r in summary["results"])
    assert summary["problem"] == ("2 of 2 sources failed: cmrc2018, ocnli (why above); nothing was built or "
                                  "published: nothing to publish: 0 rows left after the filters and dedup, 0 after "
                                  "mining")


def test_the_last_line_names_the_sources_built_when_others_are_not(prefect_server, tmp_path, monkeypatch,
                                                                   tiny_encoder):
    def broken(files, spec):
        raise ValueError("adapter exploded")

    monkeypatch.setitem(adapters.ADAPTERS, "squad", broken)
    raw = tmp_path / "raw"
    for name in ("ocnli", "Chinese-SQuAD"):
        shutil.copytree(SAMPLES_DIR / name, raw / name)
    summary = build_m3e_hq(BuildParams(raw_dir=raw, sources=["ocnli", "Chinese-SQuAD", "lawzhidao"],
                                       out_dir=tmp_path / "out", mine=MineParams(encoder=str(tiny_encoder))))
    assert {r.source: r.status for r in summary["results"]} == {"ocnli": "ok", "lawzhidao": "missing",
                                                                 "Chinese-SQuAD": "failed"}
    assert summary["problem"] == ("1 of 3 sources failed: Chinese-SQuAD (why above); 1 of 3 sources were built and "
                                  "published: ocnli")


def test_missing_sources_are_reported_with_what_to_do(prefect_server, tmp_path):
    raw = tmp_path / "raw"
    (raw / "lawzhidao").mkdir(parents=True)
    summary = build_m3e_hq(BuildParams(raw_dir=raw, sources=["lawzhidao", "amazon_reviews_multi", "cmrc2018"],
                                       out_dir=tmp_path / "out"))
    status = {r.source: r for r in summary["results"]}
    assert status["lawzhidao"].status == "missing"
    assert "download by hand from https://www.heywhale.com" in status["lawzhidao"].message
    assert "lawzhidao_filter.csv" in status["lawzhidao"].message
    assert status["amazon_reviews_multi"].message.startswith("unavailable: taken down")
    assert status["cmrc2018"].message.startswith("no files matching data/train-*.parquet")


def test_a_source_whose_records_lack_the_mapped_keys_is_suspect_in_the_table_the_manifest_and_the_exit_status(
        prefect_server, tmp_path, tiny_encoder):
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLES_DIR / "ocnli", raw / "ocnli")
    # SimCLUE's train_pair.json (sentence1, sentence2, label) saved under the positive pairs' name.
    (raw / "SimCLUE").mkdir()
    records = [{"sentence1": f"借呗能提前还吗{i}", "sentence2": f"借呗可以提前还款吗{i}", "label": "1"} for i in range(30)]
    (raw / "SimCLUE" / "train_pair_postive.json").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    args = ["build", "--raw-dir", str(raw), "-s", "ocnli,SimCLUE", "--encoder", str(tiny_encoder), "--cache-dir",
            str(tmp_path / "cache")]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ SimCLUE"))
    assert [cell.strip() for cell in row.split("│")[2:7]] == ["suspect", "30", "0", "0", "30"]
    output = result.output.replace("\n", "")
    assert "SimCLUE: suspect — missing_field quarantined 30 of 30 rows, 0 kept; keys of sampled rows: " \
           "['sentence1', 'sentence2', 'label']; the records lack the fields the adapter reads (text ← query, " \
           "text_pos ← title)" in output
    assert result.output.rstrip().splitlines()[-1] == ("error: 1 of 2 sources suspect: SimCLUE (why above); the "
                                                      "other sources were built")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sources"]["ocnli"]["status"] == "ok" and manifest["sources"]["ocnli"]["suspect"] is None
    entry = manifest["sources"]["SimCLUE"]
    assert entry["status"] == "suspect" and entry["message"].startswith("missing_field quarantined 30 of 30 rows")
    assert {k: entry["suspect"][k] for k in ("reason", "rows", "considered", "kept", "sample_keys")} == {
        "reason": "missing_field", "rows": 30, "considered": 30, "kept": 0,
        "sample_keys": [["sentence1", "sentence2", "label"]]}
    assert "map the keys they hold (sources/catalog.yaml)" in entry["suspect"]["check"]
    assert {p.name for p in (out / "m3e-hq" / "data").iterdir()} == {"ocnli"}  # the others are published

    strict = tmp_path / "strict"
    result = CliRunner().invoke(app, [*args, "--out", str(strict), "--require-all"])
    assert result.exit_code == 1, result.output
    assert result.output.replace("\n", "").count("error: 1 selected sources did not ingest as their data "
                                                 "(require_all): nothing was filtered or published") == 1
    assert "  SimCLUE: suspect: missing_field quarantined 30 of 30 rows" in result.output
    assert (strict / "ingest" / "ocnli.parquet").exists()  # reused when the build is run again
    assert not any((strict / name).exists() for name in ("filter", "m3e-hq", "manifest.json"))


def test_a_build_folder_another_process_builds_into_is_refused_in_one_line(tmp_path):
    out = tmp_path / "out"
    hold = ("import sys, time; from pathlib import Path; from m3e_hq.flows.pipeline.lock import build_lock\n"
            "with build_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = CliRunner().invoke(app, ["build", "--samples", "-s", "ocnli", "--out", str(out)])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 5, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {out} is being built by pid {holder.pid} (-c {out}, since ")
    assert line.endswith("UTC): wait for that build to end, or build into another folder with --out DIR")
    assert not (out / "ingest").exists()
    with build_lock(out):  # released when its holder ended (killed)
        pass


def test_cli_build_on_samples_prints_the_summary(prefect_server, tmp_path):
    result = CliRunner().invoke(app, ["build", "--samples", "--sources", "ocnli", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ ocnli"))
    # read, kept, filtered (not entailment), quarantined (malformed)
    assert [cell.strip() for cell in row.split("│")[3:7]] == ["61", "18", "40", "3"]
    assert f"Manifest: {tmp_path / 'manifest.json'}" in result.output.replace("\n", "")
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stages"]["ingest"]["sources"]["ocnli"]["dropped"]["label_filtered"] == 40  # not on the console
    stage_rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
                  for line in result.output.splitlines() if line.startswith(("│ dedup", "│ filter"))}
    assert "rows per stage" in result.output
    for stage in ("dedup", "filter"):
        totals = manifest["stages"][stage]["totals"]
        assert stage_rows[stage] == [str(totals["read"]), str(totals["kept"]), str(sum(totals["dropped"].values()))]


def test_flow_runs_ingest_filter_dedup_mine_and_the_counts_chain(prefect_server, tmp_path, tiny_encoder):
    sources = ["lcqmc", "SimCLUE", "firefily", "hc3_chinese"]
    # A dict, as a deployment run passes it: the flow validates it into BuildParams.
    build_m3e_hq({"samples": True, "sources": sources, "out_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache"),
                  "mine": {"encoder": str(tiny_encoder)}})
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    stages = manifest["stages"]
    assert list(stages) == ["ingest", "filter", "dedup", "mine"]
    for source in sources:
        ingest, filtered, dedup, mined = (stages[s]["sources"][source] for s in ("ingest", "filter", "dedup", "mine"))
        assert filtered["read"] == ingest["kept"] and dedup["read"] == filtered["kept"] and mined["read"] == dedup["kept"]
        for counts in (filtered, dedup, mined):
            assert counts["read"] == counts["kept"] + sum(counts["dropped"].values())
            assert pq.read_metadata(counts["kept_path"]).num_rows == counts["kept"]
            assert pq.read_metadata(counts["dropped_path"]).num_rows == sum(counts["dropped"].values())
    # Dedup reads what the filters kept: the evaluation rows it drops are those the filters left.
    lcqmc_test = pq.read_table(tmp_path / "filter" / "lcqmc.parquet").filter(pc.field("split") == "test").num_rows
    assert lcqmc_test > 0 and stages["dedup"]["sources"]["lcqmc"]["dropped"]["eval_split"] == lcqmc_test
    assert stages["filter"]["sources"]["SimCLUE"]["dropped"] == {"query_in_positive": 2}
    assert manifest["params"]["dedup"]["on"] == "pair"
    assert manifest["params"]["dedup"]["minhash"]["threshold"] == MinHashParams().threshold  # the default
    assert set(manifest["stages"]["dedup"]["stats"]) >= {"exact_duplicate_keys", "near", "duplicates_by_source"}
    # Each stage's seconds time the whole task, not only its final write.
    mined = stages["mine"]
    assert sum(c["seconds"] for c in mined["sources"].values()) >= mined["stats"]["mine_seconds"] + mined["stats"][
        "teacher_seconds"] > 0


def test_cli_dedup_and_filter_options_reach_the_build(prefect_server, tmp_path):
    eval_file = tmp_path / "eval.txt"
    positive = next(r for r in pq.read_table(SAMPLES_DIR / "lcqmc" / "LCQMC" / "train" / "0000.parquet").to_pylist()
                    if r["label"] == 1 and r["sentence1"] and r["sentence2"])
    eval_file.write_text(positive["sentence1"] + "\n", encoding="utf-8")
    thresholds = tmp_path / "filters.yaml"
    # Queries shorter than the evaluation text's go (too_short) before dedup, which then finds the evaluation text.
    thresholds.write_text(f"s2s_query_min_chars: {len(positive['sentence1'])}\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "--samples", "-s", "lcqmc", "--out", str(out), "--dedup-on", "query",
                                      "--keep-eval-splits", "--decontaminate", str(eval_file), "--no-near",
                                      "--filters", str(thresholds)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    dedup = manifest["stages"]["dedup"]["sources"]["lcqmc"]
    assert "eval_split" not in dedup["dropped"] and dedup["dropped"]["eval_overlap"] >= 1
    assert manifest["params"]["dedup"]["on"] == "query" and not manifest["params"]["dedup"]["near"]
    filtered = manifest["stages"]["filter"]["sources"]["lcqmc"]
    assert filtered["dropped"]["too_short"] >= 1 and dedup["read"] == filtered["kept"] > 0
    bad = CliRunner().invoke(app, ["build", "--samples", "--dedup-on", "passage"])
    assert bad.exit_code == 2 and bad.output == "error: --dedup-on: Input should be 'pair', 'query' or 'query-s2p'\n"


def test_build_params_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValidationError, match="choose one input: samples=true"):
        BuildParams(samples=True, raw_dir=tmp_path)
    with pytest.raises(ValidationError, match="unknown sources \\['nope'\\]"):
        BuildParams(samples=True, sources=["nope"])
    assert BuildParams().mode == "full" and BuildParams().build_dir.name == "full"
    result = CliRunner().invoke(app, ["build", "--samples", "--raw-dir", str(tmp_path)])
    assert result.exit_code == 2 and "choose one input" in result.output


def test_cli_download_then_sources_then_build_from_the_cache(prefect_server, mock_hub, tmp_path):
    dirs = ["--cache-dir", str(tmp_path / "cache"), "--manual-dir", str(tmp_path / "manual")]
    result = CliRunner().invoke(app, ["download", "-s", "cmrc2018,lawzhidao", *dirs])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│ ")}
    assert "downloaded" in rows["cmrc2018"] and "skipped" in rows["lawzhidao"]
    assert "heywhale.com" in result.output

    listing = CliRunner().invoke(app, ["sources", *dirs]).output
    assert "cached @137f2c45a242" in listing and "missing (manual)" in listing

    mock_hub.requests.clear()
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "-s", "cmrc2018", "--out", str(out), *dirs])
    assert result.exit_code == 0, result.output
    assert mock_hub.requests == []  # built from the cache
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sources"]["cmrc2018"]["obtained"]["status"] == "cached"
    assert manifest["sources"]["cmrc2018"]["obtained"]["revision"] == "137f2c45a24275fb68f6961c4d357f46288886aa"
    assert manifest["stages"]["ingest"]["sources"]["cmrc2018"]["kept"] == 57

    result = CliRunner().invoke(app, ["build", "-s", "cmrc2018,lawzhidao", "--require-all", "--out", str(out), *dirs])
    assert result.exit_code == 1
    assert "lawzhidao: skipped: download by hand" in result.output.replace("\n", "")


def test_cli_sources_lists_the_catalog(catalog):
    result = CliRunner().invoke(app, ["sources"])
    assert result.exit_code == 0
    for name in catalog.names:
        assert name in result.output
    markdown = CliRunner().invoke(app, ["sources", "--markdown"]).output
    assert markdown.strip() == markdown_table(catalog.sources)
    assert markdown.count("\n| ") == 29  # one line per source after the header


def test_readme_source_tables_are_generated_from_the_catalog(catalog):
    readme = README.read_text(encoding="utf-8")
    assert markdown_table(catalog.sources) in readme
    manual = CliRunner().invoke(app, ["sources", "--manual-markdown"]).output.strip()
    assert manual == manual_markdown_table(catalog.sources) and manual in readme
    assert manual.count("\n| ") == 10  # the manual sources, amazon_reviews_multi included


def test_readme_documents_every_stage_setting_and_reason():
    from m3e_hq.flows.core import negatives
    from m3e_hq.flows.pipeline.build import STAGES
    from m3e_hq.flows.stages import filters, mine

    readme = README.read_text(encoding="utf-8")
    names = [*filters.FilterParams.model_fields, *(reason for stage in STAGES for reason in stage.reasons),
             *(f for f in mine.MineParams.model_fields if f != "negatives")]
    assert [name for name in names if f"`{name}`" not in readme] == []
    assert list(inspect.signature(build_m3e_hq.fn).parameters) == ["params"]
    assert [name for name in BuildParams.model_fields if f"`{name}`" not in readme] == []
    nested = [f for f in negatives.NegativeParams.model_fields if f"`{f}`" not in readme
              and f"`negatives.{f}`" not in readme]
    assert nested == []
    cli_options = [name for field in cli_fields() for names in field.names for name in names.split("/")]
    documented = [option for option in [*cli_options, "--config"]  # in a code span, as itself (--near, not --near-x)
                  if re.search(rf"`[^`\n]*{re.escape(option)}(?![\w-])[^`\n]*`", readme)]
    assert documented == [*cli_options, "--config"]
    assert f"{RUN_COMMAND} -p 'params={{" in readme


def test_flow_commercial_only_publishes_commercial_sources_only(prefect_server, tmp_path, tiny_encoder):
    sources = ["dureader_robust", "csl", "lawzhidao", "lcqmc"]
    # No margins: a random model's scores would leave some small pools without negatives.
    mine = MineParams(encoder=str(tiny_encoder), false_negative_margin=None,
                      negatives=NegativeParams(relative_margin=None))
    summary = build_m3e_hq(BuildParams(samples=True, sources=sources, out_dir=tmp_path, cache_dir=tmp_path / "cache",
                                       mine=mine, publish=PublishParams(commercial_only=True)))
    for folder in summary["published"]["folders"].values():
        published = {p.name for p in (Path(folder) / "data").iterdir()}
        assert published == {"dureader_robust", "csl"}  # lawzhidao states no licence, lcqmc is not commercial
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["params"]["publish"]["commercial_only"] is True


def test_a_build_loads_its_encoder_and_teacher_once_for_all_its_mine_tasks(prefect_server, tmp_path, tiny_encoder,
                                                                           tiny_cross_encoder, monkeypatch, caplog):
    from m3e_hq.flows.core import encode

    monkeypatch.setattr(encode, "_MODELS", {})  # none loaded yet in this process
    caplog.set_level(logging.INFO, logger="m3e_hq")
    sources = ["ocnli", "BQ", "lcqmc", "SimCLUE"]
    summary = build_m3e_hq(BuildParams(samples=True, sources=sources, out_dir=tmp_path, cache_dir=tmp_path / "cache",
                                       mine=MineParams(encoder=str(tiny_encoder), teacher=str(tiny_cross_encoder))))
    assert sorted(c.source for c in summary["stages"]["mine"] if c.read) == sorted(sources)  # a mine task each
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert loaded == [f"loaded encoder {tiny_encoder} on cpu", f"loaded teacher {tiny_cross_encoder} on cpu"]
