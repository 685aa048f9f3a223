"""Test views of ``tsm predict``'s inputs: whole videos, or windows along a long video.

``InputClipDataset`` is ``VideoClipDataset`` in test mode over items that are not a list: each
item is an input found on disk (``data.inputs``), whole, or one window of it (``plan_windows``).
Sampling, decoding and the test views are the clip dataset's own code, so a whole video gets
exactly the views ``tsm eval`` gives it; a window is sampled the same way inside its frames,
as if it were a video of its own (``FrameRange``).

A worker keeps the last video it opened, so the windows of a video, which come in order, share
one opened decoder, and each window decodes only the frames its views sample: decord and frame
folders read exactly those; PyAV (``SeekingPyAV``) seeks to the key frame before the window's
first sampled frame and decodes forward to its last. A video is never decoded from its start
once per window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tsmcli.data.batch import ClipBatch, Sample, collate_clips
from tsmcli.data.dataset import VideoClipDataset
from tsmcli.data.decode import FrameFolder, FrameSource, _open_error, open_video
from tsmcli.data.inputs import FRAMES, VIDEOS, FoundInput
from tsmcli.data.lists import ListEntry, ListFile
from tsmcli.data.settings import ClipSize, Protocol, Reading
from tsmcli.data.video_meta import first_line, quarter_turns, steady, upright, video_stream
from tsmcli.errors import DataError, UsageError

WHOLE = 0  # InputClip.num_frames of a whole input: all its frames, counted when it is opened
_EPS = 1e-6  # seconds: far above a frame time's float noise, far below a frame's length


@dataclass(frozen=True)
class Window:
    """Frames ``[start, stop)`` of a video, shown from ``begin`` to ``end`` seconds after its
    first frame. Windows compare by their frames."""

    start: int
    stop: int
    begin: float = field(default=0.0, compare=False)
    end: float = field(default=0.0, compare=False)

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


def plan_windows(
    num_frames: int,
    fps: float,
    window: float,
    stride: float,
    timestamps: Sequence[float] | np.ndarray | None = None,
) -> list[Window]:
    """Windows of ``window`` seconds every ``stride`` seconds, from the first frame. Every frame
    is in a window: when the last window on the stride ends before the video does, one more
    ends with the video. A video shorter than a window is one window of all its frames.

    Without ``timestamps`` the frames come at ``fps``, and windows are whole frames: ``window``
    and ``stride`` rounded to frames (at least one). ``timestamps``: each frame's time in
    seconds from the first, for a video whose frames do not come at a constant rate
    (``InputTiming.times``): a window ``[s, s + window)`` then holds the frames shown in it.
    """
    if not (window > 0 and stride > 0 and fps > 0):
        raise UsageError(f"window, stride and fps must be positive, got {window}, {stride}, {fps}")
    if timestamps is not None:
        times = np.asarray(timestamps, dtype=np.float64)
        if len(times) != num_frames:
            raise ValueError(f"{len(times)} timestamps for {num_frames} frames")
        return _plan_by_time(times, fps, window, stride)
    length = max(1, round(window * fps))
    step = max(1, round(stride * fps))
    if num_frames <= length:
        return [Window(0, num_frames, 0.0, num_frames / fps)]
    starts = list(range(0, num_frames - length + 1, step))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)
    return [Window(s, s + length, s / fps, (s + length) / fps) for s in starts]


def _plan_by_time(times: np.ndarray, fps: float, window: float, stride: float) -> list[Window]:
    """``plan_windows`` by the frames' times: windows wholly inside the video on the stride,
    then, if a frame comes after the last of them, one more ending with the video. The video
    ends when its last frame has been shown as long as the one before it. A pause longer than
    a window leaves windows without a frame, and those are left out."""
    count = len(times)
    end = float(times[-1] + (times[-1] - times[-2] if count > 1 else 1.0 / fps))
    if times[-1] < window - _EPS:
        return [Window(0, count, 0.0, end)]
    windows = []
    for k in range(math.floor((end - window + _EPS) / stride) + 1):
        begin = stride * k
        first, stop = np.searchsorted(times, [begin - _EPS, begin + window - _EPS])
        if stop > first:
            windows.append(Window(int(first), int(stop), begin, begin + window))
    if windows[-1].stop < count:
        first = int(np.searchsorted(times, end - window - _EPS))
        windows.append(Window(first, count, end - window, end))
    return windows


@dataclass(frozen=True)
class InputTiming:
    """When an input's frames are shown: their count and nominal rate, and each frame's time in
    seconds from the first when the rate does not tell it (None: frame k at ``k / fps``)."""

    num_frames: int
    fps: float
    times: np.ndarray | None = None


def probe_timing(item: FoundInput, backend: str, template: str, fps: float) -> InputTiming:
    """An input's ``InputTiming``, to plan its windows: a video's from its decoder (decord reads
    the timestamps from its index; PyAV decodes the video once to count), a frame folder's
    count and the ``fps`` given. A video whose frames are the even ticks of its rate gets no
    ``times``, so it is planned (and read) by frame numbers, as before times were read."""
    if item.source == FRAMES:
        return InputTiming(FrameFolder(item.path, None, template).num_frames, fps)
    video = open_video(item.path, backend)
    rate = _frame_rate(item.path, video)
    times = video.timestamps()
    if times is not None and steady(times, rate):
        times = None
    return InputTiming(video.num_frames, rate, times)


def _frame_rate(path: str | Path, video) -> float:
    rate = float(video.fps)
    if not rate > 0:
        raise DataError(f"{path}: the video gives no frame rate; it cannot be windowed")
    return rate


@dataclass(frozen=True)
class InputClip(ListEntry):
    """An item: ``path``'s frames ``[start, start + num_frames)``, or all of them when
    ``num_frames`` is ``WHOLE``. A window also carries its video's frame count and rate
    (``total``, ``fps``), when it is shown (``begin``, ``end``: seconds from the video's
    first frame) and, for a video at a variable rate, every frame's time (``times``, one tuple
    shared by its windows): what PyAV needs to seek. ``label`` is unused (0)."""

    source: str = VIDEOS
    start: int = 0
    total: int = 0
    fps: float = 0.0
    begin: float = 0.0
    end: float = 0.0
    times: tuple[float, ...] | None = field(default=None, compare=False, repr=False)


def window_clips(
    item: FoundInput, timing: InputTiming, window: float, stride: float
) -> list[InputClip]:
    """The items of ``item``'s windows (``plan_windows`` of its ``timing``), in order."""
    times = None if timing.times is None else tuple(timing.times.tolist())
    plan = plan_windows(timing.num_frames, timing.fps, window, stride, timing.times)
    return [
        InputClip(
            str(item.path),
            w.num_frames,
            0,
            item.source,
            w.start,
            timing.num_frames,
            timing.fps,
            w.begin,
            w.end,
            times,
        )
        for w in plan
    ]


