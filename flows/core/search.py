"""Exact inner-product top-k search of query embeddings among corpus embeddings, for hard-negative mining.

Inputs are L2-normalised (so inner product is cosine), as float numpy arrays or torch tensors: queries (Q, d) and
corpus (N, d). `search` returns, best first, the scores (Q, k) float32 and corpus indices (Q, k) int64 of each
query's k nearest, and the backend that ran. Backends:

- `faiss-gpu`: a FAISS flat inner-product index in fp16 (`GpuMultipleClonerOptions(shard=True, useFloat16=True)`,
  which clones to `GpuIndexFlat` with `GpuIndexFlatConfig.useFloat16`), sharded over all GPUs. FAISS selects at most
  FAISS_GPU_MAX_K = 2048 results per query on a GPU, so a larger k is refused (ValueError) rather than cut.
- `torch-cuda`: exact search with torch on the current CUDA device, corpus in fp16 on the GPU, in blocks of query
  rows × corpus rows: `torch.topk` per block, merged into a running top-k, so that the Q × N matrix is never built.
- `faiss-cpu`: FAISS `IndexFlatIP` on the CPU (fp32, exact).
- `auto`: the first of those that can run here (faiss-gpu only for k ≤ 2048). The choice is logged.

A backend asked for by name that cannot run here raises RuntimeError saying what is missing and what to do; it
never falls back to another. Queries go in chunks sized by `memory_bytes`, the working memory of one chunk (besides
the inputs, the corpus on the GPU and the results). With k above the corpus size the results are padded, as FAISS
pads them, with index -1, but with score -inf (FAISS itself pads with -3.4e38): callers mask index -1. fp16 scores
(the GPU backends) are within about 1e-3 of the fp32 ones, so near-ties may be ordered differently.
"""

import logging

import faiss
import numpy as np
import torch

log = logging.getLogger("m3e_hq.search")

BACKENDS = ("auto", "faiss-gpu", "torch-cuda", "faiss-cpu")  # the values of `backend`; auto's order after "auto"
FAISS_GPU_MAX_K = 2048  # FAISS's GPU k-selection limit (GPU_MAX_SELECTION_K)
SEARCH_MEMORY = 2 << 30  # default working memory of one chunk, in bytes
BLOCK_QUERY_ROWS = 512  # torch-cuda: corpus rows per block are chosen so that this many query rows fit the budget
GPU_DTYPE = torch.float16

Vectors = np.ndarray | torch.Tensor


def backend_status() -> dict[str, str | None]:
    """Each backend, in auto's order of preference, mapped to None when it can run here, else to why not."""
    return {"faiss-gpu": _faiss_gpu_missing(), "torch-cuda": _torch_cuda_missing(), "faiss-cpu": None}


def _faiss_gpu_missing() -> str | None:
    """Why faiss-gpu cannot run here (and what to do), or None."""
    if not all(hasattr(faiss, name) for name in ("StandardGpuResources", "GpuMultipleClonerOptions",
                                                   "GpuIndexFlatConfig")):
        return (f"the installed faiss {faiss.__version__} is a CPU build without GPU support: install a GPU build "
                "of faiss (the project's [gpu] extra, faiss-gpu, in place of faiss-cpu)")
    if faiss.get_num_gpus() == 0:
        return (f"faiss {faiss.__version__} has GPU support but sees no GPU: check the NVIDIA driver and "
                "CUDA_VISIBLE_DEVICES")
    return None


def _torch_cuda_missing() -> str | None:
    """Why torch-cuda cannot run here (and what to do), or None."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"torch sees no CUDA device (torch {torch.__version__}, built for CPU): install a CUDA build of "
                "torch")
    return (f"torch sees no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}): check the "
            "NVIDIA driver and CUDA_VISIBLE_DEVICES")


def check_k(backend: str, k: int) -> None:
    """Raise ValueError when `backend` cannot return `k` results per query."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if backend == "faiss-gpu" and k > FAISS_GPU_MAX_K:
        raise ValueError(f"k={k} is above FAISS's GPU limit of {FAISS_GPU_MAX_K} results per query (faiss-gpu): "
                         f"ask for at most {FAISS_GPU_MAX_K}, or use backend='torch-cuda' or 'faiss-cpu' (no limit)")


def resolve_backend(backend: str, k: int) -> str:
    """The backend that runs a search for `k` results: auto's pick (logged), or `backend` once checked.

    Raises RuntimeError for a backend that cannot run here and ValueError for a k it cannot return.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}: use one of {', '.join(BACKENDS)}")
    status = backend_status()
    if backend == "auto":
        if status["faiss-gpu"] is None and k > FAISS_GPU_MAX_K:
            status["faiss-gpu"] = f"k={k} is above its limit of {FAISS_GPU_MAX_K}"
        chosen = next(name for name, why in status.items() if why is None)
        skipped = "; ".join(f"not {name}: {why}" for name, why in status.items() if why is not None)
        log.info("search backend: %s (auto%s)", chosen, f"; {skipped}" if skipped else "")
        check_k(chosen, k)
        return chosen
    if status[backend] is not None:
        raise RuntimeError(f"backend {backend!r} requested but {status[backend]}, or use backend='faiss-cpu' / "
                           "'auto'")
    check_k(backend, k)
    log.info("search backend: %s (requested)", backend)
    return backend


def search(queries: Vectors, corpus: Vectors, k: int, backend: str = "auto",
           memory_bytes: int = SEARCH_MEMORY) -> tuple[np.ndarray, np.ndarray, str]:
    """The k best corpus rows of each query by inner product: (scores (Q, k) float32, indices (Q, k) int64, backend).

    Best first; beyond the corpus size padded with index -1 and score -inf. `backend`: one of BACKENDS (see the
    module docstring); `memory_bytes`: the working memory of one chunk of queries.
    """
    _check_shapes(queries, corpus)
    chosen = resolve_backend(backend, k)
    if chosen == "torch-cuda":
        return *torch_search(queries, corpus, k, "cuda", GPU_DTYPE, memory_bytes), chosen
    return *faiss_search(queries, corpus, k, gpu=chosen == "faiss-gpu", memory_bytes=memory_bytes), chosen


def _check_shapes(queries: Vectors, corpus: Vectors) -> int:
    """The common dimension of the query and corpus vectors (ValueError unless both are 2-D with one dimension)."""
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries and corpus must be (n, d) with the same d, got {tuple(queries.shape)} and "
                         f"{tuple(corpus.shape)}")
    return int(queries.shape[1])


def _padded(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Results with nothing found yet: scores -inf, indices -1."""
    return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)


