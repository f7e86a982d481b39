"""Downloads of the catalog's `hf` sources: only the allow-listed files of a dataset repo at one commit.

The files are fetched with `huggingface_hub.snapshot_download` into the source's cache folder (`local_dir`), so they
keep their repo paths and the catalog's file globs find them. Nothing is executed: loading scripts are never
downloaded (allow-patterns select data files only) and `datasets` never runs them (no `trust_remote_code`).
A pinned revision is used as is; an unpinned `ref` (a branch such as `main`, or `refs/convert/parquet`, where the
Hub keeps its Parquet conversion of script-only datasets) is resolved to its current commit first, and that commit
is what gets downloaded and recorded. `HF_ENDPOINT` (a mirror, or a local stand-in in the tests) is read at call
time (a trailing slash dropped, as huggingface_hub drops it from its default); `HF_TOKEN` and `HF_HUB_OFFLINE` work as
in huggingface_hub. A user:password in `HF_ENDPOINT` (a mirror behind basic auth) is sent as a header, never as part
of a URL, so it appears in no log or error message.

Without a network (the endpoint's host name does not resolve, and no proxy would carry the request) a download fails
at once with NoNetworkError, before huggingface_hub's own retries: a name that does not resolve is not transient.
huggingface_hub's retry warnings go to the root logger only (its own console handler is removed), so that each is
printed once where Prefect's console handler also prints them.
"""

import base64
import logging
import os
import socket
import time
import urllib.request
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, is_offline_mode, snapshot_download
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
HUB = "https://huggingface.co"  # huggingface_hub's endpoint when HF_ENDPOINT is not set
NO_NETWORK_REMEDY = ("use HF_ENDPOINT (a mirror you can reach), a warm cache (--cache-dir, filled by `m3e-hq "
                     "download` where there is a network) or your own copies (--raw-dir DIR)")

for _handler in logging.getLogger("huggingface_hub").handlers:
    if type(_handler) is logging.StreamHandler:
        logging.getLogger("huggingface_hub").removeHandler(_handler)


class HubError(RuntimeError):
    """A Hub download that failed for good, with what to do about it."""


class TransientHubError(HubError, TransientError):
    """A transient failure (5xx, 408, 429, a network error) that outlasted the retries."""


class NoNetworkError(HubError):
    """The Hub's host name does not resolve: no network (or no DNS), which retrying does not fix."""


def endpoint() -> str | None:
    """The Hub endpoint from $HF_ENDPOINT (None: huggingface_hub's default), without a trailing slash (which would
    make every URL `//api/...`) and without the user:password a mirror's URL may hold: `headers` sends those, so that
    no URL huggingface_hub logs or puts in an error message carries them."""
    url = os.environ.get("HF_ENDPOINT")
    return str(httpx2.URL(url).copy_with(username=None, password=None)).rstrip("/") if url else None


def headers() -> dict[str, str] | None:
    """HTTP basic auth with the user:password of $HF_ENDPOINT when it holds one (it takes the place of HF_TOKEN)."""
    url = httpx2.URL(os.environ.get("HF_ENDPOINT") or "")
    if not url.username:
        return None
    credentials = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
    return {"authorization": f"Basic {credentials}"}


def unresolved(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a host name that did not resolve (socket.gaierror)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, socket.gaierror):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def check_network(url: str) -> None:
    """Raise NoNetworkError when the host of `url` has no address and no proxy would carry a request to it."""
    parsed = httpx2.URL(url)
    host = parsed.host
    if not host or (urllib.request.getproxies().get(parsed.scheme) and not urllib.request.proxy_bypass(host)):
        return
    try:
        socket.getaddrinfo(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise NoNetworkError(f"no network: cannot resolve {host} ({exc.strerror}); {NO_NETWORK_REMEDY}") from exc


def _transient(exc: BaseException) -> bool:
    if unresolved(exc):
        return False
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
    if unresolved(exc):
        return f"{where}: no network: a host name did not resolve ({exc}); {NO_NETWORK_REMEDY}"
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

    Without a network (`check_network`, skipped in offline mode, where huggingface_hub reads its cache) NoNetworkError
    is raised at once. Transient failures (5xx, 408, 429, network errors other than a name that does not resolve) are
    retried with exponential backoff, then raise TransientHubError; files already complete are not fetched again.
    Anything else raises HubError naming the repo, the revision and what to fix.
    """
    revision = obtain.revision or obtain.ref
    if not is_offline_mode():
        check_network(endpoint() or HUB)
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
