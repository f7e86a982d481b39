"""The near-duplicate definition (MinHashParams): light to import, so that the stages' parameters and the CLI's
start-up do not load what computing MinHash needs (numba, datasketch, polars, scipy)."""

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field


@dataclass(frozen=True)
class MinHashParams:
    """The near-duplicate definition: shingling, signature size, LSH banding and the confirming edit similarity."""

    ngram: int = 2  # shingle width in characters, at every length
    num_perm: int = 128
    bands: int = 32
    rows: int = 4
    threshold: Annotated[float, Field(description="edit similarity (1 - edits / length) from which two keys are "
                                      "near-duplicates: 0.875 allows no edit under 8 characters, one from 8, two "
                                      "from 16", json_schema_extra={"cli": "--near-threshold"})] = 0.875
    seed: int = 20230601
    bucket_all_pairs_max: int = 32  # texts sharing a band key: all pairs up to this many, else the first with each

    def __post_init__(self) -> None:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands × rows must equal num_perm: {self.bands} × {self.rows} != {self.num_perm}")
        if not 1 <= self.ngram <= 3:
            raise ValueError(f"ngram must be 1, 2 or 3, got {self.ngram}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    def candidate_probability(self, jaccard: float) -> float:
        """The chance that two texts of this Jaccard similarity share at least one band key."""
        return 1 - (1 - jaccard**self.rows) ** self.bands