def faiss_query_rows(dim: int, k: int, memory_bytes: int) -> int:
    """Queries per FAISS search call: their fp32 vectors and their results take at most `memory_bytes` (≥ 1 row)."""
    return max(1, memory_bytes // (dim * 4 + k * (4 + 8)))


def faiss_search(queries: Vectors, corpus: Vectors, k: int, gpu: bool,
                 memory_bytes: int = SEARCH_MEMORY) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by a FAISS flat inner-product index: fp32 on the CPU, or fp16 sharded over all GPUs (`gpu`)."""
    dim = _check_shapes(queries, corpus)
    scores, indices = _padded(len(queries), k)
    found = min(k, len(corpus))
    if found == 0 or len(queries) == 0:
        return scores, indices
    if gpu:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        options.useFloat16 = True
        index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim), co=options)
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(_float32(corpus))  # IndexShards (successive ids) splits the corpus evenly over the GPUs
    rows = faiss_query_rows(dim, found, memory_bytes)
    for lo in range(0, len(queries), rows):
        scores[lo:lo + rows, :found], indices[lo:lo + rows, :found] = index.search(_float32(queries[lo:lo + rows]),
                                                                                   found)
    return scores, indices


def _float32(x: Vectors) -> np.ndarray:
    """`x` as a C-contiguous float32 numpy array (as FAISS takes it), copied only when needed."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def chunk_sizes(n_queries: int, n_corpus: int, dim: int, k: int, memory_bytes: int,
                itemsize: int = 2) -> tuple[int, int]:
    """(query rows, corpus rows) of one block of the torch search, so that the block's query vectors and scores and
    the top-k merge (about six k-wide rows of scores and int64 indices per query) take about `memory_bytes` at most
    (never less than one row of each). Corpus rows are chosen first, to leave room for BLOCK_QUERY_ROWS query rows."""
    corpus_rows = min(n_corpus, max(1, memory_bytes // (BLOCK_QUERY_ROWS * itemsize)))
    row_bytes = (dim + corpus_rows) * itemsize + 6 * k * (itemsize + 8)
    return min(n_queries, max(1, memory_bytes // row_bytes)), corpus_rows


@torch.inference_mode()
def torch_search(queries: Vectors, corpus: Vectors, k: int, device: str | torch.device,
                 dtype: torch.dtype = GPU_DTYPE, memory_bytes: int = SEARCH_MEMORY) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with torch on `device` in `dtype` (the corpus held there whole), block by block (`chunk_sizes`)."""
    dim = _check_shapes(queries, corpus)
    scores, indices = _padded(len(queries), k)
    if len(corpus) == 0 or len(queries) == 0:
        return scores, indices
    itemsize = torch.empty((), dtype=dtype).element_size()
    query_rows, corpus_rows = chunk_sizes(len(queries), len(corpus), dim, k, memory_bytes, itemsize)
    log.info("torch search on %s (%s): blocks of %d queries × %d corpus rows", device, dtype, query_rows,
             corpus_rows)
    base = torch.empty((len(corpus), dim), dtype=dtype, device=device)
    for lo in range(0, len(corpus), corpus_rows):  # block by block: no full-size fp32 copy on the device
        base[lo:lo + corpus_rows] = _tensor(corpus[lo:lo + corpus_rows], device, dtype)
    for lo in range(0, len(queries), query_rows):
        block = _tensor(queries[lo:lo + query_rows], device, dtype)
        best = torch.full((len(block), k), -torch.inf, dtype=dtype, device=device)
        best_idx = torch.full((len(block), k), -1, dtype=torch.int64, device=device)
        for start in range(0, len(corpus), corpus_rows):
            part = block @ base[start:start + corpus_rows].T
            top = torch.topk(part, min(k, part.shape[1]), dim=1)
            merged = torch.topk(torch.cat([best, top.values], dim=1), k, dim=1)
            best = merged.values
            best_idx = torch.cat([best_idx, top.indices + start], dim=1).gather(1, merged.indices)
        scores[lo:lo + query_rows] = best.float().cpu().numpy()
        indices[lo:lo + query_rows] = best_idx.cpu().numpy()
    return scores, indices


def _tensor(x: Vectors, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rows of `x` as a `dtype` tensor on `device` (numpy rows are copied, so read-only arrays are fine)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.tensor(np.asarray(x), dtype=dtype, device=device)
