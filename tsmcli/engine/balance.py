"""Remedies for a train list whose classes are far from equal in size: class-balanced epochs
(``data.sampler: balanced``) and inverse-frequency loss weights (``train.class_weights: auto``).

Both are functions of the list's labels (and, for the draws, of the seed and the epoch) only,
so a run stays exactly resumable and every rank of a torchrun job computes the same epoch.
numpy only: ``engine.distributed.ShardedSampler`` draws its epochs from here, the trainer its
weights, and ``tsm doctor`` its class counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# the third key of the balanced draws' generator: apart from epoch_permutation's (seed, epoch)
_BALANCED_STREAM = 1


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Videos per class, ``(num_classes,)`` int64; labels at or above ``num_classes`` widen it
    (a list checked elsewhere for its label range still gets counted)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels, minlength=num_classes)


def inverse_frequency_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """``train.class_weights: auto``: class c weighs ``N / (K * n_c)``, with ``n_c`` its videos
    among the ``N`` of the list and ``K`` the classes that have any. Normalised so that the
    mean weight over the list's videos is 1: ``sum_c n_c * N / (K * n_c) / N = 1``, and the
    loss keeps the scale the learning rate was tuned for. A class without videos weighs 1 (it
    is never a label, so its weight never counts). ``(num_classes,)`` float64."""
    counts = class_counts(labels, num_classes)[:num_classes].astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def balanced_order(labels: Sequence[int] | np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The videos epoch ``epoch`` trains on with ``data.sampler: balanced``: as many draws as
    videos, split equally between the classes that have videos (the remainder to classes
    drawn at random), shuffled together. A class takes its share by going through its videos
    in a shuffled order, again and again where its share is larger than the class: a rare
    class's videos repeat evenly, a large class's share are distinct videos. A function of
    (labels, seed, epoch) only; another epoch draws otherwise."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, _BALANCED_STREAM])
    classes = np.unique(labels)
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    shares = np.full(len(classes), len(labels) // len(classes))
    shares[rng.permutation(len(classes))[: len(labels) % len(classes)]] += 1
    drawn = []
    for label, share in zip(classes.tolist(), shares.tolist(), strict=True):
        members = np.flatnonzero(labels == label)
        rounds = -(-share // len(members))
        cycle = np.concatenate([rng.permutation(members) for _ in range(rounds)])
        drawn.append(cycle[:share])
    return rng.permutation(np.concatenate(drawn))
