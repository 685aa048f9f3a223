"""Flow as the loader gives it: the official quantisation, the frames of each segment (new_length
consecutive x/y pairs, x1, y1, x2, y2, ...), the mirror that negates x, the official flow
normalisation, and the settings that refuse what cannot be flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from tsmcli.data.batch import collate_clips
from tsmcli.data.dataset import VideoClipDataset
from tsmcli.data.flow import FlowFolder, dequantise, quantise
from tsmcli.data.settings import Augmentation, ClipSize, Protocol, Reading
from tsmcli.data.transforms import FLOW_MEAN, FLOW_STD, horizontal_flip, normalize
from tsmcli.errors import DataError, RecipeError, UsageError
from tsmcli.recipe import load_recipe

FLOW = Reading(modality="flow", new_length=5, frame_template="flow_x_{:05d}.jpg")


def write_flow_folder(folder: Path, count: int, size: tuple[int, int] = (40, 48)) -> None:
    """Flow images whose x level is 6 * k and y level 250 - 6 * k in frame k (1-based), and
    whose left half is 0: a flat pair that says which frame and which axis a value is."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    for k in range(1, count + 1):
        for axis, level in (("x", 6 * k), ("y", 250 - 6 * k)):
            image = torch.full((1, height, width), level, dtype=torch.uint8)
            image[..., : width // 2] = 0
            data = encode_jpeg(image, quality=100).numpy().tobytes()
            (folder / f"flow_{axis}_{k:05d}.jpg").write_bytes(data)


def flow_list(tmp_path: Path, count: int) -> Path:
    write_flow_folder(tmp_path / "v", count)
    (tmp_path / "list.txt").write_text(f"v {count} 0\n")
    return tmp_path / "list.txt"


def levels(clip: torch.Tensor) -> torch.Tensor:
    """Each channel's level on the right half, (..., C): the frame number it came from."""
    return clip[..., :, -4:].float().mean(dim=(-1, -2)).round()


def official_val_frames(num_frames: int, segments: int, new_length: int) -> list[int]:
    """The official loader's validation frames, 1-based (ops/dataset.py: _get_val_indices, get)."""
    if num_frames > segments + new_length - 1:
        tick = (num_frames - new_length + 1) / float(segments)
        offsets = [int(tick / 2.0 + tick * x) for x in range(segments)]
    else:
        offsets = [0] * segments
    frames = []
    for start in offsets:
        p = start + 1
        for _ in range(new_length):
            frames.append(p)
            if p < num_frames:
                p += 1
    return frames


def test_quantisation_is_dense_flows():
    flow = np.array([[[-25.0, 25.0], [-20.0, 20.0], [0.0, 2.0], [-0.07, 0.08]]])  # (1, 4, 2)
    x, y = quantise(flow, bound=20.0)  # (2, 1, 4)
    # clipped to [-20, 20], then round(255 * (v + 20) / 40)
    assert x.tolist() == [[0, 0, 128, 127]] and y.tolist() == [[255, 255, 140, 128]]
    assert np.abs(dequantise(x, 20.0) - np.clip(flow[..., 0], -20, 20)).max() <= 20 / 255 + 1e-6


@pytest.mark.parametrize(("num_frames", "segments"), [(40, 8), (20, 4), (9, 4), (3, 4)])
def test_each_segment_stacks_new_length_consecutive_pairs_as_the_official_loader(
    tmp_path, num_frames, segments
):
    dataset = VideoClipDataset(
        flow_list(tmp_path, num_frames),
        tmp_path,
        clip=ClipSize(segments, 32, 32),
        reading=FLOW,
        views=Protocol("single"),
    )
    clip = dataset[0].clip[0]  # (T, 10, 32, 32)
    assert clip.shape == (segments, 10, 32, 32)
    frames = levels(clip[:, 0::2]) / 6  # x levels: the frame number
    expected = official_val_frames(num_frames, segments, 5)
    if num_frames <= segments + 4:  # here the official code repeats frame 1 in every segment
        assert frames.reshape(-1).tolist() == [
            min(start + 1 + j, num_frames)
            for start in (np.arange(segments) * max(1, num_frames - 4)) // segments
            for j in range(5)
        ]
    else:
        assert frames.reshape(-1).tolist() == expected
    assert torch.equal(levels(clip[:, 1::2]), 250 - 6 * frames)  # y beside its own x


def test_training_clips_stack_consecutive_pairs_inside_the_video(tmp_path):
    dataset = VideoClipDataset(
        flow_list(tmp_path, 30),
        tmp_path,
        clip=ClipSize(4, 32, 48),
        reading=FLOW,
        augment=Augmentation(scales=(1.0,), flip="off"),
    )
    for epoch in range(5):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert sample.flow and sample.clip.shape[:2] == (4, 10)
        frames = levels(sample.clip[:, 0::2]) / 6  # (T, 5)
        steps = frames[:, 1:] - frames[:, :-1]
        assert torch.all(steps == 1)  # 30 frames: every stack fits
        assert frames.min() >= 1 and frames.max() <= 30
        starts = frames[:, 0] - 1
        segment = (30 - 5 + 1) // 4  # the official average_duration
        assert torch.all((starts // segment) == torch.arange(4))


def test_a_mirror_negates_x_and_keeps_y(tmp_path):
    clip = torch.randint(0, 256, (2, 6, 3, 5), dtype=torch.uint8)  # (T, 2L, H, W)
    mirrored = horizontal_flip(clip, flow=True)
    assert torch.equal(mirrored[:, 0::2], 255 - clip[:, 0::2].flip(-1))
    assert torch.equal(mirrored[:, 1::2], clip[:, 1::2].flip(-1))
    assert torch.equal(horizontal_flip(mirrored, flow=True), clip)

    dataset = VideoClipDataset(
        flow_list(tmp_path, 12),
        tmp_path,
        clip=ClipSize(2, 32, 48),
        reading=FLOW,
        augment=Augmentation(scales=(1.0,), flip="on"),
    )
    flips = []
    for epoch in range(8):  # epochs with and without the mirror
        dataset.set_epoch(epoch)
        sample = dataset[0]
        batch = collate_clips([sample])
        assert batch.flow
        x = batch.model_input("cpu")[0]  # (T, 10, 32, 32), normalised
        zero = -0.5 / FLOW_STD[0]  # the half that is 0 in every image
        if sample.flip:  # the zero half is on the right now, and x's zeros became 255
            assert float(x[:, 0::2, :, -8:].mean()) == pytest.approx(0.5 / FLOW_STD[0], abs=1e-4)
            assert float(x[:, 1::2, :, -8:].mean()) == pytest.approx(zero, abs=1e-4)
        else:
            assert float(x[..., :8].mean()) == pytest.approx(zero, abs=1e-4)
        flips.append(sample.flip)
    assert any(flips) and not all(flips)


def test_normalisation_is_the_official_flow_one():
    assert FLOW_MEAN == (0.5,) and len(FLOW_STD) == 1
    assert FLOW_STD[0] == pytest.approx(np.mean([0.229, 0.224, 0.225]))
    frames = torch.randint(0, 256, (3, 10, 4, 4), dtype=torch.uint8)
    expected = (frames.double() / 255 - 0.5) / np.mean([0.229, 0.224, 0.225])
    got = normalize(frames, FLOW_MEAN, FLOW_STD)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), expected, atol=1e-6)


def test_ten_crop_mirrors_negate_x(tmp_path):
    dataset = VideoClipDataset(
        flow_list(tmp_path, 12),
        tmp_path,
        clip=ClipSize(2, 32, 48),
        reading=FLOW,
        views=Protocol("ten", crops=10),
    )
    views = dataset[0].clip  # (10, T, 10, 32, 32): each crop followed by its mirror
    assert views.shape == (10, 2, 10, 32, 32)
    for crop in range(0, 10, 2):
        assert torch.equal(views[crop + 1], horizontal_flip(views[crop], flow=True))


def test_a_missing_flow_image_is_a_data_error_naming_it(tmp_path):
    write_flow_folder(tmp_path / "v", 6)
    (tmp_path / "v" / "flow_y_00003.jpg").unlink()
    folder = FlowFolder(tmp_path / "v", 6)
    assert folder.get([0, 1]).shape == (2, 2, 40, 48)
    with pytest.raises(DataError, match=r"flow_y_00003.jpg: flow image is missing"):
        folder.get([2])
    with pytest.raises(DataError, match="flow index 6 is outside 0..5"):
        folder.get([6])


def test_what_cannot_be_flow_is_refused_in_one_line(tmp_path):
    with pytest.raises(UsageError, match="reads flow frame folders .*, not videos"):
        Reading(source="videos", modality="flow")
    with pytest.raises(UsageError, match="'img_{:05d}.jpg' does not name flow x images"):
        Reading(modality="flow")
    with pytest.raises(UsageError, match="new_length must be 1 for rgb"):
        Reading(new_length=5)
    with pytest.raises(UsageError, match="colour jitter changes RGB colours"):
        VideoClipDataset(
            flow_list(tmp_path, 8),
            tmp_path,
            clip=ClipSize(2, 32, 32),
            reading=FLOW,
            augment=Augmentation(colour_jitter=0.2),
        )
    base = ["data.source=frames", "model.modality=flow"]
    with pytest.raises(RecipeError) as info:
        load_recipe("demo", base)
    assert str(info.value) == (
        "--set model.modality=flow: data.frame_template 'img_{:05d}.jpg' does not name flow x "
        "images (one 'x' outside the number field, which the y images have as 'y'); use "
        "'flow_x_{:05d}.jpg', as tsm extract --flow writes"
    )
    with pytest.raises(RecipeError, match="data.colour_jitter must be 0 with model.modality flow"):
        load_recipe("demo", ["data.frame_template=flow_x_{:05d}.jpg", *base])
    recipe = load_recipe(
        "demo", [*base, "data.frame_template=flow_x_{:05d}.jpg", "data.colour_jitter=0"]
    )
    assert (recipe.model.modality, recipe.model.new_length) == ("flow", 5)  # the official 5
