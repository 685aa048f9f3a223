"""A batch of clips: what a data worker returns for one item (``Sample``), how items are
batched (``collate_clips``) and how the trainer finishes a batch on its device
(``ClipBatch.model_input``). Why the work is split so is explained in ``transforms``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import get_worker_info

from tsmcli.data import transforms


@dataclass(frozen=True)
class Sample:
    """One item, uint8, as a data worker leaves it.

    Train mode: ``clip`` is the clip's crop (T, 3, h, w), still to be resized to
    ``resize_to`` x ``resize_to`` and mirrored if ``flip`` (``ClipBatch.model_input`` does
    both on the trainer's device). Val/test mode: ``clip`` is the finished views
    (V, T, 3, S, S) and ``resize_to`` is None. ``clip`` is None, with ``error`` set, when the
    item could not be loaded and ``skip_bad`` is on.
    """

    clip: torch.Tensor | None
    label: int
    index: int
    error: str | None = None
    flip: bool = False
    resize_to: int | None = None
    colour: tuple[float, ...] | None = None  # train: transforms.draw_colour_jitter's, if on
    flow: bool = False  # channels are stacked x/y flow images (mirrored and normalised as such)


class ClipBatch(NamedTuple):
    """A collated batch (a NamedTuple, so DataLoader's ``pin_memory`` handles it).

    ``clips`` uint8: train, (B, T, 3, H, W) holding crop b in ``[..., :sizes[b][0],
    :sizes[b][1]]`` (zero elsewhere); val/test, (B, V, T, 3, S, S). (0,) when every item
    was skipped. ``labels``, ``indices``: (B,) int64. ``skipped``: the error of each dropped
    item. ``sizes`` (B, 2) and ``flips`` (B,) describe the train crops (empty otherwise), to
    be resized to ``resize_to``. The model's input is ``model_input(device)``.
    """

    clips: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[str]
    sizes: torch.Tensor
    flips: torch.Tensor
    resize_to: int | None
    colours: torch.Tensor | None = None  # (B, 6): each train clip's colour jitter, if on
    flow: bool = False  # clips of stacked x/y flow images (C = 2 * new_length), not RGB

    def model_input(self, device: torch.device | str) -> torch.Tensor:
        """The batch as the model takes it, computed on ``device``: crops resized and mirrored,
        then normalised (and colour-jittered, if drawn); float32 (B, T, C, S, S) or
        (B, V, T, C, S, S), C = 3 or a flow clip's 2 * new_length."""
        clips = self.clips.to(device, non_blocking=True)
        if self.resize_to is not None and len(clips):
            clips = torch.stack(
                [
                    transforms.resize_crop(
                        clips[b, ..., :height, :width], self.resize_to, flip, self.flow
                    )
                    for b, ((height, width), flip) in enumerate(
                        zip(self.sizes.tolist(), self.flips.tolist(), strict=True)
                    )
                ]
            )  # (B, T, C, S, S)
        if self.flow:
            return transforms.normalize(clips, transforms.FLOW_MEAN, transforms.FLOW_STD)
        clips = transforms.normalize(clips)
        if self.colours is not None and len(clips):
            clips = transforms.jitter_colour(clips, self.colours)
        return clips


def collate_clips(samples: Sequence[Sample]) -> ClipBatch:
    """Batch the loaded samples; the ones that failed go to ``skipped``.

    Train crops of different sizes share one zero-padded tensor in the crops' own memory
    layout (channels-last from the frame sources): each crop is copied once, row by row.
    """
    good = [s for s in samples if s.clip is not None]
    resize_to = good[0].resize_to if good else None
    if not good:
        clips = torch.empty(0, dtype=torch.uint8)
    elif resize_to is None:
        clips = torch.stack([s.clip for s in good], out=_new_uint8(len(good), *good[0].clip.shape))
    else:
        clips = _pad_crops([s.clip for s in good])
    return ClipBatch(
        clips=clips,
        labels=torch.tensor([s.label for s in good], dtype=torch.int64),
        indices=torch.tensor([s.index for s in good], dtype=torch.int64),
        skipped=[s.error or f"item {s.index}" for s in samples if s.clip is None],
        sizes=torch.tensor(
            [list(s.clip.shape[-2:]) for s in good] if resize_to else [], dtype=torch.int64
        ).view(-1, 2),
        flips=torch.tensor([s.flip for s in good] if resize_to else [], dtype=torch.bool),
        resize_to=resize_to,
        colours=torch.tensor([s.colour for s in good], dtype=torch.float32)
        if good and good[0].colour is not None
        else None,
        flow=bool(good) and good[0].flow,
    )


def _pad_crops(crops: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, T, 3, H, W) uint8, crop b in its top-left corner and zeros around it."""
    frames, channels = crops[0].shape[:2]
    height = max(c.shape[-2] for c in crops)
    width = max(c.shape[-1] for c in crops)
    channels_last = crops[0].stride(-3) == 1
    if channels_last:  # (B, T, H, W, 3) in memory
        batch = _new_uint8(len(crops), frames, height, width, channels).permute(0, 1, 4, 2, 3)
    else:
        batch = _new_uint8(len(crops), frames, channels, height, width)
    for slot, crop in zip(batch, crops, strict=True):
        if crop.shape[-2:] != (height, width):
            slot.zero_()  # no uninitialised memory leaves a worker
        slot[..., : crop.shape[-2], : crop.shape[-1]].copy_(crop)
    return batch


def _new_uint8(*shape: int) -> torch.Tensor:
    """An empty uint8 batch; in shared memory when built in a DataLoader worker, so that it
    reaches the trainer without the copy that moving it there would cost (as torch's
    default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
