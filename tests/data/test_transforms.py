"""Transforms: exact crop boxes of the official rules, flip and label swap, views, normalising."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsmcli.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropBox,
    crop_view,
    draw_colour_jitter,
    draw_train_crop,
    eval_crop_boxes,
    eval_views,
    fixed_crop_offsets,
    jitter_colour,
    map_box,
    multiscale_crop_sizes,
    normalize,
    resize_crop,
    resize_short_side,
    sample_multiscale_crop,
    scaled_size,
    swap_label,
)


def _frames(t: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, height, width), dtype=torch.uint8, generator=gen)


def train_clip(
    frames: torch.Tensor, label: int, rng: np.random.Generator, *, input_size: int = 224, **options
) -> tuple[torch.Tensor, int]:
    """A train clip as the data worker and the trainer make it between them: the worker draws
    the box and flip (``draw_train_crop``) and cuts the crop (``crop_view``), the trainer
    resizes and mirrors it (``resize_crop``, as ``ClipBatch.model_input`` does)."""
    height, width = frames.shape[-2:]
    draw = draw_train_crop(width, height, label, rng, input_size=input_size, **options)
    return resize_crop(crop_view(frames, draw.box), input_size, draw.flip), draw.label


def test_multiscale_crop_sizes_on_a_256_short_side():
    # sides int(256 * s) = 256, 224, 192, 168; pairs whose scale indices differ by <= 1
    assert multiscale_crop_sizes(340, 256, 224) == [
        (256, 256),
        (224, 256),
        (256, 224),
        (224, 224),
        (192, 224),
        (224, 192),
        (192, 192),
        (168, 192),
        (192, 168),
        (168, 168),
    ]


def test_sides_within_3px_of_input_size_snap_to_it():
    # int(255 * .875) = 223 is within 3 px of 224; int(250 * .875) = 218 is not
    assert {w for w, _ in multiscale_crop_sizes(255, 255, 224)} == {255, 224, 191, 168}
    assert 218 in {w for w, _ in multiscale_crop_sizes(250, 250, 224)}


def test_thirteen_fixed_positions():
    # w_step = (340 - 224) // 4 = 29, h_step = (256 - 224) // 4 = 8
    assert fixed_crop_offsets(340, 256, 224, 224) == [
        (0, 0),
        (116, 0),
        (0, 32),
        (116, 32),
        (58, 16),
        (0, 16),
        (116, 16),
        (58, 32),
        (58, 0),
        (29, 8),
        (87, 8),
        (29, 24),
        (87, 24),
    ]
    assert len(fixed_crop_offsets(340, 256, 224, 224, more=False)) == 5


def test_sampled_crops_cover_every_size_and_position():
    rng = np.random.default_rng(0)
    sizes, positions = set(), set()
    for _ in range(3000):
        box = sample_multiscale_crop(340, 256, 224, rng)
        assert (box.width, box.height) in multiscale_crop_sizes(340, 256, 224)
        assert (box.left, box.top) in fixed_crop_offsets(340, 256, box.width, box.height)
        assert box.left + box.width <= 340 and box.top + box.height <= 256
        sizes.add((box.width, box.height))
        if (box.width, box.height) == (224, 224):
            positions.add((box.left, box.top))
    assert len(sizes) == 10
    assert len(positions) == 13


def test_train_clip_is_one_exact_crop_shared_by_every_frame():
    # scale .875 of a 64 short side is exactly 56: the crop is a slice, no resampling
    frames = _frames(4, 64, 85)
    seen = set()
    for seed in range(16):
        clip, label = train_clip(
            frames,
            3,
            np.random.default_rng(seed),
            input_size=56,
            scale_size=64,
            scales=(0.875,),
            flip="off",
        )
        assert clip.shape == (4, 3, 56, 56) and clip.dtype == torch.uint8 and label == 3
        box = sample_multiscale_crop(85, 64, 56, np.random.default_rng(seed), (0.875,))
        # the box drawn from the same seed, exactly, and the same for all 4 frames
        assert torch.equal(clip, frames[..., box.top : box.top + 56, box.left : box.left + 56])
        seen.add(box)
    assert len(seen) > 5


def test_train_crop_box_maps_from_scaled_frame_to_source():
    # a 320x240 frame is cropped as if it were 341x256
    assert scaled_size(320, 240, 256) == (341, 256)
    assert scaled_size(240, 320, 256) == (256, 341)
    box = map_box(CropBox(116, 32, 224, 224), (341, 256), (320, 240))
    assert box == CropBox(109, 30, 210, 210)
    clip, _ = train_clip(_frames(2, 240, 320), 0, np.random.default_rng(0), flip="off")
    assert clip.shape == (2, 3, 224, 224)


def test_flip_mirrors_and_swap_moves_the_label_through_its_pair():
    frames = _frames(2, 32, 32)
    pairs = [(86, 87), (93, 94)]

    def run(flip: str, label: int, seed: int):
        return train_clip(
            frames,
            label,
            np.random.default_rng(seed),
            scales=(1.0,),
            input_size=32,
            scale_size=32,
            flip=flip,
            flip_pairs=pairs,
        )

    plain = frames
    flips = 0
    for seed in range(40):
        clip, label = run("swap", 86, seed)
        flipped = torch.equal(clip, plain.flip(-1))
        assert flipped or torch.equal(clip, plain)
        assert label == (87 if flipped else 86)
        clip_on, label_on = run("on", 86, seed)
        assert torch.equal(clip_on, clip) and label_on == 86  # same draw, no swap
        assert run("swap", 5, seed)[1] == 5  # not in a pair: flipped, label kept
        assert torch.equal(run("off", 86, seed)[0], plain)
        flips += flipped
    assert 10 < flips < 30


def test_swap_label():
    pairs = [(2, 4), (30, 41)]
    assert [swap_label(x, pairs) for x in (2, 4, 30, 41, 7)] == [4, 2, 41, 30, 7]


def test_eval_crop_boxes_by_hand():
    # 1 crop, torchvision rounding: left round(117 / 2) = 58, top 16
    assert eval_crop_boxes(341, 256, 224, 1) == [CropBox(58, 16, 224, 224)]
    # full res: w_step = (341 - 256) // 4 = 21 -> start, centre, end along the long side
    assert eval_crop_boxes(341, 256, 256, 3) == [
        CropBox(0, 0, 256, 256),
        CropBox(42, 0, 256, 256),
        CropBox(84, 0, 256, 256),
    ]
    assert eval_crop_boxes(256, 341, 256, 3) == [
        CropBox(0, 0, 256, 256),
        CropBox(0, 42, 256, 256),
        CropBox(0, 84, 256, 256),
    ]
    assert eval_crop_boxes(341, 256, 224, 10) == [
        CropBox(0, 0, 224, 224),
        CropBox(116, 0, 224, 224),
        CropBox(0, 32, 224, 224),
        CropBox(116, 32, 224, 224),
        CropBox(58, 16, 224, 224),
    ]


def test_eval_views_counts_shapes_and_pixels():
    frames = _frames(3, 256, 341)
    one = eval_views(frames, crops=1)
    assert one.shape == (1, 3, 3, 224, 224)
    assert torch.equal(one[0], frames[..., 16:240, 58:282])
    full = eval_views(frames, crops=3, full_res=True)
    assert full.shape == (3, 3, 3, 256, 256)
    assert torch.equal(full[2], frames[..., :, 84:340])
    ten = eval_views(frames, crops=10)
    assert ten.shape == (10, 3, 3, 224, 224)
    assert torch.equal(ten[0], frames[..., 0:224, 0:224])
    for k in range(5):
        assert torch.equal(ten[2 * k + 1], ten[2 * k].flip(-1))  # each crop, then its flip
    assert torch.equal(ten[8], one[0])  # the 5th box is the centre
    small = eval_views(_frames(2, 240, 320), crops=3)
    assert small.shape == (3, 2, 3, 224, 224)


def test_channels_last_frames_give_the_same_clips():
    # The frame sources return channels-last views, which torch resizes with another kernel.
    frames = _frames(4, 240, 320)
    frames_cl = frames.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # same pixels
    for seed in range(8):
        plain, label = train_clip(
            frames, 1, np.random.default_rng(seed), flip="swap", flip_pairs=[(1, 2)]
        )
        clip, label_cl = train_clip(
            frames_cl, 1, np.random.default_rng(seed), flip="swap", flip_pairs=[(1, 2)]
        )
        assert torch.equal(clip, plain) and label_cl == label and clip.dtype == torch.uint8
    for crops in (1, 3, 10):
        views = eval_views(frames_cl, crops=crops)
        assert torch.equal(views, eval_views(frames, crops=crops)) and views.is_contiguous()


def test_normalize_values():
    frames = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    frames[:, 0] = 255
    out = normalize(frames)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    assert torch.allclose(
        out[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )
    assert frames[0, 0, 0, 0] == 255  # the input is left alone


def test_normalize_reads_any_layout_and_batch_shape():
    """A collated batch of channels-last clips (what the loader hands the trainer) normalises
    to the same contiguous floats as each plain clip on its own."""
    clips = [_frames(3, 8, 10, seed=k) for k in range(2)]
    batch = torch.stack([c.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for c in clips])
    assert not batch.is_contiguous()
    out = normalize(batch)  # (2, 3, 3, 8, 10)
    assert out.is_contiguous() and out.shape == batch.shape
    for k, clip in enumerate(clips):
        assert torch.equal(out[k], normalize(clip))
    expected = (
        clips[1].double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    ) / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    assert (out[1].double() - expected).abs().max() < 1e-5


def test_colour_jitter_is_a_per_clip_per_channel_affine_change_of_the_pixels():
    """Jittering normalised clips equals normalising the changed pixels (gain * x + offset,
    in 0-255 levels), each clip with its own draw, every frame of a clip alike."""
    rng = np.random.default_rng(4)
    draws = [draw_colour_jitter(0.3, rng) for _ in range(2)]
    for draw in draws:
        assert all(0.7 <= g <= 1.3 for g in draw[:3]) and all(abs(o) <= 38.4 for o in draw[3:])
    assert draws[0] != draws[1]
    clips = torch.stack([_frames(4, 6, 5, seed=k) for k in range(2)])  # (2, T, 3, H, W)
    got = jitter_colour(normalize(clips), torch.tensor(draws))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    for k, draw in enumerate(draws):
        gains = torch.tensor(draw[:3], dtype=torch.float64).view(3, 1, 1)
        offsets = torch.tensor(draw[3:], dtype=torch.float64).view(3, 1, 1)
        changed = clips[k].double() * gains + offsets  # (T, 3, H, W), not clipped
        expected = (changed / 255 - mean) / std
        assert (got[k].double() - expected).abs().max() < 1e-4
    same = np.random.default_rng(4)
    assert [draw_colour_jitter(0.3, same) for _ in range(2)] == draws  # a function of the rng


def test_resize_short_side_and_centre_crop():
    frames = _frames(2, 240, 320)
    resized = resize_short_side(frames, 256)
    assert resized.shape == (2, 3, 256, 341) and resized.dtype == torch.uint8
    crop = crop_view(resized, eval_crop_boxes(341, 256, 224, 1)[0])
    assert torch.equal(crop, resized[..., 16:240, 58:282])
    assert torch.equal(eval_views(resized, crops=1)[0], crop)


def test_crop_larger_than_frame_is_refused():
    with pytest.raises(ValueError, match="larger"):
        eval_crop_boxes(200, 150, 224, 1)


def test_train_crop_selects_pixels_without_copying_them():
    """The worker's share of a train clip is a box and a coin: the crop is a view of the
    decoded frames, and the same draw finished by the trainer gives its resized pixels."""
    frames = _frames(4, 240, 320)
    for seed in range(6):
        draw = draw_train_crop(320, 240, 7, np.random.default_rng(seed), flip="on")
        crop = crop_view(frames, draw.box)
        assert crop.data_ptr() >= frames.data_ptr() and crop._base is frames
        clip, label = train_clip(frames, 7, np.random.default_rng(seed), flip="on")
        assert label == draw.label == 7
        assert torch.equal(clip, resize_crop(crop, 224, draw.flip))


def test_resize_crop_of_floats_matches_uint8_within_rounding():
    """CUDA resamples floats only, so there the trainer resizes the crop as float: the same
    filter, without the final rounding to uint8 (checked here on the CPU)."""
    crop = _frames(3, 150, 170)
    as_uint8 = resize_crop(crop, 224, flip=True)
    as_float = resize_crop(crop.float(), 224, flip=True)
    assert as_uint8.dtype == torch.uint8 and as_float.dtype == torch.float32
    assert (as_float - as_uint8.float()).abs().max() <= 1.0
