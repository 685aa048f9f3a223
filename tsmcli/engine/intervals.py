"""Labelled action intervals of a long video, from the windows ``tsm predict --window`` scores.

Each window is a candidate action: its best class, scored by that class's probability. The
rule (``IntervalRule``), in order:

1. A candidate under ``threshold`` is dropped (no action is named from it).
2. Non-maximum suppression: candidates are taken from the most probable down, and one is kept
   unless its temporal IoU with a window already kept is over ``nms_iou``. Windows every
   ``stride`` seconds overlap heavily; this keeps the windows that lie on one action, which a
   classifier trained on whole clips calls with confidence, over those across a change of
   action, which see the end of one motion and the start of the next and often read as a
   third class.
3. Kept windows of one class next to each other in time join into one interval when at most
   ``merge_gap`` seconds apart (by default the window's length: suppression leaves gaps
   shorter than a window inside a long action, and no window that long could see a pause
   shorter than itself). The interval's score is the mean probability of its windows.
4. An interval shorter than ``min_duration`` seconds is dropped.

This is the sliding-window detector's usual decoding (score, suppress, join). Nothing here
decodes or scores video: the windows come from ``engine.predict`` (``--intervals``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from tsmcli.errors import UsageError


@dataclass(frozen=True)
class IntervalRule:
    """How windows become intervals (see the module's rule)."""

    threshold: float = 0.3  # a window whose best class is under this names no action
    min_duration: float = 1.0  # seconds: shorter intervals are dropped
    merge_gap: float | None = None  # seconds between kept windows of one class that join
    nms_iou: float = 0.1  # a window overlapping a more probable kept one more than this goes

    def __post_init__(self) -> None:
        for name, value in (("--threshold", self.threshold), ("--nms-iou", self.nms_iou)):
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {value}")
        for name, value in (("--min-duration", self.min_duration), ("--merge-gap", self.merge_gap)):
            if value is not None and not value >= 0.0:
                raise UsageError(f"{name} must be seconds >= 0, got {value}")


@dataclass(frozen=True)
class Interval:
    """One action: ``label`` from ``start`` to ``end`` seconds, ``score`` its mean probability."""

    label: int
    name: str
    start: float
    end: float
    score: float

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "class": self.name,
            "start": self.start,
            "end": self.end,
            "score": self.score,
        }


@dataclass
class _Run:
    label: int
    start: float
    end: float
    probabilities: list[float]


def intervals(
    spans: Sequence[tuple[float, float]],
    probabilities: Tensor,
    classes: Sequence[str],
    rule: IntervalRule = IntervalRule(),
) -> list[Interval]:
    """The intervals of one video: ``spans`` are its windows' ``(start, end)`` in seconds and
    ``probabilities`` their class probabilities ``(W, K)``."""
    if len(spans) != probabilities.shape[0]:
        raise ValueError(f"{len(spans)} windows but {probabilities.shape[0]} rows of scores")
    if not spans:
        return []
    best, labels = (t.tolist() for t in probabilities.max(dim=1))
    kept = _suppress(spans, best, rule)
    gap = rule.merge_gap if rule.merge_gap is not None else max(e - s for s, e in spans)
    runs: list[_Run] = []
    for i in sorted(kept, key=lambda i: spans[i]):
        (start, end), label = spans[i], labels[i]
        last = runs[-1] if runs else None
        if last is not None and last.label == label and start - last.end <= gap + 1e-9:
            last.end = max(last.end, end)
            last.probabilities.append(best[i])
        else:
            runs.append(_Run(label, start, end, [best[i]]))
    return [
        Interval(
            r.label, classes[r.label], r.start, r.end, sum(r.probabilities) / len(r.probabilities)
        )
        for r in runs
        if r.end - r.start >= rule.min_duration - 1e-9
    ]


def _suppress(spans: Sequence[tuple[float, float]], best: list[float], rule: IntervalRule):
    """The windows non-maximum suppression keeps: most probable first (ties: the earlier),
    each unless it overlaps a kept one at a temporal IoU over ``rule.nms_iou``."""
    longest = max(e - s for s, e in spans)
    order = sorted(range(len(spans)), key=lambda i: (-best[i], spans[i]))
    starts: list[float] = []  # of the kept windows, sorted
    kept_at: list[int] = []
    for i in order:
        if best[i] < rule.threshold:
            break
        start, end = spans[i]
        # only kept windows starting within one window's length before this one can overlap it
        low = bisect.bisect_left(starts, start - longest)
        high = bisect.bisect_left(starts, end)
        if all(temporal_iou(spans[i], spans[j]) <= rule.nms_iou + 1e-9 for j in kept_at[low:high]):
            at = bisect.bisect_left(starts, start)
            starts.insert(at, start)
            kept_at.insert(at, i)
    return kept_at


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time spans."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def mean_iou(found: Sequence[Interval], truth: Sequence[tuple[int, float, float]]) -> float:
    """How well ``found`` recovers the true ``(label, start, end)`` actions: pairs of one class
    are matched one to one, best IoU first, and the IoUs of the pairs are averaged over the
    pairs and every interval left unmatched on either side (each counts 0), so a missed action
    and an invented one both cost."""
    pairs = sorted(
        (
            (temporal_iou((f.start, f.end), (s, e)), i, j)
            for i, f in enumerate(found)
            for j, (k, s, e) in enumerate(truth)
            if f.label == k
        ),
        reverse=True,
    )
    used_found, used_truth, total = set(), set(), 0.0
    for iou, i, j in pairs:
        if iou > 0 and i not in used_found and j not in used_truth:
            used_found.add(i)
            used_truth.add(j)
            total += iou
    count = len(used_found) + (len(found) - len(used_found)) + (len(truth) - len(used_truth))
    return total / count if count else 1.0
