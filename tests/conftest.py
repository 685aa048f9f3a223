"""Shared fixtures: tiny real videos written with PyAV, built in tmp_path; a loopback HTTP\nserver of a folder's files."""

from __future__ import annotations

import contextlib
import functools
import gc
import http.server
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def write_video(
    path: Path,
    num_frames: int = 16,
    size: int = 32,
    fps: int = 8,
    codec: str = "libx264",
    seed: int = 0,
) -> Path:
    """Write a small H.264 video whose frame k is a flat grey of level 8*k (easy to check)
    plus a little seeded noise; returns the path."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = size
        stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"} if codec == "libx264" else {}
        for k in range(num_frames):
            level = (8 * k) % 256
            image = np.full((size, size, 3), level, dtype=np.uint8)
            image = np.clip(image.astype(int) + rng.integers(0, 3, image.shape), 0, 255).astype(
                np.uint8
            )
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Batch-1 frames are tiny tensors: a second thread only adds synchronisation, and on a
    shared CPU an oversubscribed OpenMP pool makes each op many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_video():
    """``make_video(path, num_frames=16, size=32)`` writes a tiny H.264 video."""
    return write_video


@pytest.fixture(autouse=True, scope="session")
def sigint_raises_keyboard_interrupt():
    """The Ctrl-C tests send SIGINT to this process and expect KeyboardInterrupt. A shell that
    starts pytest in the background (``make test &``, nohup, some CI runners) hands it SIGINT
    ignored, and Python keeps that: give SIGINT Python's own handler for the session."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def decoder_garbage(tmp_path):
    """A decord reader in a reference cycle, left uncollected (the collector is off) for the
    test's forks to inherit. Its destructor joins the reader's decoding thread, which a forked
    process does not have: collected in one, it crashes it or waits for ever."""
    import decord

    write_video(tmp_path / "garbage.mp4")
    gc.disable()
    cycle: list = [decord.VideoReader(str(tmp_path / "garbage.mp4"))]
    cycle.append(cycle)
    del cycle
    yield
    gc.enable()
    gc.collect()  # here, where the reader's thread is, its destructor returns


@pytest.fixture
def deadline():
    """``with deadline(seconds):`` raises TimeoutError in the block if it is still running
    after ``seconds``, so a regression that hangs fails its test instead of the whole suite.
    A watchdog, not a timing check: give it many times what the block needs (main thread,
    POSIX)."""

    @contextlib.contextmanager
    def limit(seconds: float):
        def expire(signum, frame):
            raise TimeoutError(f"still running after {seconds} s: it hangs")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return limit


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _HalfBody(http.server.BaseHTTPRequestHandler):
    """Announces the whole file, sends half of it, then closes the connection."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = (self.server.root / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def serve():
    """``serve(root, half=False)`` -> base URL of a 127.0.0.1 server of ``root``'s files."""
    servers = []

    def start(root, half: bool = False) -> str:
        handler = _HalfBody if half else functools.partial(_QuietFiles, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.root = root
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
