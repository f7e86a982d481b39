"""HTTP downloads (resume, retries, checksums, bounded transfers) against a local test server, and safe archive
extraction."""

import gzip
import hashlib
import io
import random
import re
import socket
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from m3e_hq.sources.catalog import Catalog, HttpFile, HttpObtain, Source
from m3e_hq.sources.download_http import (
    ChecksumError,
    CorruptArchiveError,
    DownloadError,
    TransientDownloadError,
    UnsafeArchiveError,
    download_file,
    extract_archive,
)
from m3e_hq.sources.errors import TransientError
from m3e_hq.sources.fetch import fetch_source

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


def streamed(chunks: Iterator[bytes], length: int | None = None) -> Response:
    """A response sending `chunks` as they come, with Content-Length `length` (else none: the end of the body is
    the end of the connection)."""
    headers = {} if length is None else {"Content-Length": str(length)}
    return Response(chunks, headers=headers, direct_passthrough=True)


def trickle(request: Request) -> Response:
    """DATA announced in full, sent a byte every 20 ms (50 bytes/s) for its first 200 bytes, then the connection
    closes."""

    def chunks() -> Iterator[bytes]:
        for i in range(200):
            yield DATA[i : i + 1]
            time.sleep(0.02)

    return streamed(chunks(), len(DATA))


def silent(request: Request) -> Response:
    """Headers, then nothing for 3 s, then the connection closes."""

    def chunks() -> Iterator[bytes]:
        yield b""
        time.sleep(3)

    return streamed(chunks())


def endless(request: Request) -> Response:
    """A body without end (no Content-Length), as fast as it can go."""

    def chunks() -> Iterator[bytes]:
        while True:
            yield DATA[:8192]

    return streamed(chunks())


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


# --- bounded transfers --------------------------------------------------------------------------------------------

SLOW = {"min_rate": 10_000, "rate_window": 0.3}  # under 10 kB/s over 0.3 s is too slow


