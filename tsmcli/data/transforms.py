"""Spatial transforms of a clip: uint8 frames ``(T, 3, H, W)`` in, uint8 views out.

Work is split where it is cheapest. A data loader worker decodes and draws the random crop
box and flip (``draw_train_crop``; ``crop_view`` cuts the box as a view: no pixel is
computed) or cuts the fixed test views (``eval_views``), and hands uint8 on. The trainer, on its device and after the
transfer, resizes and mirrors the train crops (``resize_crop``) and turns uint8 into the
model's float input (``normalize``), as DALI-style pipelines and mmaction2's data
preprocessor do. A worker's cost per clip is then its decoding (``bench/loader.py``), which
is what bounds the clips/s a few CPU cores can feed a GPU; a clip crosses the worker pipe and
the host-to-GPU copy as uint8, a quarter of its float32 size; on a CPU-only run the resize
and normalise are a small part of a training step.

Frames may have any strides. The frame sources hand out channels-last views of the decoders'
``(T, H, W, 3)`` buffers, on which torch's uint8 antialiased resize is about twice as fast as
on plain ``(T, 3, H, W)``; the resized crop keeps that layout (``normalize`` reads any layout
and writes plain contiguous float).

Train: the official TSM multi-scale crop (crop sides from scales of the short side, at most one
step of aspect distortion, 13 fixed positions), one crop for every frame of the clip, resized
to ``input_size``; then a horizontal flip (``off``, ``on``, or ``swap``: flip and swap the label
through the dataset's left/right pairs). Test views: 1 centre crop, 3 crops along the long
side ("full res" when the crop is ``scale_size``), or 10 crops (corners, centre and their flips).

Every crop box is computed on the frame as if its short side were ``scale_size`` (the size
the official recipes train and test at) and mapped back to the decoded frame, so a crop is
one resample (``resized_crop``) of the source, never a full-frame resize followed by a crop.
When the frames already have that short side, a crop is an exact slice.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from tsmcli.choices import FLIP_MODES, TEST_CROPS
from tsmcli.data.settings import TRAIN_SCALES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Flow images, every channel alike, as the official TSN normalises its Flow input
# (ops/models.py: mean [0.5], std [np.mean(input_std)]), after dividing by 255
FLOW_MEAN = (0.5,)
FLOW_STD = (sum(IMAGENET_STD) / len(IMAGENET_STD),)


class CropBox(NamedTuple):
    """A crop in pixels: ``left``, ``top``, ``width``, ``height``."""

    left: int
    top: int
    width: int
    height: int


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``short_side`` (torchvision's rule)."""
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def multiscale_crop_sizes(
    width: int,
    height: int,
    input_size: int,
    scales: Sequence[float] = TRAIN_SCALES,
    max_distort: int = 1,
) -> list[tuple[int, int]]:
    """Candidate (crop_w, crop_h): scales of the short side, sides within 3 px of
    ``input_size`` snapped to it, width and height scale indices at most ``max_distort`` apart."""
    sides = [int(min(width, height) * s) for s in scales]
    sides = [input_size if abs(side - input_size) < 3 else side for side in sides]
    return [
        (w, h)
        for i, h in enumerate(sides)
        for j, w in enumerate(sides)
        if abs(i - j) <= max_distort
    ]


def fixed_crop_offsets(
    width: int, height: int, crop_w: int, crop_h: int, more: bool = True
) -> list[tuple[int, int]]:
    """(left, top) of the official fixed positions on a 4x4 step grid: 4 corners and the centre,
    and with ``more`` the 4 edge centres and 4 quarter points (13 in all)."""
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(gx * w_step, gy * h_step) for gx, gy in grid]


def sample_multiscale_crop(
    width: int,
    height: int,
    input_size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = TRAIN_SCALES,
) -> CropBox:
    """One random multi-scale crop box of a ``width`` x ``height`` frame."""
    sizes = multiscale_crop_sizes(width, height, input_size, scales)
    crop_w, crop_h = sizes[int(rng.integers(len(sizes)))]
    offsets = fixed_crop_offsets(width, height, crop_w, crop_h)
    left, top = offsets[int(rng.integers(len(offsets)))]
    return CropBox(left, top, crop_w, crop_h)


