"""Teacher scores for (query, passage) pairs, on one recorded scale so that they compare across queries (CoSENT ranks
every pair of a batch against every other).

- `bi-encoder` (the offline default): the cosine of the mining encoder's embeddings, scale "cosine[-1,1]".
- a cross-encoder named by parameter (real builds: e.g. BAAI/bge-reranker-base): its logit through a sigmoid, scale
  "sigmoid[0,1]". All pairs of a build are scored together in large batches, sorted by length so that a batch holds
  texts of similar length, and a batch that runs out of GPU memory is split in two and retried.
"""

import logging
from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from flows.encode import model_location, resolve_device

BI_ENCODER = "bi-encoder"
COSINE_SCALE = "cosine[-1,1]"
SIGMOID_SCALE = "sigmoid[0,1]"
log = logging.getLogger("m3e_hq.teacher")


def cosine(queries: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """Row-wise cosine of L2-normalised vectors."""
    return np.einsum("ij,ij->i", queries, passages).astype(np.float32)


class CrossEncoderTeacher:
    """A cross-encoder scoring pairs in length-sorted batches, with a batch split in two on running out of memory."""

    scale = SIGMOID_SCALE

    def __init__(self, name: str, device: str | None = None, batch_size: int = 256) -> None:
        where = resolve_device(device)
        self.model = CrossEncoder(model_location(name), device=where, num_labels=1)
        if where.startswith("cuda"):
            self.model.model.half()
        self.batch_size = batch_size
        self.oom_splits = 0

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Sigmoid scores of the pairs, in their order."""
        order = np.argsort([len(q) + len(p) for q, p in pairs], kind="stable")
        out = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._predict([pairs[i] for i in rows])
        return out

    def _predict(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        try:
            return np.asarray(self.model.predict(pairs, batch_size=len(pairs), activation_fn=torch.nn.Sigmoid(),
                                                 convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)
        except torch.OutOfMemoryError:
            if len(pairs) == 1:
                raise
            torch.cuda.empty_cache()
            self.oom_splits += 1
            log.warning("teacher batch of %d pairs ran out of GPU memory: splitting it in two", len(pairs))
            half = len(pairs) // 2
            return np.concatenate([self._predict(pairs[:half]), self._predict(pairs[half:])])
