"""Top-k search (m3e_hq.flows.core.search) against a brute-force numpy reference, and its backend choice and errors."""

import logging

import faiss
import numpy as np
import pytest
import torch

from m3e_hq.flows.core import search as search_module
from m3e_hq.flows.core.search import (
    FAISS_GPU_MAX_K,
    SEARCH_MEMORY,
    backend_status,
    check_k,
    chunk_sizes,
    faiss_query_rows,
    resolve_backend,
    search,
    torch_search,
)

Q, N, DIM = 203, 300, 24
NO_CUDA = not torch.cuda.is_available()
NO_FAISS_GPU = backend_status()["faiss-gpu"] is not None


def vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


QUERIES, CORPUS = vectors(Q, 1), vectors(N, 2)


def assert_top_k(scores: np.ndarray, indices: np.ndarray, queries: np.ndarray, corpus: np.ndarray, k: int,
                 atol: float = 1e-5, min_clear: float = 0.9) -> None:
    """The results are the brute-force top k: the reference's scores, each index with its true score, no index
    twice, -1 / -inf padding beyond the corpus, and the reference's very index at every rank whose score is not within
    2 * atol of a neighbour's (near-ties may come in either order; at least `min_clear` of the ranks are clear)."""
    full = queries.astype(np.float64) @ corpus.astype(np.float64).T
    order = np.argsort(-full, axis=1, kind="stable")
    ranked = np.take_along_axis(full, order, axis=1)
    found = min(k, len(corpus))
    assert scores.shape == indices.shape == (len(queries), k)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_allclose(scores[:, :found], ranked[:, :found], rtol=0, atol=atol)
    assert (scores[:, found:] == -np.inf).all() and (indices[:, found:] == -1).all()
    got = indices[:, :found]
    assert (got >= 0).all() and all(len(set(row)) == found for row in got)
    np.testing.assert_allclose(np.take_along_axis(full, got, axis=1), ranked[:, :found], rtol=0, atol=atol)
    gaps = np.pad(-np.diff(ranked, axis=1), ((0, 0), (1, 1)), constant_values=np.inf)  # before rank r: gaps[:, r]
    clear = (np.minimum(gaps[:, :-1], gaps[:, 1:]) > 2 * atol)[:, :found]
    assert clear.mean() >= min_clear
    assert np.array_equal(got[clear], order[:, :found][clear])


