"""CLI start-up benchmark: `m3e-hq --help`, `m3e-hq sources`, `m3e-hq build --help` and argument errors (a build
option and a `--config` value among them), as subprocesses, against baselines
run in the same session: `python -c pass` (the interpreter alone) and the import of the module set `flows/cli.py`
imported eagerly before issue 17 (BuildParams with the stage models, sources.fetch, typer and rich).

    python bench/startup.py [--repeats 5] [--top 12]

Each command runs `repeats` times in a fresh process, one after the other; the figures are the median and the minimum
of its wall time and CPU time (user + system of the child, from resource.getrusage). Then `python -X importtime` of
`import m3e_hq.flows.cli` and of a `sources` run lists the modules that cost the most, cumulatively (their children
included), and the old eager set's, for comparison. Prints a table, the ratios to the baselines, and a last line of
JSON.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PYTHON = sys.executable
# The modules flows/cli.py imported at its top level before its heavy imports moved into the commands (BuildParams
# then imported the stage modules for their parameter models).
EAGER = ("import typer, rich.table, m3e_hq.flows.pipeline.params, m3e_hq.flows.stages.dedup, "
         "m3e_hq.flows.stages.filters, m3e_hq.flows.stages.mine, m3e_hq.sources.cache, m3e_hq.sources.catalog, "
         "m3e_hq.sources.fetch")
RUN_SOURCES = "import sys; from m3e_hq.flows.cli import app; sys.argv = ['m3e-hq', 'sources']; app()"
CASES = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "import of the old eager set": [PYTHON, "-c", EAGER],
    "m3e-hq --help": [str(BIN / "m3e-hq"), "--help"],
    "m3e-hq sources": [str(BIN / "m3e-hq"), "sources"],
    "m3e-hq sources --bogus (argument error)": [str(BIN / "m3e-hq"), "sources", "--bogus"],
    "m3e-hq buidl (no such command)": [str(BIN / "m3e-hq"), "buidl"],
    "m3e-hq build --help": [str(BIN / "m3e-hq"), "build", "--help"],
    "m3e-hq build --bogus (option error)": [str(BIN / "m3e-hq"), "build", "--bogus"],
    "m3e-hq build --config (invalid value)": [str(BIN / "m3e-hq"), "build", "--config", "CONFIG"],
}
BAD_CONFIG = '{"sources": ["nosuch"]}\n'  # the --config file of the invalid-value case
BASELINES = ("python -c pass", "import of the old eager set")


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `command`, its output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                   env={**os.environ, "COLUMNS": "80"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(command: list[str], repeats: int) -> dict[str, float]:
    runs = [timed(command) for _ in range(repeats)]
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return {"wall_median": statistics.median(walls), "wall_min": min(walls), "cpu_median": statistics.median(cpus),
            "cpu_min": min(cpus)}


def import_offenders(code: str, top: int) -> list[tuple[str, float]]:
    """The `top` modules with the largest cumulative import time (seconds) in `python -X importtime -c code`."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--top", type=int, default=12, help="modules listed per import profile (default 12)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.json"
        config.write_text(BAD_CONFIG, encoding="utf-8")
        figures = {name: measure([str(config) if part == "CONFIG" else part for part in command], args.repeats)
                   for name, command in CASES.items()}
    print(f"{'command':<42} {'wall median':>11} {'wall min':>9} {'CPU median':>10} {'CPU min':>8}   "
          f"CPU vs eager import   CPU vs python")
    eager, bare = figures[BASELINES[1]]["cpu_median"], figures[BASELINES[0]]["cpu_median"]
    for name, f in figures.items():
        print(f"{name:<42} {f['wall_median']:>10.3f}s {f['wall_min']:>8.3f}s {f['cpu_median']:>9.3f}s "
              f"{f['cpu_min']:>7.3f}s   {f['cpu_median'] / eager:>19.2f}x   {f['cpu_median'] / bare:>12.1f}x")
    profiles = {"import m3e_hq.flows.cli": "import m3e_hq.flows.cli", "a sources run": RUN_SOURCES,
                "the old eager set": EAGER}
    offenders = {title: import_offenders(code, args.top) for title, code in profiles.items()}
    for title, rows in offenders.items():
        print(f"\npython -X importtime, {title}: cumulative seconds")
        for name, seconds in rows:
            print(f"  {seconds:7.3f}  {name}")
    print(json.dumps({"repeats": args.repeats, "cores": os.cpu_count(), "load_average": os.getloadavg(),
                      "figures": figures, "cpu_ratio_to_eager_import": {n: f["cpu_median"] / eager
                                                                        for n, f in figures.items()},
                      "import_offenders": offenders}))


if __name__ == "__main__":
    main()
