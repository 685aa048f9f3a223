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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tsmcli.data.batch import ClipBatch, Sample, collate_clips
from tsmcli.data.dataset import VideoClipDataset
from tsmcli.data.decode import FrameFolder, FrameSource, _first_line, _open_error, open_video
from tsmcli.data.inputs import FRAMES, VIDEOS, FoundInput
from tsmcli.data.lists import ListEntry
from tsmcli.errors import DataError, UsageError

WHOLE = 0  # InputClip.num_frames of a whole input: all its frames, counted when it is opened


@dataclass(frozen=True)
class Window:
    """Frames ``[start, stop)`` of a video."""

    start: int
    stop: int

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


def plan_windows(num_frames: int, fps: float, window: float, stride: float) -> list[Window]:
    """Windows of ``window`` seconds every ``stride`` seconds (rounded to whole frames, at
    least one), from the first frame. Every frame is in a window: when the last window on the
    stride ends before the video does, one more ends at the last frame. A video shorter than a
    window is one window of all its frames."""
    if not (window > 0 and stride > 0 and fps > 0):
        raise UsageError(f"window, stride and fps must be positive, got {window}, {stride}, {fps}")
    length = max(1, round(window * fps))
    step = max(1, round(stride * fps))
    if num_frames <= length:
        return [Window(0, num_frames)]
    windows = [Window(s, s + length) for s in range(0, num_frames - length + 1, step)]
    if windows[-1].stop < num_frames:
        windows.append(Window(num_frames - length, num_frames))
    return windows


@dataclass(frozen=True)
class InputClip(ListEntry):
    """An item: ``path``'s frames ``[start, start + num_frames)``, or all of them when
    ``num_frames`` is ``WHOLE``. A window also carries its video's frame count and rate
    (``total``, ``fps``: what PyAV needs to seek). ``label`` is unused (0)."""

    source: str = VIDEOS
    start: int = 0
    total: int = 0
    fps: float = 0.0


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
    index comes from its timestamp (constant frame rate); a video whose frames carry none, or
    where the seek lands past the frame wanted, is decoded from its start instead."""

    def __init__(self, path: str | Path, num_frames: int, fps: float):
        import av

        self.path, self._num_frames, self._fps, self._av = Path(path), num_frames, fps, av
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise _open_error(self.path, exc) from exc
        if not self._container.streams.video:
            self._container.close()
            raise DataError(f"{self.path}: the file has no video stream; remove it or replace it")
        self._stream = self._container.streams.video[0]
        self._origin = self._first_pts()

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= self._num_frames:
            raise DataError(f"{self.path}: frame index outside 0..{self._num_frames - 1}")
        decoded = None
        if self._origin is not None and self._fps > 0:
            decoded = self._decode(indices, seek=True)
        if decoded is None:
            decoded = self._decode(indices, seek=False)
        frames = np.stack([decoded[i] for i in indices])  # (N, H, W, 3)
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, H, W), channels-last view

    def _first_pts(self) -> int | None:
        self._container.seek(0, stream=self._stream)
        for frame in self._container.decode(self._stream):
            return frame.pts
        raise DataError(f"{self.path}: video has no frames")

    def _decode(self, indices: list[int], *, seek: bool) -> dict[int, np.ndarray] | None:
        """The frames at ``indices`` by their timestamps after a seek (None if the seek went
        past the first one), or by counting from the start."""
        wanted, first, last = set(indices), min(indices), max(indices)
        seconds_per_tick = float(self._stream.time_base)
        target = self._origin + math.floor(first / self._fps / seconds_per_tick) if seek else 0
        decoded: dict[int, np.ndarray] = {}
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            for count, frame in enumerate(self._container.decode(self._stream)):
                if seek and frame.pts is None:
                    return None
                if seek:
                    index = round((frame.pts - self._origin) * seconds_per_tick * self._fps)
                else:
                    index = count
                if seek and not decoded and index > first:
                    return None  # landed after the first frame wanted
                if index in wanted:
                    decoded[index] = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                if index >= last:
                    break
        except self._av.FFmpegError as exc:
            raise DataError(
                f"{self.path}: cannot decode ({_first_line(exc)}); the video is truncated or corrupt"
            ) from exc
        if len(decoded) < len(wanted):
            raise DataError(
                f"{self.path}: frame {min(wanted - decoded.keys())} could not be decoded; "
                "the video is truncated"
            )
        return decoded


def probe_input(item: FoundInput, backend: str, template: str, fps: float) -> tuple[int, float]:
    """``(frames, frames per second)`` of an input, to plan its windows: a video's from its
    decoder (PyAV decodes it once to count), a frame folder's count and the ``fps`` given."""
    if item.source == FRAMES:
        return FrameFolder(item.path, None, template).num_frames, fps
    video = open_video(item.path, backend)
    rate = float(video.fps)
    if not rate > 0:
        raise DataError(f"{item.path}: the video gives no frame rate; it cannot be windowed")
    return video.num_frames, rate


class InputClipDataset(VideoClipDataset):
    """Test views of ``items`` (``InputClip``); bad items come back with their error
    (``skip_bad``), so one unreadable input does not stop the others."""

    def __init__(self, items: Sequence[InputClip], *, num_segments: int, **views):
        self._items = list(items)  # read by _read_entries, during the clip dataset's __init__
        super().__init__(
            "the inputs",
            "",
            num_segments=num_segments,
            mode="test",
            source=VIDEOS,
            skip_bad=True,
            **views,
        )
        self._last: tuple[tuple[str, str], FrameSource] | None = None

    def _read_entries(self) -> tuple[list[ListEntry], None]:
        return self._items, None

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
            source: FrameSource = FrameFolder(path, None, self.template)
        elif self.backend == "pyav" and entry.num_frames != WHOLE:
            source = SeekingPyAV(path, entry.total, entry.fps)
        else:
            source = open_video(path, self.backend)
        self._last = (key, source)
        return source


def collate_with_errors(samples: Sequence[Sample]) -> tuple[ClipBatch, list[tuple[int, str]]]:
    """``collate_clips``, and ``(item index, error)`` of each item that could not be loaded."""
    failed = [(s.index, s.error or "could not be loaded") for s in samples if s.clip is None]
    return collate_clips(samples), failed
