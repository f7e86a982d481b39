"""The CLI's temporary Prefect server: a generous start-up limit unless the user sets one, and one line saying what
to do (no traceback) when it does not start."""

import os
import signal
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from prefect.context import SettingsContext
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import Profile, Settings
from prefect_server import BIN
from typer.testing import CliRunner

from m3e_hq.flows.cli import SERVER_FAILED, SERVER_STARTUP_SECONDS, app

LIMIT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
UserSettings = Callable[[dict[str, str], dict[str, str]], AbstractContextManager]


def failure_line(limit: int) -> str:
    """What the CLI prints when the server did not start within `limit` seconds."""
    return (f"error: the temporary Prefect server did not start within {limit} s; nothing was run. On a busy machine "
            f"allow it longer, e.g. {LIMIT}={max(2 * limit, SERVER_STARTUP_SECONDS)}, or start one (`prefect server "
            "start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api; then run the command again")


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error" in line.lower()]


@pytest.fixture
def user_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UserSettings:
    """Prefect's settings as a new process reads them from the given environment variables and active profile, in
    a clean PREFECT_HOME and folder (no PREFECT_API_URL, no prefect.toml or .env)."""

    def settings(env: dict[str, str], profile: dict[str, str]) -> AbstractContextManager:
        for name in [name for name in os.environ if name.startswith("PREFECT_")]:
            monkeypatch.delenv(name)
        home = tmp_path / "prefect-home"
        home.mkdir()
        values = {"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true", **profile}
        (home / "profiles.toml").write_text('active = "user"\n[profiles.user]\n' + "".join(
            f'{key} = "{value}"\n' for key, value in values.items()))
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("PREFECT_HOME", str(home))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return SettingsContext(profile=Profile(name="user", settings={}), settings=Settings())

    return settings


@pytest.mark.parametrize(("env", "profile", "limit"), [
    ({}, {}, SERVER_STARTUP_SECONDS),
    ({LIMIT: "45"}, {}, 45),
    ({}, {LIMIT: "77"}, 77),
    ({LIMIT: "45"}, {LIMIT: "77"}, 45),  # Prefect's order: the environment over the profile
])
def test_the_server_may_take_long_to_start_unless_the_user_sets_a_limit(
    user_settings: UserSettings, monkeypatch: pytest.MonkeyPatch, env: dict, profile: dict, limit: int
) -> None:
    asked = []

    def start(self: SubprocessASGIServer, timeout: int | None = None) -> None:
        asked.append(timeout)
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(SubprocessASGIServer, "_instances", {})
    monkeypatch.setattr(SubprocessASGIServer, "start", start)
    with user_settings(env, profile):
        result = CliRunner().invoke(app, ["download", "-s", "ocnli"])

    assert asked == [limit]
    assert result.exit_code == SERVER_FAILED and "Traceback" not in result.output
    assert error_lines(result.output) == [failure_line(limit)]


@pytest.mark.slow
def test_a_server_that_does_not_start_in_time_ends_the_build_with_one_line(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), LIMIT: "1", "M3E_HQ_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([str(BIN / "m3e-hq"), "build", "--samples", "-s", "ocnli", "--out",
                                str(tmp_path / "out")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = process.communicate(timeout=600)

    assert process.returncode == SERVER_FAILED, out + err
    assert error_lines(out) == [failure_line(1)]
    assert "Traceback" not in out + err
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(ProcessLookupError):  # the server it started was stopped: nothing of its session is left
        os.killpg(process.pid, signal.SIGKILL)
