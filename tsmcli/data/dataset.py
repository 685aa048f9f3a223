"""The clip Dataset: a list file + a root -> sampled, cropped uint8 clips.

The trainer normalises them on its device (``transforms.normalize``) after the transfer.

Item ``i`` of epoch ``e`` draws all its randomness (frame sampling, crop, flip) from
``np.random.default_rng([seed, e, i])`` and nothing else, so a clip is the same whatever the
number of DataLoader workers, and a resumed run sees exactly the clips it would have seen.

A missing frame or a corrupt video is a ``DataError`` naming the file, and so is a frame past
the end of a video whose list count is too large (frame folders and PyAV take the list's count;
decord samples from the smaller of the list's and the container's). With ``skip_bad`` the
item comes back with ``clip=None`` and the error text instead, and ``collate_clips`` drops it
and reports it in ``ClipBatch.skipped``. No other frame or video is ever substituted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from tsmcli.data import transforms
from tsmcli.data.decode import BACKENDS, FRAME_TEMPLATE, FrameFolder, FrameSource, open_video
from tsmcli.data.lists import ListEntry, classes_for_list, read_list
from tsmcli.data.sampling import MODES, sample_indices
from tsmcli.errors import DataError, UsageError

log = logging.getLogger(__name__)

SOURCES = ("frames", "videos")


@dataclass(frozen=True)
class Sample:
    """One item: ``clip`` uint8 (T, 3, S, S) in train mode, (V, T, 3, S, S) in val/test mode,
    or None with ``error`` set when the item could not be loaded and ``skip_bad`` is on. The
    model's input is ``transforms.normalize(clip)``, computed on the training device."""

    clip: torch.Tensor | None
    label: int
    index: int
    error: str | None = None


class ClipBatch(NamedTuple):
    """A collated batch (a NamedTuple, so DataLoader's ``pin_memory`` handles it).

    ``clips``: (B, T, 3, S, S) or (B, V, T, 3, S, S) uint8, not yet normalised (see
    ``transforms.normalize``); (0,) when every item was skipped.
    ``labels``, ``indices``: (B,) int64. ``skipped``: the error of each dropped item.
    """

    clips: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[str]


def collate_clips(samples: Sequence[Sample]) -> ClipBatch:
    """Stack the loaded samples of a batch; the ones that failed go to ``skipped``."""
    good = [s for s in samples if s.clip is not None]
    clips = torch.stack([s.clip for s in good]) if good else torch.empty(0)
    return ClipBatch(
        clips=clips,
        labels=torch.tensor([s.label for s in good], dtype=torch.int64),
        indices=torch.tensor([s.index for s in good], dtype=torch.int64),
        skipped=[s.error or f"item {s.index}" for s in samples if s.clip is None],
    )


def find_missing(
    entries: Iterable[ListEntry], root: str | Path, source: str, template: str = FRAME_TEMPLATE
) -> list[str]:
    """List paths of the entries that cannot be loaded: a missing or empty video, or a frame
    folder without its first or last frame. Stat calls only, so a pre-flight check of a
    large list is quick."""
    if source not in SOURCES:
        raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    root = Path(root)
    missing = []
    for entry in entries:
        path = root / entry.path
        if source == "videos":
            try:
                ok = path.stat().st_size > 0
            except OSError:
                ok = False
        else:
            ok = (path / template.format(1)).is_file() and (
                path / template.format(entry.num_frames)
            ).is_file()
        if not ok:
            missing.append(entry.path)
    return missing


