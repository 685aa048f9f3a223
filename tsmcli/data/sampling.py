"""Which frames of a video a clip is made of: the TSN/TSM segment rules, 0-based.

A video of ``n`` frames is cut into ``T`` equal segments. Training takes one random frame
inside each segment, validation the segment centres, testing ``clips`` evenly shifted frames
per segment (and, with twice-sampling, the segment starts too). Dense sampling (the I3D
style used for Kinetics) takes ``T`` frames with stride ``64 // T`` from a window start.

These follow the official TSM ``ops/dataset.py``, except for videos with no more frames than
segments: there the official code repeats frame 0 ``T`` times; here every frame is used in
order, each repeated as evenly as possible. No index is ever out of range.

All randomness comes from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

DENSE_WINDOW = 64
MODES = ("train", "val", "test")


def _check(num_frames: int, num_segments: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")


def _spread(num_frames: int, num_segments: int) -> np.ndarray:
    """All frames of a short video in order, repeated evenly to fill ``T`` slots."""
    return (np.arange(num_segments) * num_frames) // num_segments  # (T,)


def train_segment_indices(
    num_frames: int, num_segments: int, rng: np.random.Generator
) -> np.ndarray:
    """One random frame inside each of ``T`` equal segments of length ``n // T``: (T,)."""
    _check(num_frames, num_segments)
    average = num_frames // num_segments
    if average == 0:
        return _spread(num_frames, num_segments)
    return np.arange(num_segments) * average + rng.integers(0, average, size=num_segments)


def train_even_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """``T`` frames one segment length ``n // T`` apart from one random offset inside the first
    segment: (T,). Every clip keeps the video's frame spacing (and so its speeds), where
    ``train_segment_indices`` spaces consecutive frames anywhere from 1 to ``2 n // T - 1``."""
    _check(num_frames, num_segments)
    average = num_frames // num_segments
    if average == 0:
        return _spread(num_frames, num_segments)
    return np.arange(num_segments) * average + int(rng.integers(0, average))


def eval_segment_indices(
    num_frames: int, num_segments: int, clips: int = 1, twice_sample: bool = False
) -> np.ndarray:
    """Deterministic views, (V, T) with V = clips x (2 if twice_sample).

    Clip ``c`` takes the frame at fraction ``(c + 0.5) / clips`` of each segment (one clip gives
    the official centres ``int(tick / 2 + tick * x)``); twice-sampling follows each clip with
    the frame at fraction ``c / clips`` (one clip gives the segment starts ``int(tick * x)``).
    """
    _check(num_frames, num_segments)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    tick = num_frames / num_segments
    starts = tick * np.arange(num_segments)  # (T,)
    fractions = []
    for c in range(clips):
        fractions.append((c + 0.5) / clips)
        if twice_sample:
            fractions.append(c / clips)
    # f < 1, so the last index is below tick * T = n: always in range.
    return np.stack([(starts + tick * f).astype(np.int64) for f in fractions])  # (V, T)


def val_segment_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """Segment centres (the official validation rule): (T,)."""
    return eval_segment_indices(num_frames, num_segments)[0]


def _dense_window(num_frames: int, num_segments: int) -> tuple[int, int]:
    """(number of valid window starts, stride) of the official dense rule."""
    return max(1, 1 + num_frames - DENSE_WINDOW), max(1, DENSE_WINDOW // num_segments)


def dense_train_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """``T`` frames with stride ``64 // T`` from a random start, wrapping short videos: (T,)."""
    _check(num_frames, num_segments)
    sample_pos, stride = _dense_window(num_frames, num_segments)
    # The official code draws randint(0, sample_pos - 1): the last start is never drawn.
    start = 0 if sample_pos == 1 else int(rng.integers(0, sample_pos - 1))
    return (start + np.arange(num_segments) * stride) % num_frames


def dense_test_indices(num_frames: int, num_segments: int, clips: int = 10) -> np.ndarray:
    """Dense views from ``clips`` evenly spaced starts over the valid window: (clips, T)."""
    _check(num_frames, num_segments)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    sample_pos, stride = _dense_window(num_frames, num_segments)
    starts = np.linspace(0, sample_pos - 1, num=clips, dtype=np.int64)  # (clips,)
    return (starts[:, None] + np.arange(num_segments)[None, :] * stride) % num_frames


def clip_frame_spacing(
    sampling: str, frame_counts: Sequence[int], num_segments: int
) -> tuple[int, str]:
    """How many frames apart consecutive frames of a training clip were, typically, and why:
    ``64 // T`` for dense sampling, else the median video's length over ``T`` segments. A
    stream fed one frame in that many sees motion at the speed the model learned it."""
    if sampling == "dense":
        return max(1, DENSE_WINDOW // num_segments), f"dense sampling: {DENSE_WINDOW} // T"
    median = statistics.median_low(frame_counts)
    spacing = max(1, round(median / num_segments))
    return (
        spacing,
        f"the training list's median video ({median} frames) over {num_segments} segments",
    )


def sample_indices(
    num_frames: int,
    num_segments: int,
    mode: str,
    rng: np.random.Generator,
    *,
    clips: int = 1,
    twice_sample: bool = False,
    dense: bool = False,
    even: bool = False,
) -> np.ndarray:
    """The frame indices of one item, always (V, T): V = 1 for train and val.

    ``even`` (train only) spaces the segments' frames evenly (``train_even_indices``);
    validation and test take the segment centres either way.

    Validation is deterministic in both styles (dense validation uses the first test start,
    where the official code draws a random one) so that val accuracy is comparable across
    epochs.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "train":
        pick = (
            dense_train_indices if dense else train_even_indices if even else train_segment_indices
        )
        return pick(num_frames, num_segments, rng)[None, :]
    if dense:
        return dense_test_indices(num_frames, num_segments, clips=1 if mode == "val" else clips)
    if mode == "val":
        return val_segment_indices(num_frames, num_segments)[None, :]
    return eval_segment_indices(num_frames, num_segments, clips=clips, twice_sample=twice_sample)
