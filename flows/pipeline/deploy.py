"""Serving the build-m3e-hq flow as the Prefect deployment `build-m3e-hq/build-m3e-hq` (`m3e-hq serve`).

The serving process polls the Prefect API and runs each flow run in a subprocess, `limit` at a time; runs are
triggered with `prefect deployment run build-m3e-hq/build-m3e-hq -p 'params={"samples": true}'`: the flow's one
parameter, `params`, is BuildParams as JSON, checked against BuildParams' JSON schema when the run is created (the
deployment enforces its parameter schema). Serving needs a Prefect server that every process reaches
(Prefect's ephemeral mode gives each process a server of its own): `prefect server start`, and PREFECT_API_URL set
in every shell. `m3e-hq serve` turns off telemetry before Prefect is imported (DO_NOT_TRACK=1,
PREFECT_SERVER_ANALYTICS_ENABLED=false), as every m3e-hq command does.
"""

import asyncio
import os
import signal
import threading
from typing import Any

from prefect.client.orchestration import get_client
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL

from m3e_hq.flows.pipeline.build import FLOW_NAME, build_m3e_hq

DEPLOYMENT_NAME = FLOW_NAME
RUN_COMMAND = f"prefect deployment run {FLOW_NAME}/{DEPLOYMENT_NAME}"
RUN_EXAMPLE = f"{RUN_COMMAND} -p 'params={{\"samples\": true}}'"  # a run on the shipped samples
START_SERVER = ("start one with `prefect server start` and, in this shell and the one you run deployments from, "
                "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")

# The m3e-hq commands keep Prefect's own logging at WARNING; the served runs log their flow and task runs at INFO, so
# that the UI and `prefect flow-run logs` show them (set these variables to choose another level).
RUN_LOG_LEVELS = {"PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
                  "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "INFO"}


class ServeError(RuntimeError):
    """The deployment cannot be served: no Prefect server to serve it through."""


def check_api() -> str:
    """The Prefect API URL, after checking that it is set and answers; raises ServeError saying what to do."""
    url = PREFECT_API_URL.value()
    if not url:
        raise ServeError(f"PREFECT_API_URL is not set: serving a deployment needs a Prefect server; {START_SERVER}")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ServeError(f"the Prefect API at {url} does not answer ({problem}); {START_SERVER}")
    return url


class StoppingRunner(Runner):
    """Prefect's Runner, stopped by SIGTERM or Ctrl-C (SIGINT) at once and without a warning.

    Prefect 3.8.8's own SIGTERM handler calls `Runner.stop()` from within the event loop, where it returns the
    coroutine `astop()` without running it ("coroutine 'Runner.astop' was never awaited"), then exits with
    SystemExit. Here either signal runs `astop()` on the loop: the flow runs in progress are cancelled (their
    processes ended, their state Cancelled), polling stops, and `start()` returns."""

    async def start(self, run_once: bool = False, webserver: bool | None = None) -> None:
        if threading.current_thread() is threading.main_thread():  # start() sets the SIGTERM handler itself
            signal.signal(signal.SIGINT, self.handle_sigterm)
        await super().start(run_once=run_once, webserver=webserver)

    def handle_sigterm(self, *args: Any) -> None:
        """Stop on the event loop, woken up (the handler runs while it may wait on its selector). A second signal,
        or one before the runner has started, interrupts at once."""
        if not self.started or self.stopping:
            raise KeyboardInterrupt
        self.stopping = True
        asyncio.get_running_loop().call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        self._stopped = asyncio.ensure_future(self.astop())  # a task held until done


def serve(limit: int = 1) -> None:
    """Serve build-m3e-hq as the deployment build-m3e-hq/build-m3e-hq, `limit` flow runs at a time, until SIGTERM
    or Ctrl-C. When serving stops, the deployment is left as it is, not paused (Prefect's default for serve)."""
    check_api()
    for key, value in RUN_LOG_LEVELS.items():
        os.environ.setdefault(key, value)
    runner = StoppingRunner(name=DEPLOYMENT_NAME, limit=limit, pause_on_shutdown=False)
    runner.add_flow(build_m3e_hq, name=DEPLOYMENT_NAME, enforce_parameter_schema=True)
    asyncio.run(runner.start())
