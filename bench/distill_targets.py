"""Distillation targets of a published m3e-hq-with-score (issue 16): the positive's share of FlagEmbedding's softmax
over a query's group, on the raw teacher scores (the baseline: what FlagEmbedding took before the export wrote
logits) and on the exported logits, plus the negatives of the commercial rows that are texts of other sources.

    .venv/bin/python bench/distill_targets.py [--folder data/build/samples/m3e-hq-with-score]

Reads `exports/flagembedding/*.jsonl` (groups of 1 positive + num_negatives negatives) and the per-source shards;
the raw scores are the logits times the build's temperature (cosine scales; the card records it). Last line: JSON."""

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from m3e_hq.flows.core.publish_params import PublishParams
from m3e_hq.sources.catalog import default_catalog


def positive_share(logits: np.ndarray) -> float:
    e = np.exp(logits - logits.max())
    return float(e[0] / e.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("data/build/samples/m3e-hq-with-score"))
    parser.add_argument("--temperature", type=float, default=PublishParams().teacher_temperature)
    args = parser.parse_args()
    groups = [json.loads(line) for path in sorted((args.folder / "exports" / "flagembedding").glob("*.jsonl"))
              for line in path.read_text(encoding="utf-8").splitlines()]
    size = max(len(g["neg"]) for g in groups)
    full = [np.array(g["pos_scores"] + g["neg_scores"]) for g in groups if len(g["neg"]) == size]
    raw = float(np.mean([positive_share(s * args.temperature) for s in full]))
    ours = float(np.mean([positive_share(s) for s in full]))
    catalog = default_catalog()
    shards = {p.name: pq.read_table(p).to_pylist() for p in sorted((args.folder / "data").iterdir())}
    commercial = {n for n in shards if catalog.get(n).commercial_use()}
    own = {r["text_pos"] for n in commercial for r in shards[n]}
    negatives = [t for n in commercial for r in shards[n] for t in r["text_neg"]]
    foreign = sum(t not in own for t in negatives)
    print(f"groups of {size + 1}: {len(full):,}; uniform share {1 / (size + 1):.3f}")
    print(f"positive's softmax share: raw scores (baseline) {raw:.3f}, exported logits {ours:.3f} "
          f"({ours / raw:.2f}x)")
    print(f"negatives of commercial rows that are no commercial row's positive: {foreign:,} of {len(negatives):,}")
    print(json.dumps({"groups": len(full), "group_size": size + 1, "share_raw": round(raw, 4),
                      "share_logits": round(ours, 4), "ratio": round(ours / raw, 3),
                      "commercial_negatives": len(negatives), "foreign_commercial_negatives": foreign}))


if __name__ == "__main__":
    main()
