"""``pixelseg data download``: resumable (HTTP Range), checksummed downloads and extraction, against a local
HTTP server on 127.0.0.1 serving a small fixture file (never the network)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from pixelseg.data import download
from pixelseg.data.download import DatasetSource, Source, download_dataset, fetch
from pixelseg.errors import PixelsegError


def make_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        payload = bytes(range(256)) * 40
        info = tarfile.TarInfo("VOCdevkit/VOC2012/readme.bin")
        info.size = len(payload)
        bundle.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


ARCHIVE = make_tar()


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ARCHIVE at /data.tar, honouring ``Range: bytes=N-`` with 206; records the ranges asked for."""

    ranges: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/data.tar":
            self.send_error(404)
            return
        asked = self.headers.get("Range")
        type(self).ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        body = ARCHIVE[start:]
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(ARCHIVE) - 1}/{len(ARCHIVE)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    RangeHandler.ranges = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_resumes_a_part_file_with_a_range_request(server, tmp_path):
    source = Source(f"{server}/data.tar", "data.tar", md5=hashlib.md5(ARCHIVE).hexdigest(),
                    sha256=hashlib.sha256(ARCHIVE).hexdigest())
    (tmp_path / "data.tar.part").write_bytes(ARCHIVE[:3000])  # an interrupted earlier run
    path = fetch(source, tmp_path, timeout=10)
    assert RangeHandler.ranges == ["bytes=3000-"]
    assert path.read_bytes() == ARCHIVE and not (tmp_path / "data.tar.part").exists()
    fetch(source, tmp_path, timeout=10)  # already complete and checked: no second request
    assert len(RangeHandler.ranges) == 1


def test_a_checksum_mismatch_is_refused_and_the_file_dropped(server, tmp_path):
    source = Source(f"{server}/data.tar", "data.tar", sha256="0" * 64)
    with pytest.raises(PixelsegError, match="sha256 mismatch"):
        fetch(source, tmp_path, timeout=10)
    assert not (tmp_path / "data.tar").exists() and not (tmp_path / "data.tar.part").exists()


def test_download_dataset_extracts_into_root_once(server, tmp_path):
    sources = {"tiny": DatasetSource((Source(f"{server}/data.tar", "data.tar",
                                             md5=hashlib.md5(ARCHIVE).hexdigest()),))}
    download_dataset("tiny", tmp_path, timeout=10, sources=sources)
    assert (tmp_path / "VOCdevkit" / "VOC2012" / "readme.bin").read_bytes() == bytes(range(256)) * 40
    assert (tmp_path / ".data.tar.extracted").is_file()


def test_a_server_error_and_a_manual_dataset_are_one_line(server, tmp_path):
    with pytest.raises(PixelsegError, match="HTTP 404"):
        fetch(Source(f"{server}/missing.tar", "missing.tar"), tmp_path, timeout=10)
    with pytest.raises(PixelsegError, match="cityscapes-dataset.com"):
        download_dataset("cityscapes", tmp_path)
    with pytest.raises(PixelsegError, match="did you mean 'voc_aug'"):
        download_dataset("voc_agu", tmp_path)


def test_every_official_source_is_https_or_http_with_a_well_formed_checksum():
    for name, entry in download.SOURCES.items():
        assert entry.files or entry.manual, name
        for source in entry.files:
            assert source.url.startswith(("http://", "https://")) and source.url.endswith(source.filename)
            if source.md5 is not None:
                assert len(source.md5) == 32 and int(source.md5, 16) >= 0
    # torchvision's published VOC 2012 and SBD md5 sums
    assert download.SOURCES["voc"].files[0].md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert download.SOURCES["voc_aug"].files[1].md5 == "82b4d87ceb2ed10f6038a1cba92111cb"


def test_the_download_command_fetches_and_reports(server, tmp_path, monkeypatch):
    import typer

    from pixelseg.cli import data as data_cli

    monkeypatch.setitem(download.SOURCES, "tiny", DatasetSource((Source(f"{server}/data.tar", "data.tar"),)))
    app = typer.Typer()
    app.command()(lambda: None)
    data_cli.register(app)
    result = CliRunner().invoke(app, ["data", "download", "tiny", "--root", str(tmp_path), "--timeout", "10"])
    assert result.exit_code == 0, result.output
    assert "data.tar: ok" in result.stdout
    result = CliRunner().invoke(app, ["data", "download", "drive", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "grand-challenge" in result.output
