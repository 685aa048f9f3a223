"""The model zoo's cache: downloads through a loopback HTTP server are verified, resumed,
rejected and cached; names or paths resolve to files; the zoo CLI."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import os
import re
import socket
import threading
import time
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from zoo_files import use_zoo

from tsmcli import zoo, zoo_cache
from tsmcli.cli import cli
from tsmcli.errors import CheckpointError, OutputError, UsageError

# ---------------------------------------------------------------------------------------------
# downloads through a loopback server


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) with a strong ETag naming their digest (``etag``: the
    ETag of every file instead, "" for none) and a Last-Modified date when ``last_modified``.
    Honours Range unless ``ignore_range``, and If-Range (the whole file when it names another
    version) unless ``ignore_if_range``. ``plan`` says how the next responses end: "cut" half
    way through the body, closing the connection, or "stall" after the headers until the test
    ends; then whole. Every request's path and Range are logged, and its If-Range."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None]] = []
        self.if_ranges: list[str | None] = []
        self.etag: str | None = None
        self.last_modified = False
        self.ignore_range = False
        self.ignore_if_range = False
        self.plan: list[str] = []
        self.released = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        server: _Server = self.server  # type: ignore[assignment]
        wanted, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        server.log.append((self.path, wanted))
        server.if_ranges.append(if_range)
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        etag = server.etag
        if etag is None:
            etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        same = if_range is None or if_range in (etag, _LAST_MODIFIED) or server.ignore_if_range
        if match and same and not server.ignore_range:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        if etag:
            self.send_header("ETag", etag)
        if server.last_modified:
            self.send_header("Last-Modified", _LAST_MODIFIED)
        self.end_headers()
        ending = server.plan.pop(0) if server.plan else "whole"
        if ending == "stall":
            self.wfile.flush()
            server.released.wait()
            self.close_connection = True
            return
        if ending == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


_LAST_MODIFIED = "Wed, 01 Jan 2020 00:00:00 GMT"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.released.set()
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
    server.plan = ["cut"]
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
    server.plan = ["cut"]
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
    server.plan = ["cut"]
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
# resuming only the same file


def _cache_files(home) -> list[str]:
    folder = home / "checkpoints"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_a_resume_asks_for_the_same_version_with_the_saved_etag(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.plan = ["cut"]
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    with pytest.raises(CheckpointError):
        zoo_cache.download(entry, tmp_path, retries=0)
    etag = f'"{hashlib.sha256(payload).hexdigest()[:16]}"'
    part = tmp_path / "checkpoints" / "tiny_checkpoint.pth.part"
    saved = json.loads(part.with_name(part.name + ".json").read_text())
    assert saved == {"url": entry.urls[0], "etag": etag, "last_modified": ""}
    path = zoo_cache.download(entry, tmp_path, retries=0)
    assert server.log[-1] == ("/m/tiny_checkpoint.pth", f"bytes={len(payload) // 2}-")
    assert server.if_ranges == [None, etag]
    assert path.read_bytes() == payload
    assert _cache_files(tmp_path) == ["sha256.json", "tiny_checkpoint.pth"]


def test_a_file_changed_on_the_server_is_downloaded_afresh_not_spliced(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.plan = ["cut"]
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    with pytest.raises(CheckpointError):
        zoo_cache.download(entry, tmp_path, retries=0)
    changed = bytes(255 - byte for byte in payload)  # a new version, with a new ETag
    server.files["/m/tiny_checkpoint.pth"] = changed
    path = zoo_cache.download(entry, tmp_path, retries=0)
    assert server.log[-1] == ("/m/tiny_checkpoint.pth", f"bytes={len(payload) // 2}-")
    assert path.read_bytes() == changed  # the server answered the If-Range with all of it
    recorded = json.loads((tmp_path / "checkpoints" / "sha256.json").read_text())
    assert recorded == {"tiny_checkpoint.pth": hashlib.sha256(changed).hexdigest()}


def test_a_last_modified_date_is_the_validator_without_an_etag(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.etag, server.last_modified = "", True
    server.plan = ["cut"]
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    path = zoo_cache.download(entry, tmp_path, retries=1)
    assert server.if_ranges == [None, "Wed, 01 Jan 2020 00:00:00 GMT"]
    assert server.log[-1][1] == f"bytes={len(payload) // 2}-"
    assert path.read_bytes() == payload


def test_a_part_nothing_vouches_for_is_never_resumed_nor_its_digest_recorded(
    server, payload, tmp_path
):
    server.files["/m/tiny_checkpoint.pth"] = payload
    part = tmp_path / "checkpoints" / "tiny_checkpoint.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"wrong bytes from somewhere else")  # no record of where they came from
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    path = zoo_cache.download(entry, tmp_path, retries=0)
    assert server.log == [("/m/tiny_checkpoint.pth", None)]
    assert path.read_bytes() == payload
    recorded = json.loads((tmp_path / "checkpoints" / "sha256.json").read_text())
    assert recorded == {"tiny_checkpoint.pth": hashlib.sha256(payload).hexdigest()}


def test_a_server_without_validators_restarts_and_keeps_no_useless_part(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.etag = ""
    server.plan = ["cut", "cut"]
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    with pytest.raises(CheckpointError) as info:
        zoo_cache.download(entry, tmp_path, retries=1)
    assert server.log == [("/m/tiny_checkpoint.pth", None)] * 2
    assert "kept" not in str(info.value) and _cache_files(tmp_path) == []


def test_a_server_that_ignores_if_range_cannot_splice_two_versions(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.plan = ["cut"]
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    with pytest.raises(CheckpointError):
        zoo_cache.download(entry, tmp_path, retries=0)
    changed = bytes(255 - byte for byte in payload)
    server.files["/m/tiny_checkpoint.pth"] = changed
    server.ignore_if_range = True  # answers the range of the new version, with its ETag
    path = zoo_cache.download(entry, tmp_path, retries=1)
    assert [wanted for _, wanted in server.log[1:]] == [f"bytes={len(payload) // 2}-", None]
    assert path.read_bytes() == changed


def test_the_fallback_host_does_not_resume_the_first_hosts_part(server, payload, tmp_path):
    server.files["/a/tiny_checkpoint.pth"] = payload
    server.files["/b/tiny_checkpoint.pth"] = payload
    server.plan = ["cut"]
    urls = (server.url("/a/tiny_checkpoint.pth"), server.url("/b/tiny_checkpoint.pth"))
    entry = replace(_entry(urls[0], None), urls=urls)
    path = zoo_cache.download(entry, tmp_path, retries=0)
    assert server.log == [("/a/tiny_checkpoint.pth", None), ("/b/tiny_checkpoint.pth", None)]
    assert path.read_bytes() == payload


# ---------------------------------------------------------------------------------------------
# a cache that cannot hold the file, a silent server, a full disk, the lock


def test_a_tsm_home_that_is_a_file_is_one_line_before_any_download(tmp_path, monkeypatch):
    use_zoo(monkeypatch, tmp_path, {"tsm-k400-r50-8f": ({}, None)})
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("TSM_HOME", str(home))
    result = CliRunner().invoke(cli, ["zoo", "download", "tsm-k400-r50-8f"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: the model zoo cache ($TSM_HOME) {home}/checkpoints: {home} is a file, not a "
        "folder; choose another path"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["home"]
    assert home.read_text() == "not a folder"


def test_a_folder_at_the_cache_path_is_one_line_before_any_download(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)
    dest = zoo_cache.cache_path(entry, tmp_path)
    dest.mkdir(parents=True)
    with pytest.raises(UsageError) as info:
        zoo_cache.download(entry, tmp_path)
    assert str(info.value) == (
        f"the model zoo cache {dest}: is a folder, not a file (the download of "
        "tiny_checkpoint.pth writes it); move it away and run again"
    )
    assert server.log == [] and _cache_files(tmp_path) == ["tiny_checkpoint.pth"]
    assert list(dest.iterdir()) == []


def test_a_server_that_sends_nothing_is_given_up_after_two_tries(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.plan = ["stall"] * 10
    url = server.url("/m/tiny_checkpoint.pth")
    with pytest.raises(CheckpointError) as info:
        zoo_cache.download(_entry(url, None), tmp_path, retries=5, timeout=0.2)
    dest = tmp_path / "checkpoints" / "tiny_checkpoint.pth"
    assert str(info.value) == (
        f"test-tiny: cannot download tiny_checkpoint.pth ({url}: the server sent nothing "
        "after its headers (no data for 0.2 s), 2 tries in a row); without network, put the "
        f"file at {dest} (from {url}) and run again"
    )
    assert len(server.log) == 2 and _cache_files(tmp_path) == []


def test_tries_that_receive_bytes_are_not_counted_as_silent(server, payload, tmp_path):
    server.files["/m/tiny_checkpoint.pth"] = payload
    server.plan = ["stall", "cut", "stall", "cut", "stall"]
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), hashlib.sha256(payload).hexdigest())
    path = zoo_cache.download(entry, tmp_path, retries=5, timeout=0.2)
    assert len(server.log) == 6 and path.read_bytes() == payload


class _FullDisk:
    """The ``.part`` being written, on a disk that fills up after ``room`` bytes."""

    def __init__(self, handle, room: int):
        self._handle, self._room = handle, room

    def write(self, data: bytes) -> int:
        written = self._handle.write(data[: self._room])
        self._room -= written
        if written < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return written

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def test_a_full_disk_stops_at_once_and_keeps_the_part(server, payload, tmp_path, monkeypatch):
    server.files["/m/tiny_checkpoint.pth"] = payload
    entry = _entry(server.url("/m/tiny_checkpoint.pth"), None)

    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
        return _FullDisk(handle, 8192) if str(path).endswith(".part") and "a" in mode else handle

    monkeypatch.setattr(zoo_cache, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(zoo_cache, "open", full_disk_open, raising=False)
    with pytest.raises(OutputError) as info:
        zoo_cache.download(entry, tmp_path, retries=5)
    part = tmp_path / "checkpoints" / "tiny_checkpoint.pth.part"
    assert str(info.value) == (
        f"no space left on {part.parent} while downloading tiny_checkpoint.pth; free some "
        f"space and run again (the 8192 bytes received are kept in {part} and the next try "
        "resumes)"
    )
    assert len(server.log) == 1 and part.read_bytes() == payload[:8192]
    monkeypatch.undo()
    path = zoo_cache.download(entry, tmp_path, retries=0)
    assert server.log[-1] == ("/m/tiny_checkpoint.pth", "bytes=8192-")
    assert path.read_bytes() == payload


def test_no_lock_file_stays_after_a_failed_or_a_finished_download(server, payload, tmp_path):
    with pytest.raises(CheckpointError):
        zoo_cache.download(_entry(_closed_port_url("/m/tiny_checkpoint.pth"), None), tmp_path)
    assert _cache_files(tmp_path) == []
    server.files["/m/tiny_checkpoint.pth"] = payload
    zoo_cache.download(_entry(server.url("/m/tiny_checkpoint.pth"), None), tmp_path)
    assert _cache_files(tmp_path) == ["sha256.json", "tiny_checkpoint.pth"]


def test_the_lock_still_excludes_when_its_file_is_removed_on_release(tmp_path):
    dest = tmp_path / "tiny_checkpoint.pth"
    inside, most, guard = [0], [0], threading.Lock()

    def hold_it_often() -> None:
        for _ in range(40):
            with zoo_cache._exclusive(dest):
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.0005)
                with guard:
                    inside[0] -= 1

    # flock locks open files, not processes: threads opening the lock file exclude each other
    threads = [threading.Thread(target=hold_it_often) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and list(tmp_path.iterdir()) == []


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