class VideoClipDataset(Dataset):
    """Clips of the videos of a TSN list file, as in the official TSM training and testing.

    ``mode="train"``: segment (or dense) sampling, multi-scale crop, flip; clip (T, 3, S, S).
    ``mode="val"``: segment centres, ``crops`` views; clip (V, T, 3, S, S).
    ``mode="test"``: ``clips`` temporal views (twice as many with ``twice_sample``; dense
    starts with ``dense``) x ``crops`` spatial views; clip (V, T, 3, S, S), temporal-major.
    """

    def __init__(
        self,
        list_file: str | Path,
        root: str | Path,
        *,
        num_segments: int,
        mode: str = "train",
        source: str = "frames",
        backend: str = "decord",
        template: str = FRAME_TEMPLATE,
        input_size: int = 224,
        scale_size: int = 256,
        scales: Sequence[float] = transforms.TRAIN_SCALES,
        flip: str = "on",
        flip_pairs: Sequence[tuple[int, int]] | None = None,
        clips: int = 1,
        crops: int = 1,
        full_res: bool = False,
        twice_sample: bool = False,
        dense: bool = False,
        skip_bad: bool = False,
        seed: int = 0,
    ):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if source not in SOURCES:
            raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if flip not in transforms.FLIP_MODES:
            raise UsageError(
                f"flip must be one of {', '.join(transforms.FLIP_MODES)}, got {flip!r}"
            )
        if flip == "swap" and mode == "train" and not flip_pairs:
            raise UsageError(
                "flip 'swap' needs the dataset's left/right label pairs and none were "
                "given; use flip 'on' or 'off'"
            )
        if crops not in transforms.TEST_CROPS:
            raise UsageError(f"crops must be one of {transforms.TEST_CROPS}, got {crops}")
        if num_segments < 1 or clips < 1 or seed < 0:
            raise UsageError(
                f"num_segments and clips must be >= 1 and seed >= 0, got "
                f"{num_segments}, {clips}, {seed}"
            )
        if (full_res and scale_size < input_size) or min(input_size, scale_size) < 1:
            raise UsageError(
                f"input_size {input_size} and scale_size {scale_size} must be "
                "positive, and scale_size >= input_size"
            )
        self.list_file = Path(list_file)
        self.root = Path(root)
        self.entries = read_list(self.list_file)
        if not self.entries:
            raise DataError(
                f"{self.list_file}: the list is empty; check tsm build-list's missing.txt"
            )
        self.classes = classes_for_list(self.list_file)
        if self.classes is not None:
            top = max(e.label for e in self.entries)
            if top >= len(self.classes):
                raise DataError(
                    f"{self.list_file}: label {top} but classes.txt beside it has "
                    f"{len(self.classes)} classes; rebuild both with tsm build-list"
                )
        self.num_segments = num_segments
        self.mode = mode
        self.source = source
        self.backend = backend
        self.template = template
        self.input_size = input_size
        self.scale_size = scale_size
        self.scales = tuple(scales)
        self.flip = flip
        self.flip_pairs = tuple(flip_pairs or ())
        self.clips = clips
        self.crops = crops
        self.full_res = full_res
        self.twice_sample = twice_sample
        self.dense = dense
        self.skip_bad = skip_bad
        self.seed = seed
        # Shared memory, so set_epoch reaches persistent DataLoader workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def num_views(self) -> int:
        """V of a val/test clip: temporal views x spatial crops (1 in train mode)."""
        if self.mode == "train":
            return 1
        if self.mode == "val":
            return self.crops
        twice = 2 if self.twice_sample and not self.dense else 1
        return self.clips * twice * self.crops

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next items use (call before iterating)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            clip, label = self._load(entry, rng)
        except DataError as exc:
            if not self.skip_bad:
                raise
            log.debug("skipping %s: %s", entry.path, exc)
            return Sample(None, entry.label, index, str(exc))
        return Sample(clip, label, index)

    def _open(self, entry: ListEntry) -> tuple[FrameSource, int]:
        """The frame source of an entry and the frame count to sample from."""
        path = self.root / entry.path
        if self.source == "frames":
            folder = FrameFolder(path, num_frames=entry.num_frames, template=self.template)
            return folder, entry.num_frames
        # PyAV would decode the whole video to count its frames: it takes the list's count, as
        # a frame folder does. decord's count comes from the container, for nothing.
        video = open_video(path, self.backend, num_frames=entry.num_frames)
        if video.num_frames != entry.num_frames:
            log.debug(
                "%s: %d frames decoded, the list says %d; sampling from the smaller",
                path,
                video.num_frames,
                entry.num_frames,
            )
        return video, min(video.num_frames, entry.num_frames)

    def _load(self, entry: ListEntry, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        source, num_frames = self._open(entry)
        indices = sample_indices(
            num_frames,
            self.num_segments,
            self.mode,
            rng,
            clips=self.clips,
            twice_sample=self.twice_sample,
            dense=self.dense,
        )  # (V_t, T)
        # Decode each distinct frame once, in order (short videos and views repeat frames).
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = source.get(unique.tolist())  # (U, 3, H, W)
        if not np.array_equal(unique, indices.reshape(-1)):  # else already in order, no copy
            frames = frames[torch.from_numpy(inverse.reshape(-1))]  # (V_t*T, 3, H, W)
        if self.mode == "train":
            return transforms.train_clip(
                frames,
                entry.label,
                rng,
                input_size=self.input_size,
                scale_size=self.scale_size,
                scales=self.scales,
                flip=self.flip,
                flip_pairs=self.flip_pairs,
            )
        views = transforms.eval_views(
            frames,
            input_size=self.input_size,
            scale_size=self.scale_size,
            crops=self.crops,
            full_res=self.full_res,
        )  # (C, V_t*T, 3, S, S)
        crops, _, channels, height, width = views.shape
        views = views.view(crops, indices.shape[0], self.num_segments, channels, height, width)
        views = views.transpose(0, 1).reshape(-1, self.num_segments, channels, height, width)
        return views, entry.label  # (V_t*C, T, 3, S, S)
