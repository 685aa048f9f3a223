"""What an evaluation produced (``EvalResult``) and the files of ``tsm eval --out``:
per-class accuracy, the confusion matrix (as CSV and as a heat map, or the top confusions
when there are too many classes), per-video predictions, and every video's full score vector
(``scores.csv``: what ``tsm fuse`` combines across models; ``read_scores`` reads it back).

Every file is written atomically (``fileio``); the heat map is rendered off-screen (Agg).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli.data.lists import ListEntry
from tsmcli.engine.metrics import (
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    rank_classes,
    topk_accuracy,
)
from tsmcli.engine.views import Protocol
from tsmcli.errors import DataError
from tsmcli.fileio import Output, atomic_write, atomic_write_with

TOP_K = 5
# video, label, then one column a class (headed by its name): the view-averaged scores, as
# many digits as a float32 needs to be read back exactly
SCORES_FILE = "scores.csv"
# every file ``write_reports`` may write (the heat map, or the top confusions beyond 60 classes)
REPORT_FILES = (
    "per_class.csv",
    "confusion.csv",
    "confusion.png",
    "top_confusions.txt",
    "predictions.csv",
    SCORES_FILE,
)
HEATMAP_MAX_CLASSES = 60  # above this a heat map is unreadable: list the top confusions instead
TOP_CONFUSIONS = 50


@dataclass(frozen=True)
class ClassAccuracy:
    """One row of per_class.csv; ``accuracy`` is None for a class absent from the list."""

    label: int
    name: str
    support: int
    correct: int
    accuracy: float | None


@dataclass(frozen=True)
class VideoPrediction:
    """One row of predictions.csv: the best classes of a video, best first, with scores."""

    video: str
    label: int
    top_labels: tuple[int, ...]
    top_scores: tuple[float, ...]


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent; ``scores`` are the view-averaged scores in list order."""

    top1: float
    top5: float
    mean_class_accuracy: float
    num_videos: int
    views: int
    videos_per_s: float
    protocol: Protocol
    checkpoint: str
    classes: list[str]
    per_class: list[ClassAccuracy] = field(repr=False)
    confusion: Tensor = field(repr=False)  # (K, K) rows true, columns predicted
    predictions: list[VideoPrediction] = field(repr=False)
    scores: Tensor = field(repr=False)  # (N, K)
    labels: Tensor = field(repr=False)  # (N,)

    def summary(self) -> dict[str, Any]:
        """The JSON report (``--json``): numbers and what produced them."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "mean_class_accuracy": self.mean_class_accuracy,
            "num_videos": self.num_videos,
            "views": self.views,
            "checkpoint": self.checkpoint,
            "protocol": self.protocol.to_dict(),
        }


def eval_result(
    entries: Sequence[ListEntry],
    scores: Tensor,
    views: int,
    protocol: Protocol,
    checkpoint: Path,
    classes: list[str],
    videos_per_s: float,
) -> EvalResult:
    """The metrics of view-averaged ``scores`` (N, K) of the listed videos, in list order."""
    num_classes = scores.shape[1]
    labels = torch.tensor([e.label for e in entries], dtype=torch.long)
    accuracy = topk_accuracy(scores, labels, (1, TOP_K))
    ranked = rank_classes(scores)[:, :TOP_K]  # (N, k)
    preds = ranked[:, 0]
    confusion = confusion_matrix(preds, labels, num_classes)
    support, correct, per_class = per_class_accuracy(confusion)
    rows = [
        ClassAccuracy(
            k,
            classes[k],
            int(support[k]),
            int(correct[k]),
            None if support[k] == 0 else float(per_class[k]),
        )
        for k in range(num_classes)
    ]
    top_scores = scores.gather(1, ranked)
    predictions = [
        VideoPrediction(e.path, e.label, tuple(ranked[i].tolist()), tuple(top_scores[i].tolist()))
        for i, e in enumerate(entries)
    ]
    return EvalResult(
        top1=accuracy[1],
        top5=accuracy[TOP_K],
        mean_class_accuracy=mean_class_accuracy(preds, labels, num_classes),
        num_videos=len(entries),
        views=views,
        videos_per_s=videos_per_s,
        protocol=protocol,
        checkpoint=str(checkpoint),
        classes=classes,
        per_class=rows,
        confusion=confusion,
        predictions=predictions,
        scores=scores,
        labels=labels,
    )


def report_outputs(out_dir: str | Path | None) -> list[Output]:
    """The files of ``write_reports`` in ``out_dir`` (none without one), for the output checks."""
    return [] if out_dir is None else [Output("--out", Path(out_dir) / n) for n in REPORT_FILES]


def write_reports(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """per_class.csv, confusion.csv, a heat map (or top_confusions.txt), predictions.csv,
    scores.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_csv(
            out / "per_class.csv",
            ["class", "name", "support", "correct", "accuracy"],
            [
                [
                    r.label,
                    r.name,
                    r.support,
                    r.correct,
                    "" if r.accuracy is None else f"{r.accuracy:.4f}",
                ]
                for r in result.per_class
            ],
        )
    ]
    num_classes = len(result.classes)
    written.append(
        _write_csv(
            out / "confusion.csv",
            ["class", "name", *map(str, range(num_classes))],
            [[k, result.classes[k], *result.confusion[k].tolist()] for k in range(num_classes)],
        )
    )
    if num_classes <= HEATMAP_MAX_CLASSES:
        written.append(_write_heatmap(out / "confusion.png", result.confusion, result.classes))
    else:
        written.append(
            _write_top_confusions(out / "top_confusions.txt", result.confusion, result.classes)
        )
    k = len(result.predictions[0].top_labels) if result.predictions else 0
    header = ["video", "label", *(c for i in range(1, k + 1) for c in (f"pred_{i}", f"score_{i}"))]
    written.append(
        _write_csv(
            out / "predictions.csv",
            header,
            [
                [
                    p.video,
                    p.label,
                    *(
                        c
                        for label, score in zip(p.top_labels, p.top_scores, strict=True)
                        for c in (label, f"{score:.6g}")
                    ),
                ]
                for p in result.predictions
            ],
        )
    )
    written.append(_write_scores(out / SCORES_FILE, result))
    return written


