"""Labelled action intervals of a long video, from the windows ``tsm predict --window`` scores.

The rule (``IntervalRule``), in order:

1. The video is cut at every window's start and end; each stretch between two such edges gets
   the mean class probabilities of the windows that cover it (with windows every ``stride``
   seconds, each ``stride``-long stretch is covered by window / stride windows).
2. A stretch takes its best class, unless that class's mean probability is under
   ``threshold``: then no action is named there (background).
3. Neighbouring stretches of one class join into an interval; its score is the mean of its
   stretches' probabilities of that class.
4. An interval shorter than ``min_duration`` seconds is dropped (its time becomes background),
   and then two intervals of one class with at most ``merge_gap`` seconds of background
   between them join into one, the gap included (a short doubt inside one action).

Nothing here decodes or scores: the windows come from ``engine.predict`` (``--intervals``).
On long videos joined from the demo's clips, the demo's offline TSM with 3 s windows every
0.5 s recovers the true actions with a mean IoU of 0.57 under the defaults
(``bench/intervals.py``): a window across a join sees the end of one motion and the start of
the next, and often calls it a third class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tsmcli.errors import UsageError


@dataclass(frozen=True)
class IntervalRule:
    """How windows become intervals (see the module's rule)."""

    threshold: float = 0.3  # below this mean probability a stretch names no action
    min_duration: float = 1.0  # seconds: shorter intervals are dropped
    merge_gap: float = 1.0  # seconds of background two intervals of one class may straddle

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"--threshold must be in [0, 1], got {self.threshold}")
        for name, value in (("--min-duration", self.min_duration), ("--merge-gap", self.merge_gap)):
            if not value >= 0.0:
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
    label: int | None  # None: background
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
    runs: list[_Run] = []
    for begin, end, mean in _cells(spans, probabilities):
        p, k = (float(v) for v in mean.max(dim=0))
        label = int(k) if p >= rule.threshold else None
        if runs and runs[-1].label == label:
            runs[-1].end = end
            runs[-1].probabilities.append(p)
        else:
            runs.append(_Run(label, begin, end, [p]))
    kept = [r for r in runs if r.label is not None and r.end - r.start >= rule.min_duration - 1e-9]
    return [
        Interval(
            r.label, classes[r.label], r.start, r.end, sum(r.probabilities) / len(r.probabilities)
        )
        for r in _merge(kept, rule.merge_gap)
    ]


def _cells(spans: Sequence[tuple[float, float]], probabilities: Tensor):
    """The stretches between consecutive window edges, each with the mean probabilities of the
    windows that cover it (a stretch no window covers is left out)."""
    edges = sorted({t for span in spans for t in span})
    starts = torch.tensor([s for s, _ in spans])
    ends = torch.tensor([e for _, e in spans])
    for begin, end in zip(edges, edges[1:], strict=False):
        middle = (begin + end) / 2
        covering = (starts <= middle) & (middle < ends)
        if covering.any():
            yield begin, end, probabilities[covering].mean(dim=0)


def _merge(runs: list[_Run], gap: float) -> list[_Run]:
    """Join neighbouring runs of one class at most ``gap`` seconds apart, the gap included."""
    merged: list[_Run] = []
    for run in runs:
        last = merged[-1] if merged else None
        if last is not None and last.label == run.label and run.start - last.end <= gap + 1e-9:
            last.end = run.end
            last.probabilities.extend(run.probabilities)
        else:
            merged.append(_Run(run.label, run.start, run.end, list(run.probabilities)))
    return merged


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
