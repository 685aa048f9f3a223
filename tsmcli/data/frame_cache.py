"""Decoded frames kept in memory, up to a byte budget: a small set of JPEG frames is read and
decoded once, not once an epoch.

A dataset that trains many epochs on a small list (the demo: 240 videos, 40 passes) spends a
visible share of each step reading and decoding the same JPEGs again: on the 2-core AVX-512
EPYC, 0.103 s an epoch of 240 clips of 32x32 frames against 0.019 s from memory, about 7% of
a TSM epoch. The cache is a plain dict in the process that loads (the training process with
no DataLoader workers, else each worker its own), filled as frames are first read and never
evicted: once the budget is spent, further frames are decoded each time as before. The frames
it hands out are shared, so callers copy before changing them (every crop and stack does).
"""

from __future__ import annotations

from collections.abc import Hashable

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


def frame_cache_for(source: str, megabytes: int) -> FrameCache | None:
    """A dataset's cache: ``megabytes`` MiB of decoded JPEG frames (frame folders only: a video
    decodes its frames in runs, not one by one), or none at 0."""
    return FrameCache(megabytes * MIB) if megabytes > 0 and source == "frames" else None
