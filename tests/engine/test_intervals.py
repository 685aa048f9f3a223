"""Action intervals from a timeline of windows: the rule worked by hand, and its options."""

from __future__ import annotations

import pytest
import torch

from tsmcli.engine.intervals import Interval, IntervalRule, intervals, mean_iou, temporal_iou
from tsmcli.errors import UsageError

CLASSES = ["a", "b", "c"]


def probs(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_windows_become_intervals_by_the_documented_rule():
    """Windows of 2 s every 1 s over 6 s: stretches of 1 s, each the mean of the windows over
    it. a a | b b b, with one doubtful window, worked by hand."""
    spans = [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    p = probs(
        [0.9, 0.1, 0.0],  # 0-2
        [0.8, 0.2, 0.0],  # 1-3
        [0.1, 0.8, 0.1],  # 2-4
        [0.2, 0.7, 0.1],  # 3-5
        [0.0, 1.0, 0.0],  # 4-6
    )
    # stretch means: 0-1 a .9; 1-2 a .85; 2-3 (w1, w2) a .45 b .5; 3-4 (w2, w3) b .75;
    # 4-5 (w3, w4) b .85; 5-6 b 1.0
    found = intervals(spans, p, CLASSES, IntervalRule(threshold=0.3, min_duration=1, merge_gap=1))
    assert found == [
        Interval(0, "a", 0, 2, pytest.approx((0.9 + 0.85) / 2)),
        Interval(1, "b", 2, 6, pytest.approx((0.5 + 0.75 + 0.85 + 1.0) / 4)),
    ]
    strict = intervals(spans, p, CLASSES, IntervalRule(threshold=0.6, min_duration=1, merge_gap=0))
    assert [(i.name, i.start, i.end) for i in strict] == [("a", 0, 2), ("b", 3, 6)]  # 2-3: none
    joined = intervals(spans, p, CLASSES, IntervalRule(threshold=0.6, min_duration=3, merge_gap=0))
    assert [(i.name, i.start, i.end) for i in joined] == [("b", 3, 6)]  # a is too short


def test_a_short_doubt_inside_one_action_is_bridged():
    spans = [(t, t + 1) for t in range(5)]
    p = probs([1, 0, 0], [1, 0, 0], [0.2, 0.2, 0.6], [1, 0, 0], [1, 0, 0])
    rule = IntervalRule(threshold=0.5, min_duration=1.5, merge_gap=1)
    (only,) = intervals(spans, p, CLASSES, rule)  # c (1 s) dropped, the gap bridged
    assert (only.name, only.start, only.end, only.score) == ("a", 0, 5, 1.0)
    kept = intervals(spans, p, CLASSES, IntervalRule(threshold=0.5, min_duration=1, merge_gap=0))
    assert [i.name for i in kept] == ["a", "c", "a"]


def test_iou_counts_missed_and_invented_actions():
    truth = [(0, 0.0, 3.0), (1, 3.0, 6.0)]
    exact = [Interval(0, "a", 0, 3, 1.0), Interval(1, "b", 3, 6, 1.0)]
    assert mean_iou(exact, truth) == 1.0
    assert temporal_iou((0, 2), (1, 3)) == pytest.approx(1 / 3)
    shifted = [Interval(0, "a", 0, 2, 1.0), Interval(1, "b", 2, 6, 1.0)]
    assert mean_iou(shifted, truth) == pytest.approx((2 / 3 + 3 / 4) / 2)
    extra = [*exact, Interval(2, "c", 6, 7, 1.0)]  # invented: counts 0
    assert mean_iou(extra, truth) == pytest.approx(2 / 3)
    assert mean_iou(exact[:1], truth) == pytest.approx(1 / 2)  # missed: counts 0


def test_the_rule_refuses_values_that_mean_nothing():
    for bad, option in ((dict(threshold=1.5), "--threshold"), (dict(min_duration=-1), "--min")):
        with pytest.raises(UsageError, match=option):
            IntervalRule(**bad)
