"""Decoded frames kept in memory, up to a byte budget: a small set of JPEG frames or videos is
read and decoded once, not once an epoch.

A dataset that trains many epochs on a small list (the demo: 240 videos, 40 passes) spends a
visible share of each step reading and decoding the same frames again: on the 2-core AVX-512
EPYC, 0.103 s an epoch of 240 clips of 32x32 JPEG frames against 0.019 s from memory, about 7%
of a TSM epoch; from the videos themselves more than half of each step. The cache is a plain
dict in the process that loads (the training process with no DataLoader workers, else each
worker its own), filled as frames are first read and never evicted: once the budget is spent,
further frames are decoded each time as before. The frames it hands out are shared, so callers
copy before changing them (every crop and stack does).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Protocol

import torch

MIB = 2**20


class FrameCache:
    """Frames by key (``FrameFolder`` uses the frame's file path), up to ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"the cache budget must be >= 0 bytes, got {budget}")
        self.budget = budget
        self.used = 0
        self._frames: dict[Hashable, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, key: Hashable) -> torch.Tensor | None:
        return self._frames.get(key)

    def put(self, key: Hashable, frame: torch.Tensor) -> None:
        """Keep ``frame`` if it fits in what is left of the budget (else nothing)."""
        size = frame.untyped_storage().nbytes()  # a view keeps its whole buffer alive
        if key not in self._frames and self.used + size <= self.budget:
            self._frames[key] = frame
            self.used += size


class _Video(Protocol):
    def get(self, indices: Sequence[int]) -> torch.Tensor: ...


class CachedVideo:
    """A video's frames through a ``FrameCache`` (keyed by path and frame index): the video is
    opened and decoded only for the frames not kept yet, and not at all once every frame asked
    for is. ``open_video``: opens it (a decoder from ``decode.open_video``)."""

    def __init__(
        self, path: Path, num_frames: int, cache: FrameCache, open_video: Callable[[], _Video]
    ) -> None:
        self.path, self.cache = path, cache
        self._num_frames = num_frames
        self._open_video = open_video

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def frames(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The frames one by one, each ``(3, H, W)`` channels-last, as the decoder gives them."""
        found = {i: self.cache.get((self.path, i)) for i in indices}
        missing = sorted(i for i, frame in found.items() if frame is None)
        if missing:
            decoded = self._open_video().get(missing)  # (M, 3, H, W), one buffer
            for i, frame in zip(missing, decoded, strict=True):
                frame = frame.clone()  # its own buffer: kept alone, it keeps no other frame
                self.cache.put((self.path, i), frame)
                found[i] = frame
        return [found[i] for i in indices]

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        return stack_frames(self.frames(indices))


def stack_frames(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(3, H, W)`` frames as one uint8 ``(N, 3, H, W)`` batch, a channels-last view of an
    ``(N, H, W, 3)`` buffer, as a video decoder gives them."""
    return torch.stack([frame.permute(1, 2, 0) for frame in frames]).permute(0, 3, 1, 2)


def frame_cache_for(megabytes: int) -> FrameCache | None:
    """A dataset's cache: ``megabytes`` MiB of decoded frames, or none at 0."""
    return FrameCache(megabytes * MIB) if megabytes > 0 else None
