"""Frames from a live source for ``tsm stream``: a camera, a URL, or a file read as a stream.

``open_source`` opens the source at once, so a camera or URL that cannot be opened is a one-line
``DataError`` before any frame, and returns a ``LiveSource``. Iterating it yields ``LiveFrame``s
in order, decoded by a reader thread; ``summary`` says at the end what happened::

    with open_source(url) as source:
        for frame in source:  # frame.image: uint8 (3, H, W)
            ...
    source.summary  # decoded, delivered, dropped, and how the stream ended

Two policies, chosen by the kind of source (``realtime`` overrides the choice):

- live (cameras; rtsp, rtmp, udp, srt, ... URLs): at most one decoded frame waits for the
  consumer. When the consumer is slower than the source, the older waiting frame is dropped
  and counted, so latency and memory stay bounded whatever the consumer's speed.
- not live (files, http(s) URLs): every frame in order. The reader runs at most
  ``FILE_BOUND`` frames ahead, then waits for the consumer (backpressure). http(s) is read like
  a file because an http URL is most often a file on a server, and a file served over HTTP must
  give the same frames as the file; pass ``realtime=True`` for a live http stream (HLS live,
  an MJPEG camera).

``realtime=True`` on a file or http URL also paces the reader by the frames' presentation
times, so the file plays like a camera filming it; a camera or a live URL paces itself.

A source that fails mid-stream (a server that closes the connection, a camera unplugged)
ends the iteration without an exception. The frames the decoder still holds are delivered
first, and ``summary.ending == "failed"`` with the reason, so the caller can keep what it
scored. Closing (leaving the ``with`` block, breaking out of the loop, Ctrl-C) stops the reader
thread and joins it; the reader is the only thread that touches the container, and it closes
the container on its way out.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from tsmcli.data.decode import _first_line, _open_error
from tsmcli.errors import DataError, UsageError

logger = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "tcp", "srt")
DEFAULT_TIMEOUT = 10.0  # seconds a camera or URL may take to open, or go without sending data
LIVE_BOUND = 1  # decoded frames waiting for the consumer of a live source: the newest only
FILE_BOUND = 4  # decoded frames a file's reader runs ahead of its consumer
MAX_PACE_GAP = 2.0  # seconds: a larger jump of a paced stream's clock restarts the pacing
_POLL = 0.25  # seconds between checks while waiting, so Ctrl-C is seen on every platform
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # a source so named is a URL, not a path


@dataclass(frozen=True)
class CameraInput:
    """How PyAV opens camera N (or a camera by name) on one platform."""

    format: str  # FFmpeg input device
    by_index: str | None  # device name for an index ("{}" = the index); None: a name is needed
    by_name: str  # device name for a camera given by name ("{}" = the name)
    options: tuple[tuple[str, str], ...] = ()  # default input options


# sys.platform -> camera input. avfoundation's default 29.97 fps is refused by most Mac cameras
# ("Selected framerate is not supported"), so ask for 30; dshow only knows cameras by name.
CAMERA_INPUTS = {
    "linux": CameraInput("v4l2", "/dev/video{}", "{}"),
    "darwin": CameraInput("avfoundation", "{}:none", "{}:none", (("framerate", "30"),)),
    "win32": CameraInput("dshow", None, "video={}"),
}


@dataclass(frozen=True)
class CameraDevice:
    """A camera resolved for PyAV: ``av.open(device, format=format, options=options)``."""

    label: str  # how messages name it: "camera 0 (/dev/video0, v4l2)"
    format: str
    device: str
    options: dict[str, str]


def camera_device(camera: int | str, platform: str | None = None) -> CameraDevice:
    """The device of camera ``camera`` (an index, or a device name or path) on ``platform``
    (``sys.platform`` by default), read from ``CAMERA_INPUTS``."""
    platform = platform or sys.platform
    key = next((k for k in CAMERA_INPUTS if platform.startswith(k)), None)
    if key is None:
        raise DataError(
            f"camera {camera}: no camera input known on {platform} "
            f"(known: {', '.join(CAMERA_INPUTS)}); stream a URL or a file instead"
        )
    spec = CAMERA_INPUTS[key]
    if isinstance(camera, int) and spec.by_index is None:
        raise DataError(
            f"camera {camera}: {spec.format} opens cameras by name, not number; give the "
            f"camera's name (list them with: ffmpeg -list_devices true -f {spec.format} -i dummy)"
        )
    template = spec.by_index if isinstance(camera, int) else spec.by_name
    device = template.format(camera)
    label = f"camera {camera} ({device}, {spec.format})"
    return CameraDevice(label, spec.format, device, dict(spec.options))


@dataclass(frozen=True)
class LiveFrame:
    """One decoded frame, as the consumer receives it."""

    index: int  # 0-based position among the frames decoded; dropped frames leave gaps
    time: float  # presentation time in seconds, the stream's clock (no pts: index / fps)
    image: torch.Tensor  # uint8 (3, H, W): a channels-last view of the decoded (H, W, 3) pixels


@dataclass(frozen=True)
class LiveSummary:
    """What happened to a source's frames. ``decoded == delivered + dropped + unread``."""

    source: str  # the source as messages name it (a URL's password hidden)
    live: bool  # dropping policy: True keeps only the newest frame waiting
    fps: float | None  # the stream's average frame rate, when it says
    decoded: int  # frames the reader handed on
    delivered: int  # frames the consumer received
    dropped: int  # frames replaced by a newer one before the consumer took them
    unread: int  # frames still waiting when the consumer closed the source
    bound: int  # most frames allowed to wait
    max_pending: int  # most frames that did wait at once (never above bound)
    ending: str  # "running", "finished" (the stream's end), "failed" (mid-stream), "closed"
    reason: str  # one line saying why it ended

    @property
    def stopped_early(self) -> bool:
        """True unless the stream was read to its end."""
        return self.ending != "finished"


