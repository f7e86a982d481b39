"""HTTP downloads (resume, retries, checksums) against a local test server, and safe archive extraction."""

import hashlib
import io
import socket
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from m3e_hq.sources.download_http import (
    ChecksumError,
    DownloadError,
    TransientDownloadError,
    UnsafeArchiveError,
    download_file,
    extract_archive,
)
from m3e_hq.sources.errors import TransientError

DATA = bytes(range(256)) * 400  # 102,400 bytes
DATA_SHA = hashlib.sha256(DATA).hexdigest()
HALF = len(DATA) // 2
FAST = {"backoff": 0.01, "timeout": 5.0}


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


def serve_ranges(data: bytes) -> Callable[[Request], Response]:
    """A handler serving `data`, answering a `Range: bytes=N-` request with 206 and Content-Range."""

    def handler(request: Request) -> Response:
        spec = request.headers.get("Range")
        if not spec:
            return Response(data, status=200)
        start = int(spec.removeprefix("bytes=").rstrip("-"))
        if start >= len(data):
            return Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return Response(data[start:], status=206, headers=headers)

    return handler


def in_sequence(*handlers: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """A handler using the given handlers one request after another, the last one for all later requests."""
    calls = iter(handlers)
    current = [handlers[-1]]

    def handler(request: Request) -> Response:
        current[0] = next(calls, handlers[-1])
        return current[0](request)

    return handler


def status(code: int) -> Callable[[Request], Response]:
    return lambda request: Response(f"error {code}", status=code)


def cut_short(request: Request) -> Response:
    """Announce the full length but send only the first half, then close the connection."""
    return Response(iter([DATA[:HALF]]), headers={"Content-Length": str(len(DATA))}, direct_passthrough=True)


def ranges_sent(httpserver: HTTPServer) -> list[str | None]:
    return [request.headers.get("Range") for request, _ in httpserver.log]


# --- downloads ----------------------------------------------------------------------------------------------------


def test_download_records_sha256_and_skips_existing_file(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_data(DATA)
    dest = tmp_path / "sub" / "f.bin"

    result = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)
    assert result.path == dest and result.sha256 == DATA_SHA and result.bytes == len(DATA)
    assert not result.resumed and result.attempts == 1
    assert dest.read_bytes() == DATA
    assert not dest.with_name("f.bin.part").exists()

    again = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)
    assert again.sha256 == DATA_SHA and again.attempts == 0
    assert len(httpserver.log) == 1


def test_progress_callback_sees_every_byte(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_data(DATA)
    seen: list[int] = []
    download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", DATA_SHA, **FAST, on_bytes=seen.append)
    assert sum(seen) == len(DATA) and all(n > 0 for n in seen)


def test_existing_file_with_wrong_sha256_is_reported(httpserver: HTTPServer, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"something else")
    with pytest.raises(ChecksumError, match="delete it to download again"):
        download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)
    assert dest.exists() and len(httpserver.log) == 0


def test_cut_transfer_is_resumed_with_range(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(in_sequence(cut_short, serve_ranges(DATA)))
    dest = tmp_path / "f.bin"

    result = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)

    assert ranges_sent(httpserver) == [None, f"bytes={HALF}-"]
    assert httpserver.log[1][1].status_code == 206
    assert result.resumed and result.attempts == 2 and result.bytes == len(DATA)
    assert dest.read_bytes() == DATA


def test_existing_part_is_resumed(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(serve_ranges(DATA))
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA[:1000])

    result = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)

    assert ranges_sent(httpserver) == ["bytes=1000-"]
    assert result.resumed and result.attempts == 1
    assert dest.read_bytes() == DATA


def test_complete_part_answered_416_is_accepted(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(serve_ranges(DATA))
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA)

    result = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)

    assert httpserver.log[0][1].status_code == 416
    assert result.attempts == 1 and dest.read_bytes() == DATA


def test_oversized_part_answered_416_restarts(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(serve_ranges(DATA))
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA + b"junk")

    result = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)

    assert ranges_sent(httpserver) == [f"bytes={len(DATA) + 4}-", None]
    assert result.attempts == 2 and not result.resumed and dest.read_bytes() == DATA


def test_server_ignoring_range_restarts_from_zero(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_data(DATA)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"stale bytes that must not survive")

    result = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST)

    assert ranges_sent(httpserver) == ["bytes=33-"]
    assert not result.resumed and dest.read_bytes() == DATA


def test_server_errors_are_retried(httpserver: HTTPServer, tmp_path: Path) -> None:
    handler = in_sequence(status(500), status(503), lambda request: Response(DATA))
    httpserver.expect_request("/f.bin").respond_with_handler(handler)

    result = download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", DATA_SHA, **FAST)

    assert result.attempts == 3 and len(httpserver.log) == 3


