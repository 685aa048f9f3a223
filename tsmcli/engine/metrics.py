"""Classification metrics for video recognition: top-k, mean class accuracy, confusion.

Pure tensor code, no I/O, so the same functions score a training epoch, ``tsm eval`` and a
distributed run gathered on rank 0. Accuracies are percentages (0-100), as in the paper.

Ties are broken deterministically: classes are ranked by ``(-score, class index)``, so of two
classes with the same score the lower index ranks first. ``torch.topk`` gives no such
guarantee, and a metric that changes with the machine is a metric that lies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from tsmcli.choices import AVERAGE_MODES

AverageMode = Literal[AVERAGE_MODES]


def _as_scores(scores) -> torch.Tensor:
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    return scores.detach().float().cpu()


def _as_labels(labels, n: int, num_classes: int | None = None) -> torch.Tensor:
    labels = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} labels for {n} predictions")
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"label {int(labels.min())} is negative")
    if num_classes is not None and labels.numel() and labels.max() >= num_classes:
        raise ValueError(f"label {int(labels.max())} is outside 0..{num_classes - 1}")
    return labels


def rank_classes(scores) -> torch.Tensor:
    """Class indices of each row ordered best first, ties by lower index: ``(N, K)`` long.

    NaN scores rank last, so a broken model scores as wrong rather than as lucky.
    """
    scores = _as_scores(scores)
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    # A stable descending sort keeps equal scores in index order: the (-score, index) rule.
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def predict(scores) -> torch.Tensor:
    """Top-1 class of each row under the same tie rule as ``topk_correct``: ``(N,)`` long."""
    return rank_classes(scores)[:, 0]


def topk_correct(scores, labels, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the k best-scored classes, for each k.

    A k larger than the number of classes is clamped to it (every row is then correct), the
    behaviour of ``argsort``-based implementations such as mmaction2's.
    """
    scores = _as_scores(scores)
    n, num_classes = scores.shape
    labels = _as_labels(labels, n, num_classes)
    ranked = rank_classes(scores)  # (N, K)
    # Position of the true label in each row's ranking (0 = top-1).
    position = (ranked == labels[:, None]).float().argmax(dim=1)  # (N,)
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        out[k] = int((position < min(k, num_classes)).sum())
    return out


def topk_accuracy(scores, labels, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each k (0.0 for an empty set)."""
    scores = _as_scores(scores)
    counts = topk_correct(scores, labels, ks)
    n = scores.shape[0]
    return {k: 100.0 * c / n if n else 0.0 for k, c in counts.items()}


def confusion_matrix(preds, labels, num_classes: int) -> torch.Tensor:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    preds = torch.as_tensor(preds).detach().cpu().long().reshape(-1)
    labels = _as_labels(labels, preds.numel(), num_classes)
    if preds.numel() and (preds.min() < 0 or preds.max() >= num_classes):
        raise ValueError(f"predictions must lie in 0..{num_classes - 1}")
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_accuracy(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(support, correct, accuracy %)`` per class from a confusion matrix.

    A class absent from the ground truth has support 0 and accuracy NaN: it was not measured.
    """
    support = confusion.sum(dim=1)
    correct = confusion.diagonal()
    accuracy = torch.full(support.shape, float("nan"), dtype=torch.float64)
    seen = support > 0
    accuracy[seen] = 100.0 * correct[seen].double() / support[seen].double()
    return support, correct, accuracy


def mean_class_accuracy(preds, labels, num_classes: int | None = None) -> float:
    """Mean over ground-truth classes of the per-class top-1 accuracy, in percent.

    Only classes that appear in ``labels`` are averaged. mmaction2 builds its confusion matrix
    over the union of true and predicted labels and counts a class that is only ever
    predicted as 0%, which lowers the mean depending on the model's mistakes; we do not.
    """
    preds = torch.as_tensor(preds).detach().cpu().long().reshape(-1)
    labels = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    if labels.numel() == 0:
        return 0.0
    if num_classes is None:
        num_classes = int(max(labels.max(), preds.max())) + 1
    _, _, accuracy = per_class_accuracy(confusion_matrix(preds, labels, num_classes))
    return float(accuracy[~accuracy.isnan()].mean())


def average_views(view_scores, mode: AverageMode = "score") -> torch.Tensor:
    """Average ``(N, V, K)`` per-view scores into ``(N, K)`` per-video scores.

    ``score`` averages the raw logits (the official TSM test); ``prob`` applies a softmax to
    each view first, so one overconfident view cannot outvote the others.
    """
    view_scores = torch.as_tensor(view_scores).detach().float()
    if view_scores.dim() != 3:
        raise ValueError(f"view scores must be (N, V, K), got shape {tuple(view_scores.shape)}")
    if mode == "score":
        return view_scores.mean(dim=1)
    if mode == "prob":
        return view_scores.softmax(dim=2).mean(dim=1)
    raise ValueError(f"unknown average mode {mode!r}; choose one of {', '.join(AVERAGE_MODES)}")