def open_source(
    spec: str | Path | None = None,
    *,
    camera: int | str | None = None,
    realtime: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    options: dict[str, str] | None = None,
    opener: Callable[..., Any] | None = None,
) -> LiveSource:
    """Open a file path, a URL PyAV can open, or (``camera=``) a camera; nothing is decoded yet.

    ``realtime``: None picks by kind (cameras and rtsp/rtmp/udp/... URLs live, files and http(s)
    not); True drops frames the consumer is too slow for (pacing files and http(s) by pts);
    False delivers every frame. ``timeout``: seconds a camera or URL may take to open or go
    without data. ``options``: FFmpeg input options (``{"rtsp_transport": "tcp"}``).
    ``opener``: called like ``av.open`` (default ``av.open``); tests pass a fake device.
    """
    import av

    if (spec is None) == (camera is None):
        raise UsageError("give either a source (a file or URL) or a camera, not both or neither")
    if camera is not None:
        device = camera_device(camera)
        name, file, fmt = device.label, device.device, device.format
        inherently_live, paceable, wait = True, False, timeout
        options = {**device.options, **(options or {})}
    elif URL.match(str(spec)):
        name, file, fmt = _hide_password(str(spec)), str(spec), None
        inherently_live = urlsplit(file).scheme.lower() in LIVE_SCHEMES
        paceable, wait = not inherently_live, timeout
    else:  # a local file: no timeout, and the message of a video file that cannot be opened
        name, file, fmt = str(spec), str(spec), None
        inherently_live, paceable, wait = False, True, None
    container = _open(opener or av.open, name, file, fmt, options or {}, wait, camera is not None)
    live = inherently_live if realtime is None else realtime
    join = (wait or 0.0) + 5.0  # the reader's longest blocking read, and a margin
    return LiveSource(container, name, live=live, pace=live and paceable, join_timeout=join)


