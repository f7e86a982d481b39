"""Uploading a published dataset folder (flows.pipeline.push) to the local Hub stand-in, and refusing unfinished folders."""

import hashlib
import logging

import pytest
from huggingface_hub import snapshot_download
from mockhub import MockHub

from m3e_hq.flows.pipeline.push import CHECKSUMS, PushError, push_to_hub, verify

TOKEN = "hf_test_secret_0123456789"


def finished(folder):
    """A small dataset folder with a README, two shards and the SHA256SUMS that publishing writes."""
    (folder / "data" / "default").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n# test\n", encoding="utf-8")
    (folder / "data" / "default" / "train-00000-of-00002.parquet").write_bytes(b"PAR1" + bytes(range(256)))
    (folder / "data" / "default" / "train-00001-of-00002.parquet").write_bytes(b"PAR1" + b"\x00" * 10)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file()]
    (folder / CHECKSUMS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def hub(monkeypatch):
    with MockHub() as mock:
        monkeypatch.setenv("HF_ENDPOINT", mock.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield mock


def test_a_finished_folder_is_uploaded_and_downloads_identical(hub, tmp_path, caplog):
    folder = finished(tmp_path / "m3e-hq")
    with caplog.at_level(logging.DEBUG):
        url = push_to_hub(folder, "org/m3e-hq")
    assert url.startswith(f"{hub.url}/datasets/org/m3e-hq/commit/")
    assert hub.tokens == {TOKEN} and TOKEN not in caplog.text
    pulled = snapshot_download("org/m3e-hq", repo_type="dataset", local_dir=tmp_path / "pulled", endpoint=hub.url)
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert len(files) == 4 and verify(folder) == 3  # README, two shards and SHA256SUMS (which lists the others)
    assert all((tmp_path / "pulled" / f).read_bytes() == (folder / f).read_bytes() for f in files), pulled


def test_unfinished_or_changed_folders_are_refused(hub, tmp_path):
    folder = tmp_path / "m3e-hq"
    folder.mkdir()
    with pytest.raises(PushError, match="no SHA256SUMS: it is not a finished published dataset"):
        push_to_hub(folder, "org/m3e-hq")
    folder = finished(tmp_path / "changed")
    (folder / "data" / "default" / "train-00001-of-00002.parquet").write_bytes(b"edited")
    with pytest.raises(PushError, match="does not match its checksum"):
        push_to_hub(folder, "org/m3e-hq")
    folder = finished(tmp_path / "extra")
    (folder / "notes.txt").write_text("stray", encoding="utf-8")
    with pytest.raises(PushError, match=r"unlisted: \['notes.txt'\]"):
        push_to_hub(folder, "org/m3e-hq")
    with pytest.raises(PushError, match="ORG/NAME"):
        push_to_hub(finished(tmp_path / "ok"), "m3e-hq")
    assert not any(r.startswith("POST") for r in hub.requests)  # nothing was sent


def test_a_refused_upload_says_why_without_the_token(hub, tmp_path):
    hub.refuse.add("POST /api/datasets/org/m3e-hq/commit/main")
    with pytest.raises(PushError) as failure:
        push_to_hub(finished(tmp_path / "m3e-hq"), "org/m3e-hq")
    assert "rights to write" in str(failure.value) and TOKEN not in str(failure.value)


def test_cli_export_commercial_only_and_push(hub, samples_build, catalog, tmp_path):
    from typer.testing import CliRunner

    from m3e_hq.flows.cli import app

    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", "--build", samples_build["build_dir"], "--out", str(out),
                                      "--commercial-only", "--push-to-hub", "org/m3e-hq-commercial"])
    assert result.exit_code == 0, result.output
    assert "left out lawzhidao: commercial use: yes, licence: none stated" in result.output
    for name, repo in (("m3e-hq", "org/m3e-hq-commercial"), ("m3e-hq-with-score", "org/m3e-hq-commercial-with-score")):
        folder = out / name
        assert verify(folder) > 3 and "commercial-only export" in (folder / "README.md").read_text(encoding="utf-8")
        sources = {p.name for p in (folder / "data").iterdir()}
        assert sources and all(catalog.get(s).commercial_use() for s in sources)
        pulled = tmp_path / "pulled" / name
        snapshot_download(repo, repo_type="dataset", local_dir=pulled, endpoint=hub.url)
        assert (pulled / CHECKSUMS).read_bytes() == (folder / CHECKSUMS).read_bytes()
        assert f"uploaded {repo}:" in result.output