def eval_crop_boxes(width: int, height: int, crop: int, crops: int) -> list[CropBox]:
    """Boxes of the deterministic test views of a (scaled) frame.

    1: the centre (torchvision's rounding); 3: start, centre and end along the long side, on
    the official 4-step grid (``GroupFullResSample``); 10: the 5 boxes of the official
    ``GroupOverSample`` (the caller adds each one's flip right after it).
    """
    if crop > min(width, height):
        raise ValueError(f"crop {crop} is larger than the {width}x{height} frame")
    if crops == 1:
        return [
            CropBox(int(round((width - crop) / 2)), int(round((height - crop) / 2)), crop, crop)
        ]
    w_step, h_step = (width - crop) // 4, (height - crop) // 4
    if crops == 3:
        # The official code steps along x only, so its 3 crops of a portrait frame coincide.
        if width >= height:
            return [CropBox(k * w_step, 2 * h_step, crop, crop) for k in (0, 2, 4)]
        return [CropBox(2 * w_step, k * h_step, crop, crop) for k in (0, 2, 4)]
    if crops == 10:
        return [
            CropBox(left, top, crop, crop)
            for left, top in fixed_crop_offsets(width, height, crop, crop, more=False)
        ]
    raise ValueError(f"crops must be one of {TEST_CROPS}, got {crops}")


def map_box(box: CropBox, from_size: tuple[int, int], to_size: tuple[int, int]) -> CropBox:
    """A box on a ``from_size`` (w, h) frame mapped onto the same picture at ``to_size``."""
    if from_size == to_size:
        return box
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    width = max(1, min(to_size[0], round(box.width * sx)))
    height = max(1, min(to_size[1], round(box.height * sy)))
    left = min(to_size[0] - width, round(box.left * sx))
    top = min(to_size[1] - height, round(box.top * sy))
    return CropBox(left, top, width, height)


def crop_resize(frames: torch.Tensor, box: CropBox, size: int) -> torch.Tensor:
    """Crop every frame to ``box`` and resize to ``size`` x ``size``: (T, 3, size, size), in
    the memory format of ``frames`` (only the box is resampled)."""
    return F.resized_crop(
        frames, box.top, box.left, box.height, box.width, [size, size], antialias=True
    )


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the short side is ``size``: (T, 3, H', W')."""
    height, width = frames.shape[-2:]
    new_w, new_h = scaled_size(width, height, size)
    return F.resize(frames, [new_h, new_w], antialias=True)


def horizontal_flip(frames: torch.Tensor, flow: bool = False) -> torch.Tensor:
    """Mirror left-right (the last axis). Mirrored flow moves the other way along x: its x
    images (the even channels of ``(..., 2L, H, W)``) are negated, which on their 0-255
    levels is ``255 - x`` (the official flip inverts them so)."""
    mirrored = frames.flip(-1)
    if flow:
        mirrored[..., 0::2, :, :] = 255 - mirrored[..., 0::2, :, :]
    return mirrored


def swap_label(label: int, pairs: Sequence[tuple[int, int]]) -> int:
    """The label of the mirrored video: its pair partner, or itself."""
    for a, b in pairs:
        if label == a:
            return b
        if label == b:
            return a
    return label


def normalize(
    frames: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 in [0, 255] to contiguous float32 ``(x / 255 - mean) / std`` per channel, on the
    device of ``frames``; same shape ``(..., C, H, W)``, any strides (channels-last included).
    ``mean`` and ``std`` hold one value a channel, or one for all (``FLOW_MEAN``)."""
    out = torch.empty(frames.shape, dtype=torch.float32, device=frames.device)
    scale, shift = _affine(tuple(mean), tuple(std), frames.device)  # (C or 1, 1, 1) each
    if frames.device.type != "cpu":  # one pass per op over the whole batch
        out.copy_(frames).mul_(scale).add_(shift)
        return out
    # On the CPU, two frames at a time, so the floats the conversion has just written (which
    # also gives channels-last input plain strides) are still in cache for the multiply-add;
    # whole clips do not fit. A multiply and an add by per-channel tensors, as divisions by a
    # broadcast tensor cost 5x more.
    channels, height, width = frames.shape[-3:]
    sources = frames.reshape(-1, channels, height, width).split(2)  # a view for a clip
    for dst, src in zip(out.view(-1, channels, height, width).split(2), sources, strict=True):
        dst.copy_(src).mul_(scale).add_(shift)
    return out


