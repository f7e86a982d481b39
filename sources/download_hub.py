"""Downloads of the catalog's `hf` sources: only the allow-listed files of a dataset repo at one commit.

The files are fetched with `huggingface_hub.snapshot_download` into the source's cache folder (`local_dir`), so they
keep their repo paths and the catalog's file globs find them. Nothing is executed: loading scripts are never
downloaded (allow-patterns select data files only) and `datasets` never runs them (no `trust_remote_code`).
A pinned revision is used as is; an unpinned `ref` (a branch such as `main`, or `refs/convert/parquet`, where the
Hub keeps its Parquet conversion of script-only datasets) is resolved to its current commit first, and that commit
is what gets downloaded and recorded. `HF_ENDPOINT` (a mirror, or a local stand-in in the tests) is read at call
time; `HF_TOKEN` and `HF_HUB_OFFLINE` work as in huggingface_hub. A user:password in `HF_ENDPOINT` (a mirror behind
basic auth) is sent as a header, never as part of a URL, so it appears in no log or error message.
"""

import base64
import os
import time
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from m3e_hq.sources.catalog import HubObtain
from m3e_hq.sources.errors import TransientError

# What huggingface_hub raises for HTTP answers, offline mode and missing cache entries (all OSError), and network
# failures.
PROBLEMS = (OSError, httpx2.TransportError)


class HubError(RuntimeError):
    """A Hub download that failed for good, with what to do about it."""


class TransientHubError(HubError, TransientError):
    """A transient failure (5xx, 408, 429, a network error) that outlasted the retries."""


def endpoint() -> str | None:
    """The Hub endpoint from $HF_ENDPOINT (None: huggingface_hub's default), without the user:password a mirror's URL
    may hold: `headers` sends those, so that no URL huggingface_hub logs or puts in an error message carries them."""
    url = os.environ.get("HF_ENDPOINT")
    return str(httpx2.URL(url).copy_with(username=None, password=None)) if url else None


def headers() -> dict[str, str] | None:
    """HTTP basic auth with the user:password of $HF_ENDPOINT when it holds one (it takes the place of HF_TOKEN)."""
    url = httpx2.URL(os.environ.get("HF_ENDPOINT") or "")
    if not url.username:
        return None
    credentials = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
    return {"authorization": f"Basic {credentials}"}


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx2.TransportError):
        return True
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code in (408, 429) or exc.response.status_code >= 500
    return False


def _explain(obtain: HubObtain, revision: str, exc: BaseException) -> str:
    where = f"{obtain.repo}@{revision}"
    if isinstance(exc, GatedRepoError):
        return f"{where} is gated: accept its terms on the Hub and set HF_TOKEN ({exc})"
    if isinstance(exc, RepositoryNotFoundError):
        return f"dataset repo {obtain.repo} not found on the Hub (moved or taken down?); fix obtain.repo in the catalog"
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision} not found in {obtain.repo}; fix obtain.revision / obtain.ref in the catalog"
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        cause = str(exc).splitlines()[0].removeprefix("Got: ")
        return f"{where} is not in the cache and the Hub cannot be reached (HF_HUB_OFFLINE set, or no network): {cause}"
    return f"{where}: {type(exc).__name__}: {exc}"


def resolve_revision(obtain: HubObtain) -> str:
    """The commit to download: the pinned revision, else the current commit of `ref`."""
    if obtain.revision:
        return obtain.revision
    info = HfApi(endpoint=endpoint(), headers=headers()).dataset_info(obtain.repo, revision=obtain.ref)
    if not info.sha:
        raise HubError(f"the Hub did not say which commit {obtain.repo}@{obtain.ref} is")
    return info.sha


def fetch_hub(obtain: HubObtain, folder: Path, *, retries: int = 3, backoff: float = 1.0) -> str:
    """Download the allow-listed files of the repo at its (resolved) revision into `folder`; return the commit.

    Transient failures (5xx, 408, 429, network errors) are retried with exponential backoff, then raise
    TransientHubError; files already complete are not fetched again. Anything else raises HubError naming the repo,
    the revision and what to fix.
    """
    revision = obtain.revision or obtain.ref
    attempt = 0
    while True:
        try:
            revision = resolve_revision(obtain)
            snapshot_download(obtain.repo, repo_type="dataset", revision=revision,
                              allow_patterns=obtain.allow_patterns, local_dir=folder, endpoint=endpoint(),
                              headers=headers())
            return revision
        except PROBLEMS as exc:
            if not _transient(exc):
                raise HubError(_explain(obtain, revision, exc)) from exc
            if attempt >= retries:
                raise TransientHubError(_explain(obtain, revision, exc)) from exc
        time.sleep(backoff * 2**attempt)
        attempt += 1