class FrameRange:
    """Frames ``[start, start + num_frames)`` of a source, as a source of their own."""

    def __init__(self, source: FrameSource, start: int, num_frames: int):
        self.source, self.start, self._num_frames = source, start, num_frames
        self.path = source.path

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        return self.source.get([self.start + int(i) for i in indices])  # (N, 3, H, W)


class SeekingPyAV:
    """A video read with PyAV one window at a time: the container stays open, and each ``get``
    seeks to the key frame before its first frame, then decodes forward to its last. A frame's
    index comes from its timestamp: frame k is shown at ``times[k]`` seconds after the first
    (``k / fps`` without ``times``). A video whose frames carry no timestamp, or where the
    seek lands past the frame wanted, is decoded from its start instead. Frames come upright."""

    def __init__(
        self,
        path: str | Path,
        num_frames: int,
        fps: float,
        times: Sequence[float] | np.ndarray | None = None,
    ):
        import av

        self.path, self._num_frames, self._fps, self._av = Path(path), num_frames, fps, av
        self._times = None if times is None else np.asarray(times, dtype=np.float64)
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise _open_error(self.path, exc) from exc
        try:
            self._stream = video_stream(self.path, self._container)
        except DataError:
            self._container.close()
            raise
        self._tick = float(self._stream.time_base)  # seconds
        self._origin, self._turns = self._first_frame()

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= self._num_frames:
            raise DataError(f"{self.path}: frame index outside 0..{self._num_frames - 1}")
        decoded = None
        if self._origin is not None and (self._fps > 0 or self._times is not None):
            decoded = self._decode(indices, seek=True)
        if decoded is None:
            decoded = self._decode(indices, seek=False)
        frames = np.stack([decoded[i] for i in indices])  # (N, H, W, 3), upright
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, H, W), channels-last view

    def _first_frame(self) -> tuple[int | None, int]:
        """The first frame's pts, and the quarter turns that bring the frames upright."""
        self._container.seek(0, stream=self._stream)
        for frame in self._container.decode(self._stream):
            return frame.pts, quarter_turns(self._stream, frame)
        raise DataError(f"{self.path}: video has no frames")

    def _seconds(self, index: int) -> float:
        return float(self._times[index]) if self._times is not None else index / self._fps

    def _index(self, pts: int) -> int:
        """The index of the frame shown at ``pts``: the nearest frame time."""
        seconds = (pts - self._origin) * self._tick
        if self._times is None:
            return round(seconds * self._fps)
        k = int(np.searchsorted(self._times, seconds))
        if k == len(self._times) or (
            k > 0 and seconds - self._times[k - 1] < self._times[k] - seconds
        ):
            k -= 1
        return k

    def _decode(self, indices: list[int], *, seek: bool) -> dict[int, np.ndarray] | None:
        """The frames at ``indices`` by their timestamps after a seek (None if the seek went
        past the first one), or by counting from the start."""
        wanted, first, last = set(indices), min(indices), max(indices)
        target = self._origin + math.floor(self._seconds(first) / self._tick) if seek else 0
        decoded: dict[int, np.ndarray] = {}
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            for count, frame in enumerate(self._container.decode(self._stream)):
                if seek and frame.pts is None:
                    return None
                index = self._index(frame.pts) if seek else count
                if seek and not decoded and index > first:
                    return None  # landed after the first frame wanted
                if index in wanted:
                    decoded[index] = upright(frame.to_ndarray(format="rgb24"), self._turns)
                if index >= last:
                    break
        except self._av.FFmpegError as exc:
            raise DataError(
                f"{self.path}: cannot decode ({first_line(exc)}); the video is truncated or corrupt"
            ) from exc
        if len(decoded) < len(wanted):
            raise DataError(
                f"{self.path}: frame {min(wanted - decoded.keys())} could not be decoded; "
                "the video is truncated"
            )
        return decoded


