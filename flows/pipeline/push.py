"""Upload a finished, published dataset folder to the Hugging Face Hub as a dataset repo.

The folder must be complete: its SHA256SUMS must list every file with the right hash, so a half-written or edited
folder is never uploaded. The token comes from the environment (HF_TOKEN, or huggingface_hub's stored login) and is
never logged or printed; HF_ENDPOINT (a mirror) is read at call time.
"""

import hashlib
import logging
from pathlib import Path

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from m3e_hq.sources.download_hub import endpoint, headers, unresolved

CHECKSUMS = "SHA256SUMS"
log = logging.getLogger("m3e_hq.push")
# What an HTTP status of the Hub means for an upload, and what to do.
STATUS_HINTS = {401: "no valid token: set HF_TOKEN to a token with write access (or log in with `hf auth login`)",
                403: "the token may not write there: use a write token of an account that may create repos in that "
                     "organisation",
                404: "no such repo or organisation there: check ORG/NAME and HF_ENDPOINT",
                429: "the Hub is rate-limiting: wait and retry"}


class PushError(RuntimeError):
    """The folder is not a finished dataset, or the Hub refused the upload."""


def verify(folder: Path) -> int:
    """Check every file against the folder's SHA256SUMS (and that no file is unlisted); the number of files."""
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise PushError(f"{folder} has no {CHECKSUMS}: it is not a finished published dataset (run the build or "
                        "`m3e-hq export` first)")
    listed = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {CHECKSUMS}
    if present != set(listed):
        raise PushError(f"{folder}: files and {CHECKSUMS} differ (unlisted: {sorted(present - set(listed))[:5]}, "
                        f"missing: {sorted(set(listed) - present)[:5]})")
    for name, digest in listed.items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            raise PushError(f"{folder / name} does not match its checksum: the folder changed after publishing")
    return len(listed)


def check_repo_id(repo_id: str) -> None:
    """Raise PushError unless `repo_id` is ORG/NAME."""
    if repo_id.count("/") != 1:
        raise PushError(f"a dataset repo is named ORG/NAME, got {repo_id!r}")


def push_to_hub(folder: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the dataset repo `repo_id` (ORG/NAME) if needed and upload `folder` as one commit; its commit URL."""
    check_repo_id(repo_id)
    files = verify(folder)
    api = HfApi(endpoint=endpoint(), token=token, headers=headers())
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                                   commit_message=f"Upload {folder.name} ({files} files) from m3e-hq builder")
    except Exception as exc:
        raise PushError(f"uploading {folder} to {repo_id} failed: {refusal(exc)}") from exc
    log.info("uploaded %s to %s (%d files)", folder, repo_id, files)
    return str(commit.commit_url)


def refusal(exc: Exception) -> str:
    """Why the Hub did not take an upload, in one line with what to do: an HTTP status, offline mode, no network,
    or the error."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        said = " ".join((exc.server_message or "").split())
        hint = STATUS_HINTS.get(status, "the Hub failed: retry later" if status >= 500 else "see the Hub's answer")
        return f"HTTP {status} {exc.response.reason_phrase}" + (f" ({said})" if said else "") + f"; {hint}"
    host = endpoint() or "https://huggingface.co"
    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, which allows no upload: unset it"
    if unresolved(exc):
        return f"no network: cannot resolve the host of {host}; check the connection or HF_ENDPOINT"
    if isinstance(exc, httpx2.TransportError):
        return f"cannot reach {host} ({type(exc).__name__}: {' '.join(str(exc).split())}); check the connection"
    return " ".join(f"{type(exc).__name__}: {exc}".split())
