"""Faults of a real build: `m3e-hq build --samples` in a subprocess against a Prefect server.

- Killed with SIGKILL at several points (while ingesting, in dedup, while encoding for the mine stage, twice while
  mining, some sources mined and others not, while publishing), each time run again: no output left looks complete
  when it is not, each re-run reuses the stages completed before, and the datasets finally published equal those of
  an uninterrupted build byte for byte (but the cards' build date).
- Two builds started on one build folder: the second refuses at once, in one line naming the process that holds
  the folder, and the first one is not disturbed.
- A full disk (mid-stage or while publishing, pyarrow's and polars' errors; tests/faulty_cli.py), an export over the
  file-size limit (RLIMIT_FSIZE) and a build folder that cannot be written (in this process): one clear error, exit
  status 3, no traceback, nothing partial published and the datasets published before untouched.
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from prefect_server import BIN, Server
from typer.testing import CliRunner

from m3e_hq.flows.cli import app
from m3e_hq.flows.core.lineage import read_record
from m3e_hq.flows.pipeline.push import verify

FAULTY_CLI = Path(__file__).with_name("faulty_cli.py")
DATASETS = ("m3e-hq", "m3e-hq-with-score")
CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")  # the manifest's `created`, quoted by the cards


def command(out: Path, encoder: Path, *extra: str) -> list[str]:
    return ["build", "--samples", "--out", str(out), "--cache-dir", str(out.parent / f"{out.name}-cache"),
            "--encoder", str(encoder), *extra]


def run(server: Server, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI to the end (on a full disk when `env` sets M3E_HQ_FULL_DISK)."""
    program = [sys.executable, str(FAULTY_CLI)] if env else [str(BIN / "m3e-hq")]
    return subprocess.run([*program, *args], env={**server.env, **(env or {})}, capture_output=True, text=True,
                          timeout=300, check=False)