class InputClipDataset(VideoClipDataset):
    """Test views of ``items`` (``InputClip``); bad items come back with their error, so one
    unreadable input does not stop the others. Of ``reading`` the backend and the frame
    template apply: each item says whether it is a video or a frame folder."""

    def __init__(
        self,
        items: Sequence[InputClip],
        *,
        clip: ClipSize,
        views: Protocol,
        reading: Reading | None = None,
    ):
        super().__init__(
            ListFile(Path("the inputs"), items),
            "",
            clip=clip,
            reading=replace(reading or Reading(), source=VIDEOS, skip_bad=True),
            views=views,
        )
        self._last: tuple[tuple[str, str], FrameSource] | None = None

    def _open(self, entry: ListEntry) -> tuple[FrameSource, int]:
        if not isinstance(entry, InputClip):
            return super()._open(entry)
        source = self._source(entry)
        if entry.num_frames == WHOLE:
            return source, source.num_frames
        return FrameRange(source, entry.start, entry.num_frames), entry.num_frames

    def _source(self, entry: InputClip) -> FrameSource:
        """The opened input: the one kept from the last item when it is the same input."""
        key = (entry.path, entry.source)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = None  # let the previous one go before opening the next
        path = Path(entry.path)
        if entry.source == FRAMES:
            source: FrameSource = FrameFolder(path, None, self.reading.frame_template)
        elif self.reading.backend == "pyav" and entry.num_frames != WHOLE:
            source = SeekingPyAV(path, entry.total, entry.fps, entry.times)
        else:
            source = open_video(path, self.reading.backend)
        self._last = (key, source)
        return source


def collate_with_errors(samples: Sequence[Sample]) -> tuple[ClipBatch, list[tuple[int, str]]]:
    """``collate_clips``, and ``(item index, error)`` of each item that could not be loaded."""
    failed = [(s.index, s.error or "could not be loaded") for s in samples if s.clip is None]
    return collate_clips(samples), failed
