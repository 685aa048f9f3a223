"""The synthetic dataset: deterministic, pairs that are exact time reverses, real H.264."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tsmcli.cli import cli
from tsmcli.data.decode import DecordVideo, PyAVVideo
from tsmcli.data.synth import (
    CLASS_PAIRS,
    CLASSES,
    DEFAULT_CLASSES,
    first_classes,
    read_boxes,
    synth,
    video_rng,
)
from tsmcli.data.synth_scene import (
    Scene,
    Sprite,
    generate_clip,
    generate_frames,
    object_boxes,
    render_scene,
    sample_scene,
)
from tsmcli.errors import DataError, UsageError


def _decode_all(paths) -> list[torch.Tensor]:
    out = []
    for path in paths:
        video = PyAVVideo(path)
        out.append(video.get(range(video.num_frames)))
    return out


def test_same_seed_gives_identical_frames_and_another_seed_does_not(tmp_path):
    kwargs = {"per_class": 1, "size": 32, "num_frames": 6}
    first = synth(tmp_path / "a", seed=7, **kwargs)
    second = synth(tmp_path / "b", seed=7, **kwargs)
    other = synth(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_decode_all(r.paths) for r in (first, second, other))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_layout_class_names_and_counts(tmp_path):
    result = synth(tmp_path / "out", per_class=2, size=32, num_frames=4)
    assert result.classes == DEFAULT_CLASSES == first_classes(8)  # whole pairs, no rotation
    assert "rotating_clockwise" not in DEFAULT_CLASSES and "appearing" in DEFAULT_CLASSES
    assert result.counts == {name: 2 for name in DEFAULT_CLASSES}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(DEFAULT_CLASSES)
    for name in DEFAULT_CLASSES:
        files = sorted(p.name for p in (tmp_path / "out" / name).iterdir())
        assert files == [f"{name}_000{i}{ext}" for i in (0, 1) for ext in (".boxes.json", ".mp4")]
    assert len(result.paths) == 2 * len(DEFAULT_CLASSES)

    every = synth(tmp_path / "all", per_class=1, size=32, num_frames=4, classes=CLASSES)
    assert len(CLASSES) == 2 * len(CLASS_PAIRS) == 10
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(CLASSES)
    assert len(every.paths) == 10


def test_unknown_class_or_odd_size_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="spinning"):
        synth(tmp_path / "out", classes=("spinning",))
    with pytest.raises(UsageError, match="even"):
        synth(tmp_path / "out", size=33)
    for speed in (0, -1, 1.6):
        with pytest.raises(UsageError, match=rf"--speed must be in \(0, 1.5\], got {speed}"):
            synth(tmp_path / "out", speed=speed)
    assert not (tmp_path / "out").exists()


def test_videos_decode_with_decord_to_the_generated_frames(tmp_path):
    result = synth(
        tmp_path / "out",
        per_class=1,
        size=32,
        num_frames=10,
        classes=("rotating_counterclockwise",),
    )
    video = DecordVideo(result.paths[0])
    assert video.num_frames == 10
    frames = video.get(range(10))  # (10, 3, 32, 32)
    assert frames.shape == (10, 3, 32, 32)
    index = CLASSES.index("rotating_counterclockwise")
    expected = torch.from_numpy(
        generate_frames("rotating_counterclockwise", video_rng(0, index, 0), 32, 10)
    ).permute(0, 3, 1, 2)
    error = (frames.float() - expected.float()).abs().mean()
    assert error < 4  # high-quality H.264: only 4:2:0 chroma loss around edges


@pytest.mark.parametrize(("forward", "backward"), CLASS_PAIRS)
def test_second_class_of_a_pair_is_the_first_played_backwards(forward, backward):
    for video in range(3):
        ahead = generate_frames(forward, video_rng(5, 0, video), 32, 8)
        behind = generate_frames(backward, video_rng(5, 0, video), 32, 8)
        assert np.array_equal(behind, ahead[::-1])
        assert not np.array_equal(behind, ahead)


def test_main_object_does_what_its_class_says():
    rng = np.random.default_rng(0)
    for _ in range(5):
        right = sample_scene("moving_right", rng, 64, 12).sprites[-1]
        assert np.all(np.diff(right.centre[:, 0]) > 0.5)
        assert np.ptp(right.centre[:, 1]) < np.ptp(right.centre[:, 0]) / 4
        down = sample_scene("moving_down", rng, 64, 12).sprites[-1]
        assert np.all(np.diff(down.centre[:, 1]) > 0.5)
        assert np.ptp(down.centre[:, 0]) < np.ptp(down.centre[:, 1]) / 4
        growing = sample_scene("growing", rng, 64, 12).sprites[-1]
        assert np.all(np.diff(growing.radius) > 0) and growing.radius[-1] > 1.7 * growing.radius[0]
        turning = sample_scene("rotating_clockwise", rng, 64, 12).sprites[-1]
        assert turning.shape == "bar" and np.all(np.diff(turning.angle) > 0)
        appearing = sample_scene("appearing", rng, 64, 12).sprites[-1]
        assert np.all(np.diff(appearing.opacity) > 0)
        assert appearing.opacity[0] == 0 and appearing.opacity[-1] == 1
        assert np.ptp(appearing.radius) == 0  # only its opacity tells the time
    assert all(
        sample_scene(name, rng, 64, 12).sprites[-1].opacity is None
        for name in CLASSES
        if name not in ("appearing", "fading")
    )


@pytest.mark.parametrize(
    "name", ["moving_right", "moving_down", "growing", "rotating_clockwise", "appearing"]
)
def test_speed_scales_the_main_objects_change_and_nothing_else(name):
    """Half speed: half the travel, half the growth (in log radius), half the turn, half the
    opacity ramp, from the same draws; the background, camera and distractors are equal."""

    def scene(speed: float) -> Scene:
        return sample_scene(name, video_rng(3, 0, 0), 64, 12, speed=speed)

    full, half = scene(1.0), scene(0.5)
    assert len(full.sprites) == len(half.sprites)
    for a, b in zip(full.sprites[:-1], half.sprites[:-1], strict=True):
        pairs = zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True)
        assert all(np.array_equal(x, y) for x, y in pairs)
    assert np.array_equal(full.camera, half.camera)
    assert np.array_equal(full.base_colour, half.base_colour)
    main, slow = full.sprites[-1], half.sprites[-1]
    change = {
        "moving_right": lambda s: np.ptp(s.centre[:, 0]),
        "moving_down": lambda s: np.ptp(s.centre[:, 1]),
        "growing": lambda s: np.log(s.radius[-1] / s.radius[0]),
        "rotating_clockwise": lambda s: np.ptp(s.angle),
        "appearing": lambda s: np.ptp(s.opacity),
    }[name]
    assert change(slow) == pytest.approx(change(main) / 2)
    assert np.array_equal(main.colours, slow.colours)


def test_the_fastest_moving_object_stays_in_view():
    for video in range(20):
        sprite = sample_scene("moving_right", video_rng(0, 0, video), 32, 8, speed=1.5).sprites[-1]
        x = sprite.centre[:, 0]
        assert x.min() - sprite.radius[0] >= -1e-9 and x.max() + sprite.radius[0] <= 32 + 1e-9


def test_first_classes_are_whole_pairs():
    assert first_classes(8) == CLASSES[:6] + ("appearing", "fading")
    rotating = ("rotating_clockwise", "rotating_counterclockwise")
    assert first_classes(10) == first_classes(8) + rotating
    assert first_classes(2) == ("moving_right", "moving_left")
    for bad in (0, 3, 12, True):
        message = (
            "--num-classes must be an even number from 2 to 10 "
            rf"\(whole time-reversed pairs\), got {bad}"
        )
        with pytest.raises(UsageError, match=message):
            first_classes(bad)


def _alone(sprite: Sprite, num_frames: int) -> Scene:
    """``sprite`` in white on black, no camera motion: its pixels are the bright ones."""
    white = dataclasses.replace(sprite, colours=np.full((2, 3), 255.0))
    empty = np.zeros((0, 3))
    return Scene(np.zeros(3), empty[:, :2], empty[:, 0], empty, np.zeros((num_frames, 2)), (white,))


def _centroids(frames: np.ndarray) -> np.ndarray:
    weight = frames[..., 0].astype(float)  # (T, H, W)
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]] + 0.5
    total = weight.sum((1, 2))
    return np.stack([(weight * xs).sum((1, 2)) / total, (weight * ys).sum((1, 2)) / total], 1)


def test_render_puts_sprites_where_the_scene_says_and_turns_clockwise_on_screen():
    scene = sample_scene("moving_right", np.random.default_rng(1), 64, 8)
    main = scene.sprites[-1]
    disc = dataclasses.replace(main, shape="disc")
    centroids = _centroids(render_scene(_alone(disc, 8), 64))
    assert np.abs(centroids - disc.centre).max() < 0.5

    # A bar pivots near one end, so its centroid circles the pivot: the signed area of that
    # path is positive for clockwise motion in image coordinates (y points down).
    pivot = np.full((8, 2), 32.0)
    bar = Sprite(
        "bar",
        pivot,
        np.full(8, 16.0),
        np.linspace(0, np.pi, 8),
        np.zeros((2, 3)),
        np.array([1.0, 0.0, 0.0]),
    )
    path = _centroids(render_scene(_alone(bar, 8), 64)) - 32
    area = np.sum(path[:-1, 0] * path[1:, 1] - path[1:, 0] * path[:-1, 1])
    assert area > 0


def test_existing_class_folders_need_overwrite(tmp_path):
    synth(tmp_path / "out", per_class=1, size=32, num_frames=4, classes=("growing",))
    with pytest.raises(DataError, match="--overwrite"):
        synth(tmp_path / "out", per_class=1, size=32, num_frames=4, classes=("growing",))
    result = synth(
        tmp_path / "out", per_class=2, size=32, num_frames=4, classes=("growing",), overwrite=True
    )
    assert sorted(p.name for p in (tmp_path / "out" / "growing").glob("*.mp4")) == [
        "growing_0000.mp4",
        "growing_0001.mp4",
    ]
    assert len(result.paths) == 2


def test_cli_writes_the_dataset_and_prints_one_line(tmp_path):
    out = tmp_path / "out"
    args = [
        "synth",
        str(out),
        "--per-class",
        "2",
        "--size",
        "32",
        "--frames",
        "4",
        "--classes",
        "rotating_clockwise,rotating_counterclockwise",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith("wrote 4 videos (2 classes x 4 frames, 32x32) ")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == [
        "rotating_clockwise/rotating_clockwise_0000.mp4",
        "rotating_clockwise/rotating_clockwise_0001.mp4",
        "rotating_counterclockwise/rotating_counterclockwise_0000.mp4",
        "rotating_counterclockwise/rotating_counterclockwise_0001.mp4",
    ]


@pytest.mark.parametrize("classes", [",", " , ,"])
def test_classes_naming_no_class_is_a_usage_error(tmp_path, classes):
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "out"), "--classes", classes])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: --classes names no class; give one or more of {', '.join(CLASSES)}"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("under_a_file", [False, True])
def test_an_out_that_is_or_is_under_a_file_is_refused_before_any_video(tmp_path, under_a_file):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "synth" if under_a_file else tmp_path / "notes.txt"
    result = CliRunner().invoke(cli, ["synth", str(out), "--per-class", "1", "--frames", "4"])
    assert result.exit_code == 2
    expected = (
        f"OUT {out}: {tmp_path / 'notes.txt'} is a file, not a folder; choose another path"
        if under_a_file
        else f"OUT {out}: is a file, not a folder; choose a folder"
    )
    assert result.output.splitlines() == [f"error: {expected}"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_knobs_class_count_speed_and_seed(tmp_path):
    out = tmp_path / "out"
    args = ["synth", str(out), "--per-class", "1", "--frames", "4", "--num-classes", "4"]
    result = CliRunner().invoke(cli, [*args, "--speed", "0.5", "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(first_classes(4)) == sorted(CLASSES[:4])
    decoded = PyAVVideo(out / "moving_down" / "moving_down_0000.mp4").get(range(4))
    expected = generate_frames("moving_down", video_rng(9, 2, 0), 32, 4, speed=0.5)
    error = (decoded.float() - torch.from_numpy(expected).permute(0, 3, 1, 2).float()).abs()
    assert error.mean() < 4

    both = ["synth", str(tmp_path / "x"), "--num-classes", "2", "--classes", "growing,shrinking"]
    result = CliRunner().invoke(cli, both)
    assert result.exit_code == 2
    assert result.output == "error: give --num-classes or --classes, not both\n"
    odd = CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), "--num-classes", "3"])
    assert odd.exit_code == 2 and odd.output.splitlines() == [
        "error: --num-classes must be an even number from 2 to 10 (whole time-reversed "
        "pairs), got 3"
    ]
    assert not (tmp_path / "x").exists()
    help_text = CliRunner().invoke(cli, ["synth", "--help"]).output
    for option in ("--seed", "--per-class", "--frames", "--speed", "--num-classes", "--classes"):
        assert option in help_text


def test_synth_manifest_flip_pairs_are_the_mirror_image_classes():
    """datasets/synth.yaml lists the classes in CLASSES order and, as flip pairs, exactly the
    classes a left-right mirror turns into each other: a mirrored moving_right clip moves left,
    a mirrored clockwise bar turns counterclockwise; a mirrored downward, growing or appearing
    clip still does what its class says."""
    from tsmcli.data.manifest import load_manifest

    manifest = load_manifest("synth")
    assert tuple(manifest.classes()) == CLASSES
    assert {(CLASSES[a], CLASSES[b]) for a, b in manifest.flip_pairs} == {
        ("moving_right", "moving_left"),
        ("rotating_clockwise", "rotating_counterclockwise"),
    }
    assert manifest.flip_pairs_for(sorted(CLASSES[:8])) == [(3, 2), (5, 6)]

    scene = sample_scene("moving_right", np.random.default_rng(2), 64, 8)
    disc = dataclasses.replace(scene.sprites[-1], shape="disc")
    mirrored = render_scene(_alone(disc, 8), 64)[:, :, ::-1]
    assert np.all(np.diff(_centroids(mirrored)[:, 0]) < 0)
    down = sample_scene("moving_down", np.random.default_rng(2), 64, 8).sprites[-1]
    down = dataclasses.replace(down, shape="disc")
    assert np.all(np.diff(_centroids(render_scene(_alone(down, 8), 64)[:, :, ::-1])[:, 1]) > 0)
    bar = Sprite(
        "bar",
        np.full((8, 2), 32.0),
        np.full(8, 16.0),
        np.linspace(0, np.pi, 8),
        np.zeros((2, 3)),
        np.array([1.0, 0.0, 0.0]),
    )
    path = _centroids(render_scene(_alone(bar, 8), 64)[:, :, ::-1]) - 32
    assert np.sum(path[:-1, 0] * path[1:, 1] - path[1:, 0] * path[:-1, 1]) < 0  # counterclockwise


def test_each_video_has_its_main_objects_box_in_every_frame(tmp_path):
    """The boxes hold the main object: rendered alone on a flat ground, every pixel it
    changes lies inside its frame's box; a moving object's box moves its way; the reversed
    class has the reversed boxes; the boxes file beside each video says the same."""
    for name in ("moving_right", "growing", "appearing"):
        scene = sample_scene(name, video_rng(3, CLASSES.index(name), 0), 48, 10)
        alone = Scene(
            np.zeros(3),
            scene.grating_freq[:0],
            scene.grating_phase[:0],
            scene.grating_amp[:0],
            scene.camera,
            scene.sprites[-1:],
        )
        main = scene.sprites[-1]
        opaque = Scene(
            alone.base_colour,
            alone.grating_freq,
            alone.grating_phase,
            alone.grating_amp,
            alone.camera,
            (
                Sprite(
                    main.shape,
                    main.centre,
                    main.radius,
                    main.angle,
                    np.full((2, 3), 255.0),
                    main.stripes,
                ),
            ),
        )
        drawn = render_scene(opaque, 48).max(axis=3) > 128  # (T, S, S): mostly covered pixels
        boxes = object_boxes(scene, 48)
        for t, (x0, y0, x1, y1) in enumerate(boxes):
            assert drawn[t].any() and x0 >= 0
            ys, xs = np.nonzero(drawn[t])
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        if name == "moving_right":
            assert boxes[-1, 0] > boxes[0, 0]  # to the right
    ahead = generate_clip("moving_right", video_rng(3, 0, 1), 32, 8)[1]
    behind = generate_clip("moving_left", video_rng(3, 0, 1), 32, 8)[1]
    assert np.array_equal(behind, ahead[::-1])
    result = synth(tmp_path, per_class=1, num_frames=8, classes=["moving_left"])
    (video,) = result.paths
    assert np.array_equal(
        read_boxes(video), generate_clip("moving_left", video_rng(0, 1, 0), 32, 8)[1]
    )
    assert sorted(p.name for p in video.parent.iterdir()) == [
        "moving_left_0000.boxes.json",
        "moving_left_0000.mp4",
    ]
