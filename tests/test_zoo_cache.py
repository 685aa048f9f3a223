"""The model zoo's cache: downloads through a loopback HTTP server are verified, resumed,
rejected and cached; names or paths resolve to files; the zoo CLI."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import threading
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from tsmcli import zoo, zoo_cache
from tsmcli.cli import cli
from tsmcli.errors import CheckpointError, UsageError

# ---------------------------------------------------------------------------------------------
# downloads through a loopback server


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes); honours Range unless ``ignore_range``; the next
    ``cuts`` responses stop half way and close the connection. Every request's path and
    Range header are logged."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.cuts = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        server: _Server = self.server  # type: ignore[assignment]
        wanted = self.headers.get("Range")
        server.log.append((self.path, wanted))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and not server.ignore_range:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cuts:
            server.cuts -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def payload() -> bytes:
    """A real checkpoint file: torch.save of a small state dict (about 20 KB)."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(5000, dtype=torch.float32)}}, buffer)
    return buffer.getvalue()


def _entry(url: str, sha256: str | None, file: str = "tiny_checkpoint.pth") -> zoo.ZooEntry:
    return replace(
        zoo.get_entry("tsm-k400-r50-8f"), name="test-tiny", file=file, urls=(url,), sha256=sha256
    )


def _closed_port_url(path: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_full_download_is_verified_and_renamed_into_place(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), hashlib.sha256(payload).hexdigest())
    path = zoo_cache.download(entry, tmp_path)
    assert path == tmp_path / "checkpoints" / "tiny_checkpoint.pth"
    assert path.read_bytes() == payload
    assert not path.with_name(path.name + ".part").exists()
    assert server.log == [("/m/tiny_checkpoint.pth", None)]
    assert (
        zoo_cache.download(entry, tmp_path) == path and len(server.log) == 1
    )  # cached: no request


def test_a_cut_download_resumes_with_a_range_request(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.cuts = 1
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), hashlib.sha256(payload).hexdigest()[:8])
    path = zoo_cache.download(entry, tmp_path, retries=1)
    half = len(payload) // 2
    assert server.log == [
        ("/m/tiny_checkpoint.pth", None),
        ("/m/tiny_checkpoint.pth", f"bytes={half}-"),
    ]
    assert path.read_bytes() == payload


def test_an_interrupted_run_keeps_its_part_and_the_next_run_resumes(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.cuts = 1
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), hashlib.sha256(payload).hexdigest())
    with pytest.raises(CheckpointError) as info:
        zoo_cache.download(entry, tmp_path, retries=0)
    part = tmp_path / "checkpoints" / "tiny_checkpoint.pth.part"
    half = len(payload) // 2
    assert part.read_bytes() == payload[:half]
    message = str(info.value)
    assert "\n" not in message and f"the {half} bytes received are kept in {part}" in message
    assert not zoo_cache.is_cached(entry, tmp_path)
    path = zoo_cache.download(entry, tmp_path, retries=0)
    assert server.log[-1] == ("/m/tiny_checkpoint.pth", f"bytes={half}-")
    assert path.read_bytes() == payload and not part.exists()


def test_a_server_that_ignores_range_restarts_from_zero(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.cuts = 1
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), hashlib.sha256(payload).hexdigest())
    with pytest.raises(CheckpointError):
        zoo_cache.download(entry, tmp_path, retries=0)
    server.ignore_range = True
    path = zoo_cache.download(entry, tmp_path, retries=0)
    assert server.log[-1] == ("/m/tiny_checkpoint.pth", f"bytes={len(payload) // 2}-")
    assert path.read_bytes() == payload  # not the first half twice


def test_a_corrupted_download_is_deleted_and_names_both_hashes(server, payload, tmp_path):
    corrupted = payload[:100] + bytes([payload[100] ^ 0xFF]) + payload[101:]
    server.files["/m/tiny_checkpoint.pth"] = corrupted
    published = hashlib.sha256(payload).hexdigest()
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), published)
    with pytest.raises(CheckpointError) as info:
        zoo_cache.download(entry, tmp_path)
    got = hashlib.sha256(corrupted).hexdigest()
    assert str(info.value) == (
        f"test-tiny: the download of tiny_checkpoint.pth has SHA-256 {got}, not the published "
        f"{published}; it was deleted: run again, and if it repeats the file on the server is "
        "not the published one"
    )
    dest = tmp_path / "checkpoints" / "tiny_checkpoint.pth"
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_a_missing_url_is_one_line_with_the_cache_path(server, tmp_path):
    entry = _entry(server.url("/gone/tiny_checkpoint.pth"), None)
    with pytest.raises(CheckpointError) as info:
        zoo_cache.download(entry, tmp_path)
    dest = tmp_path / "checkpoints" / "tiny_checkpoint.pth"
    assert str(info.value) == (
        f"test-tiny: cannot download tiny_checkpoint.pth ({entry.urls[0]}: HTTP 404 Not Found); "
        f"without network, put the file at {dest} (from {entry.urls[0]}) and run again"
    )