def _write_scores(path: Path, result: EvalResult) -> Path:
    """Every video's scores, one column a class, at float32 precision."""
    return _write_csv(
        path,
        ["video", "label", *result.classes],
        [
            [p.video, p.label, *(f"{v:.9g}" for v in row)]
            for p, row in zip(result.predictions, result.scores.tolist(), strict=True)
        ],
    )


@dataclass(frozen=True)
class VideoScores:
    """A ``scores.csv`` read back: the videos in list order, their labels, the class names
    and the scores (N, K)."""

    path: Path
    videos: tuple[str, ...]
    labels: Tensor  # (N,) long
    classes: tuple[str, ...]
    scores: Tensor  # (N, K) float64 holding the float32 values written


def read_scores(path: str | Path) -> VideoScores:
    """The ``scores.csv`` at ``path`` (or in the folder ``path``, a ``tsm eval --out``). A
    missing or malformed file is one ``DataError`` naming it and its line."""
    path = Path(path)
    if path.is_dir():
        path = path / SCORES_FILE
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file; write it with tsm eval --out {path.parent}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot read it ({exc}); write it again with tsm eval --out"
        ) from None
    if not rows or rows[0][:2] != ["video", "label"] or len(rows[0]) < 3:
        raise DataError(
            f"{path}: not a scores file (its header is not video,label,<classes>); write it "
            "with tsm eval --out"
        )
    classes = tuple(rows[0][2:])
    videos, labels, scores = [], [], []
    for number, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(rows[0]):
                raise ValueError(f"{len(row)} fields, the header has {len(rows[0])}")
            labels.append(int(row[1]))
            scores.append([float(v) for v in row[2:]])
        except ValueError as exc:
            raise DataError(
                f"{path}:{number}: not a row of scores ({exc}); write the file again with "
                "tsm eval --out"
            ) from None
        videos.append(row[0])
    return VideoScores(
        path,
        tuple(videos),
        torch.tensor(labels, dtype=torch.long),
        classes,
        # float32, as written (9 digits read back exactly), then float64 to add them up
        torch.tensor(scores, dtype=torch.float32).view(len(videos), len(classes)).double(),
    )


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())
    return path


def top_confusions(confusion: Tensor, limit: int = TOP_CONFUSIONS) -> list[tuple[int, int, int]]:
    """The most frequent mistakes as ``(true, predicted, count)``, most frequent first (ties:
    lower true class, then lower predicted class)."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    pairs = [(int(t), int(p), int(off[t, p])) for t, p in off.nonzero().tolist()]
    return sorted(pairs, key=lambda x: (-x[2], x[0], x[1]))[:limit]


def _write_top_confusions(path: Path, confusion: Tensor, classes: list[str]) -> Path:
    support = confusion.sum(dim=1)
    lines = [
        f"# {len(classes)} classes: too many for a readable heat map; the most frequent "
        "confusions (count, share of the true class)"
    ]
    for true, pred, count in top_confusions(confusion):
        share = 100.0 * count / int(support[true])
        lines.append(f"{count}\t{share:.1f}%\t{classes[true]} -> {classes[pred]}")
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def _write_heatmap(path: Path, confusion: Tensor, classes: list[str]) -> Path:
    """Rows normalised to the true class (so rare classes are as visible as common ones)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(classes)
    support = confusion.sum(dim=1, keepdim=True).clamp(min=1)
    share = (100.0 * confusion.double() / support).numpy()  # (K, K)
    side = min(24.0, 3.0 + 0.3 * k)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class")
    fontsize = 8 if k <= 30 else 6
    names = [n if len(n) <= 24 else n[:23] + "…" for n in classes]
    ax.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
        for t in range(k):
            for p in range(k):
                if confusion[t, p]:
                    ax.text(
                        p,
                        t,
                        str(int(confusion[t, p])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if share[t, p] > 50 else "black",
                    )
    fig.tight_layout()
    return atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