@functools.lru_cache(maxsize=8)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of ``normalize``, each (len(mean), 1, 1) float32 on ``device``,
    computed in float64 once per device."""
    mean_t = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    scale, shift = (1.0 / (255.0 * std_t)).float(), (-mean_t / std_t).float()
    return scale.to(device), shift.to(device)


def draw_colour_jitter(strength: float, rng: np.random.Generator) -> tuple[float, ...]:
    """One clip's colour change: per RGB channel a gain in ``[1 - strength, 1 + strength]``
    and an offset of up to ``strength * 128`` levels, as (gain_r, gain_g, gain_b, offset_r,
    offset_g, offset_b). The same for every frame of the clip, so it changes how the clip
    looks and nothing of how it moves."""
    gains = rng.uniform(1.0 - strength, 1.0 + strength, 3)
    offsets = rng.uniform(-128.0 * strength, 128.0 * strength, 3)
    return tuple(float(v) for v in (*gains, *offsets))


def jitter_colour(
    clips: torch.Tensor,
    jitter: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Apply ``draw_colour_jitter``'s changes to normalised clips, in place: ``clips``
    (B, ..., 3, H, W) float from ``normalize``, ``jitter`` (B, 6). The result is the
    normalised ``gain * pixel + offset`` (pixels in 0-255, not clipped)."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=clips.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=clips.device)
    gains, offsets = jitter.to(clips.device, torch.float32).split(3, dim=1)  # (B, 3) each
    # normalised n = (x / 255 - m) / s; for x' = g x + o: n' = g n + (g - 1) m / s + o / (255 s)
    shift = (gains - 1) * mean_t / std_t + offsets / (255.0 * std_t)  # (B, 3)
    view = (clips.shape[0],) + (1,) * (clips.dim() - 4) + (3, 1, 1)
    return clips.mul_(gains.view(view)).add_(shift.view(view))


class TrainDraw(NamedTuple):
    """The random part of a train clip, drawn in a data worker (see ``draw_train_crop``)."""

    box: CropBox  # on the decoded frames
    flip: bool  # mirror after resizing
    label: int  # swapped through the flip pairs when mirrored with flip "swap"


def draw_train_crop(
    width: int,
    height: int,
    label: int,
    rng: np.random.Generator,
    *,
    input_size: int = 224,
    scale_size: int | None = 256,
    scales: Sequence[float] = TRAIN_SCALES,
    flip: str = "on",
    flip_pairs: Sequence[tuple[int, int]] = (),
) -> TrainDraw:
    """Draw a multi-scale crop box and a flip for a clip of ``width`` x ``height`` frames.

    The box is drawn on the frame scaled to short side ``scale_size`` (None: as decoded) and
    mapped back onto the decoded frame.
    """
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
    virtual = scaled_size(width, height, scale_size)
    box = sample_multiscale_crop(virtual[0], virtual[1], input_size, rng, scales)
    flipped = flip != "off" and bool(rng.random() < 0.5)
    if flipped and flip == "swap":
        label = swap_label(label, flip_pairs)
    return TrainDraw(map_box(box, virtual, (width, height)), flipped, label)


def crop_view(frames: torch.Tensor, box: CropBox) -> torch.Tensor:
    """The ``box`` of every frame of ``(..., H, W)``: a view, no pixel copied."""
    return frames[..., box.top : box.top + box.height, box.left : box.left + box.width]


def resize_crop(
    crop: torch.Tensor, size: int, flip: bool = False, flow: bool = False
) -> torch.Tensor:
    """A crop (T, C, h, w) resized to (T, C, size, size) (antialiased bilinear, as PIL), then
    mirrored if ``flip`` (flow-aware with ``flow``). On the CPU uint8 stays uint8 (torch's
    fast path); CUDA resamples floats only, so there the result is float in [0, 255],
    unrounded."""
    if crop.dtype == torch.uint8 and crop.device.type != "cpu":
        crop = crop.float()
    clip = F.resize(crop, [size, size], antialias=True)
    return horizontal_flip(clip, flow) if flip else clip


def eval_views(
    frames: torch.Tensor,
    *,
    input_size: int = 224,
    scale_size: int = 256,
    crops: int = 1,
    full_res: bool = False,
    flow: bool = False,
) -> torch.Tensor:
    """The deterministic spatial views: uint8 (T, K, H, W) -> uint8 (C, T, K, S, S).

    S is ``scale_size`` with ``full_res`` (official 3-crop "full resolution" testing),
    else ``input_size``. C is ``crops``; with 10 crops each box is followed by its flip
    (flow-aware with ``flow``).
    """
    num_frames, channels, height, width = frames.shape
    virtual = scaled_size(width, height, scale_size)
    crop = scale_size if full_res else input_size
    boxes = eval_crop_boxes(virtual[0], virtual[1], crop, crops)
    out = torch.empty((crops, num_frames, channels, crop, crop), dtype=torch.uint8)
    step = 2 if crops == 10 else 1
    for k, box in enumerate(boxes):
        view = crop_resize(frames, map_box(box, virtual, (width, height)), crop)  # (T, 3, S, S)
        out[step * k].copy_(view)  # each view written once, straight into place
        if crops == 10:
            out[step * k + 1].copy_(horizontal_flip(view, flow))
    return out  # (C, T, K, S, S)
