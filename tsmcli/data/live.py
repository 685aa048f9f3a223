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
scored; a source that sends nothing for ``timeout`` seconds has stalled, and the reason says
so. The reason counts the frames as the summary does, once the reader has finished.

Opening waits for FFmpeg in a helper thread (``live_open``) and closing waits for the reader at
most ``CLOSE_WAIT``, so Ctrl-C while a URL opens or stalls stops at once, as
``KeyboardInterrupt``, not as the server's failure ``timeout`` seconds later. The reader is
the only thread that touches the container, and it closes the container on its way out, also
when it was left blocked in a read. Frames come upright (``video_meta.upright``), as from the
file decoders.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from tsmcli.data.cameras import camera_device
from tsmcli.data.live_open import POLL, hide_password, open_container, why
from tsmcli.data.video_meta import quarter_turns, upright
from tsmcli.errors import UsageError

logger = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "tcp", "srt")
DEFAULT_TIMEOUT = 10.0  # seconds a camera or URL may take to open, or go without sending data
LIVE_BOUND = 1  # decoded frames waiting for the consumer of a live source: the newest only
FILE_BOUND = 4  # decoded frames a file's reader runs ahead of its consumer
MAX_PACE_GAP = 2.0  # seconds: a larger jump of a paced stream's clock restarts the pacing
CLOSE_WAIT = 0.5  # seconds closing waits for the reader to stop before leaving it to end alone
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # a source so named is a URL, not a path


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
        name, file, fmt = hide_password(str(spec)), str(spec), None
        inherently_live = urlsplit(file).scheme.lower() in LIVE_SCHEMES
        paceable, wait = not inherently_live, timeout
    else:  # a local file: no timeout, and the message of a video file that cannot be opened
        name, file, fmt = str(spec), str(spec), None
        inherently_live, paceable, wait = False, True, None
    container = open_container(
        opener or av.open, name, file, fmt, options or {}, wait, camera is not None
    )
    live = inherently_live if realtime is None else realtime
    return LiveSource(container, name, live=live, pace=live and paceable, timeout=wait)


class _End:
    """The reader's last item: the stream ended, failed (``failure``: why, in a few words;
    ``stalled``: no data within the timeout) or the reader crashed (``error``)."""

    def __init__(
        self,
        failure: str | None = None,
        error: BaseException | None = None,
        stalled: bool = False,
    ):
        self.failure, self.error, self.stalled = failure, error, stalled


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
                self.cond.wait(POLL)
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
                self.cond.wait(POLL)
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
    context manager, or call ``close()``: either stops and joins the reader thread.
    ``timeout``: the seconds without data after which the stream counts as stalled (None for
    a local file)."""

    def __init__(self, container, name: str, *, live: bool, pace: bool, timeout: float | None):
        self.name, self.live = name, live
        self._container = container
        self._stream = container.streams.video[0]
        rate = self._stream.average_rate
        self.fps: float | None = float(rate) if rate else None
        self._slot = _Slot(LIVE_BOUND if live else FILE_BOUND, drop=live)
        self._stop = threading.Event()
        self._pacer = _Pacer(self._stop) if pace else None
        self._timeout = timeout
        self._leave_at: float | None = None  # when closing stops waiting for the reader
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
        turns = None  # quarter turns upright, read from the first frame
        try:
            while isinstance(item := self._slot.get(), tuple):  # None: closed meanwhile
                index, stream_time, frame = item
                turns = quarter_turns(self._stream, frame) if turns is None else turns
                pixels = upright(frame.to_ndarray(format="rgb24"), turns)  # (H, W, 3)
                image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
                yield LiveFrame(index, stream_time, image)
            if isinstance(item, _End):
                self._ending, self._reason = self._how_it_ended(item)
        finally:
            self.close()
        if isinstance(item, _End) and item.error is not None:  # a bug, not the source's fault
            raise item.error

    def _how_it_ended(self, end: _End) -> tuple[str, str]:
        """``(ending, reason)`` from the reader's last item. Read once the reader has finished,
        so the frame count in the reason is the summary's ``decoded``."""
        count = self._slot.decoded
        if end.error is not None:
            return "failed", f"the reader failed ({end.error!r})"
        if end.stalled:
            return "failed", (
                f"no data for {self._timeout:g} s (stalled) after {count} frames; check the "
                "source, or allow a longer wait with --timeout"
            )
        if end.failure is not None:
            return "failed", f"stopped mid-stream after {count} frames ({end.failure})"
        return "finished", "reached the end of the stream"

    def close(self) -> LiveSummary:
        """Stop reading and join the reader, which closes the container; returns ``summary``.
        Safe to call more than once. A reader still blocked in a read after ``CLOSE_WAIT``
        (a stalled source: FFmpeg gives up only at the timeout) is left to end on its own and
        close the container then, so closing (and Ctrl-C) never waits on the network."""
        self._stop.set()
        self._slot.close()
        if self._thread is None:
            if self._ending == "running":  # never iterated: the container is still ours
                self._container.close()
        elif self._thread.is_alive():
            if self._leave_at is None:  # closing again (the loop, then the with) waits no more
                self._leave_at = time.monotonic() + CLOSE_WAIT
            self._thread.join(max(0.0, self._leave_at - time.monotonic()))
            if self._thread.is_alive():
                logger.info(
                    "%s: the reader is waiting on the source; left to end on its own", self.name
                )
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
                # ExitError: FFmpeg's interrupt callback ended a read that waited past timeout
                stalled = isinstance(exc, av.ExitError) and self._timeout is not None
                end = _End(why(exc), stalled=stalled)
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
