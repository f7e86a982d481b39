"""Secrets and remote code: a Hub token and a mirror's password never reach what a build writes, prints or logs, and
no model or dataset code is ever run (`trust_remote_code` is never enabled)."""

import base64
import json
import logging
import re
import shutil
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.logging.handlers import APILogWorker
from transformers import AutoConfig, dynamic_module_utils
from typer.testing import CliRunner

from m3e_hq.flows.cli import app
from m3e_hq.flows.core.encode import embed, load_encoder
from m3e_hq.flows.core.teacher import CrossEncoderTeacher

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