def test_too_many_requests_is_retried(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(in_sequence(status(429), lambda request: Response(DATA)))
    assert download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", **FAST).attempts == 2


def test_persistent_server_error_fails_after_retries(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_data("boom", status=500)
    dest = tmp_path / "f.bin"

    with pytest.raises(TransientDownloadError, match="after 3 attempts.*HTTP 500") as info:
        download_file(httpserver.url_for("/f.bin"), dest, retries=2, **FAST)

    assert info.value.attempts == 3 and len(httpserver.log) == 3
    assert not dest.exists()


def test_not_found_fails_at_once(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_data("nope", status=404)
    url = httpserver.url_for("/f.bin")

    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "f.bin", **FAST)

    message = str(info.value)
    assert "404" in message and url in message and "catalog.yaml" in message
    assert info.value.attempts == 1 and info.value.status == 404 and len(httpserver.log) == 1
    assert not isinstance(info.value, TransientError)  # retrying later would not help


def test_connection_refused_fails_after_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientDownloadError, match="ConnectError") as info:
        download_file(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin", retries=1, **FAST)
    assert info.value.attempts == 2


def test_checksum_mismatch_leaves_nothing(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_data(DATA)
    url = httpserver.url_for("/f.bin")
    dest = tmp_path / "f.bin"
    wrong = "0" * 64

    with pytest.raises(ChecksumError) as info:
        download_file(url, dest, wrong, **FAST)

    assert url in str(info.value) and wrong in str(info.value) and DATA_SHA in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert not isinstance(info.value, TransientError)


# --- archives -----------------------------------------------------------------------------------------------------

GOOD_FILES = {"data/train.jsonl": b'{"a": 1}\n', "data/dev/dev.jsonl": b'{"b": 2}\n', "README": b"hello"}


def make_zip(path: Path, files: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(zipfile.ZipInfo(name), content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16  # S_IFLNK | 0o777
            zf.writestr(info, "/etc/passwd")
    return path


def make_tar(path: Path, files: dict[str, bytes], link: tuple[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type = link[1]
            info.linkname = "/etc/passwd"
            tf.addfile(info)
    return path


@pytest.mark.parametrize("name", ["good.zip", "good.tar", "good.tar.gz", "good.tgz"])
def test_good_archive_extracts(tmp_path: Path, name: str) -> None:
    make = make_zip if name.endswith(".zip") else make_tar
    archive = make(tmp_path / name, GOOD_FILES)
    target = tmp_path / "out"

    files = extract_archive(archive, target)

    assert files == sorted(target / n for n in GOOD_FILES)
    assert {p.relative_to(target).as_posix(): p.read_bytes() for p in files} == GOOD_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out"])


UNSAFE_CASES = [
    ("evil.zip", lambda p: make_zip(p, {**GOOD_FILES, "../evil": b"x"}), "outside"),
    ("evil.zip", lambda p: make_zip(p, {**GOOD_FILES, "/tmp/abs_evil": b"x"}), "absolute"),
    ("evil.zip", lambda p: make_zip(p, GOOD_FILES, symlink="link"), "symbolic link"),
    ("evil.tar.gz", lambda p: make_tar(p, {**GOOD_FILES, "data/../../evil": b"x"}), "outside"),
    ("evil.tar.gz", lambda p: make_tar(p, {**GOOD_FILES, "/tmp/abs_evil": b"x"}), "absolute"),
    ("evil.tar.gz", lambda p: make_tar(p, GOOD_FILES, link=("link", tarfile.SYMTYPE)), "link"),
    ("evil.tar", lambda p: make_tar(p, GOOD_FILES, link=("hard", tarfile.LNKTYPE)), "link"),
]


@pytest.mark.parametrize(("name", "make", "reason"), UNSAFE_CASES)
def test_unsafe_archive_is_rejected_and_nothing_extracted(
    tmp_path: Path, name: str, make: Callable[[Path], Path], reason: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = make(work / name)

    with pytest.raises(UnsafeArchiveError, match=reason):
        extract_archive(archive, work / "out")

    assert [p.name for p in work.iterdir()] == [name]
    assert [p.name for p in tmp_path.iterdir()] == ["work"]


@pytest.mark.parametrize("name", ["big.zip", "big.tar.gz"])
def test_max_bytes_guard(tmp_path: Path, name: str) -> None:
    make = make_zip if name.endswith(".zip") else make_tar
    archive = make(tmp_path / name, {"a": b"\0" * 1000, "b": b"\0" * 1000})

    with pytest.raises(UnsafeArchiveError, match="max_bytes=1500"):
        extract_archive(archive, tmp_path / "out", max_bytes=1500)
    assert [p.name for p in tmp_path.iterdir()] == [name]

    assert len(extract_archive(archive, tmp_path / "out", max_bytes=2000)) == 2


def test_zip_lying_about_its_size_fails_and_leaves_nothing(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {"a": b"\0" * 5000})
    raw = bytearray(archive.read_bytes())
    # shrink the declared uncompressed size in the central directory (offset 24 of its entry) to 10 bytes
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))

    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        extract_archive(archive, tmp_path / "out", max_bytes=100)
    assert [p.name for p in tmp_path.iterdir()] == ["liar.zip"]


def test_existing_target_is_not_overwritten(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "good.zip", GOOD_FILES)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="delete it"):
        extract_archive(archive, tmp_path / "out")
