"""Segment sampling: the official TSN/TSM rules on hand-computed cases, ranges, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from tsmcli.data.sampling import (
    dense_test_indices,
    dense_train_indices,
    eval_segment_indices,
    sample_indices,
    train_even_indices,
    train_segment_indices,
    val_segment_indices,
)


@pytest.mark.parametrize("num_frames", [8, 9, 15, 64, 301])
def test_train_takes_one_frame_inside_each_segment(num_frames):
    rng = np.random.default_rng(0)
    segments = 8
    average = num_frames // segments
    for _ in range(50):
        idx = train_segment_indices(num_frames, segments, rng)
        assert idx.shape == (segments,)
        k = np.arange(segments)
        assert np.all(idx >= k * average) and np.all(idx < (k + 1) * average)
        assert idx.max() < num_frames


def test_train_is_random_but_deterministic_under_a_seed():
    a = train_segment_indices(300, 8, np.random.default_rng(7))
    b = train_segment_indices(300, 8, np.random.default_rng(7))
    c = train_segment_indices(300, 8, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    draws = {tuple(train_segment_indices(300, 8, np.random.default_rng(s))) for s in range(20)}
    assert len(draws) == 20


@pytest.mark.parametrize("num_frames", [3, 8, 24, 25, 301])
def test_even_train_keeps_the_spacing_with_one_random_offset(num_frames):
    """Frames one segment length apart, the first inside the first segment: every offset is
    drawn, each clip is one of them, never out of range; val stays the segment centres."""
    rng = np.random.default_rng(1)
    average = num_frames // 8
    clips = {tuple(train_even_indices(num_frames, 8, rng).tolist()) for _ in range(600)}
    if average == 0:  # shorter than the clip: every frame in order, as the segment rule
        assert clips == {tuple(train_segment_indices(num_frames, 8, rng).tolist())}
        return
    assert clips == {tuple(offset + average * k for k in range(8)) for offset in range(average)}
    assert max(max(c) for c in clips) < num_frames
    even = sample_indices(num_frames, 8, "train", np.random.default_rng(2), even=True)
    assert even.tolist() == [train_even_indices(num_frames, 8, np.random.default_rng(2)).tolist()]
    assert np.array_equal(
        sample_indices(num_frames, 8, "val", rng, even=True),
        sample_indices(num_frames, 8, "val", rng),
    )


def test_val_takes_the_segment_centres():
    assert val_segment_indices(80, 8).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    # tick = 2.5: int(1.25), int(3.75), int(6.25), int(8.75)
    assert val_segment_indices(10, 4).tolist() == [1, 3, 6, 8]


def test_test_clips_shift_inside_each_segment():
    views = eval_segment_indices(80, 8, clips=2)
    assert views.shape == (2, 8)
    assert views[0].tolist() == [2, 12, 22, 32, 42, 52, 62, 72]  # fraction 0.25 of tick 10
    assert views[1].tolist() == [7, 17, 27, 37, 47, 57, 67, 77]  # fraction 0.75
    assert np.array_equal(eval_segment_indices(80, 8, clips=1)[0], val_segment_indices(80, 8))


def test_twice_sample_adds_the_segment_starts():
    views = eval_segment_indices(10, 4, twice_sample=True)
    assert views.tolist() == [[1, 3, 6, 8], [0, 2, 5, 7]]
    views = eval_segment_indices(80, 8, clips=2, twice_sample=True)
    assert views.shape == (4, 8)
    assert views[1].tolist() == [0, 10, 20, 30, 40, 50, 60, 70]  # clip 0 start
    assert views[3].tolist() == [5, 15, 25, 35, 45, 55, 65, 75]  # clip 1 start (fraction 1/2)


def test_dense_train_stride_and_window():
    # n = 30 < 64: one start (0), stride 64 // 8 = 8, wrapping around the video
    assert dense_train_indices(30, 8, np.random.default_rng(0)).tolist() == [
        0,
        8,
        16,
        24,
        2,
        10,
        18,
        26,
    ]
    starts = set()
    for seed in range(200):
        idx = dense_train_indices(100, 8, np.random.default_rng(seed))
        start = int(idx[0])
        assert idx.tolist() == [start + 8 * k for k in range(8)]
        starts.add(start)
    # sample_pos = 1 + 100 - 64 = 37; the official randint(0, 36) never draws 36
    assert min(starts) == 0 and max(starts) == 35


def test_dense_test_uses_uniform_starts():
    views = dense_test_indices(100, 8, clips=10)
    assert views.shape == (10, 8)
    assert views[:, 0].tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]  # linspace(0, 36, 10)
    assert views[9].tolist() == [36 + 8 * k for k in range(8)]
    assert dense_test_indices(30, 8, clips=3).tolist() == [[0, 8, 16, 24, 2, 10, 18, 26]] * 3


@pytest.mark.parametrize("num_frames", [1, 2, 3, 7])
def test_short_videos_use_every_frame_in_order_never_out_of_range(num_frames):
    rng = np.random.default_rng(0)
    for mode in ("train", "val", "test"):
        for dense in (False, True):
            idx = sample_indices(num_frames, 8, mode, rng, clips=2, twice_sample=True, dense=dense)
            assert idx.min() >= 0 and idx.max() < num_frames
    train = train_segment_indices(num_frames, 8, rng)
    assert np.all(np.diff(train) >= 0) and set(train.tolist()) == set(range(num_frames))
    val = val_segment_indices(num_frames, 8)
    assert np.all(np.diff(val) >= 0) and set(val.tolist()) == set(range(num_frames))
    assert train_segment_indices(3, 8, rng).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_sample_indices_shapes_per_mode():
    rng = np.random.default_rng(0)
    assert sample_indices(100, 8, "train", rng).shape == (1, 8)
    assert sample_indices(100, 8, "val", rng).shape == (1, 8)
    assert sample_indices(100, 8, "test", rng, clips=3, twice_sample=True).shape == (6, 8)
    assert sample_indices(100, 8, "test", rng, clips=10, dense=True).shape == (10, 8)
    assert sample_indices(100, 8, "val", rng, clips=10, dense=True).shape == (1, 8)
    with pytest.raises(ValueError, match="mode"):
        sample_indices(100, 8, "eval", rng)


def test_clip_frame_spacing_is_what_a_training_clip_skipped():
    from tsmcli.data.sampling import clip_frame_spacing

    assert clip_frame_spacing("segments", [24, 24, 30, 300], 8) == (
        3,
        "the training list's median video (24 frames) over 8 segments",
    )
    assert clip_frame_spacing("even", [5], 8)[0] == 1  # shorter than a clip: every frame
    assert clip_frame_spacing("dense", [], 8) == (8, "dense sampling: 64 // T")
