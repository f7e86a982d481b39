"""How hard negatives are selected (NegativeParams): light to import, so that the mine stage's parameters and the
CLI's start-up do not load the selection's numpy and MinHash code."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class NegativeParams(BaseModel):
    """How many hard negatives a query gets, and which candidates may be one."""

    model_config = ConfigDict(extra="forbid")

    num_negatives: int = Field(7, ge=1, description="negatives per query (7: a group of 1 positive + 7 negatives)",
                               json_schema_extra={"cli": "--num-negatives"})
    range_min: int = Field(10, ge=0, description="skip the candidates ranked above this (often false negatives); "
                           "ranks count after removing -1 results, the positive, near-duplicates and repeats")
    range_max: int = Field(50, ge=1, description="consider candidates ranked below this only (same ranks)")
    relative_margin: float | None = Field(0.05, ge=0, description="keep a candidate only if its score is at most "
                                          "pos - |pos| * margin (0.05: NV-Retriever's TopK-PercPos 95%); None: off")
    absolute_margin: float | None = Field(None, ge=0, description="keep a candidate only if its score is at most "
                                          "pos - margin (TopK-MarginPos); None: off")
    max_score: float | None = Field(None, description="keep a candidate only if its score is at most this; None: off")
    near_threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard (MinHash, character bigrams) "
                                  "with the query or the positive from which a candidate is a near-duplicate")
    sampling: Literal["top", "random"] = Field("top", description="take the best eligible candidates, or a seeded "
                                               "random sample of them")
    seed: int = Field(42, ge=0, description="seed of random sampling, combined with each query's id",
                      json_schema_extra={"cli": "--seed"})

    @model_validator(mode="after")
    def _window_fits(self) -> "NegativeParams":
        if self.range_max - self.range_min < self.num_negatives:
            raise ValueError(f"the rank window [{self.range_min}, {self.range_max}) is narrower than num_negatives "
                             f"({self.num_negatives})")
        return self
