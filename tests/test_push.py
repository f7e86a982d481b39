"""Uploading a published dataset folder (flows.pipeline.push) to the local Hub stand-in, refusing unfinished folders,
and a failed upload at the end of `m3e-hq build` and `m3e-hq export` (the real CLI, in a subprocess)."""

import hashlib
import logging
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download
from mockhub import MockHub
from prefect_server import BIN

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


# --- a failed upload through the real CLI: the build's summary, the local datasets, one line, how to retry ---------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "m3e-hq"), *args], env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def failed_push(done: subprocess.CompletedProcess) -> str:
    """The one error line of a command whose upload failed (exit status 6, no traceback)."""
    output = done.stdout + done.stderr
    assert done.returncode == 6 and "Traceback" not in output, output
    [error] = [line for line in output.splitlines() if line.startswith("error:")]
    return error


def hub_env(server, hub, tmp_path, token: str | None) -> dict[str, str]:
    """The CLI's environment: the Prefect server, the local Hub (not offline), no stored login, and `token` as
    HF_TOKEN."""
    env = {k: v for k, v in server.env.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), **({"HF_TOKEN": token} if token
                                                                                    else {})}


def test_a_build_whose_push_is_refused_keeps_its_datasets_and_says_how_to_push_again(server, hub, tiny_encoder,
                                                                                     tmp_path):
    out = tmp_path / "out"
    build = ["build", "--samples", "-s", "ocnli,lcqmc", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
             "--encoder", str(tiny_encoder), "--push-to-hub", "org/m3e-hq"]
    done = cli(hub_env(server, hub, tmp_path, None), *build)  # no token: the Hub answers 401
    error = failed_push(done)
    assert "rows per stage" in done.stdout and f"m3e-hq: {out / 'm3e-hq'}" in done.stdout  # the summary
    assert error == (f"error: uploading {out / 'm3e-hq'} to org/m3e-hq failed: HTTP 401 Unauthorized (Invalid "
                     "credentials); no valid token: set HF_TOKEN to a token with write access (or log in with `hf "
                     f"auth login`). The datasets stay published in {out / 'm3e-hq'} and {out / 'm3e-hq-with-score'}"
                     f"; retry the upload alone with `m3e-hq push org/m3e-hq --folder {out}`")
    assert all(verify(out / name) for name in ("m3e-hq", "m3e-hq-with-score"))
    assert "org/m3e-hq" not in hub.repos

    again = cli(hub_env(server, hub, tmp_path, TOKEN), "push", "org/m3e-hq", "--folder", str(out))
    assert again.returncode == 0, again.stdout + again.stderr
    for name, repo in (("m3e-hq", "org/m3e-hq"), ("m3e-hq-with-score", "org/m3e-hq-with-score")):
        assert f"uploaded {repo}: {hub.url}/datasets/{repo}/commit/" in again.stdout
        pulled = snapshot_download(repo, repo_type="dataset", local_dir=tmp_path / "pulled" / name,
                                   endpoint=hub.url)
        assert (Path(pulled) / CHECKSUMS).read_bytes() == (out / name / CHECKSUMS).read_bytes()
    assert TOKEN not in done.stdout + done.stderr + again.stdout + again.stderr


def test_an_export_whose_second_upload_fails_says_which_and_one_without_network_too(server, hub, samples_build,
                                                                                      tmp_path):
    hub.refuse.add("POST /api/datasets/org/m3e-hq-with-score/commit/main")
    out = tmp_path / "export"
    env = hub_env(server, hub, tmp_path, TOKEN)
    error = failed_push(cli(env, "export", "--build", samples_build["build_dir"], "--out", str(out),
                            "--push-to-hub", "org/m3e-hq"))
    assert error.startswith(f"error: uploading {out / 'm3e-hq-with-score'} to org/m3e-hq-with-score failed: HTTP 403 "
                            "Forbidden (You don't have the rights to write to this repository); the token may not "
                            "write there")
    assert error.endswith(f" (org/m3e-hq was uploaded). The datasets stay published in {out / 'm3e-hq'} and "
                          f"{out / 'm3e-hq-with-score'}; retry the upload alone with `m3e-hq push org/m3e-hq "
                          f"--folder {out}`")
    assert all(verify(out / name) for name in ("m3e-hq", "m3e-hq-with-score"))

    error = failed_push(cli({**env, "HF_ENDPOINT": "http://hub.invalid"}, "push", "org/m3e-hq", "--folder", str(out)))
    assert error == (f"error: uploading {out / 'm3e-hq'} to org/m3e-hq failed: no network: cannot resolve the host of "
                     "http://hub.invalid; check the connection or HF_ENDPOINT")
    error = failed_push(cli({**env, "HF_HUB_OFFLINE": "1"}, "push", "org/m3e-hq", "--folder", str(out)))
    assert error == (f"error: uploading {out / 'm3e-hq'} to org/m3e-hq failed: HF_HUB_OFFLINE is set, which allows "
                     "no upload: unset it")
