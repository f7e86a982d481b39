"""A Prefect server in a subprocess, for the tests whose flows run in other processes (the CLI, `m3e-hq serve`, a
worker), and the helpers to start, wait for and stop such subprocesses."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
# How long a Prefect server started by the tests may take to answer: seconds on an idle machine, minutes on a busy
# one. M3E_HQ_TEST_SERVER_STARTUP_SECONDS changes it.
STARTUP_SECONDS = int(os.environ.get("M3E_HQ_TEST_SERVER_STARTUP_SECONDS", "600"))


@dataclass
class Server:
    url: str
    env: dict[str, str]  # the environment of a subprocess that talks to it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """End a subprocess a test started (and its children, in its own session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    """Wait for `check` while `process` runs; fail with the end of its log on a timeout or when it exits."""
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} (exit code {process.poll()}):\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=10).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def running_server(home: Path) -> Iterator[Server]:
    """A Prefect server with its own PREFECT_HOME (database, storage) in `home`, stopped at the end."""
    process, server = start_server(home, retries=1)
    try:
        yield server
    finally:
        stop(process)


def start_server(home: Path, retries: int) -> tuple[subprocess.Popen, Server]:
    """`prefect server start` on a free port, once it answers (within STARTUP_SECONDS). One that exits while
    starting (its port taken meanwhile) is started again on another port, up to `retries` times."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "M3E_HQ_CACHE": str(home / "m3e-hq-cache"), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1"}
    log = home / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                    "--no-ui"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: healthy(url), STARTUP_SECONDS, "the Prefect server did not start", process, log)
    except AssertionError:
        exited = process.poll() is not None
        stop(process)
        if exited and retries:
            return start_server(home, retries - 1)
        raise
    return process, Server(url, env)