@pytest.fixture
def faiss_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of queries of every search call on a FAISS CPU flat index."""
    calls: list[int] = []

    class Recording(faiss.IndexFlatIP):
        def search(self, x: np.ndarray, k: int, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
            calls.append(len(x))
            return super().search(x, k, **kwargs)

    monkeypatch.setattr(faiss, "IndexFlatIP", Recording)
    return calls


@pytest.mark.parametrize("k", [1, 7, N, N + 9])
@pytest.mark.parametrize("memory_bytes", [1, 3000, SEARCH_MEMORY])
def test_faiss_cpu_equals_the_reference_in_query_chunks(k: int, memory_bytes: int, faiss_calls: list[int]) -> None:
    scores, indices, backend = search(QUERIES, CORPUS, k, backend="faiss-cpu", memory_bytes=memory_bytes)
    assert backend == "faiss-cpu"
    assert_top_k(scores, indices, QUERIES, CORPUS, k)
    rows = faiss_query_rows(DIM, min(k, N), memory_bytes)
    assert sum(faiss_calls) == Q and max(faiss_calls) == min(rows, Q)
    assert len(faiss_calls) == -(-Q // rows)  # several chunks, the last one short, unless the budget holds all


@pytest.mark.parametrize("k", [1, 7, N, N + 9])
@pytest.mark.parametrize("memory_bytes", [1, 20_000, SEARCH_MEMORY])
def test_torch_search_on_cpu_equals_the_reference(k: int, memory_bytes: int) -> None:
    queries = QUERIES[:23] if memory_bytes == 1 else QUERIES  # blocks of 1 × 1: fewer queries, to stay quick
    scores, indices = torch_search(queries, CORPUS, k, "cpu", torch.float32, memory_bytes)
    assert_top_k(scores, indices, queries, CORPUS, k)


def test_torch_search_never_builds_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    k, budget = 12, 100_000
    query_rows, corpus_rows = chunk_sizes(Q, N, DIM, k, budget, itemsize=4)
    assert 1 < query_rows < Q and k < corpus_rows < N
    inputs: list[tuple[int, ...]] = []
    topk = torch.topk

    def recording_topk(x: torch.Tensor, *args: object, **kwargs: object) -> torch.return_types.topk:
        inputs.append(tuple(x.shape))
        return topk(x, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    scores, indices = torch_search(QUERIES, CORPUS, k, "cpu", torch.float32, budget)
    assert_top_k(scores, indices, QUERIES, CORPUS, k)
    blocks, merges = inputs[::2], inputs[1::2]  # per block: top-k of its scores, then the merge with the running top-k
    assert all(rows <= query_rows and cols <= 2 * k for rows, cols in merges)
    assert len(blocks) == -(-Q // query_rows) * -(-N // corpus_rows)
    assert max(rows for rows, _ in blocks) == query_rows and max(cols for _, cols in blocks) == corpus_rows
    assert all(rows * cols * 4 <= budget for rows, cols in inputs)


def test_chunk_sizes_fit_the_budget_and_never_go_below_one_row() -> None:
    assert chunk_sizes(Q, N, DIM, 10, SEARCH_MEMORY) == (Q, N)
    assert chunk_sizes(Q, N, DIM, 10, 1) == (1, 1)
    for budget in (10_000, 100_000, 1_000_000):
        query_rows, corpus_rows = chunk_sizes(10**6, 10**6, 768, 200, budget)
        assert query_rows * ((768 + corpus_rows) * 2 + 6 * 200 * 10) <= budget or query_rows == 1


def test_inputs_may_be_torch_tensors_or_read_only_float16_arrays() -> None:
    want = search(QUERIES, CORPUS, 5, backend="faiss-cpu")
    got = search(torch.from_numpy(QUERIES), torch.from_numpy(CORPUS), 5, backend="faiss-cpu")
    assert np.array_equal(want[1], got[1]) and np.allclose(want[0], got[0])
    queries, corpus = QUERIES.astype(np.float16), CORPUS.astype(np.float16)
    queries.flags.writeable = corpus.flags.writeable = False
    scores, indices = torch_search(queries, corpus, 5, "cpu", torch.float32)
    assert_top_k(scores, indices, queries, corpus, 5, atol=1e-5)


def test_empty_inputs_give_padding_or_nothing() -> None:
    scores, indices, _ = search(QUERIES[:3], CORPUS[:0], 4, backend="faiss-cpu")
    assert (indices == -1).all() and (scores == -np.inf).all() and indices.shape == (3, 4)
    scores, indices = torch_search(QUERIES[:0], CORPUS, 4, "cpu", torch.float32)
    assert scores.shape == indices.shape == (0, 4)
    with pytest.raises(ValueError, match="same d"):
        search(QUERIES, CORPUS[:, :8], 4, backend="faiss-cpu")


@pytest.mark.skipif(not (NO_CUDA and NO_FAISS_GPU), reason="a GPU backend is available here")
def test_auto_picks_faiss_cpu_here_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="m3e_hq.search")
    scores, indices, backend = search(QUERIES, CORPUS, 7)
    assert backend == "faiss-cpu"
    assert_top_k(scores, indices, QUERIES, CORPUS, 7)
    assert "search backend: faiss-cpu (auto; not faiss-gpu: " in caplog.text
    assert "not torch-cuda: torch sees no CUDA device" in caplog.text
    assert backend_status()["faiss-cpu"] is None


@pytest.mark.skipif(not NO_CUDA, reason="torch sees a CUDA device")
def test_torch_cuda_requested_without_cuda_fails_with_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"backend 'torch-cuda' requested but torch sees no CUDA device \(torch "
                       r".*\): (install a CUDA build of torch|check the NVIDIA driver).*, or use "
                       r"backend='faiss-cpu' / 'auto'"):
        search(QUERIES, CORPUS, 5, backend="torch-cuda")


@pytest.mark.skipif(not NO_FAISS_GPU, reason="faiss sees a GPU")
def test_faiss_gpu_requested_without_gpu_support_fails_with_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"backend 'faiss-gpu' requested but .*faiss .*: (install a GPU build of "
                       r"faiss|check the NVIDIA driver).*, or use backend='faiss-cpu' / 'auto'"):
        search(QUERIES, CORPUS, 5, backend="faiss-gpu")


def test_k_limits() -> None:
    with pytest.raises(ValueError, match=r"k=2049 is above FAISS's GPU limit of 2048 .*backend='torch-cuda' or "
                       "'faiss-cpu'"):
        check_k("faiss-gpu", FAISS_GPU_MAX_K + 1)
    check_k("faiss-gpu", FAISS_GPU_MAX_K)
    check_k("torch-cuda", 10 * FAISS_GPU_MAX_K)
    with pytest.raises(ValueError, match="k must be at least 1"):
        check_k("faiss-cpu", 0)
    with pytest.raises(ValueError, match="unknown search backend 'faiss'"):
        resolve_backend("faiss", 5)
    scores, indices, _ = search(QUERIES[:4], CORPUS, FAISS_GPU_MAX_K + 1, backend="faiss-cpu")
    assert_top_k(scores, indices, QUERIES[:4], CORPUS, FAISS_GPU_MAX_K + 1, min_clear=0.8)


def test_auto_prefers_faiss_gpu_up_to_its_k_limit(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(search_module, "_faiss_gpu_missing", lambda: None)  # as where faiss sees a GPU
    caplog.set_level(logging.INFO, logger="m3e_hq.search")
    assert resolve_backend("auto", FAISS_GPU_MAX_K) == "faiss-gpu"
    assert resolve_backend("auto", FAISS_GPU_MAX_K + 1) == ("faiss-cpu" if NO_CUDA else "torch-cuda")
    assert "not faiss-gpu: k=2049 is above its limit of 2048" in caplog.text
    with pytest.raises(ValueError, match="above FAISS's GPU limit"):
        resolve_backend("faiss-gpu", FAISS_GPU_MAX_K + 1)


@pytest.mark.parametrize("backend", ["torch-cuda", "faiss-gpu"])
@pytest.mark.parametrize("k", [10, N + 9])
def test_gpu_backends_equal_the_reference_up_to_fp16(backend: str, k: int) -> None:
    if backend_status()[backend] is not None:
        pytest.skip(backend_status()[backend])
    scores, indices, used = search(QUERIES, CORPUS, k, backend=backend, memory_bytes=50_000)
    assert used == backend
    assert_top_k(scores, indices, QUERIES, CORPUS, k, atol=3e-3, min_clear=0.3)
