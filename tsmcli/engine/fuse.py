"""``tsm fuse``: late fusion of models evaluated on the same videos, as two-stream networks are
tested: each video's scores are the weighted average of the models' (``scores.csv`` of each
``tsm eval --out``), and the fused scores are scored and reported as one evaluation.

The TSM authors combine their RGB and flow models by averaging the two models' outputs at
test time (mit-han-lab/temporal-shift-module issues #8 and #87), so equal weights are the
default; TSN weighed flow 1.5 against RGB 1 (``--weights 1,1.5``). The scores are what each
evaluation averaged over its views: logits, or probabilities with ``--average prob``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from tsmcli.data.lists import ListEntry
from tsmcli.data.settings import Protocol
from tsmcli.engine.reports import (
    SCORES_FILE,
    EvalResult,
    VideoScores,
    eval_result,
    read_scores,
    report_outputs,
    write_reports,
)
from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import atomic_write, check_outputs, check_writable_dir, outputs


@dataclass(frozen=True)
class FuseResult:
    """The fused evaluation (``result``: accuracies, per-class rows, confusion, the fused
    scores) and what it fused: the score files and their weights."""

    result: EvalResult
    inputs: tuple[Path, ...]
    weights: tuple[float, ...]

    def summary(self) -> dict[str, Any]:
        """The JSON report (``--json``)."""
        r = self.result
        return {
            "top1": r.top1,
            "top5": r.top5,
            "mean_class_accuracy": r.mean_class_accuracy,
            "num_videos": r.num_videos,
            "inputs": [str(path) for path in self.inputs],
            "weights": list(self.weights),
        }


def fuse(
    inputs: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    *,
    out_dir: str | Path | None = None,
    json_path: str | Path | None = None,
    overwrite: bool = False,
) -> FuseResult:
    """Fuse the ``scores.csv`` of two or more ``tsm eval --out`` folders (or the files):
    each video's fused scores are ``sum(w_i * s_i) / sum(w_i)`` (``weights``: one a model,
    default all 1). The files must list the same videos, in the same order with the same
    labels, and the same classes: else a ``DataError`` naming both. ``out_dir`` gets the
    report files of ``tsm eval --out`` for the fused scores, ``json_path`` the summary."""
    paths = [Path(p) for p in inputs]
    weights = _check_weights(paths, weights)
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
    files = outputs(json=json_path) + report_outputs(out_dir)
    check_outputs(files, [_scores_path(p) for p in paths], overwrite=overwrite)
    read = [read_scores(p) for p in paths]
    for other in read[1:]:
        check_same_videos(read[0], other)
    fused = fused_scores([r.scores for r in read], weights)
    first = read[0]
    entries = [
        ListEntry(video, 0, int(label))
        for video, label in zip(first.videos, first.labels.tolist(), strict=True)
    ]
    label = " + ".join(f"{w:g} x {r.path}" for w, r in zip(weights, read, strict=True))
    result = eval_result(
        entries,
        fused,
        views=1,
        protocol=Protocol("fused"),
        checkpoint=Path(label),
        classes=list(first.classes),
        videos_per_s=math.inf,
    )
    fuse_result = FuseResult(result, tuple(r.path for r in read), tuple(weights))
    if out_dir is not None:
        write_reports(result, out_dir)
    if json_path is not None:
        atomic_write(Path(json_path), json.dumps(fuse_result.summary(), indent=2) + "\n")
    return fuse_result


def fused_scores(scores: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """The weighted average of score tensors of one shape."""
    return sum(w * s for w, s in zip(weights, scores, strict=True)) / sum(weights)


def _scores_path(path: Path) -> Path:
    return path / SCORES_FILE if path.is_dir() else path


def _check_weights(paths: list[Path], weights: Sequence[float] | None) -> list[float]:
    if len(paths) < 2:
        raise UsageError("give two or more evaluations to fuse (tsm eval --out folders)")
    if weights is None:
        return [1.0] * len(paths)
    weights = [float(w) for w in weights]
    if len(weights) != len(paths):
        raise UsageError(
            f"--weights gives {len(weights)} weights for {len(paths)} evaluations; give one "
            "a model, e.g. --weights 1,1.5"
        )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise UsageError(
            f"--weights must be numbers >= 0, not all 0, got {','.join(f'{w:g}' for w in weights)}"
        )
    return weights


def check_same_videos(first: VideoScores, other: VideoScores) -> None:
    """Fusion adds up the scores of one video and one class: refuse files whose videos
    (paths, order, labels) or classes differ, in one line naming both."""
    where = f"{first.path} and {other.path}"
    if first.classes != other.classes:
        differ = next(
            (
                i
                for i, (a, b) in enumerate(zip(first.classes, other.classes, strict=False))
                if a != b
            ),
            min(len(first.classes), len(other.classes)),
        )
        raise DataError(
            f"{where}: score other classes ({len(first.classes)} and {len(other.classes)}, "
            f"first difference at class {differ}); fuse evaluations of models of the same "
            "classes, in the same order"
        )
    if first.videos != other.videos or not bool((first.labels == other.labels).all()):
        count = min(len(first.videos), len(other.videos))
        differ = next(
            (
                i
                for i in range(count)
                if first.videos[i] != other.videos[i] or first.labels[i] != other.labels[i]
            ),
            count,
        )
        shown = (
            f"video {differ + 1}: {_video(first, differ)} and {_video(other, differ)}"
            if differ < count
            else f"{len(first.videos)} and {len(other.videos)} videos"
        )
        raise DataError(
            f"{where}: score other videos ({shown}); evaluate both models on lists of the "
            "same videos in the same order (the RGB and the flow list of one set)"
        )


def _video(scores: VideoScores, index: int) -> str:
    return f"{scores.videos[index]!r} (label {int(scores.labels[index])})"
