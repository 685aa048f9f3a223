"""What a video's container says besides its pixels: which way up its frames go, when each
frame is shown, and what a file that is not a video is instead.

Rotation. A phone films upright but stores the sensor's sideways frames, with a display matrix
(or, in files from older tools, a ``rotate`` tag) saying how to turn them for display. decord
applies it itself (a transpose in its filter graph: the tag first, else the matrix, as the
ffmpeg tool does); PyAV hands out the frames as coded. ``quarter_turns`` reads the same rule
through PyAV, from the stream and the first frame decoded (the decoder attaches the matrix to
every frame), and ``upright`` applies it as a numpy view, so every frame source gives the same
upright frames with either backend. Read once per opened container; a video without rotation
costs one attribute read.

Time. ``frame_times`` turns presentation timestamps into seconds from the first frame, and
``steady`` says whether they are the even ticks of the nominal frame rate: a video whose
frames come at a variable rate is planned by its timestamps (``windows.plan_windows``).

The header. ``probe_video`` reads a video's frame count and rate without decoding: the
reference that extraction compares its decoded count with.

Not a video. An image or an audio file given as a video makes the decoders fail with their
own words (decord's retry limits, "broken metadata") or, for PyAV, decode an image as a
one-frame video. ``video_stream`` refuses both in one line, and ``not_a_video`` tells a file's
kind after a decoder has failed on it, so a good video never pays for the check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsmcli.errors import DataError

logger = logging.getLogger(__name__)

_ROTATE_TAG = "rotate"  # clockwise degrees; Matroska stores tag names upper-case


def image_error(path: str | Path) -> DataError:
    return DataError(f"{path}: is an image, not a video; give a video or a folder of frames")


def no_video_error(path: str | Path) -> DataError:
    return DataError(f"{path}: has no video stream (audio only?); give a video")


def is_image_format(name: str | None) -> bool:
    """Whether FFmpeg's demuxer ``name`` reads still images (``png_pipe``, ``jpeg_pipe``,
    ``image2``, ...). GIF has a demuxer of its own: an animation is a video."""
    return bool(name) and (name == "image2" or name.endswith("_pipe"))


def video_stream(path: str | Path, container):
    """The first video stream of an opened PyAV ``container``, or the ``DataError`` saying that
    ``path`` is an image or has no video stream."""
    if is_image_format(getattr(getattr(container, "format", None), "name", None)):
        raise image_error(path)
    if not container.streams.video:
        raise no_video_error(path)
    return container.streams.video[0]


def not_a_video(path: str | Path) -> DataError | None:
    """The error saying what ``path`` is, when it is an image or has no video stream; None for
    a video or a file PyAV cannot open either (the caller's own message then stands)."""
    import av

    try:
        with av.open(str(path)) as container:
            video_stream(path, container)
    except DataError as error:
        return error
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


def quarter_turns(stream, frame) -> int:
    """Counter-clockwise quarter turns (0..3, for ``np.rot90``) that bring ``stream``'s decoded
    ``frame`` upright: the ``rotate`` tag if the stream has one, else the frame's display matrix.
    An angle that is not a multiple of 90 degrees is left alone, as decord leaves it."""
    metadata = getattr(stream, "metadata", None) or {}
    tag = next((v for k, v in metadata.items() if k.lower() == _ROTATE_TAG), None)
    try:
        degrees = -float(tag) if tag else 0.0  # the tag turns clockwise
    except ValueError:
        degrees = 0.0
    if not degrees:
        degrees = float(getattr(frame, "rotation", 0) or 0)  # counter-clockwise
    turns = round(degrees / 90)
    if abs(degrees - 90 * turns) >= 1.0:
        logger.warning(
            "rotation of %g degrees is not a quarter turn; frames left as coded", degrees
        )
        return 0
    return turns % 4


def upright(pixels: np.ndarray, turns: int) -> np.ndarray:
    """``pixels`` ``(H, W, 3)`` turned ``turns`` quarter turns counter-clockwise: a view (the
    stack that follows copies it); the array itself when there is nothing to turn."""
    return np.rot90(pixels, turns) if turns else pixels


def frame_times(pts: Sequence[float | int | None], time_base: float = 1.0) -> np.ndarray | None:
    """Presentation times in seconds from the first frame, from each frame's ``pts`` (in
    ``time_base`` seconds); None when a frame has none or they do not increase (frames out of
    order, repeated stamps), so the caller falls back to the frame rate."""
    if len(pts) == 0 or any(p is None for p in pts):
        return None
    times = (np.asarray(pts, dtype=np.float64) - float(pts[0])) * time_base
    if len(times) > 1 and not np.all(np.diff(times) > 0):
        return None
    return times


def steady(times: np.ndarray, fps: float) -> bool:
    """Whether frame k is shown at ``k / fps`` to within half a frame, for every k: the frame
    rate then tells every frame's time, and planning by frames is planning by time."""
    if not fps > 0:
        return False
    ticks = np.arange(len(times)) / fps
    return bool(np.all(np.abs(times - ticks) < 0.5 / fps))


@dataclass(frozen=True)
class VideoProbe:
    """What a video's container says about it, read without decoding."""

    num_frames: int | None  # None when the container gives neither a count nor a duration
    exact: bool  # True: a frame count stored in the container; False: duration x frame rate
    fps: float
    width: int  # as coded: a video with a rotation is shown turned
    height: int


def probe_video(path: str | Path) -> VideoProbe:
    """Read a video's header with PyAV: the reference frame count that extraction compares the
    decoded count with, so a truncated file cannot pass for a short video."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = video_stream(path, container)
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            if stream.frames > 0:
                num_frames, exact = int(stream.frames), True
            else:
                if stream.duration is not None and stream.time_base is not None:
                    seconds = float(stream.duration * stream.time_base)
                elif container.duration is not None:
                    seconds = container.duration / av.time_base
                else:
                    seconds = 0.0
                num_frames = round(seconds * fps) if seconds > 0 and fps > 0 else None
                exact = False
            return VideoProbe(num_frames, exact, fps, stream.width, stream.height)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not a readable video ({first_line(exc)}); "
            "the file is corrupt or not a video, remove or replace it"
        ) from exc


def first_line(exc: BaseException) -> str:
    """An exception's message for a one-line error: its first line, at most 200 characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
