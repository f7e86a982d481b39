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

from m3e_hq.flows.core.encode import Tokens, model_location, resolve_device, shared, tokenize

SIGMOID_SCALE = "sigmoid[0,1]"
log = logging.getLogger("m3e_hq.teacher")


def cosine(queries: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """Row-wise cosine of L2-normalised vectors."""
    return np.einsum("ij,ij->i", queries, passages).astype(np.float32)


class CrossEncoderTeacher:
    """A cross-encoder scoring pairs in length-sorted batches, with a batch split in two on running out of memory.
    One may score pairs in several threads at once (`shared_teacher`)."""

    scale = SIGMOID_SCALE

    def __init__(self, name: str, device: str | None = None, batch_size: int = 256) -> None:
        where = resolve_device(device)
        self.model = CrossEncoder(model_location(name), device=where, num_labels=1)
        if where.startswith("cuda"):
            self.model.model.half()
        log.info("loaded teacher %s on %s", name, where)
        self.batch_size = batch_size

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Sigmoid scores of the pairs, in their order (`score_counting`)."""
        return self.score_counting(pairs)[0]

    def score_counting(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, int]:
        """Sigmoid scores of the pairs, in their order, and how many batches of this call ran out of GPU memory and
        were split: all pairs tokenised in one call, then length-sorted batches of about `batch_size` longest pairs'
        worth of tokens, scores kept on the device until the end."""
        if not pairs:
            return np.zeros(0, dtype=np.float32), 0
        model = self.model
        encoded = tokenize(model.tokenizer, [q for q, _ in pairs], [p for _, p in pairs], truncation=True,
                           max_length=model.max_seq_length)
        tokens = Tokens.of(encoded, model.tokenizer.pad_token_id or 0)
        out = torch.empty(len(pairs), dtype=torch.float32, device=model.device)
        splits = 0
        for batch, width in tokens.batches(self.batch_size * int(tokens.lengths.max())):
            out[torch.as_tensor(batch, device=model.device)], split = self._logits(tokens, batch, width)
            splits += split
        return torch.sigmoid(out).cpu().numpy(), splits

    @torch.inference_mode()
    def _logits(self, tokens: Tokens, batch: np.ndarray, width: int) -> tuple[torch.Tensor, int]:
        """The logits of one batch and how many times it was split: a batch that runs out of GPU memory is split in
        two and retried."""
        try:
            features = {k: v.to(self.model.device, non_blocking=True) for k, v in tokens.batch(batch, width).items()}
            return self.model(features)["scores"].float().reshape(-1), 0
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            log.warning("teacher batch of %d pairs ran out of GPU memory: splitting it in two", len(batch))
            half = len(batch) // 2
            (first, a), (second, b) = self._logits(tokens, batch[:half], width), self._logits(tokens, batch[half:], width)
            return torch.cat([first, second]), 1 + a + b


def shared_teacher(name: str, device: str | None = None, batch_size: int = 256) -> CrossEncoderTeacher:
    """A CrossEncoderTeacher, loaded once per process, device and batch size."""
    where = resolve_device(device)
    return shared(("teacher", name, where, batch_size), lambda: CrossEncoderTeacher(name, where, batch_size))
