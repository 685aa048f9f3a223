"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tsmcli.engine.metrics import (
    average_views,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    predict,
    rank_classes,
    topk_accuracy,
    topk_correct,
)

# 4 videos, 6 classes. Ranks of the true label (0-based): 0, 2, 5, 1.
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 2: third
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: last
        [0.2, 0.3, 0.1, 0.0, 0.0, 0.0],  # label 0: second
    ]
)
LABELS = torch.tensor([0, 2, 5, 0])


def test_topk_counts_and_percentages_by_hand():
    assert topk_correct(SCORES, LABELS, ks=(1, 2, 3, 5, 6)) == {1: 1, 2: 2, 3: 3, 5: 3, 6: 4}
    acc = topk_accuracy(SCORES, LABELS, ks=(1, 5))
    assert acc == {1: 25.0, 5: 75.0}


def test_ties_go_to_the_lower_class_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    assert rank_classes(scores).tolist() == [[1, 2, 3, 0, 4]]
    assert predict(scores).tolist() == [1]
    # Label 2 ties with the top score but loses the tie: not top-1, but top-2.
    assert topk_correct(scores, [2], ks=(1, 2)) == {1: 0, 2: 1}
    assert topk_correct(scores, [1], ks=(1,)) == {1: 1}
    # Label 3 is third among three equal scores.
    assert topk_correct(scores, [3], ks=(2, 3)) == {2: 0, 3: 1}


def test_tie_rule_holds_for_a_wide_row_of_equal_scores():
    scores = torch.zeros(3, 1000)
    assert predict(scores).tolist() == [0, 0, 0]
    assert rank_classes(scores)[0].tolist() == list(range(1000))


def test_nan_scores_rank_last():
    scores = torch.tensor([[float("nan"), 0.1, 0.2]])
    assert rank_classes(scores).tolist() == [[2, 1, 0]]
    assert topk_correct(scores, [0], ks=(1, 2, 3)) == {1: 0, 2: 0, 3: 1}


def test_k_larger_than_the_number_of_classes_is_clamped():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.3, 0.2, 0.1]])
    labels = torch.tensor([2, 2])  # last in both rows
    assert topk_correct(scores, labels, ks=(1, 3, 5)) == {1: 0, 3: 2, 5: 2}
    assert topk_accuracy(scores, labels, ks=(5,)) == {5: 100.0}


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="outside 0..5"):
        topk_correct(SCORES, [0, 1, 2, 6])
    with pytest.raises(ValueError, match="3 labels for 4"):
        topk_correct(SCORES, [0, 1, 2])
    with pytest.raises(ValueError, match="at least 1"):
        topk_correct(SCORES, LABELS, ks=(0,))


def test_numpy_inputs_give_the_same_counts():
    assert topk_correct(SCORES.numpy(), LABELS.numpy()) == topk_correct(SCORES, LABELS)


def test_confusion_matrix_rows_are_true_columns_predicted():
    preds = [0, 1, 1, 2, 0]
    labels = [0, 1, 2, 2, 2]
    cm = confusion_matrix(preds, labels, num_classes=4)
    expected = [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
    ]
    assert cm.tolist() == expected
    assert int(cm.sum()) == 5


def test_per_class_accuracy_marks_absent_classes_unmeasured():
    cm = confusion_matrix([0, 1, 1, 2, 0], [0, 1, 2, 2, 2], num_classes=4)
    support, correct, accuracy = per_class_accuracy(cm)
    assert support.tolist() == [1, 1, 3, 0]
    assert correct.tolist() == [1, 1, 1, 0]
    assert accuracy[:3].tolist() == pytest.approx([100.0, 100.0, 100.0 / 3])
    assert math.isnan(accuracy[3])


def test_mean_class_accuracy_averages_ground_truth_classes_only():
    # Class 0: 2/2; class 1: 1/2; class 2: never in the ground truth but predicted once.
    preds = [0, 0, 1, 2]
    labels = [0, 0, 1, 1]
    # Ours: mean(100, 50) = 75. mmaction2 would count class 2 as 0%: mean(100, 50, 0) = 50.
    assert mean_class_accuracy(preds, labels, num_classes=5) == pytest.approx(75.0)
    assert mean_class_accuracy(preds, labels) == pytest.approx(75.0)
    # On an unbalanced set it differs from top-1: class 0 4/4, class 2 0/1 -> 50; top-1 80.
    preds = [0, 0, 0, 0, 1]
    labels = [0, 0, 0, 0, 2]
    assert mean_class_accuracy(preds, labels, num_classes=3) == pytest.approx(50.0)


def test_average_views_score_and_prob_by_hand():
    # One video, two views, two classes.
    views = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # (N=1, V=2, K=2)
    assert average_views(views, "score").tolist() == [[1.0, 0.5]]
    p1 = 1 / (1 + math.exp(-2.0))  # softmax([2, 0])[0]
    p2 = 1 / (1 + math.exp(1.0))  # softmax([0, 1])[0]
    expected = [(p1 + p2) / 2, ((1 - p1) + (1 - p2)) / 2]
    assert average_views(views, "prob")[0].tolist() == pytest.approx(expected)


def test_average_views_can_change_the_winner():
    # Logit averaging lets one confident view win; probability averaging does not.
    views = torch.tensor([[[10.0, 0.0]] + [[0.0, 1.0]] * 4])  # (1, 5, 2)
    assert predict(average_views(views, "score")).tolist() == [0]
    assert predict(average_views(views, "prob")).tolist() == [1]


def test_average_views_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, V, K\)"):
        average_views(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown average mode"):
        average_views(torch.zeros(1, 1, 2), "max")


def test_empty_set():
    empty = np.zeros((0, 3), dtype=np.float32)
    assert topk_accuracy(empty, np.zeros(0, dtype=np.int64)) == {1: 0.0, 5: 0.0}
    assert mean_class_accuracy([], []) == 0.0
