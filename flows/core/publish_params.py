"""What to publish and how (PublishParams): a model of its own, light to import, so that the CLI's start-up and
the build's parameters do not load what publishing needs (datasets, matplotlib, polars)."""

from pydantic import BaseModel, ConfigDict, Field


class PublishParams(BaseModel):
    """What to publish and how to cut it."""

    model_config = ConfigDict(extra="forbid")

    shard_rows: int = Field(100_000, ge=1, description="most rows in one Parquet shard")
    commercial_only: bool = Field(False, description="publish only rows of sources that allow commercial use (the "
                                  "M3E table says yes and the source states a licence); every config then holds "
                                  "only those rows, and every negative is checked to be a text of those sources",
                                  json_schema_extra={"cli": "--commercial-only"})
    include_unknown_license: bool = Field(False, description="also count sources whose commercial use or licence "
                                          "is unstated as commercial, in the commercial config and commercial_only",
                                          json_schema_extra={"cli": "--include-unknown-license"})
    seed: int = Field(0, description="seed of the order in which the trainer configs (pairs, triplets, "
                      "scored-pairs, distill) are shuffled across sources")
    teacher_temperature: float = Field(0.02, gt=0, description="the FlagEmbedding export's pos_scores/neg_scores "
                                       "are cosine scores divided by this (FlagEmbedding softmaxes them as they "
                                       "are; 0.02 is its default training temperature); sigmoid[0,1] scores are "
                                       "exported as their logits instead")
    plots: bool = Field(True, description="draw PNG plots (rows by stage, text lengths, scores) for the cards")

    @property
    def allowed(self) -> list[str]:
        """The `commercial` values that count as commercial use."""
        return ["yes", "unknown"] if self.include_unknown_license else ["yes"]
