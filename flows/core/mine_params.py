"""Models, search and selection of the mine stage (MineParams): light to import, so that the build's parameters and
the CLI's start-up do not load what mining needs (torch, sentence-transformers, FAISS, numba)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from m3e_hq.flows.core.model_names import BI_ENCODER, DEFAULT_ENCODER
from m3e_hq.flows.core.negative_params import NegativeParams


class MineParams(BaseModel):
    """Models, search and selection of the mine stage."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(DEFAULT_ENCODER, description="sentence-transformers model that embeds queries and "
                         "passages for the search (a Hub id such as moka-ai/m3e-base or a local folder; the default "
                         "is the packaged all-MiniLM-L6-v2, a demo that maps many Chinese characters to [UNK])",
                         json_schema_extra={"cli": "--encoder"})
    query_prompt: str = Field("", description="text put before every query when encoding")
    passage_prompt: str = Field("", description="text put before every passage when encoding")
    device: str | None = Field(None, description="torch device (cpu, cuda, cuda:1); default cuda when available",
                               json_schema_extra={"cli": "--device"})
    batch_size: int = Field(64, ge=1, description="encoding batch size: on a GPU, batches of this many texts of the "
                            "model's longest sequence worth of tokens; on a CPU, at most this many texts and about "
                            "5 GFLOP of work")
    encode_shards: int = Field(1, ge=1, description="encode the texts in this many tasks (one GPU each under the "
                               "Ray task runner) into the embedding cache before mining; 1: the mine task encodes "
                               "them itself", json_schema_extra={"cli": "--encode-shards"})
    search: Literal["auto", "faiss-gpu", "torch-cuda", "faiss-cpu"] = Field(
        "auto", description="search backend: auto takes faiss-gpu, then torch-cuda, then faiss-cpu; a backend named "
        "but not available fails", json_schema_extra={"cli": "--search"})
    pool: Literal["source", "all"] = Field("source", description="where negatives come from: the positives of the "
                                           "query's own source (in-domain), or of all sources of its licence class (commercial, licence unstated, "
                                           "non-commercial: a commercial export never holds a non-commercial text)")
    negatives: NegativeParams = Field(default_factory=NegativeParams, description="how negatives are selected")
    near_duplicates: bool = Field(True, description="exclude candidates that are MinHash near-duplicates of the "
                                  "query or the positive (normalised equality is always excluded)")
    teacher: str = Field(BI_ENCODER, description="'bi-encoder' (cosine of the encoder's embeddings) or a "
                         "cross-encoder model (e.g. BAAI/bge-reranker-base) that scores every pair",
                         json_schema_extra={"cli": "--teacher"})
    teacher_batch_size: int = Field(256, ge=1, description="cross-encoder batch size (halved on running out of "
                                    "GPU memory)")
    false_negative_margin: float | None = Field(
        0.05, ge=0, description="drop a negative whose teacher score is above pos - |pos| * margin (a likely false "
        "negative); None: off")
    min_pair_score: float | None = Field(None, description="drop a pair whose teacher score is below this "
                                         "(pair consistency, as C-Pack did; calibrate per teacher); None: off",
                                         json_schema_extra={"cli": "--min-pair-score"})
    min_negatives: int = Field(1, ge=0, description="drop a row left with fewer negatives than this")
