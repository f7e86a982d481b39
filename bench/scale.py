"""Scale benchmark: the whole CPU pipeline on N synthetic pairs, its time per row and peak memory, and a projection
for the 22 million pairs of the M3E table.

    python bench/scale.py --sizes 100000,500000,2000000 [--mine-sample 2000] [--mine-json FILE]

For each N: N synthetic Chinese pairs in four sources' native formats (bench/synthetic.py: length distributions per
task type, 10% duplicates) are written by one process; a fresh process then runs ingest → filter → dedup on all of
them with the project's plain stage functions (flows.pipeline.build's, without Prefect), and the mine stage on a sample
(`--mine-sample` filtered pairs, the offline default encoder on the CPU). Its peak RSS is that process's own
(ru_maxrss), so the generator's memory is not counted. Targets (issue 7): peak memory for 2M pairs ≤ 8 GB, time per
row flat (±20%) from the smallest to the largest size.

Projection for 22M pairs on a 16-core machine with one H100: the CPU stages at the largest size's seconds per row,
divided by 16/cores × PARALLEL_EFFICIENCY (per-source tasks and the MinHash threads spread over the cores); mining
at the GPU rate of `--mine-json` (the last JSON line of `bench/mine.py --device cuda --shape m3e-base`, which
reports mining pairs/s and teacher pairs/s) or, without it, a FLOP estimate for m3e-base + bge-reranker-base on an
H100 (printed as an estimate). Prints a table per size, the projection, and a last line of JSON with the keys
sizes, peak_rss_gb, seconds_per_row, projected_hours_22m.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

M3E_PAIRS = 22_000_000
TARGET_CORES = 16
PARALLEL_EFFICIENCY = 0.7
CPU_STAGES = ("ingest", "filter", "dedup")
# FLOP estimate of mining on one H100 when no measured GPU figure is given: BERT-base-sized encoder (m3e-base) and
# cross-encoder (bge-reranker-base), ~85M weights outside the embeddings, at a third of the H100's 989 dense bf16
# TFLOP/s; tokens per text from the synthetic lengths (one token per Chinese character, two special tokens);
# every pair's query and positive encoded once, the teacher scoring the positive and 7 negatives per query.
H100_EFFECTIVE_FLOPS = 989e12 / 3
BASE_WEIGHTS = 85e6
NEGATIVES = 7


def generate(folder: Path, n: int) -> None:
    from synthetic import write_sources

    counts = write_sources(folder, n)
    print(json.dumps(counts))


def run_pipeline(raw: Path, build: Path, mine_sample: int) -> dict:
    """The build's stages (flows.pipeline.build.STAGES) in this process: ingest → filter → dedup over every source,
    then mine on a sample; seconds and rows per stage."""
    from synthetic import SOURCES

    from m3e_hq.flows.core.stage import Context, run_stages
    from m3e_hq.flows.pipeline.build import STAGES, Intake, context
    from m3e_hq.flows.pipeline.download import obtain_sources
    from m3e_hq.flows.pipeline.params import BuildParams
    from m3e_hq.flows.stages.mine import MINE, MineParams

    params = BuildParams(raw_dir=raw, sources=SOURCES, out_dir=build)
    stages: dict[str, dict] = {}
    start = time.perf_counter()

    def timed(stage, run) -> None:
        nonlocal start
        counts = run.results[stage.name].counts
        stages[stage.name] = {"seconds": time.perf_counter() - start, "read": sum(c.read for c in counts),
                              "kept": sum(c.kept for c in counts)}
        start = time.perf_counter()

    intake, cpu_context = Intake.of(obtain_sources(params)), context(params)
    cpu_stages = [stage for stage in STAGES if stage is not MINE]
    run = run_stages(cpu_stages, intake.files, params, cpu_context, on_stage=timed)
    failed = run.failed | {name: r.message for name, r in intake.not_ingested.items()}
    if failed:
        raise SystemExit(f"ingest failed: {failed}")

    sample_dir = build / "mine-sample"
    sample = _sample(run.results[cpu_stages[-1].name].outputs, sample_dir, mine_sample)
    mine_context = Context(sample_dir, cpu_context.catalog, build / "embeddings")
    start = time.perf_counter()
    run_stages([MINE], sample, params.model_copy(update={"mine": MineParams(device="cpu")}), mine_context,
               on_stage=timed)
    return {"stages": stages, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def _sample(inputs: dict[str, Path], folder: Path, n: int) -> dict[str, Path]:
    """The first rows of each source's filter output, n in all, split by the sources' sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {name: pq.ParquetFile(path).metadata.num_rows for name, path in inputs.items()}
    total = sum(sizes.values())
    out = {}
    for name, path in inputs.items():
        rows = max(1, n * sizes[name] // total)
        out[name] = folder / f"{name}.parquet"
        pq.write_table(pa.Table.from_batches([next(pq.ParquetFile(path).iter_batches(batch_size=rows))]), out[name])
    return out


def child(args: list[str]) -> dict:
    """Run this script with `args` in a fresh process; its last line of JSON."""
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def gpu_hours(mine_json: Path | None, tokens_per_pair: float) -> tuple[float, str]:
    """Hours to mine and score 22M pairs on one H100: measured rates when given, else the FLOP estimate."""
    if mine_json is not None:
        figures = json.loads(mine_json.read_text().strip().splitlines()[-1])
        if not str(figures.get("device", "")).startswith("cuda"):
            raise SystemExit(f"{mine_json} was measured on {figures.get('device')}, not a GPU")
        seconds = M3E_PAIRS / figures["ours_pairs_per_s"] + M3E_PAIRS * (NEGATIVES + 1) / figures[
            "teacher_pairs_per_s"]
        return seconds / 3600, f"measured ({mine_json.name})"
    encode = 2 * BASE_WEIGHTS * tokens_per_pair
    teacher = 2 * BASE_WEIGHTS * tokens_per_pair * (NEGATIVES + 1)
    return M3E_PAIRS * (encode + teacher) / H100_EFFECTIVE_FLOPS / 3600, "estimate (FLOPs at 1/3 of H100 peak)"


def tokens_per_pair() -> float:
    """Mean query + positive tokens of the synthetic shapes (one per character, two special tokens per text)."""
    from synthetic import SHAPES

    return sum(s.share * (math.exp(math.log(s.query[0]) + s.query[1] ** 2 / 2) + 2 +
                          min(512, math.exp(math.log(s.pos[0]) + s.pos[1] ** 2 / 2)) + 2) for s in SHAPES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,500000,2000000", help="comma-separated pair counts")
    parser.add_argument("--mine-sample", type=int, default=2_000, help="filtered pairs mined per size")
    parser.add_argument("--mine-json", type=Path, help="bench/mine.py's output on a GPU, for the projection")
    parser.add_argument("--work-dir", type=Path, help="where the data and builds go (default a temporary folder)")
    parser.add_argument("--generate", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--run", nargs=3, metavar=("RAW", "BUILD", "SAMPLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(Path(args.generate[0]), int(args.generate[1]))
        return
    if args.run:
        print(json.dumps(run_pipeline(Path(args.run[0]), Path(args.run[1]), int(args.run[2]))))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    cores = os.cpu_count() or 1
    results = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        for n in sizes:
            raw, build = Path(tmp) / f"raw-{n}", Path(tmp) / f"build-{n}"
            child(["--generate", str(raw), str(n)])
            results[n] = child(["--run", str(raw), str(build), str(args.mine_sample)])
            _print_size(n, results[n])
    per_row = {n: sum(results[n]["stages"][s]["seconds"] for s in CPU_STAGES) / n for n in sizes}
    peak = {n: results[n]["peak_rss_gb"] for n in sizes}
    largest, smallest = sizes[-1], sizes[0]
    flat = per_row[largest] / per_row[smallest]
    cpu_hours = {s: results[largest]["stages"][s]["seconds"] / largest * M3E_PAIRS / 3600 * cores /
                 (TARGET_CORES * PARALLEL_EFFICIENCY) for s in CPU_STAGES}
    mine_hours, how = gpu_hours(args.mine_json, tokens_per_pair())
    total = sum(cpu_hours.values()) + mine_hours

    print(f"\nCPU stages' seconds per row, {smallest:,} → {largest:,} pairs: {flat:.2f}x "
          f"(target 0.8-1.2x: {'met' if 0.8 <= flat <= 1.2 else 'missed'}); peak RSS at {largest:,}: "
          f"{peak[largest]:.2f} GB (target for 2M ≤ 8 GB)")
    print(f"\nProjection for {M3E_PAIRS:,} pairs on {TARGET_CORES} cores + one H100 (measured here on {cores} cores)")
    print(f"{'stage':<10}{'hours':>8}  basis")
    for stage, hours in cpu_hours.items():
        print(f"{stage:<10}{hours:>8.2f}  {largest:,}-pair run, ×{TARGET_CORES / cores:.0f} cores at "
              f"{PARALLEL_EFFICIENCY:.0%} efficiency")
    print(f"{'mine':<10}{mine_hours:>8.2f}  {how}")
    print(f"{'total':<10}{total:>8.2f}")
    print(json.dumps({"sizes": sizes, "peak_rss_gb": [round(peak[n], 3) for n in sizes],
                      "seconds_per_row": [round(per_row[n], 9) for n in sizes],
                      "projected_hours_22m": round(total, 2),
                      "stages": {n: results[n]["stages"] for n in sizes}, "cores": cores, "mine_basis": how}))


def _print_size(n: int, result: dict) -> None:
    print(f"\n{n:,} pairs: peak RSS {result['peak_rss_gb']:.2f} GB")
    print(f"{'stage':<10}{'read':>12}{'kept':>12}{'seconds':>10}{'rows/s':>12}")
    for stage, s in result["stages"].items():
        print(f"{stage:<10}{s['read']:>12,}{s['kept']:>12,}{s['seconds']:>10.1f}{s['read'] / s['seconds']:>12,.0f}")


if __name__ == "__main__":
    main()