def test_without_network_the_error_says_where_to_put_the_file(tmp_path):
    url = _closed_port_url("/m/tiny_checkpoint.pth")
    entry = _entry(url, None)
    with pytest.raises(CheckpointError) as info:
        zoo_cache.download(entry, tmp_path, timeout=5)
    message = str(info.value)
    dest = tmp_path / "checkpoints" / "tiny_checkpoint.pth"
    assert "\n" not in message and message.startswith(
        f"test-tiny: cannot download tiny_checkpoint.pth ({url}: "
    )
    assert message.endswith(f"without network, put the file at {dest} (from {url}) and run again")


def test_no_published_hash_records_the_first_download_and_checks_it_later(
    server, payload, tmp_path, caplog
):
    server.files["/m/tiny_checkpoint.pth"] = payload
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    with caplog.at_level("WARNING", logger="tsmcli.zoo_cache"):
        path = zoo_cache.download(entry, tmp_path)
    digest = hashlib.sha256(payload).hexdigest()
    assert "the publisher gives no hash for tiny_checkpoint.pth" in caplog.text
    recorded = json.loads((tmp_path / "checkpoints" / "sha256.json").read_text())
    assert recorded == {"tiny_checkpoint.pth": digest}
    assert zoo_cache.download(entry, tmp_path) == path  # the recorded hash matches
    path.write_bytes(payload + b"tampered")
    with pytest.raises(CheckpointError) as info:
        zoo_cache.download(entry, tmp_path)
    tampered = hashlib.sha256(payload + b"tampered").hexdigest()
    assert str(info.value).startswith(
        f"{path}: SHA-256 {tampered} does not match the recorded on first use {digest}; "
    )
    assert path.exists()  # the user's file is left for inspection


def test_a_cached_file_works_offline(payload, tmp_path):
    url = _closed_port_url("/m/tiny_checkpoint.pth")
    entry = _entry(url, hashlib.sha256(payload).hexdigest())
    dest = zoo_cache.cache_path(entry, tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(payload)  # put there by hand, as the offline message says
    assert zoo_cache.download(entry, tmp_path) == dest
    dest.write_bytes(payload[:-1])
    with pytest.raises(CheckpointError, match="does not match the published"):
        zoo_cache.download(entry, tmp_path)


# ---------------------------------------------------------------------------------------------
# names or paths, the CLI


def test_resolve_checkpoint_takes_a_path_or_a_cached_name(payload, tmp_path, monkeypatch):
    monkeypatch.setenv("TSM_HOME", str(tmp_path / "home"))
    mine = tmp_path / "best.pt"
    mine.write_bytes(payload)
    assert zoo_cache.resolve_checkpoint(mine) == (mine, None)
    assert zoo_cache.resolve_checkpoint(str(mine)) == (mine, None)
    entry = zoo.get_entry("tsm-k400-r50-8f")
    cached = tmp_path / "home" / "checkpoints" / entry.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload)
    assert zoo_cache.resolve_checkpoint("tsm-k400-r50-8f") == (cached, entry)
    with pytest.raises(
        UsageError,
        match=r"^'tsm-k400-r50' is neither a checkpoint file nor a "
        r"model zoo name; did you mean 'tsn-k400-r50' or 'tsm-k400-r50-8f'",
    ):
        zoo_cache.resolve_checkpoint("tsm-k400-r50")
    with pytest.raises(CheckpointError, match=r"runs/x/best.pt: no such checkpoint file"):
        zoo_cache.resolve_checkpoint("runs/x/best.pt")


def test_cli_zoo_list_and_download(payload, tmp_path, monkeypatch):
    monkeypatch.setenv("TSM_HOME", str(tmp_path))
    entry = zoo.get_entry("tsm-sthv2-r50-8f")
    cached = tmp_path / "checkpoints" / entry.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload)
    result = CliRunner().invoke(cli, ["zoo", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "dataset", "frames", "protocol", "top-1", "downloaded"]
    assert len(lines) == 1 + len(zoo.list_entries())
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["tsm-sthv2-r50-8f"] == ["tsm-sthv2-r50-8f", "sthv2", "8", "sthv2", "61.2", "yes"]
    assert rows["tsm-k400-r50-8f-dense"] == [
        "tsm-k400-r50-8f-dense",
        "kinetics400",
        "8",
        "kinetics",
        "74.1",
        "no",
    ]
    assert rows["tsm-jester-mbv2-online"] == [
        "tsm-jester-mbv2-online",
        "jester",
        "-",
        "-",
        "-",
        "no",
    ]
    assert rows["imagenet-resnet50"] == [
        "imagenet-resnet50",
        "imagenet",
        "-",
        "backbone",
        "-",
        "no",
    ]
    result = CliRunner().invoke(cli, ["zoo", "download", "tsm-sthv2-r50-8f"])
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1] == str(cached)
    result = CliRunner().invoke(cli, ["zoo", "download", "tsm-sthv2-r50"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown model zoo name 'tsm-sthv2-r50'; did you mean 'tsm-sthv2-r50-8f' or "
        "'tsm-sthv2-r50-16f' or 'tsm-sthv1-r50-8f'?"
    ]