def _open(opener, name, file, fmt, options, timeout, is_camera):
    """The opened container, or the one-line DataError naming the source and what to check."""
    import av

    try:
        container = opener(file, format=fmt, options=options, timeout=timeout)
    except (av.FFmpegError, OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and fmt and f"'{fmt}'" in str(exc):
            why = f"this PyAV build has no {fmt} input: use a PyAV built with its devices"
        elif isinstance(exc, av.ExitError) and timeout:
            why = f"no answer within {timeout:g} s"
        else:
            why = _why(exc)
        if is_camera:
            raise DataError(
                f"{name}: cannot be opened ({why}); check that the camera is connected, "
                "not used by another program, and readable by you"
            ) from exc
        if timeout is None:
            raise _open_error(Path(file), exc) from exc
        raise DataError(
            f"{name}: cannot open the stream ({why}); check the URL and that the server is "
            "up and reachable from here"
        ) from exc
    if not container.streams.video:
        container.close()
        raise DataError(f"{name}: has no video stream; give a source with video")
    return container


def _why(exc: BaseException) -> str:
    """What went wrong, without the file name PyAV appends: the message names the source
    already, and a URL's password must not be repeated."""
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else _first_line(exc)


def _hide_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


class _End:
    """The reader's last item: the stream ended, failed (``failure``) or the reader crashed."""

    def __init__(self, failure: str | None = None, error: BaseException | None = None):
        self.failure, self.error = failure, error


class _Slot:
    """The frames waiting between the reader and the consumer: at most ``bound``. A live put
    replaces the oldest waiting frame (a drop); otherwise a put waits for room."""

    def __init__(self, bound: int, drop: bool):
        self.bound, self.drop = bound, drop
        self.items: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.closed = False  # the consumer stopped: puts are refused
        self.end: _End | None = None
        self.decoded = self.dropped = self.delivered = self.max_pending = 0

    def put(self, item) -> bool:
        """Hand on ``item``; False once the consumer has closed (the reader then stops)."""
        with self.cond:
            while not self.drop and len(self.items) >= self.bound and not self.closed:
                self.cond.wait(_POLL)
            if self.closed:
                return False
            if len(self.items) >= self.bound:  # live: the consumer is behind
                self.items.popleft()
                self.dropped += 1
            self.items.append(item)
            self.decoded += 1
            self.max_pending = max(self.max_pending, len(self.items))
            self.cond.notify_all()
            return True

    def finish(self, end: _End) -> None:
        with self.cond:
            self.end = end
            self.cond.notify_all()

    def get(self):
        """The next waiting frame; the ``_End`` once the reader has finished and all its frames
        were taken; None once closed. Waits in short steps so Ctrl-C is never held up."""
        with self.cond:
            while not self.items and self.end is None and not self.closed:
                self.cond.wait(_POLL)
            if self.closed:
                return None
            if not self.items:
                return self.end
            self.delivered += 1
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _Pacer:
    """Holds each frame back until its presentation time comes on the wall clock (the first
    frame sets the origin): a file read as if a camera were filming it. A jump of the stream's
    clock (a discontinuity, a bad pts) restarts the origin instead of sleeping through it."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.origin: float | None = None  # wall-clock time of stream time 0
        self.last = 0.0

    def wait(self, stream_time: float) -> bool:
        """Sleep until ``stream_time`` is due; False if the source was closed meanwhile."""
        now = time.monotonic()
        if self.origin is None or not 0.0 <= stream_time - self.last <= MAX_PACE_GAP:
            self.origin = now - stream_time
        self.last = stream_time
        delay = self.origin + stream_time - now
        return not self.stop.wait(delay) if delay > 0 else not self.stop.is_set()


class LiveSource:
    """An opened source, read once by iterating it (see the module docstring). Use it as a
    context manager, or call ``close()``: either stops and joins the reader thread."""

    def __init__(self, container, name: str, *, live: bool, pace: bool, join_timeout: float):
        self.name, self.live = name, live
        self._container = container
        self._stream = container.streams.video[0]
        rate = self._stream.average_rate
        self.fps: float | None = float(rate) if rate else None
        self._slot = _Slot(LIVE_BOUND if live else FILE_BOUND, drop=live)
        self._stop = threading.Event()
        self._pacer = _Pacer(self._stop) if pace else None
        self._join_timeout = join_timeout
        self._thread: threading.Thread | None = None
        self._started = 0.0  # monotonic time the reader started: the clock of unstamped frames
        self._ending, self._reason = "running", "still reading"

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._ending in ("running", "closed"):
            self._ending = "closed"
            self._reason = f"stopped by {exc_type.__name__} after {self._slot.delivered} frames"
        self.close()

    def __iter__(self) -> Iterator[LiveFrame]:
        """The frames in order until the stream ends or fails; a failed stream ends the loop
        without an exception (see ``summary``). Breaking out of the loop closes the source."""
        if self._thread is not None or self._ending != "running":
            raise RuntimeError(f"{self.name}: a live source is read once; open it again")
        self._thread = threading.Thread(
            target=self._read, name=f"tsm-live {self.name}", daemon=True
        )  # daemon: a network read that hangs past every timeout cannot keep Python alive
        self._started = time.monotonic()
        self._thread.start()
        try:
            while isinstance(item := self._slot.get(), tuple):  # None: closed meanwhile
                index, stream_time, frame = item
                pixels = frame.to_ndarray(format="rgb24")  # (H, W, 3), converted only if taken
                yield LiveFrame(index, stream_time, torch.from_numpy(pixels).permute(2, 0, 1))
            if isinstance(item, _End) and item.error is not None:
                self._ending, self._reason = "failed", f"the reader failed ({item.error!r})"
            elif isinstance(item, _End):
                self._ending = "finished" if item.failure is None else "failed"
                self._reason = item.failure or "reached the end of the stream"
        finally:
            self.close()
        if isinstance(item, _End) and item.error is not None:  # a bug, not the source's fault
            raise item.error

    def close(self) -> LiveSummary:
        """Stop reading and join the reader, which closes the container; returns ``summary``.
        Safe to call more than once."""
        self._stop.set()
        self._slot.close()
        if self._thread is None:
            if self._ending == "running":  # never iterated: the container is still ours
                self._container.close()
        elif self._thread.is_alive():
            self._thread.join(self._join_timeout)
            if self._thread.is_alive():
                logger.warning("%s: the reader did not stop; left to end on its own", self.name)
        if self._ending == "running":
            self._ending = "closed"
            self._reason = f"closed by the caller after {self._slot.delivered} frames"
        return self.summary

    @property
    def summary(self) -> LiveSummary:
        """The counts so far; final once the iteration has ended or the source is closed."""
        slot = self._slot
        with slot.cond:
            return LiveSummary(
                source=self.name,
                live=self.live,
                fps=self.fps,
                decoded=slot.decoded,
                delivered=slot.delivered,
                dropped=slot.dropped,
                unread=len(slot.items),
                bound=slot.bound,
                max_pending=slot.max_pending,
                ending=self._ending,
                reason=self._reason,
            )

    def _read(self) -> None:
        """The reader thread: decode, pace, hand on; the only user of the container."""
        import av

        frames = self._container.decode(self._stream)
        end = _End()
        try:
            try:
                for frame in frames:
                    if not self._hand_on(frame):
                        return
            except (av.FFmpegError, OSError) as exc:  # the source stopped mid-stream
                count = self._slot.decoded
                end = _End(f"stopped mid-stream after {count} frames ({_why(exc)})")
                for frame in self._flush():  # the frames the decoder still holds
                    if not self._hand_on(frame):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            end = _End(error=exc)
        finally:
            try:
                frames.close()
                self._container.close()
            finally:
                self._slot.finish(end)  # whatever happens, the consumer is not left waiting

    def _hand_on(self, frame) -> bool:
        """Stamp, pace and put one decoded frame; False once the source is closed. A frame
        drained after a failure has no time base of its own (PyAV's time is NaN): the stream's
        is used; one without a pts is stamped by the frame rate, else by the wall clock."""
        index = self._slot.decoded
        stream_time = frame.time
        if stream_time is not None and math.isnan(stream_time):
            base = self._stream.time_base
            stream_time = float(frame.pts * base) if frame.pts is not None and base else None
        if stream_time is None:
            stream_time = index / self.fps if self.fps else time.monotonic() - self._started
        if self._pacer is not None and not self._pacer.wait(stream_time):
            return False
        return self._slot.put((index, float(stream_time), frame))

    def _flush(self) -> list:
        """Drain the decoder after a failure; nothing if it cannot be drained."""
        import av

        try:
            return list(self._stream.decode(None))
        except (av.FFmpegError, OSError, ValueError):
            return []
