"""What the dedup stage counts as a duplicate (DedupParams): light to import, so that the build's parameters and
the CLI's start-up do not load what deduplicating needs (polars, numba, datasketch, scipy)."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3e_hq.flows.core.minhash_params import MinHashParams

EVAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")  # the decontamination files read


class DedupParams(BaseModel):
    """What counts as a duplicate, and which evaluation data is kept out."""

    model_config = ConfigDict(extra="forbid")

    on: Literal["pair", "query", "query-s2p"] = Field(
        "pair", description="dedup key: the pair (query + positive); the query alone, so that a query keeps one "
        "positive; or the query alone for s2p sources only (the pair for s2s)", json_schema_extra={"cli": "--dedup-on"})
    near: bool = Field(True, description="drop MinHash near-duplicates (after exact duplicates)",
                       json_schema_extra={"cli": "--near/--no-near"})
    minhash: MinHashParams = Field(default_factory=MinHashParams, description="shingles, permutations, LSH bands "
                                   "and the confirming edit similarity (default 0.875)")
    exclude_eval_splits: bool = Field(True, description="drop the native splits C-MTEB evaluates on (the "
                                      "catalog's eval_splits)", json_schema_extra={"cli": "--keep-eval-splits"})
    decontaminate: Path | None = Field(None, description="evaluation texts (JSONL, Parquet or TXT): drop rows whose "
                                       "query or positive is an exact or near duplicate of one",
                                       json_schema_extra={"cli": "--decontaminate"})
    workers: int = Field(2, ge=1, description="threads for the MinHash kernels")

    @field_validator("decontaminate")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            if path.suffix.lower() not in EVAL_SUFFIXES:
                raise ValueError(f"decontamination file {path}: use {', '.join(EVAL_SUFFIXES)}")
            if not path.is_file():
                raise ValueError(f"decontamination file {path} not found")
        return path
