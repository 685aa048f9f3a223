"""What ``tsm predict`` found (``PredictResult``), the class names it reports, and its files:
``--json`` (JSON Lines, one object per input), ``--csv`` (one row per scored clip) and
``--plot`` (the timeline of each long video). Every file is written atomically (``fileio``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli.data.lists import read_classes
from tsmcli.engine.intervals import Interval, IntervalRule, intervals
from tsmcli.engine.metrics import AverageMode, rank_classes
from tsmcli.engine.views import Protocol
from tsmcli.errors import CheckpointError, DataError
from tsmcli.fileio import atomic_write

PLOT_CLASSES = 5  # classes drawn in a timeline panel, unless more are best in some window


@dataclass(frozen=True)
class ClassScore:
    """One of the best classes of a clip: its label, name and probability."""

    label: int
    name: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "class": self.name, "probability": self.probability}


@dataclass(frozen=True)
class WindowPrediction:
    """One window of a long video: ``[start, end)`` in seconds and its best classes."""

    start: float
    end: float
    top: tuple[ClassScore, ...]
    scores: Tensor = field(repr=False)  # (K,) view-averaged, as tsm eval computes them

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "top": [c.to_dict() for c in self.top]}


@dataclass(frozen=True)
class InputPrediction:
    """One input. ``scores`` are its view-averaged scores, exactly ``tsm eval``'s for the same
    video (with windows: the mean of its windows'); ``top`` is empty and ``error`` says why
    when it could not be scored. ``windows`` is None without ``--window``."""

    path: Path
    source: str  # videos or frames
    top: tuple[ClassScore, ...]
    error: str | None = None
    scores: Tensor | None = field(default=None, repr=False)  # (K,)
    windows: tuple[WindowPrediction, ...] | None = None
    fps: float | None = None  # the rate the windows were cut at
    intervals: tuple[Interval, ...] | None = None  # with --intervals: the actions found

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """Its line of the ``--json`` file."""
        line: dict[str, Any] = {
            "input": str(self.path),
            "source": self.source,
            "error": self.error,
            "top": [c.to_dict() for c in self.top] if self.ok else None,
        }
        if self.windows is not None:
            line["fps"] = self.fps
            line["windows"] = [w.to_dict() for w in self.windows]
        if self.intervals is not None:
            line["intervals"] = [i.to_dict() for i in self.intervals]
        return line


@dataclass(frozen=True)
class PredictResult:
    """Every input's prediction, in the order the inputs were found, and how they were made."""

    predictions: list[InputPrediction]
    checkpoint: str
    protocol: Protocol
    views: int | None  # views per clip; None when nothing was scored
    classes: list[str]
    topk: int
    window: float | None
    stride: float | None
    videos_per_s: float
    written: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(not p.ok for p in self.predictions)


def probabilities(scores: Tensor, average: AverageMode) -> Tensor:
    """Class probabilities of view-averaged ``scores`` (..., K): a softmax of averaged raw
    scores, or the averaged probabilities themselves (``average="prob"``)."""
    return scores.softmax(dim=-1) if average == "score" else scores


def top_classes(
    scores: Tensor, classes: Sequence[str], k: int, average: AverageMode
) -> tuple[ClassScore, ...]:
    """The ``k`` best classes of one clip's scores (K,), best first (ties: lower label)."""
    probs = probabilities(scores, average)
    order = rank_classes(scores[None])[0][: min(k, scores.numel())]
    return tuple(ClassScore(int(i), classes[int(i)], float(probs[i])) for i in order)


def class_names(
    spec: str | Path | None,
    label_order: str,
    stored: Sequence[str] | None,
    num_classes: int,
    checkpoint: str | Path,
) -> list[str]:
    """The names of the model's classes: ``spec`` (a class list file, or the name of a shipped
    dataset whose list is used in ``label_order``) wins; else the names stored in the
    checkpoint; else the label numbers."""
    if spec is None:
        if stored and len(stored) == num_classes:
            return list(stored)
        return [str(i) for i in range(num_classes)]
    from tsmcli.data.manifest import list_manifests, load_manifest

    path = Path(spec)
    if path.is_file():
        names = read_classes(path)
    elif str(spec) in list_manifests():
        names = load_manifest(str(spec)).classes(label_order)
    else:
        raise DataError(
            f"--classes {spec}: no such file, nor a shipped dataset; give a class list (one "
            f"name a line) or one of {', '.join(list_manifests())}"
        )
    if len(names) != num_classes:
        raise CheckpointError(
            f"--classes {spec}: {len(names)} class names, but {checkpoint} has {num_classes} "
            "classes; give the class list of the dataset the model was trained on"
        )
    return names


def write_jsonl(result: PredictResult, path: str | Path) -> Path:
    """``--json``: one JSON object a line, one line per input (JSON Lines)."""
    lines = [json.dumps(p.to_dict()) + "\n" for p in result.predictions]
    return atomic_write(Path(path), "".join(lines))


def write_csv(result: PredictResult, path: str | Path) -> Path:
    """``--csv``: a row per whole input, per window and per interval (``kind``; ``start``/``end``
    in seconds, empty for a whole input), with the best classes and their probabilities (an
    interval: its class and score); a failed input is a row with its ``error``."""
    k = min(result.topk, len(result.classes))
    header = ["input", "kind", "start", "end", "error"]
    header += [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "probability")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for p in result.predictions:
        for w in p.windows or ():
            span = [f"{w.start:.3f}", f"{w.end:.3f}"]
            writer.writerow([p.path, "window", *span, "", *_cells(w.top)])
        for i in p.intervals or ():
            span = [f"{i.start:.3f}", f"{i.end:.3f}"]
            writer.writerow([p.path, "interval", *span, "", i.name, f"{i.score:.6f}"])
        if not p.ok or p.windows is None:
            writer.writerow([p.path, "input", "", "", p.error or "", *_cells(p.top)])
    return atomic_write(Path(path), buffer.getvalue())


def with_intervals(result: PredictResult, rule: IntervalRule) -> PredictResult:
    """``result`` with each windowed input's actions found by ``rule`` (``engine.intervals``)."""
    found = []
    for p in result.predictions:
        if p.windows:
            spans = [(w.start, w.end) for w in p.windows]
            probs = probabilities(
                torch.stack([w.scores for w in p.windows]), result.protocol.average
            )
            p = replace(p, intervals=tuple(intervals(spans, probs, result.classes, rule)))
        found.append(p)
    return replace(result, predictions=found)


def _cells(top: Sequence[ClassScore]) -> list[str]:
    return [cell for c in top for cell in (c.name, f"{c.probability:.6f}")]


@dataclass(frozen=True)
class TimelinePanel:
    """What ``--plot`` draws for one windowed input."""

    title: str
    times: list[float]  # the windows' centres, seconds
    curves: dict[str, list[float]]  # class name -> its probability at each time
    intervals: list[tuple[float, float, str]]  # (start, end, class) of each action found


def timeline_panels(result: PredictResult) -> list[TimelinePanel]:
    """What ``--plot`` draws for each windowed input: its name, the windows' centres in
    seconds, the probability over time of its top classes (every class best in some window,
    then the others by their highest probability up to ``PLOT_CLASSES`` in all), and its
    intervals when they were asked for."""
    average = result.protocol.average
    panels = []
    for p in result.predictions:
        if not p.windows:
            continue
        shaded = [(i.start, i.end, i.name) for i in p.intervals or ()]
        probs = probabilities(torch.stack([w.scores for w in p.windows]), average)  # (W, K)
        peak = probs.max(dim=0).values  # (K,)
        winners = set(probs.argmax(dim=1).tolist())
        order = sorted(range(len(peak)), key=lambda k: (k not in winners, -float(peak[k]), k))
        chosen = order[: max(PLOT_CLASSES, len(winners))]
        centres = [(w.start + w.end) / 2 for w in p.windows]
        lines = {result.classes[k]: probs[:, k].tolist() for k in chosen}
        panels.append(TimelinePanel(str(p.path), centres, lines, shaded))
    return panels
