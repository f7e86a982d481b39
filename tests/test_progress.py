"""What a person sees while a build runs: one bar per stage that names its source and ends complete, no bars or
load reports of the model libraries, and each model loaded once per process however many task threads ask for it."""

import io
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from test_mine import random_pairs
from transformers.utils import logging as transformers_logging

from m3e_hq import progress
from m3e_hq.flows.core import encode as encode_module
from m3e_hq.flows.core import teacher as teacher_module
from m3e_hq.flows.core.encode import embed, shared, shared_encoder
from m3e_hq.flows.core.teacher import shared_teacher

M3E_HQ = Path(sys.executable).parent / "m3e-hq"
STAGES = ("obtain", "ingest", "filter", "dedup", "mine")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No model loaded yet in this process; the name of each encoder and teacher loaded from now on."""
    monkeypatch.setattr(encode_module, "_MODELS", {})
    loaded: list[str] = []
    load_encoder, teacher = encode_module.load_encoder, teacher_module.CrossEncoderTeacher
    monkeypatch.setattr(encode_module, "load_encoder", lambda *args: loaded.append(args[0]) or load_encoder(*args))
    monkeypatch.setattr(teacher_module, "CrossEncoderTeacher", lambda *args: loaded.append(args[0]) or teacher(*args))
    return loaded


def at_once(ask, n: int = 4) -> list:
    """`ask(i)` for i < n, in n threads that start together."""
    barrier = threading.Barrier(n)

    def run(i: int):
        barrier.wait()
        return ask(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_threads_asking_for_a_model_at_once_share_one_load():
    loaded = []

    def load() -> object:
        loaded.append(1)
        threading.Event().wait(0.2)  # a slow load: the other threads ask while it runs
        return object()

    got = at_once(lambda i: shared(("test", "slow model"), load))
    assert len(loaded) == 1 and all(model is got[0] for model in got)


def test_the_encoder_and_the_teacher_are_loaded_once_per_process_and_device(loads, tiny_encoder, tiny_cross_encoder):
    encoders = at_once(lambda i: shared_encoder(str(tiny_encoder), "cpu"))
    teachers = at_once(lambda i: shared_teacher(str(tiny_cross_encoder), "cpu", 8))
    assert all(e is encoders[0] for e in encoders) and all(t is teachers[0] for t in teachers)
    assert loads == [str(tiny_encoder), str(tiny_cross_encoder)]
    assert shared_teacher(str(tiny_cross_encoder), "cpu", 16) is not teachers[0]  # another batch size, another one


def test_threads_encoding_and_scoring_with_one_model_get_what_one_thread_gets(loads, tiny_encoder, tiny_cross_encoder):
    encoder = shared_encoder(str(tiny_encoder), "cpu")
    teacher = shared_teacher(str(tiny_cross_encoder), "cpu", 8)
    jobs = [([q + p for q, p in random_pairs(40, seed=seed)], "查询：" if seed % 2 else "") for seed in range(8)]
    want = [embed(encoder, texts, prompt, max_tokens=300, max_texts=4) for texts, prompt in jobs]
    got = at_once(lambda i: embed(encoder, *jobs[i], max_tokens=300, max_texts=4), len(jobs))
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    pairs = [random_pairs(30, seed=seed) for seed in range(4)]
    scored = at_once(lambda i: teacher.score(pairs[i]))
    assert all(np.array_equal(s, teacher.score(p)) for s, p in zip(scored, pairs, strict=True))


def test_without_the_cli_no_bar_is_made():
    with progress.stage("ingest", 1), progress.unit("ingest", ["BQ"]), progress.bar("ingest BQ") as on_rows:
        assert on_rows is None


def test_a_stage_bar_names_its_sources_and_ends_complete_and_the_unit_bars_are_removed():
    out = io.StringIO()
    with progress.showing(Console(file=out, width=80)) as shown:
        assert not transformers_logging.is_progress_bar_enabled()
        with progress.stage("mine", 3):
            with progress.unit("mine", ["ocnli"]), progress.bar("encode ocnli queries", 10, "texts") as on_texts:
                on_texts(10)
            with progress.unit("mine", ["BQ", "lcqmc"]):
                assert [t.description for t in shown.tasks] == ["mine BQ +1"]
        assert [(t.description, t.completed, t.total) for t in shown.tasks] == [("mine BQ +1", 3, 3)]
    assert transformers_logging.is_progress_bar_enabled()
    words = out.getvalue().split()  # the final bar only, the removed one not printed
    assert len(words) == 7 and words[:3] == ["mine", "BQ", "+1"] and set(words[3]) == {"━"}
    assert words[4:6] == ["3/3", "sources"]  # then the time taken


def test_a_stage_that_raises_leaves_its_bar_where_it_stopped():
    with progress.showing(Console(file=io.StringIO())) as shown:
        with pytest.raises(OSError), progress.stage("dedup", 2):
            with progress.unit("dedup", ["BQ"]):
                pass
            with progress.unit("dedup", ["ocnli"]):
                raise OSError("disk full")
        assert [(t.description, t.completed) for t in shown.tasks] == [("dedup ocnli", 1)]


@pytest.mark.slow
def test_a_build_prints_one_finished_bar_per_stage_naming_a_source_and_no_library_output(tmp_path):
    done = subprocess.run([str(M3E_HQ), "build", "--samples", "-s", "ocnli,bq", "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, check=False,
                          cwd=tmp_path, env={"PATH": str(M3E_HQ.parent), "COLUMNS": "80", "HOME": str(Path.home())})
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed
    assert "Loading weights" not in printed and "\x1b" not in printed and "\r" not in printed
    lines = printed.splitlines()
    bars = [line.split() for line in lines[1:len(STAGES) + 1]]  # after "Building m3e-hq from …", before the tables
    assert [bar[0] for bar in bars] == list(STAGES)
    for bar in bars:
        assert bar[1] in ("ocnli", "BQ") and bar[-3:-1] == ["2/2", "sources"], bar
    assert lines[len(STAGES) + 1].strip() == "rows per source: ingest"
    assert len([line for line in lines if re.search(r"━ \d+/\d+ ", line)]) == len(STAGES)  # no other bar
