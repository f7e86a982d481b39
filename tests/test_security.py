"""Secrets and remote code: a Hub token and a mirror's password never reach what a build writes, prints or logs, and
no model or dataset code is ever run (`trust_remote_code` is never enabled)."""

import base64
import json
import logging
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from prefect.client.orchestration import get_client
from prefect.logging.handlers import APILogWorker
from transformers import AutoConfig, dynamic_module_utils
from typer.testing import CliRunner

from m3e_hq.flows.cli import app
from m3e_hq.flows.core.encode import embed, load_encoder
from m3e_hq.flows.core.teacher import CrossEncoderTeacher
from m3e_hq.flows.pipeline.build import SourceResult, ingest_one
from m3e_hq.flows.pipeline.download import obtain_sources
from m3e_hq.flows.pipeline.params import BuildParams
from m3e_hq.flows.stages.ingest import RAW_MAX_CHARS
from m3e_hq.sources.fetch import Obtained, fetch_source
from m3e_hq.sources.layout import SAMPLES_DIR

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_fakeTokenThatMustNotLeak0123456789"
PASSWORD = "mirrorPasswordThatMustNotLeak"


def everything_in(*folders: Path) -> str:
    """The text of every file under `folders`, hidden ones included (binary files decoded leniently)."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for folder in folders for p in folder.rglob("*")
                     if p.is_file())


def prefect_records() -> str:
    """Every log line, artifact and flow-run parameter the Prefect server holds."""
    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        logs, offset = [], 0
        while batch := client.read_logs(limit=200, offset=offset):
            logs += [log.message for log in batch]
            offset += len(batch)
        artifacts = [str(a.data) for a in client.read_artifacts()]
        parameters = [json.dumps(r.parameters, default=str) for r in client.read_flow_runs(limit=200)]
    return "\n".join(logs + artifacts + parameters)


def test_no_token_or_password_in_outputs_logs_or_cards(prefect_api, mock_hub, tmp_path, tiny_encoder, monkeypatch,
                                                       capfd, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", mock_hub.url.replace("http://", f"http://m3e:{PASSWORD}@"))
    mock_hub.fail["GET /api/datasets/clue/clue/revision/main"] = 1  # retried; its URL logged
    mock_hub.refuse.add("GET /api/datasets/shibing624/nli_zh/revision/refs/convert/parquet")  # its URL in the error
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["build", "-s", "cmrc2018,ocnli,lcqmc", "--out", str(out), "--cache-dir", str(cache), "--manual-dir",
            str(tmp_path / "manual"), "--encoder", str(tiny_encoder)]
    built = CliRunner().invoke(app, args)
    assert built.exit_code == 1, built.output  # lcqmc failed
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "Cannot access content at: http://127.0.0.1:" in manifest["sources"]["lcqmc"]["message"]
    assert any(r.startswith("HEAD /datasets/hfl/cmrc2018/resolve/") for r in mock_hub.requests)  # downloaded
    assert mock_hub.downloads_auth == {"Basic " + base64.b64encode(f"m3e:{PASSWORD}".encode()).decode()}

    monkeypatch.setenv("HF_ENDPOINT", mock_hub.url)  # the Hub itself takes the token
    pushed = CliRunner().invoke(app, [*args, "--push-to-hub", "org/m3e-hq"])
    assert pushed.exit_code == 1, pushed.output
    assert mock_hub.tokens == {TOKEN} and "uploaded org/m3e-hq-with-score" in pushed.output

    cards = (out / "m3e-hq" / "README.md").read_text(encoding="utf-8")
    assert "cmrc2018" in cards and "ocnli" in cards  # published
    seen = "\n".join([everything_in(out, cache), built.output, pushed.output, *capfd.readouterr(), caplog.text,
                      prefect_records()])
    assert f"GET {mock_hub.url}/api/datasets/clue/clue/revision/main" in seen  # the failed request was logged
    for secret in (TOKEN, PASSWORD):
        assert secret not in seen


def test_trust_remote_code_is_never_enabled():
    sources = [p for folder in ("schemas", "sources", "flows") for p in (ROOT / folder).rglob("*.py")]
    enabling = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sources
                for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
                if re.search(r"trust_remote_code\s*[=:]\s*(?!False\b)\S", line)]
    assert enabling == []


def plant_remote_code(config_dir: Path, marker: Path) -> None:
    """Make the model config in `config_dir` name code of its own (as a Hub repo can), which records that it ran."""
    (config_dir / "remote_config.py").write_text(
        "from pathlib import Path\nfrom transformers import BertConfig\n"
        f"Path({str(marker)!r}).write_text('remote code ran')\n"
        "class RemoteConfig(BertConfig):\n    pass\n", encoding="utf-8")
    config = json.loads((config_dir / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoConfig": "remote_config.RemoteConfig"}
    (config_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")


def test_models_are_loaded_without_running_their_code(tiny_encoder, tiny_cross_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    marker = tmp_path / "ran"
    encoder = shutil.copytree(tiny_encoder, tmp_path / "encoder")
    plant_remote_code(encoder / "bert", marker)
    cross = shutil.copytree(tiny_cross_encoder, tmp_path / "cross-encoder")
    plant_remote_code(cross, marker)

    assert embed(load_encoder(str(encoder), "cpu"), ["你好", "世界"]).shape == (2, 32)
    assert CrossEncoderTeacher(str(cross), "cpu").score([("你好", "世界")]).shape == (1,)
    assert not marker.exists()

    AutoConfig.from_pretrained(encoder / "bert", trust_remote_code=True)  # the planted code does run when allowed
    assert marker.read_text() == "remote code ran"


# --- symbolic links in --raw-dir and the manual folder; what a quarantined row's raw may hold ----------------------

REAL_PAIRS = Path("/work/shared/data/real/simclue/train_pair_postive_1w.json")  # real SimCLUE pairs, JSON Lines


def raw_dir_ingest(raw: Path, out: Path, source: str = "SimCLUE") -> tuple[Obtained, SourceResult]:
    """Obtain `source` from the --raw-dir `raw` and ingest it, as a build does."""
    [obtained] = obtain_sources(BuildParams(raw_dir=raw, sources=[source], out_dir=out))
    return obtained, ingest_one(obtained, out, 100_000)


def test_a_link_to_proc_self_environ_fails_the_source_unread(tmp_path):
    environ = Path("/proc/self/environ").read_bytes().split(b"\0")
    path_line = next(v for v in environ if v.startswith(b"PATH=")).decode()  # in this process's environment
    for folder, params in ((tmp_path / "raw" / "SimCLUE", BuildParams(raw_dir=tmp_path / "raw", sources=["SimCLUE"],
                                                                      out_dir=tmp_path / "r")),
                           (tmp_path / "manual" / "CINLID", BuildParams(manual_dir=tmp_path / "manual",
                                                                        sources=["CINLID"], out_dir=tmp_path / "m"))):
        folder.mkdir(parents=True)
        name = "train_pair_postive.json" if folder.name == "SimCLUE" else "train.json"
        (folder / name).symlink_to("/proc/self/environ")
        [obtained] = obtain_sources(params)
        assert obtained.status == "failed" and obtained.folder is None
        assert re.fullmatch(rf"{name} is a link to the system file /proc/\d+/environ, not the data: links are "
                            rf"followed only to regular files outside /proc, /sys and /dev; put the file itself at "
                            rf"{folder / name}", obtained.message)
        result = ingest_one(obtained, params.build_dir, 100_000)
        assert result.status == "failed" and result.counts is None
        assert path_line not in everything_in(params.build_dir)


def test_a_link_to_a_folder_matches_no_file_and_linked_folders_are_not_searched(tmp_path, catalog):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "news2016zh_train.json").write_bytes((SAMPLES_DIR / "news2016zh" / "news2016zh_train.json")
                                                      .read_bytes())
    raw = tmp_path / "raw" / "SimCLUE"
    raw.mkdir(parents=True)
    (raw / "train_pair_postive.json").symlink_to(elsewhere, target_is_directory=True)
    obtained, result = raw_dir_ingest(tmp_path / "raw", tmp_path / "out")
    assert obtained.missing == ["**/train_pair_postive.json"] and result.status == "missing"

    manual = tmp_path / "manual" / "news2016zh"
    manual.mkdir(parents=True)
    (manual / "unpacked").symlink_to(elsewhere, target_is_directory=True)  # at any depth: not searched through
    (manual / "loop").symlink_to(manual, target_is_directory=True)  # a loop: not followed either
    got = fetch_source(catalog.get("news2016zh"), tmp_path / "cache", tmp_path / "manual")
    assert got.status == "skipped" and got.missing == ["news2016zh_train.json", "news2016zh_valid.json"]


def test_a_link_to_a_regular_file_is_read_and_a_token_in_it_is_never_stored(tmp_path):
    """A link to a token file (a realistic slip: ~/.cache/huggingface/token) is followed like any regular file; the
    lines that are not JSON are quarantined with their reason, the token redacted from their raw."""
    lines = REAL_PAIRS.read_text(encoding="utf-8").splitlines()[:40]
    secrets = tmp_path / "home" / "token"
    secrets.parent.mkdir()
    planted = [TOKEN, f"HF_TOKEN={TOKEN}", f'{{"query": "密码是什么", "password": "{PASSWORD}"']  # the last cut short
    secrets.write_text("\n".join([*lines[:20], *planted, *lines[20:]]) + "\n", encoding="utf-8")
    raw = tmp_path / "raw" / "SimCLUE"
    raw.mkdir(parents=True)
    (raw / "train_pair_postive.json").symlink_to(secrets)

    obtained, result = raw_dir_ingest(tmp_path / "raw", tmp_path / "out")

    assert obtained.status == "present" and result.status == "ok"
    counts = result.counts
    assert counts.read == 43 == counts.kept + sum(counts.dropped.values())
    assert counts.kept == 40 and counts.dropped == {"invalid_json": 3}
    dropped = pq.read_table(counts.dropped_path).to_pylist()
    assert [(d["locator"], d["raw"], d["detail"]) for d in dropped] == [
        ("train_pair_postive.json:21", "[redacted]", "raw: 1 credential redacted"),
        ("train_pair_postive.json:22", "HF_TOKEN=[redacted]", "raw: 1 credential redacted"),
        ("train_pair_postive.json:23", '{"query": "密码是什么", "password": "[redacted]"', "raw: 1 credential redacted")]
    stored = everything_in(tmp_path / "out")
    assert TOKEN not in stored and PASSWORD not in stored


def test_a_quarantined_raw_blob_is_cut_at_the_bound(tmp_path):
    lines = REAL_PAIRS.read_text(encoding="utf-8").splitlines()[:10]
    huge = json.dumps({"query": "脑膜炎" * 700_000, "title": "感染"}, ensure_ascii=False)  # 2.1 M characters
    raw = tmp_path / "raw" / "SimCLUE"
    raw.mkdir(parents=True)
    (raw / "train_pair_postive.json").write_text("\n".join([*lines[:5], huge, *lines[5:]]) + "\n", encoding="utf-8")

    _, result = raw_dir_ingest(tmp_path / "raw", tmp_path / "out")

    assert result.counts.kept == 10 and result.counts.dropped == {"text_too_long": 1}
    [row] = pq.read_table(result.counts.dropped_path).to_pylist()
    assert row["locator"] == "train_pair_postive.json:6" and row["raw"] == huge[:RAW_MAX_CHARS]
    assert row["detail"] == f"raw cut to 100,000 of {len(huge):,} characters"