def kill_when(server: Server, args: list[str], marker: Callable[[], bool], log: Path) -> None:
    """Run the CLI and SIGKILL its process group the moment `marker` holds."""
    assert not marker()
    with log.open("w") as out:
        process = subprocess.Popen([str(BIN / "m3e-hq"), *args], env=server.env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + 300
    while not marker():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"ended before the kill point ({process.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def nothing_half_written(out: Path, cache: Path) -> None:
    """Every file under a final name is complete; unfinished ones are hidden (a `.` name), as are staged folders."""
    for root in (out, cache):
        for path in root.rglob("*"):
            check_left(path, hidden=any(part.startswith(".") for part in path.relative_to(root).parts))
    for name in DATASETS:
        if (out / name).exists():
            verify(out / name)  # every file as its SHA256SUMS lists


def check_left(path: Path, hidden: bool) -> None:
    """A file or folder left by a killed build: temporary and staged ones are hidden, the others complete."""
    if ".tmp" in path.name or ".old-" in path.name:
        assert path.name.startswith("."), path
    if hidden or not path.is_file():
        return
    if path.suffix == ".parquet":
        pq.read_table(path)  # a truncated file raises
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".npz":
        with np.load(path) as chunk:
            assert len(chunk["keys"]) == len(chunk["vectors"])


def stamps(*folders: Path, pattern: str = "*.parquet") -> dict[Path, int]:
    """The modification time of every file matching `pattern` in `folders`, each of which must hold one."""
    files = {p: p.stat().st_mtime_ns for folder in folders for p in folder.rglob(pattern)}
    assert all(any(p.is_relative_to(folder) for p in files) for folder in folders), folders
    return files


def unchanged(files: dict[Path, int]) -> bool:
    return {p: p.stat().st_mtime_ns for p in files} == files


def content(path: Path) -> Any:
    """What a published file holds, for comparing two builds: tables sorted (by id where rows have one), cards
    without the build date, JSON Lines as sorted lines; plots and checksums (which cover the card) left out."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        keys = ["id"] if "id" in table.column_names else [f.name for f in table.schema
                                                            if not pa.types.is_list(f.type)]
        return table.sort_by([(k, "ascending") for k in keys]).to_pylist()
    if path.suffix == ".jsonl":
        return sorted(path.read_text(encoding="utf-8").splitlines())
    if path.name == "README.md":
        return CREATED.sub("<created>", path.read_text(encoding="utf-8"))
    return None


def published(out: Path) -> dict[str, Any]:
    return {p.relative_to(out).as_posix(): content(p) for name in DATASETS for p in sorted((out / name).rglob("*"))
            if p.is_file()}


def stage_counts(out: Path) -> dict[str, Any]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return {stage: {s: (c["read"], c["kept"], c["dropped"]) for s, c in counts["sources"].items()}
            for stage, counts in manifest["stages"].items()}


def test_a_build_killed_at_any_point_resumes_to_the_same_datasets(server, tiny_encoder, tmp_path):
    reference = tmp_path / "reference"
    done = run(server, command(reference, tiny_encoder))
    assert done.returncode == 0, done.stdout + done.stderr

    out = tmp_path / "out"
    cache = tmp_path / "out-cache"
    args = command(out, tiny_encoder)
    kill_points: list[tuple[str, Callable[[], bool], tuple[str, ...]]] = [
        # (where, when to kill, the stage folders complete by then, which the next run must not write again)
        ("ingest", lambda: any((out / "ingest").glob("*.parquet")), ()),
        ("dedup", lambda: (out / "dedup").is_dir(), ("ingest", "filter")),
        ("encoding", lambda: any(cache.glob("embeddings/*/chunk-*.npz")), ("ingest", "filter", "dedup")),
        # Some mine tasks done, others encoding: texts two sources hold are in the cache, encoded by one of them.
        ("mining", lambda: mined(out) >= 3, ("ingest", "filter", "dedup")),
        ("mining, later", lambda: mined(out) >= 15, ("ingest", "filter", "dedup")),
        ("publish", lambda: any(out.glob(".m3e-hq-with-score.tmp-*/data")), ("ingest", "filter", "dedup", "mine")),
    ]
    done_before: dict[Path, int] = {}
    for where, marker, stages in kill_points:
        kill_when(server, args, marker, tmp_path / f"killed-in-{where}.log")
        assert unchanged(done_before), f"the run killed in {where} wrote again what an earlier run completed"
        nothing_half_written(out, cache)
        done_before = stamps(*(out / s for s in stages))
        if where == "encoding":
            done_before |= stamps(cache / "embeddings", pattern="chunk-*.npz")
    assert not (out / "m3e-hq").exists() and any(out.glob(".m3e-hq.tmp-*"))  # killed before its swap

    done = run(server, args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert unchanged(done_before)  # every stage came from the runs before
    assert not list(out.glob(".m3e-hq*"))  # the killed publish's staged folders were cleared
    nothing_half_written(out, cache)
    assert stage_counts(out) == stage_counts(reference)
    expected, resumed = published(reference), published(out)
    assert sorted(resumed) == sorted(expected)
    assert [name for name in expected if resumed[name] != expected[name]] == []
    assert {name: checksums(out / name) for name in DATASETS} == {name: checksums(reference / name) for name in DATASETS}


def mined(out: Path) -> int:
    """How many sources the mine stage has written."""
    return len(list((out / "mine").glob("*.parquet")))


def checksums(folder: Path) -> dict[str, str]:
    """A published dataset's SHA256SUMS, but the card's (which quotes the build date)."""
    lines = (folder / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines) if name != "README.md"}


def test_a_rerun_with_other_settings_killed_while_mining_is_not_exported_until_it_finishes(server, tiny_encoder,
                                                                                          tmp_path):
    out, exported = tmp_path / "out", tmp_path / "exported"
    args = command(out, tiny_encoder, "-s", "ocnli,lcqmc,cmrc2018")
    assert run(server, args).returncode == 0
    export = ["export", "--build", str(out), "--out", str(exported)]
    assert run(server, export).returncode == 0
    before = {name: (exported / name / "SHA256SUMS").read_bytes() for name in DATASETS}

    three = [*args, "--num-negatives", "3"]
    kill_when(server, three, lambda: any(negatives(p) == 3 for p in (out / "mine").glob("*.parquet")),
              tmp_path / "killed.log")
    assert 3 in {negatives(p) for p in (out / "mine").glob("*.parquet")}
    assert json.loads((out / "manifest.json").read_text())["params"]["mine"]["negatives"]["num_negatives"] == 7
    done = run(server, export)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output
    [error] = [line for line in output.splitlines() if line.startswith("error:")]
    assert "was made with mine.negatives.num_negatives 3 (the manifest's build: 7)" in error and "nothing was published" in error, error
    assert {name: (exported / name / "SHA256SUMS").read_bytes() for name in DATASETS} == before

    assert run(server, three).returncode == 0  # the re-run, to its end
    assert run(server, export).returncode == 0
    scored = pq.read_table(exported / "m3e-hq-with-score" / "data", columns=["text_neg"])
    assert scored.num_rows and pc.max(pc.list_value_length(scored["text_neg"])).as_py() == 3
    assert {negatives(p) for p in (out / "mine").glob("*.parquet")} == {3}


def negatives(path: Path) -> int:
    """The num_negatives a mine output was made with, as its record says."""
    return read_record(path)["params"]["negatives"]["num_negatives"]


def test_a_second_build_on_the_same_folder_says_in_one_line_which_process_holds_it(server, tiny_encoder, tmp_path):
    out = tmp_path / "out"
    args = command(out, tiny_encoder, "-s", "ocnli")
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen([str(BIN / "m3e-hq"), *args], env=server.env, stdout=log, stderr=subprocess.STDOUT)
    lock = out / ".lock"
    while not (lock.exists() and lock.read_text(encoding="utf-8")):
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.01)
    second = run(server, args)
    output = second.stdout + second.stderr
    assert second.returncode == 5 and "Traceback" not in output, output
    [error] = [line for line in output.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {out} is being built by pid {first.pid} (m3e-hq {' '.join(args)}, since ")
    assert error.endswith(" UTC): wait for that build to end, or build into another folder with --out DIR")
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()
    assert verify(out / "m3e-hq")  # the first build was not disturbed
    assert run(server, args).returncode == 0  # and once it ended, the folder is free


def clear_error(done: subprocess.CompletedProcess, *says: str) -> str:
    """The one error line of a build stopped by an output it could not write."""
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for words in ("cannot write", "--out DIR", "Nothing was published", *says):
        assert words in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("stage", ["ingest", "filter"])
def test_a_full_disk_mid_build_stops_it_with_one_clear_error(server, tiny_encoder, tmp_path, stage):
    out = tmp_path / "out"
    done = run(server, command(out, tiny_encoder, "-s", "ocnli,lcqmc"), {"M3E_HQ_FULL_DISK": f"/{stage}/"})
    error = clear_error(done, "No space left on device", "Free some space there")
    assert str(out / stage) in error  # not a failed source: the build stopped
    assert list((out / stage).rglob("*.parquet*")) == []  # neither a final-named nor a temporary file left
    assert stage == "ingest" or stamps(out / "ingest")  # the stages before (ingest), for a re-run to reuse
    assert not any((out / name).exists() for name in DATASETS)


# Where the disk fills while publishing the with-score set (m3e-hq was staged in full), and the file or folder the
# error names: its triplets' Parquet shards (pyarrow's OSError, with an errno), or its JSON Lines exports (polars'
# OSError, without one).
PUBLISH_FAULTS = {"parquet": ("/triplets/", "m3e-hq-with-score/triplets"),
                  "polars": ("/exports/uniem/", "m3e-hq-with-score/exports/uniem/")}


@pytest.mark.parametrize("fault", PUBLISH_FAULTS)
def test_a_full_disk_while_publishing_leaves_the_published_datasets_as_they_were(server, tiny_encoder, tmp_path,
                                                                                  fault):
    out = tmp_path / "out"
    args = command(out, tiny_encoder, "-s", "ocnli,lcqmc,cmrc2018")
    done = run(server, args)
    assert done.returncode == 0, done.stdout + done.stderr
    before = {name: (out / name / "SHA256SUMS").read_bytes() for name in DATASETS}

    marker, named = PUBLISH_FAULTS[fault]
    done = run(server, args, {"M3E_HQ_FULL_DISK": marker})
    clear_error(done, f"cannot write {out / named}", "No space left on device", "Free some space there", str(out))
    assert {name: (out / name / "SHA256SUMS").read_bytes() for name in DATASETS} == before
    assert all(verify(out / name) for name in DATASETS)
    assert not list(out.glob(".m3e-hq*"))  # no staged folder left behind


def over_file_size_limit(limit: int, args: list[str]) -> list[str]:
    """The CLI with `args`, every file it writes held to `limit` bytes (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a
    longer write fails with EFBIG, as on a file system that takes no larger file)."""
    limited = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); " \
              "os.execv(sys.argv[2], sys.argv[2:])"
    return [sys.executable, "-c", limited, str(limit), str(BIN / "m3e-hq"), *args]


def test_an_export_whose_files_cannot_be_written_leaves_the_exported_datasets_as_they_were(server, tiny_encoder,
                                                                                          tmp_path):
    out, exported = tmp_path / "out", tmp_path / "exported"
    done = run(server, command(out, tiny_encoder, "-s", "ocnli,lcqmc"))
    assert done.returncode == 0, done.stdout + done.stderr
    export = ["export", "--build", str(out), "--out", str(exported)]
    assert run(server, export).returncode == 0
    before = {name: (exported / name / "SHA256SUMS").read_bytes() for name in DATASETS}

    done = subprocess.run(over_file_size_limit(100, export), env=server.env, capture_output=True, text=True,
                          timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 3 and "Traceback" not in output, output
    [error] = [line for line in output.splitlines() if line.startswith("error:")]
    for words in (f"cannot write {exported / 'm3e-hq'}/", ": File too large. Raise the file-size limit (`ulimit -f`)",
                  "--out DIR", f"Nothing was published: the datasets in {exported} (if any) are as they were."):
        assert words in error, error
    assert {name: (exported / name / "SHA256SUMS").read_bytes() for name in DATASETS} == before
    assert all(verify(exported / name) for name in DATASETS)
    assert not list(exported.glob(".m3e-hq*"))  # no staged folder left behind
    assert run(server, export).returncode == 0
    assert not list(exported.glob(".m3e-hq*"))


@pytest.mark.parametrize("fault", ["read-only folder", "a file in the way"])
def test_a_build_folder_that_cannot_be_written_fails_at_once(tmp_path, monkeypatch, tiny_encoder, fault):
    parent = tmp_path / "parent"
    if fault == "a file in the way":
        parent.write_text("not a folder", encoding="utf-8")
    else:
        parent.mkdir()
        parent.chmod(0o555)
        if os.geteuid() == 0:  # root writes anyway: refuse as the kernel refuses any other user
            monkeypatch.setattr(os, "mkdir", refusing(parent, os.mkdir))
    out = parent / "build"
    result = CliRunner().invoke(app, command(out, tiny_encoder, "-s", "ocnli"))
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    reason = "Not a directory" if fault == "a file in the way" else "Permission denied"
    remedy = f"{parent} is a file, not a folder: move it away" if fault == "a file in the way" else "Make it writable"
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    for words in (f"cannot write {out}: {reason}", remedy, "--out DIR", "No stage ran", "Nothing was published"):
        assert words in error, error
    assert "the stages that completed" not in error  # none ran
    assert not out.exists()
    assert fault == "a file in the way" or list(parent.iterdir()) == []  # no cache folder either


def refusing(folder: Path, mkdir: Callable[..., None]) -> Callable[..., None]:
    """`mkdir` refusing to create anything in `folder`, as in a read-only folder."""
    def refuse(path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        mkdir(path, *args, **kwargs)

    return refuse
