"""Class-balanced epochs and inverse-frequency loss weights: the distribution each promises."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tsmcli.engine.balance import balanced_order, class_counts, inverse_frequency_weights
from tsmcli.engine.distributed import DistContext, ShardedSampler
from tsmcli.engine.train_loop import _loss

# 112 videos: classes of 100, 10 and 2 videos, interleaved so a class is not one block
LABELS = np.array([0] * 100 + [1] * 10 + [2] * 2)[np.random.default_rng(5).permutation(112)]


def test_an_epoch_draws_each_class_equally_often():
    order = balanced_order(LABELS, seed=0, epoch=0)
    assert len(order) == len(LABELS)  # an epoch has as many draws as the list has videos
    per_class = Counter(LABELS[order].tolist())
    assert sorted(per_class) == [0, 1, 2]
    assert sorted(per_class.values()) == [37, 37, 38]  # 112 / 3, the remainder to one class


def test_a_rare_class_repeats_its_videos_evenly_and_a_large_one_draws_distinct_videos():
    order = balanced_order(LABELS, seed=3, epoch=2)
    rare = Counter(int(i) for i in order if LABELS[i] == 2)
    assert len(rare) == 2 and max(rare.values()) - min(rare.values()) <= 1
    middle = Counter(int(i) for i in order if LABELS[i] == 1)
    assert len(middle) == 10 and max(middle.values()) - min(middle.values()) <= 1
    large = [int(i) for i in order if LABELS[i] == 0]
    assert len(set(large)) == len(large)  # 37 or 38 of its 100 videos, none twice


def test_the_draws_are_a_function_of_seed_and_epoch():
    first = balanced_order(LABELS, seed=0, epoch=1)
    assert np.array_equal(first, balanced_order(LABELS, seed=0, epoch=1))
    assert not np.array_equal(first, balanced_order(LABELS, seed=0, epoch=2))
    assert not np.array_equal(first, balanced_order(LABELS, seed=1, epoch=1))


def test_two_ranks_partition_the_epoch():
    """Each rank takes every second draw of the same epoch: together, the whole epoch once."""
    ranks = []
    for rank in (0, 1):
        sampler = ShardedSampler(len(LABELS), rank=rank, world_size=2, seed=7, labels=LABELS)
        sampler.set_epoch(4)
        ranks.append(list(sampler))
    epoch = balanced_order(LABELS, seed=7, epoch=4)
    assert len(ranks[0]) == len(ranks[1]) == 56
    interleaved = [index for pair in zip(*ranks, strict=True) for index in pair]
    assert interleaved == epoch.tolist()


def test_an_odd_epoch_is_padded_like_the_uniform_one():
    labels = LABELS[:111]
    shares = [
        list(ShardedSampler(111, rank=r, world_size=2, seed=0, labels=labels)) for r in (0, 1)
    ]
    epoch = balanced_order(labels, seed=0, epoch=0).tolist()
    assert len(shares[0]) == len(shares[1]) == 56
    # the last round wraps around to the epoch's first draw
    assert sorted(shares[0] + shares[1]) == sorted([*epoch, epoch[0]])


def test_auto_weights_are_the_formula_by_hand_and_average_one_over_the_clips():
    labels = [0] * 6 + [1] * 3 + [2] * 1  # class 3 has no video
    weights = inverse_frequency_weights(labels, 4)
    # N / (K * n_c) with N = 10 clips and K = 3 classes that have any
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3, 1.0])
    assert np.mean(weights[labels]) == pytest.approx(1.0)
    assert class_counts(labels, 4).tolist() == [6, 3, 1, 0]


def test_the_weighted_loss_is_the_weighted_cross_entropy_by_hand():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 4), torch.tensor([0, 2, 2, 1, 3])
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    log_p = torch.log_softmax(logits, dim=1)
    by_hand = -sum(weights[y] * log_p[i, y] for i, y in enumerate(labels.tolist())) / 5
    assert _loss(logits, labels, class_weights=weights).item() == pytest.approx(by_hand.item())
    # without weights: the plain mean; with all weights 1: the same
    plain = F.cross_entropy(logits, labels)
    assert _loss(logits, labels, class_weights=torch.ones(4)).item() == pytest.approx(plain.item())


def test_a_batch_of_one_class_still_carries_its_weight():
    """PyTorch's weighted mean divides by the batch's weights, cancelling them in a batch of
    one class; ours divides by the batch size."""
    logits, labels = torch.randn(3, 2), torch.tensor([1, 1, 1])
    weights = torch.tensor([1.0, 3.0])
    plain = F.cross_entropy(logits, labels)
    assert _loss(logits, labels, class_weights=weights).item() == pytest.approx(3 * plain.item())


def test_the_recipe_keys_reach_the_sampler_and_the_loss(tmp_path: Path, make_video):
    """prepare_data draws balanced epochs and hands the loss the auto weights."""
    from tsmcli.engine.train_setup import prepare_data
    from tsmcli.recipe import load_recipe

    lines = []
    for i, label in enumerate([0, 0, 0, 0, 0, 1]):
        make_video(tmp_path / f"v{i}.mp4", num_frames=4, size=32, seed=i)
        lines.append(f"v{i}.mp4 4 {label}\n")
    (tmp_path / "train.txt").write_text("".join(lines))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    recipe = load_recipe(
        "demo",
        [
            f"data.root={tmp_path}",
            f"data.train_list={tmp_path / 'train.txt'}",
            "data.val_list=null",
            "data.flip=off",
            "data.frame_cache_mb=0",
            "data.sampler=balanced",
            "train.class_weights=auto",
            "train.batch_size=2",
            "train.workers=0",
            "train.seed=11",
        ],
    )
    data = prepare_data(recipe, DistContext(0, 1, 0, torch.device("cpu")))
    data.train_sampler.set_epoch(3)
    labels = [0, 0, 0, 0, 0, 1]
    assert list(data.train_sampler) == balanced_order(labels, seed=11, epoch=3).tolist()
    assert data.class_weights.tolist() == pytest.approx([6 / 10, 6 / 2])
