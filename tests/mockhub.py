"""A local stand-in for the Hugging Face Hub's dataset endpoints, for download tests (reached through HF_ENDPOINT).

It answers what huggingface_hub's `dataset_info` and `snapshot_download` ask (shared/docs/prefect_hf.md, 3.4):

    GET  /api/datasets/<org>/<name>/revision/<rev>        {"id", "sha", "siblings"}
    GET  /api/datasets/<org>/<name>/tree/<rev>[/<path>]    [{"type": "file", "path", "size", "oid"}, ...]
    HEAD|GET /datasets/<org>/<name>/resolve/<rev>/<path>  the bytes, with X-Repo-Commit, ETag, Content-Length

and what `create_repo` and `upload_folder` send, with every file uploaded inline ("regular" mode):

    POST /api/repos/create                                 {"name", "organization", "type": "dataset"}
    POST /api/validate-yaml                                no errors
    POST /api/datasets/<org>/<name>/preupload/<rev>        {"files": [{"path", "uploadMode": "regular"}]}
    POST /api/datasets/<org>/<name>/commit/<rev>           NDJSON header + base64 files -> a new commit on <rev>

Uploads need an `Authorization: Bearer <token>` header; `tokens` collects the tokens seen.

Each repo has commits (a sha and the folder holding its files) and refs (a name such as `main` or
`refs/convert/parquet`, pointing at a sha). Unknown repos, revisions and files get 404 with the X-Error-Code the Hub
sends. `fail` makes the next n requests "METHOD path" answer 500, `refuse` every such request 403; `requests` logs
every request as "METHOD path".
"""

import base64
import hashlib
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, Path]
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, rev: str) -> str | None:
        rev = self.refs.get(rev, rev)
        return rev if rev in self.commits else None


class MockHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.fail: dict[str, int] = {}
        self.requests: list[str] = []
        self.tokens: set[str] = set()
        self.downloads_auth: set[str] = set()  # the Authorization headers of downloads (GET, HEAD)
        self.refuse: set[str] = set()  # "METHOD path" requests answered 403
        self._uploads = Path(tempfile.mkdtemp(prefix="mockhub-"))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._uploads, ignore_errors=True)

    def add(self, repo_id: str, sha: str, folder: Path, refs: list[str]) -> None:
        repo = self.repos.setdefault(repo_id, Repo({}))
        repo.commits[sha] = folder
        repo.refs.update(dict.fromkeys(refs, sha))

    def commit(self, repo_id: str, rev: str, ndjson: bytes) -> dict:
        """Apply an upload commit on top of `rev` (a new repo starts empty): a new commit that `rev` then points to."""
        repo = self.repos[repo_id]
        parent = repo.commit(rev)
        sha = hashlib.sha1(ndjson + (parent or "").encode()).hexdigest()
        folder = self._uploads / repo_id / sha
        if parent is not None:
            shutil.copytree(repo.commits[parent], folder)
        folder.mkdir(parents=True, exist_ok=True)
        for line in ndjson.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                target = folder / item["value"]["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(item["value"]["content"]))
        repo.commits[sha] = folder
        repo.refs[rev] = sha
        return {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{sha}", "commitOid": sha}



def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _handler(hub: MockHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet: the tests read hub.requests
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            request = f"POST {unquote(url.path)}"
            hub.requests.append(request)
            if hub.fail.get(request, 0) > 0:
                hub.fail[request] -= 1
                return self._json({"error": "injected failure"}, True, 500)
            if request in hub.refuse:
                return self._json({"error": "You don't have the rights to write to this repository"}, True, 403)
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return self._json({"error": "Invalid credentials"}, True, 401)
            hub.tokens.add(auth.removeprefix("Bearer "))
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts == ["api", "repos", "create"]:
                spec = json.loads(data)
                repo_id = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
                hub.repos.setdefault(repo_id, Repo({}))
                return self._json({"url": f"{hub.url}/datasets/{repo_id}", "name": repo_id}, True)
            if parts == ["api", "validate-yaml"]:  # the dataset card's front matter, checked before a commit
                return self._json({"errors": [], "warnings": []}, True)
            if parts[:2] != ["api", "datasets"] or len(parts) < 6:
                return self._json({"error": f"not mocked: {url.path}"}, True, 404)
            repo_id, action, rev = "/".join(parts[2:4]), parts[4], parts[5]
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json({"error": "Repository not found"}, True, 404, "RepoNotFound")
            if action == "preupload":
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                         for f in json.loads(data)["files"]]
                return self._json({"files": files}, True)
            if action == "commit":
                return self._json(hub.commit(repo_id, rev, data), True)
            return self._json({"error": f"not mocked: {url.path}"}, True, 404)

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(data)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _json(self, value: object, body: bool, status: int = 200, code: str | None = None) -> None:
            headers = {"Content-Type": "application/json"} | ({"X-Error-Code": code} if code else {})
            self._send(status, json.dumps(value).encode(), headers, body)

        def _serve(self, body: bool) -> None:
            url = urlsplit(self.path)
            request = f"{self.command} {unquote(url.path)}"
            hub.requests.append(request)
            hub.downloads_auth.add(self.headers.get("Authorization", ""))
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if hub.fail.get(request, 0) > 0:
                hub.fail[request] -= 1
                return self._json({"error": "injected failure"}, body, 500)
            if request in hub.refuse:
                return self._json({"error": "Access to this resource is denied"}, body, 403)
            if parts[:2] == ["api", "datasets"] and len(parts) >= 6:
                repo_id, action, rev, rest = "/".join(parts[2:4]), parts[4], parts[5], "/".join(parts[6:])
            elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                repo_id, action, rev, rest = "/".join(parts[1:3]), "resolve", parts[4], "/".join(parts[5:])
            else:
                return self._json({"error": f"not mocked: {url.path}"}, body, 404)
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json({"error": "Repository not found"}, body, 404, "RepoNotFound")
            sha = repo.commit(rev)
            if sha is None:
                return self._json({"error": f"Invalid rev id: {rev}"}, body, 404, "RevisionNotFound")
            root = repo.commits[sha]
            files = sorted(p for p in root.rglob("*") if p.is_file())
            if action == "revision":
                siblings = [{"rfilename": p.relative_to(root).as_posix()} for p in files]
                return self._json({"id": repo_id, "sha": sha, "private": False, "siblings": siblings}, body)
            if action == "tree":
                recursive = parse_qs(url.query).get("recursive", ["false"])[0] == "true"
                return self._json(_tree(root, rest, recursive), body)
            if action == "resolve":
                path = root / rest
                if not rest or not path.is_file():
                    return self._json({"error": "Entry not found"}, body, 404, "EntryNotFound")
                data = path.read_bytes()
                etag = f'"{_sha1(path)}"'
                return self._send(200, data, {"X-Repo-Commit": sha, "ETag": etag}, body)
            return self._json({"error": f"not mocked: {url.path}"}, body, 404)

    return Handler


def _tree(root: Path, subpath: str, recursive: bool) -> list[dict]:
    base = root / subpath if subpath else root
    if not base.is_dir():
        return []
    paths = sorted(base.rglob("*") if recursive else base.iterdir())
    dirs = [{"type": "directory", "path": p.relative_to(root).as_posix(), "oid": "0" * 40} for p in paths if p.is_dir()]
    files = [{"type": "file", "path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "oid": _sha1(p)}
             for p in paths if p.is_file()]
    return dirs + files