def test_a_trickle_is_cut_and_the_download_resumed(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(in_sequence(trickle, serve_ranges(DATA)))
    dest = tmp_path / "f.bin"
    started = time.monotonic()

    result = download_file(httpserver.url_for("/f.bin"), dest, DATA_SHA, **FAST, **SLOW)

    assert time.monotonic() - started < 3  # cut after 0.3 s, not trickled for 4 s
    first, second = ranges_sent(httpserver)
    assert first is None and second.startswith("bytes=") and second != "bytes=0-"  # the bytes trickled are kept
    assert result.resumed and result.attempts == 2 and dest.read_bytes() == DATA


def test_a_server_that_only_trickles_fails_after_the_retries(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(trickle)
    started = time.monotonic()

    with pytest.raises(TransientDownloadError, match=r"after 2 attempts.*too slow: \d+ bytes in 0\.\d s, under "
                       "10,000 bytes/s"):
        download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", retries=1, **FAST, **SLOW)

    assert time.monotonic() - started < 3  # two cut transfers, not two 4 s trickles


def test_a_server_that_sends_nothing_is_cut_by_the_idle_timeout(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(silent)
    started = time.monotonic()

    with pytest.raises(TransientDownloadError, match="after 2 attempts.*ReadTimeout"):
        download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", retries=1, backoff=0.01, timeout=0.3)

    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(("size", "says"), [(None, "more than the maximum download size of 50,000 bytes"),
                                            (len(DATA), "more than the expected 102,400 bytes")])
def test_a_body_without_end_fails_at_the_size_limit(httpserver: HTTPServer, tmp_path: Path, size: int | None,
                                                    says: str) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(endless)

    with pytest.raises(DownloadError, match=f"sent {says} \\(a body without end\\?\\)") as info:
        download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", size=size, max_bytes=50_000, **FAST)

    assert info.value.attempts == 1 and not isinstance(info.value, TransientError)  # the same body again would not end
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("handler", "limits", "says"), [
    (lambda request: Response(DATA[:HALF]), {"size": len(DATA)},
     "announces 51,200 bytes, not the expected 102,400: the file changed or the server is wrong"),
    (lambda request: Response(DATA), {"max_bytes": 50_000},
     "announces 102,400 bytes, over the maximum download size of 50,000 bytes"),
])
def test_an_announced_size_that_cannot_be_right_fails_before_the_body(
    httpserver: HTTPServer, tmp_path: Path, handler: Callable[[Request], Response], limits: dict, says: str
) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(handler)

    with pytest.raises(DownloadError, match=says) as info:
        download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", **limits, **FAST)

    assert info.value.attempts == 1 and not isinstance(info.value, TransientError)
    assert list(tmp_path.iterdir()) == []


def test_a_content_length_the_body_never_reaches_fails_after_the_retries(httpserver: HTTPServer,
                                                                         tmp_path: Path) -> None:
    httpserver.expect_request("/f.bin").respond_with_handler(cut_short)

    with pytest.raises(TransientDownloadError, match="after 3 attempts"):
        download_file(httpserver.url_for("/f.bin"), tmp_path / "f.bin", retries=2, **FAST)

    assert len(httpserver.log) == 3


def test_a_body_short_of_the_expected_size_is_resumed(httpserver: HTTPServer, tmp_path: Path) -> None:
    """Without a Content-Length a cut connection looks like the end of the body: the expected size tells."""
    half_then_close = lambda request: streamed(iter([DATA[:HALF]]))
    httpserver.expect_request("/f.bin").respond_with_handler(in_sequence(half_then_close, serve_ranges(DATA)))
    dest = tmp_path / "f.bin"

    result = download_file(httpserver.url_for("/f.bin"), dest, size=len(DATA), **FAST)

    assert ranges_sent(httpserver) == [None, f"bytes={HALF}-"]
    assert result.resumed and dest.read_bytes() == DATA


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

    with pytest.raises(CorruptArchiveError, match="BadZipFile: Bad CRC-32"):
        extract_archive(archive, tmp_path / "out", max_bytes=100)
    assert [p.name for p in tmp_path.iterdir()] == ["liar.zip"]


def tgz_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


BIG_FILES = {f"data/part{i}.bin": random.Random(i).randbytes(20_000) for i in range(4)}  # stored, not compressed
TGZ = tgz_of(BIG_FILES)


@pytest.mark.parametrize(("cut", "says"), [
    (100, "EOFError: Compressed file ended before the end-of-stream marker was reached"),  # in the first member
    (len(TGZ) // 2, "EOFError"),  # in the middle
    (len(TGZ) - 4, "EOFError"),  # only the gzip trailer (its length) missing: every member reads in full
    (0, "ReadError: file could not be opened successfully: - method gz"),  # empty, on one line
])
def test_a_truncated_tgz_is_refused_and_nothing_extracted(tmp_path: Path, cut: int, says: str) -> None:
    archive = tmp_path / "cut.tgz"
    archive.write_bytes(TGZ[:cut])

    with pytest.raises(CorruptArchiveError, match="cut.tgz cannot be read to its end: truncated, corrupt or not an "
                       "archive") as info:
        extract_archive(archive, tmp_path / "out")

    assert says in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).endswith("; delete it to download it again")
    assert [p.name for p in tmp_path.iterdir()] == ["cut.tgz"]


def test_a_corrupt_tgz_is_caught_by_the_gzip_check_at_its_end(tmp_path: Path) -> None:
    damaged = bytearray(TGZ)
    damaged[len(TGZ) // 2] ^= 0xFF  # still inflates, to other bytes: only the CRC at the end tells
    archive = tmp_path / "damaged.tgz"
    archive.write_bytes(bytes(damaged))

    with pytest.raises(CorruptArchiveError, match="BadGzipFile: CRC check failed"):
        extract_archive(archive, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["damaged.tgz"]


def test_a_truncated_tgz_download_fails_the_source(httpserver: HTTPServer, tmp_path: Path, catalog: Catalog) -> None:
    httpserver.expect_request("/simclue_public.tgz").respond_with_data(TGZ[: len(TGZ) // 2])
    obtain = HttpObtain(kind="http", files=[HttpFile(url=httpserver.url_for("/simclue_public.tgz"))])
    source = catalog.get("SimCLUE").model_copy(update={"obtain": obtain})

    got = fetch_source(source, tmp_path / "cache", tmp_path / "manual")

    assert got.status == "failed" and not got.transient
    assert got.message.startswith("CorruptArchiveError: ") and "simclue_public.tgz cannot be read to its end" in got.message
    assert not (tmp_path / "cache" / "sources" / "SimCLUE").exists()


def test_existing_target_is_not_overwritten(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "good.zip", GOOD_FILES)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="delete it"):
        extract_archive(archive, tmp_path / "out")


# --- hostile archives and URLs: bombs, names twice, redirect loops, truncated streams, encoded names ---------------

REAL = Path("/work/shared/data/real/simclue/train_pair_postive_1w.json")  # 1,000 real SimCLUE pairs, JSON Lines


def simclue_source(catalog: Catalog, url: str) -> Source:
    return catalog.get("SimCLUE").model_copy(update={"obtain": HttpObtain(kind="http", files=[HttpFile(url=url)])})


def left_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.tgz"])
def test_a_decompression_bomb_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    archive, zeros = tmp_path / name, b"\0" * (64 << 20)
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("train_pair_postive.json", zeros)
    else:
        make_tar(archive, {"train_pair_postive.json": zeros})
    size = archive.stat().st_size
    assert size < (1 << 20)  # the ratio, not max_bytes, refuses it: over 100 times

    with pytest.raises(UnsafeArchiveError, match=f"67,108,864 bytes uncompressed exceeds the limit of "
                       f"{100 * size:,} bytes .* a decompression bomb"):
        extract_archive(archive, tmp_path / "out")
    assert left_in(tmp_path) == [name]


def test_a_tar_bomb_is_refused_at_its_header_before_its_data_is_inflated(tmp_path: Path) -> None:
    """A header declaring 2 GiB, followed by 1 MiB of its data only: refused at the header (the data is never
    inflated, so the stream is never found short)."""
    info = tarfile.TarInfo("train_pair_postive.json")
    info.size = 2 << 30
    archive = tmp_path / "bomb.tgz"
    archive.write_bytes(gzip_of(info.tobuf() + b"\0" * (1 << 20)))

    with pytest.raises(UnsafeArchiveError) as raised:
        extract_archive(archive, tmp_path / "out")
    assert type(raised.value) is UnsafeArchiveError  # not CorruptArchiveError: nothing was read past the header
    assert "2,147,483,648 bytes uncompressed exceeds the limit of 1,048,576 bytes" in str(raised.value)
    assert left_in(tmp_path) == ["bomb.tgz"]


def test_bytes_unpacked_past_the_declared_members_are_counted_and_stop_the_extraction(tmp_path: Path) -> None:
    """A tar stream that goes on after its end-of-archive blocks: the members declare 1,000 lines of real text,
    the gzip stream inflates to 64 MiB more, which is read (its CRC is only checked at the end), counted and
    stopped at the limit."""
    text = REAL.read_bytes()
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        info = tarfile.TarInfo("train_pair_postive.json")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    archive = tmp_path / "tail.tgz"
    archive.write_bytes(gzip_of(tar.getvalue() + b"\0" * (64 << 20)))
    limit = 100 * archive.stat().st_size

    with pytest.raises(UnsafeArchiveError, match=f"unpacks to more than {limit:,} bytes .* stopped after") as info:
        extract_archive(archive, tmp_path / "out")
    stopped = int(re.search(r"stopped after ([\d,]+)", str(info.value)).group(1).replace(",", ""))
    assert limit - (1 << 20) < stopped <= limit  # stopped within one chunk of the limit, not at 64 MiB
    assert left_in(tmp_path) == ["tail.tgz"]


def gzip_of(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz:
        gz.write(data)
    return buffer.getvalue()


def test_real_text_archives_are_well_within_the_ratio(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "real.tgz", {"train_pair_postive.json": REAL.read_bytes() * 20})  # 2.2 MB
    files = extract_archive(archive, tmp_path / "out")
    assert [f.read_bytes() for f in files] == [REAL.read_bytes() * 20]
    assert files[0].stat().st_size / archive.stat().st_size < 10  # real Chinese text compresses some 3-4 times


@pytest.mark.parametrize("name", ["twice.zip", "twice.tar.gz"])
def test_an_archive_with_a_member_named_twice_fails_the_source(httpserver: HTTPServer, tmp_path: Path,
                                                               catalog: Catalog, name: str) -> None:
    lines = REAL.read_bytes().splitlines(keepends=True)
    first, second = b"".join(lines[:30]), lines[30]
    buffer = tmp_path / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("train_pair_postive.json", first)
            with pytest.warns(UserWarning, match="Duplicate name"):
                zf.writestr("train_pair_postive.json", second)
    else:
        with tarfile.open(buffer, "w:gz") as tf:
            for content in (first, second):
                info = tarfile.TarInfo("train_pair_postive.json")
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    httpserver.expect_request(f"/{name}").respond_with_data(buffer.read_bytes())

    got = fetch_source(simclue_source(catalog, httpserver.url_for(f"/{name}")), tmp_path / "cache",
                       tmp_path / "manual")

    assert got.status == "failed" and not got.transient
    assert got.message.startswith("UnsafeArchiveError: ") and "'train_pair_postive.json' appears twice" in got.message
    assert not (tmp_path / "cache" / "sources" / "SimCLUE").exists()


def test_a_redirect_loop_fails_the_source_with_one_line(httpserver: HTTPServer, tmp_path: Path,
                                                        catalog: Catalog) -> None:
    httpserver.expect_request("/loop.zip").respond_with_response(Response(status=302, headers={"Location": "/loop.zip"}))

    got = fetch_source(simclue_source(catalog, httpserver.url_for("/loop.zip")), tmp_path / "cache",
                       tmp_path / "manual")

    assert got.status == "failed" and not got.transient
    assert got.message == (f"DownloadError: GET {httpserver.url_for('/loop.zip')} was redirected more than 20 times "
                           "(a redirect loop?): check the URL in sources/catalog.yaml, or download the file by hand")
    assert len(httpserver.log) == 21  # the first request and 20 redirects, not retried


def test_a_redirect_to_another_scheme_fails_the_source_at_once(httpserver: HTTPServer, tmp_path: Path,
                                                               catalog: Catalog) -> None:
    httpserver.expect_request("/away.zip").respond_with_response(
        Response(status=302, headers={"Location": "file:///etc/passwd"}))

    got = fetch_source(simclue_source(catalog, httpserver.url_for("/away.zip")), tmp_path / "cache",
                       tmp_path / "manual")

    assert got.status == "failed" and not got.transient and len(httpserver.log) == 1  # not retried
    assert got.message.startswith(f"DownloadError: GET {httpserver.url_for('/away.zip')} led to a URL that is not "
                                  "http or https (Request URL has an unsupported protocol 'file://'.): check the URL")


@pytest.mark.parametrize("cut", [100, len(TGZ) // 2, len(TGZ) - 4])
def test_a_truncated_tgz_download_fails_the_source_wherever_it_is_cut(httpserver: HTTPServer, tmp_path: Path,
                                                                      catalog: Catalog, cut: int) -> None:
    httpserver.expect_request("/cut.tgz").respond_with_data(TGZ[:cut])

    got = fetch_source(simclue_source(catalog, httpserver.url_for("/cut.tgz")), tmp_path / "cache",
                       tmp_path / "manual")

    assert got.status == "failed" and "\n" not in got.message
    assert got.message.startswith("CorruptArchiveError: ") and "(EOFError: " in got.message
    assert not (tmp_path / "cache" / "sources" / "SimCLUE").exists()


@pytest.mark.parametrize("segment", ["..%2F..%2Fescaped.json", "..%2f..%2fescaped.json", "%2E%2E", "a%5C..%5Cb.json",
                                     "x%00.json"])
def test_a_percent_encoded_file_name_cannot_leave_the_cache(httpserver: HTTPServer, tmp_path: Path,
                                                            catalog: Catalog, segment: str) -> None:
    url = httpserver.url_for("/files/") + segment
    httpserver.expect_request("/files/../../escaped.json").respond_with_data(REAL.read_bytes())

    got = fetch_source(simclue_source(catalog, url), tmp_path / "cache", tmp_path / "manual")

    assert got.status == "failed"
    assert got.message.startswith(f"FetchError: cannot name a file after the URL {url} (its decoded name is ")
    assert got.message.endswith("fix the URL in sources/catalog.yaml")
    assert [p for p in left_in(tmp_path) if (tmp_path / p).is_file()] == ["cache/state/SimCLUE.json"]
    assert httpserver.log == []
