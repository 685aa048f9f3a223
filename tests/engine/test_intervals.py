"""Action intervals from a timeline of windows: the rule worked by hand, and its options."""

from __future__ import annotations

import pytest
import torch

from tsmcli.engine.intervals import (
    Interval,
    IntervalRule,
    _suppress,
    intervals,
    mean_iou,
    temporal_iou,
)
from tsmcli.errors import UsageError

CLASSES = ["a", "b", "c"]


def probs(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_windows_become_intervals_by_the_documented_rule():
    """Windows of 2 s every 1 s over 6 s (a a | b b b, the join read as a third class c),
    worked by hand. Neighbours overlap by 1 s (IoU 1/3), windows 2 s apart not at all."""
    spans = [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    p = probs(
        [0.9, 0.1, 0.0],  # 0-2
        [0.8, 0.2, 0.0],  # 1-3
        [0.2, 0.3, 0.5],  # 2-4: across the join, c
        [0.2, 0.7, 0.1],  # 3-5
        [0.0, 1.0, 0.0],  # 4-6
    )
    # most probable first: 4-6 (b 1.0) kept, 0-2 (a .9) kept, 1-3 and 3-5 overlap a kept
    # window at IoU 1/3 > 0.1 and go, 2-4 (c .5) touches both kept ones only at a point
    found = intervals(spans, p, CLASSES, IntervalRule(threshold=0.3, nms_iou=0.1))
    assert found == [
        Interval(0, "a", 0, 2, pytest.approx(0.9)),
        Interval(2, "c", 2, 4, pytest.approx(0.5)),
        Interval(1, "b", 4, 6, pytest.approx(1.0)),
    ]
    strict = intervals(spans, p, CLASSES, IntervalRule(threshold=0.6, nms_iou=0.1))
    assert [(i.name, i.start, i.end) for i in strict] == [("a", 0, 2), ("b", 4, 6)]
    # nothing suppressed: each class's windows join, their scores averaged
    every = intervals(spans, p, CLASSES, IntervalRule(threshold=0.3, nms_iou=0.5))
    assert every == [
        Interval(0, "a", 0, 3, pytest.approx((0.9 + 0.8) / 2)),
        Interval(2, "c", 2, 4, pytest.approx(0.5)),
        Interval(1, "b", 3, 6, pytest.approx((0.7 + 1.0) / 2)),
    ]
    short = intervals(spans, p, CLASSES, IntervalRule(threshold=0.3, nms_iou=0.5, min_duration=2.5))
    assert [i.name for i in short] == ["a", "b"]  # c lasts 2 s


def test_kept_windows_of_one_class_join_across_gaps_shorter_than_a_window():
    """One action over 0-6 s, windows of 2 s every 0.5 s: suppression keeps 1.5-3.5 and then
    4-6 (0.5 s apart); 0-2 overlaps 1.5-3.5 at IoU 1/7 > 0.1 and goes, as do the others."""
    spans = [(t / 2, t / 2 + 2) for t in range(9)]
    a = [0.7, 0.6, 0.6, 1.0, 0.6, 0.6, 0.6, 0.8, 0.9]
    p = probs(*[[x, 1 - x, 0.0] for x in a])
    (joined,) = intervals(spans, p, CLASSES)  # the default gap: one window's length
    assert (joined.name, joined.start, joined.end) == ("a", 1.5, 6)
    assert joined.score == pytest.approx((1.0 + 0.9) / 2)
    apart = intervals(spans, p, CLASSES, IntervalRule(merge_gap=0.25))
    assert [(i.start, i.end) for i in apart] == [(1.5, 3.5), (4, 6)]


def test_suppression_keeps_a_maximal_set_of_windows_that_barely_overlap():
    """On random timelines: no two kept windows overlap at an IoU over the bound, and every
    window over the threshold that was not kept overlaps a kept one at least as probable."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        count = int(torch.randint(1, 40, (1,), generator=generator))
        spans = [(t * 0.5, t * 0.5 + 3) for t in range(count)]
        p = torch.rand(count, 3, generator=generator).softmax(dim=1)
        rule = IntervalRule(threshold=0.4, nms_iou=0.1, merge_gap=0, min_duration=0)
        best = p.max(dim=1).values.tolist()
        kept = _suppress(spans, best, rule)
        assert all(best[i] >= 0.4 for i in kept)
        for i in kept:
            for j in kept:
                assert i == j or temporal_iou(spans[i], spans[j]) <= 0.1 + 1e-9
        for i in set(range(count)) - set(kept):
            if best[i] >= 0.4:
                assert any(
                    temporal_iou(spans[i], spans[j]) > 0.1 and best[j] >= best[i] for j in kept
                )


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
    refused = (
        (dict(threshold=1.5), "--threshold"),
        (dict(nms_iou=-0.1), "--nms-iou"),
        (dict(min_duration=-1), "--min-duration"),
        (dict(merge_gap=-1), "--merge-gap"),
    )
    for bad, option in refused:
        with pytest.raises(UsageError, match=option):
            IntervalRule(**bad)
