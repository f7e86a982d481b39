"""Upload a finished, published dataset folder to the Hugging Face Hub as a dataset repo.

The folder must be complete: its SHA256SUMS must list every file with the right hash, so a half-written or edited
folder is never uploaded. The token comes from the environment (HF_TOKEN, or huggingface_hub's stored login) and is
never logged or printed; HF_ENDPOINT (a mirror) is read at call time.
"""

import hashlib
import logging
from pathlib import Path

from huggingface_hub import HfApi

from m3e_hq.sources.download_hub import endpoint, headers

CHECKSUMS = "SHA256SUMS"
log = logging.getLogger("m3e_hq.push")


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


def push_to_hub(folder: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the dataset repo `repo_id` (ORG/NAME) if needed and upload `folder` as one commit; its commit URL."""
    if repo_id.count("/") != 1:
        raise PushError(f"--push-to-hub takes ORG/NAME, got {repo_id!r}")
    files = verify(folder)
    api = HfApi(endpoint=endpoint(), token=token, headers=headers())
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                                   commit_message=f"Upload {folder.name} ({files} files) from m3e-hq builder")
    except Exception as exc:
        raise PushError(f"uploading {folder} to {repo_id} failed: {type(exc).__name__}: {exc}") from exc
    log.info("uploaded %s to %s (%d files)", folder, repo_id, files)
    return str(commit.commit_url)
