"""Live sources: a file over HTTP gives the file's frames, a stream cut mid-body ends cleanly,
a live source drops (and counts) what a slow consumer cannot take, cameras through a fake
device at PyAV's container interface, one-line errors naming the device or URL, and closing
joins the reader and closes the container. Loopback servers only; no timing is asserted
except that a paced source never hands a frame on before its time."""

from __future__ import annotations

import errno
import itertools
import os
import signal
import socket
import sys
import threading
import time
from fractions import Fraction

import av
import pytest
import torch
from live_fakes import FakeDevice, Opener, fake_pixels

from tsmcli.data.cameras import CAMERA_INPUTS, camera_device
from tsmcli.data.live import DEFAULT_TIMEOUT, FILE_BOUND, LIVE_BOUND, LiveFrame, open_source
from tsmcli.errors import DataError


def decode_file(path) -> list[tuple[float, torch.Tensor]]:
    """The reference: every frame of ``path`` decoded with PyAV, (time, uint8 (3, H, W))."""
    with av.open(str(path)) as container:
        return [
            (frame.time, torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
            for frame in container.decode(video=0)
        ]


def same_images(frames, expected) -> bool:
    """Whether every delivered frame equals the reference frame at its index."""
    return all(torch.equal(frame.image, expected[frame.index][1]) for frame in frames)


def take_slowly(source, ahead: int, end: int | None = None, count: int | None = None):
    """Consume like a model slower than the source, without timing anything: after each frame,
    wait until the reader has handed on ``ahead`` more (or all ``end`` frames there are);
    stop after ``count`` frames."""
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == count:
            break
        target = frame.index + 1 + ahead if end is None else min(frame.index + 1 + ahead, end)
        while source.summary.decoded < target:
            time.sleep(0.001)
    return frames


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tsm-live")]


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv"])
def test_a_file_served_over_http_gives_the_files_frames_none_dropped(
    tmp_path, make_video, serve, deadline, name
):
    path = make_video(tmp_path / name, num_frames=24, size=32, fps=25)
    expected = decode_file(path)
    url = f"{serve(tmp_path)}/{name}"
    with deadline(60):
        for spec in (url, path):
            with open_source(spec) as source:
                frames = list(source)
            assert [f.index for f in frames] == list(range(24))
            assert same_images(frames, expected)
            assert [f.time for f in frames] == [t for t, _ in expected]
            assert frames[0].image.shape == (3, 32, 32) and frames[0].image.dtype == torch.uint8
            summary = source.summary
            assert not summary.live and summary.fps == 25.0
            assert (summary.decoded, summary.delivered, summary.dropped) == (24, 24, 0)
            assert summary.ending == "finished" and not summary.stopped_early


def test_a_server_closing_mid_body_ends_the_loop_with_the_frames_so_far(
    tmp_path, make_video, serve, deadline
):
    path = make_video(tmp_path / "clip.mkv", num_frames=30, size=32, fps=25)
    data = path.read_bytes()
    (tmp_path / "half.mkv").write_bytes(data[: len(data) // 2])  # what the server sends
    expected = decode_file(tmp_path / "half.mkv")  # every frame decodable from those bytes
    assert 0 < len(expected) < 30
    assert same_images(
        [LiveFrame(i, t, image) for i, (t, image) in enumerate(expected)], decode_file(path)
    )  # the start of the whole video
    with deadline(60), open_source(f"{serve(tmp_path, half=True)}/clip.mkv") as source:
        frames = list(source)  # no exception out of the loop
    summary = source.summary
    assert [f.index for f in frames] == list(range(len(expected)))  # the decoder drained too
    assert same_images(frames, expected)
    assert [f.time for f in frames] == [t for t, _ in expected]  # drained frames too, not NaN
    assert summary.ending == "failed" and summary.stopped_early
    # the frames counted are the summary's, those drained from the decoder after the cut too
    assert summary.reason.startswith(f"stopped mid-stream after {summary.decoded} frames (")
    assert summary.decoded == summary.delivered == len(frames) and summary.dropped == 0


def test_an_mp4_cut_before_its_index_is_an_error_at_open_naming_the_url(
    tmp_path, make_video, serve
):
    make_video(tmp_path / "clip.mp4", num_frames=30)  # PyAV writes the mp4 index at the end
    url = f"{serve(tmp_path, half=True)}/clip.mp4"
    with pytest.raises(DataError) as info:
        open_source(url)
    message = str(info.value)
    assert message.startswith(f"{url}: cannot open the stream (") and "\n" not in message
    assert message.endswith("check the URL and that the server is up and reachable from here")


def test_a_paced_source_drops_what_a_slow_consumer_cannot_take(tmp_path, make_video, deadline):
    path = make_video(tmp_path / "clip.mp4", num_frames=30, size=32, fps=50)
    expected = decode_file(path)
    ahead = 3  # the consumer takes a frame while the source gives 3
    with deadline(60), open_source(path, realtime=True) as source:
        frames = take_slowly(source, ahead, end=30)
    summary = source.summary
    indices = [f.index for f in frames]
    assert summary.live and summary.ending == "finished"
    assert summary.decoded == 30 and summary.delivered == len(frames)
    assert summary.delivered + summary.dropped == summary.decoded and summary.dropped > 0
    assert summary.max_pending <= summary.bound == LIVE_BOUND  # never a queue
    # Only the newest frame waits: after frame i the next one given is i + ahead or later,
    # and the last frame of the stream is always given.
    assert all(b - a >= min(ahead, 29 - a) for a, b in itertools.pairwise(indices))
    assert indices[-1] == 29 and indices[0] == 0
    assert same_images(frames, expected)


def test_a_paced_source_with_a_fast_consumer_drops_none_and_is_never_early(
    tmp_path, make_video, deadline
):
    path = make_video(tmp_path / "clip.mp4", num_frames=8, size=32, fps=10)
    expected = decode_file(path)
    received = []
    opened = time.monotonic()  # the source's clock starts after this, whatever the load
    with deadline(60), open_source(path, realtime=True) as source:
        for frame in source:
            received.append((time.monotonic(), frame))
    summary = source.summary
    assert (summary.decoded, summary.delivered, summary.dropped) == (8, 8, 0)
    assert [f.index for _, f in received] == list(range(8))
    assert same_images([f for _, f in received], expected)
    first = received[0][1]
    assert all(wall - opened >= f.time - first.time - 0.005 for wall, f in received)


def test_a_file_is_read_with_backpressure_every_frame_and_a_bounded_queue(
    tmp_path, make_video, deadline
):
    path = make_video(tmp_path / "clip.mp4", num_frames=20, size=32)
    expected = decode_file(path)
    with deadline(60), open_source(path) as source:
        frames = take_slowly(source, FILE_BOUND, end=20)  # waits until the reader is full
    summary = source.summary
    assert [f.index for f in frames] == list(range(20))
    assert same_images(frames, expected)
    assert (summary.decoded, summary.delivered, summary.dropped) == (20, 20, 0)
    assert summary.max_pending == summary.bound == FILE_BOUND


def test_a_camera_is_live_its_frames_come_through_and_a_slow_consumer_drops(deadline):
    device = FakeDevice(rate=200)
    opener = Opener(device)
    with deadline(60), open_source(camera=0, opener=opener) as source:
        frames = take_slowly(source, ahead=3, count=6)  # a camera never ends: stop after 6
    summary = source.summary
    expected = camera_device(0)
    assert opener.calls == [
        (expected.device, dict(format=expected.format, options=expected.options, timeout=10.0))
    ]
    assert source.name == summary.source == expected.label and summary.live
    indices = [f.index for f in frames]
    assert len(frames) == 6 and indices[0] == 0
    assert all(b - a >= 3 for a, b in itertools.pairwise(indices))
    assert all(
        torch.equal(f.image, torch.from_numpy(fake_pixels(f.index)).permute(2, 0, 1))
        for f in frames
    )
    assert [f.time for f in frames] == pytest.approx([f.index / 200 for f in frames])
    assert summary.dropped >= 2 * 5 and summary.max_pending == 1
    assert summary.decoded == summary.delivered + summary.dropped + summary.unread
    assert summary.ending == "closed" and summary.stopped_early
    assert device.closed and reader_threads() == []


def test_a_camera_unplugged_mid_stream_ends_the_loop_cleanly(deadline):
    opener = Opener(FakeDevice(rate=200, fail_after=5))
    with deadline(60), open_source(camera=0, opener=opener) as source:
        frames = list(source)
    summary = source.summary
    assert summary.ending == "failed" and summary.decoded == 5
    assert summary.reason == "stopped mid-stream after 5 frames (Input/output error)"
    assert len(frames) == summary.delivered == 5 - summary.dropped
    assert frames[-1].index == 4 and opener.device.closed


def test_a_camera_that_cannot_be_opened_is_one_line_naming_the_device():
    device = camera_device(0)
    error = av.error.FileNotFoundError(errno.ENOENT, "No such file or directory", device.device)
    with pytest.raises(DataError) as info:
        open_source(camera=0, opener=Opener(error=error))
    assert str(info.value) == (
        f"{device.label}: cannot be opened (No such file or directory); check that the "
        "camera is connected, not used by another program, and readable by you"
    )
    missing_input = ValueError(f"no container format '{device.format}'")
    with pytest.raises(DataError, match=f"this PyAV build has no {device.format} input"):
        open_source(camera=0, opener=Opener(error=missing_input))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="v4l2 is Linux's")
def test_a_missing_v4l2_camera_is_one_line_naming_the_device():
    with pytest.raises(DataError) as info:
        open_source(camera=99)
    message = str(info.value)
    assert message.startswith("camera 99 (/dev/video99, v4l2): cannot be opened (")
    assert "\n" not in message


def test_the_camera_table_gives_each_platforms_input():
    assert set(CAMERA_INPUTS) == {"linux", "darwin", "win32"}
    linux, mac = camera_device(2, "linux"), camera_device(0, "darwin")
    assert (linux.format, linux.device, linux.options) == ("v4l2", "/dev/video2", {})
    assert linux.label == "camera 2 (/dev/video2, v4l2)"
    assert (mac.format, mac.device, mac.options) == ("avfoundation", "0:none", {"framerate": "30"})
    windows = camera_device("Integrated Camera", "win32")
    assert (windows.format, windows.device) == ("dshow", "video=Integrated Camera")
    with pytest.raises(DataError, match=r"^camera 0: dshow opens cameras by name, not number"):
        camera_device(0, "win32")
    with pytest.raises(DataError, match=r"^camera 0: no camera input known on sunos5"):
        camera_device(0, "sunos5")


@pytest.mark.parametrize(
    ("spec", "realtime", "live", "timeout", "name"),
    [
        (
            "rtsp://user:secret@127.0.0.1/cam",
            None,
            True,
            DEFAULT_TIMEOUT,
            "rtsp://user:***@127.0.0.1/cam",
        ),
        ("udp://127.0.0.1:5000", None, True, DEFAULT_TIMEOUT, "udp://127.0.0.1:5000"),
        ("https://127.0.0.1/clip.mp4", None, False, DEFAULT_TIMEOUT, "https://127.0.0.1/clip.mp4"),
        ("https://127.0.0.1/clip.mp4", True, True, DEFAULT_TIMEOUT, "https://127.0.0.1/clip.mp4"),
        ("rtsp://127.0.0.1/cam", False, False, DEFAULT_TIMEOUT, "rtsp://127.0.0.1/cam"),
        ("clip.mp4", None, False, None, "clip.mp4"),
    ],
)
def test_which_sources_are_live_by_default(spec, realtime, live, timeout, name):
    opener = Opener(FakeDevice())
    source = open_source(spec, realtime=realtime, opener=opener)
    source.close()
    assert source.live is live and source.summary.live is live and source.name == name
    assert opener.calls == [(spec, dict(format=None, options={}, timeout=timeout))]
    assert opener.device.closed and source.summary.ending == "closed"


def test_a_url_that_cannot_be_opened_is_one_line_naming_it():
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:secret@127.0.0.1:{port}/clip.mp4"
    with pytest.raises(DataError) as info:
        open_source(url, timeout=5)
    message = str(info.value)
    assert message.startswith(f"http://user:***@127.0.0.1:{port}/clip.mp4: cannot open the ")
    assert "secret" not in message and "\n" not in message


def test_breaking_out_joins_the_reader_and_closes_the_container(tmp_path, make_video, deadline):
    path = make_video(tmp_path / "clip.mp4", num_frames=30)
    opened = []

    def spy_open(file, **kwargs):
        container = av.open(file, **kwargs)
        opened.append(container)
        return container

    source = open_source(path, opener=spy_open)
    with deadline(30):
        for frame in source:  # the reader is soon blocked on the full queue
            if frame.index == 1:
                break
    assert reader_threads() == []
    with pytest.raises(AssertionError, match="Container is not open"):  # PyAV's word for it
        next(opened[0].demux())
    summary = source.summary
    assert summary.ending == "closed" and summary.delivered == 2 and summary.dropped == 0
    assert summary.decoded == summary.delivered + summary.unread
    with pytest.raises(RuntimeError, match="read once"):
        next(iter(source))


def test_closing_inside_the_loop_ends_it(tmp_path, make_video, deadline):
    path = make_video(tmp_path / "clip.mp4", num_frames=30)
    with deadline(30), open_source(path) as source:
        indices = []
        for frame in source:
            indices.append(frame.index)
            source.close()  # frames are waiting, yet none comes after this
    assert indices == [0] and reader_threads() == []
    assert source.summary.ending == "closed" and source.summary.delivered == 1


def test_ctrl_c_in_the_loop_joins_the_reader_and_closes_the_device(deadline):
    opener = Opener(FakeDevice(rate=100))
    source = open_source(camera=0, opener=opener)
    with deadline(30), pytest.raises(KeyboardInterrupt), source:
        for frame in source:
            if frame.index >= 1:
                raise KeyboardInterrupt
    assert reader_threads() == [] and opener.device.closed
    assert source.summary.ending == "closed"
    assert source.summary.reason.startswith("stopped by KeyboardInterrupt after ")


def test_closing_wakes_a_reader_waiting_for_a_frames_time(deadline):
    """A paced source waits for each frame's time; closing must not sit out that wait."""
    device = FakeDevice(rate=1000, tick=Fraction(19, 10))  # frames 1.9 s apart on its clock
    source = open_source("fake.mkv", realtime=True, opener=Opener(device))
    with deadline(1.5):  # a watchdog: closing takes milliseconds, sitting out the wait 1.9 s
        for _ in source:
            break  # the reader is now waiting for frame 1, due 1.9 s after frame 0
    assert reader_threads() == [] and device.closed
    assert source.summary.decoded == 1 and source.summary.ending == "closed"


def test_an_error_in_the_reader_that_is_not_the_sources_is_raised(deadline):
    device = FakeDevice()

    def not_frames(stream):  # a bug, not a failing source: the reader gets no frame object
        device.reading = True
        try:
            yield object()
        finally:
            device.reading = False

    device.decode = not_frames
    source = open_source(camera=0, opener=Opener(device))
    with deadline(30), pytest.raises(AttributeError), source:
        list(source)
    assert reader_threads() == [] and source.summary.ending == "failed"


@pytest.fixture
def stalling_server():
    """``stalling_server(data=None)`` -> base URL of a 127.0.0.1 server that accepts and then
    stalls: it sends nothing at all (``data=None``), or an HTTP answer announcing ``data`` with
    only its first half sent. Either way the connection stays open until the test ends."""
    listeners, connections = [], []

    def start(data: bytes | None = None) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve():
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:  # closed at the end of the test
                    return
                connections.append(connection)
                if data is not None:
                    connection.recv(65536)  # the request
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    connection.sendall(head + data[: len(data) // 2])

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for sock in connections + listeners:
        sock.close()


def interrupt_after(seconds: float) -> threading.Timer:
    """Ctrl-C to this process after ``seconds``, as a user would press it."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_while_a_silent_server_is_opened_stops_at_once(stalling_server, deadline):
    url = f"{stalling_server()}/clip.mkv"  # accepts, never answers
    timer = interrupt_after(0.5)
    started = time.monotonic()
    with deadline(30), pytest.raises(KeyboardInterrupt):
        open_source(url, timeout=8)  # not a DataError blaming the server 8 s later
    timer.join()
    assert time.monotonic() - started < 8  # the open's timeout did not end it


def test_ctrl_c_while_a_stream_is_stalled_stops_at_once_and_is_no_failure(
    tmp_path, make_video, stalling_server, deadline
):
    data = make_video(tmp_path / "clip.mkv", num_frames=30, size=32).read_bytes()
    url = f"{stalling_server(data)}/clip.mkv"  # half the file, then nothing
    frames = []
    with deadline(30), pytest.raises(KeyboardInterrupt), open_source(url, timeout=10) as source:
        # the frames sent come in milliseconds; then the loop waits on a reader waiting on
        # the server, which FFmpeg would give up on only 10 s after the last data
        timer = interrupt_after(1.5)
        pressed = time.monotonic() + 1.5
        for frame in source:
            frames.append(frame)
    stopped = time.monotonic()
    timer.join()
    assert 0 < len(frames) < 30
    assert stopped - pressed < 4  # closing did not sit out the read's timeout
    summary = source.summary
    assert summary.ending == "closed"  # not "failed": the server is not to blame
    assert summary.reason == f"stopped by KeyboardInterrupt after {len(frames)} frames"


def test_a_stalled_stream_says_it_stalled_and_counts_as_the_summary(
    tmp_path, make_video, stalling_server, deadline
):
    data = make_video(tmp_path / "clip.mkv", num_frames=30, size=32).read_bytes()
    url = f"{stalling_server(data)}/clip.mkv"
    with deadline(30), open_source(url, timeout=1) as source:
        frames = list(source)
    summary = source.summary
    assert summary.ending == "failed" and 0 < len(frames) == summary.decoded < 30
    assert summary.reason == (
        f"no data for 1 s (stalled) after {summary.decoded} frames; check the source, or allow "
        "a longer wait with --timeout"
    )


def test_a_silent_server_is_one_line_naming_the_timeout(stalling_server, deadline):
    url = f"{stalling_server()}/clip.mkv"
    with deadline(30), pytest.raises(DataError) as info:
        open_source(url, timeout=1)
    assert str(info.value) == (
        f"{url}: cannot open the stream (no answer within the --timeout of 1 s); check the URL "
        "and that the server is up and reachable from here"
    )
