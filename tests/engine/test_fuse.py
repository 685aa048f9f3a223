"""tsm fuse: the fused scores are the weighted average of the evaluations' scores.csv, the
accuracies those of the fused scores, and evaluations of other videos or classes are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tsmcli.cli import cli
from tsmcli.data.lists import ListEntry
from tsmcli.data.settings import Protocol
from tsmcli.engine.fuse import fuse
from tsmcli.engine.reports import eval_result, read_scores, write_reports
from tsmcli.errors import DataError, UsageError

CLASSES = ["left", "right", "up"]
VIDEOS = ["a/v0", "a/v1", "b/v2", "c/v3"]
LABELS = [0, 1, 2, 2]


def evaluation(tmp_path: Path, name: str, scores, videos=VIDEOS, labels=LABELS, classes=CLASSES):
    """A tsm eval --out folder holding these scores (N, K)."""
    entries = [ListEntry(v, 8, label) for v, label in zip(videos, labels, strict=True)]
    result = eval_result(
        entries,
        torch.tensor(scores, dtype=torch.float32),
        views=1,
        protocol=Protocol("single"),
        checkpoint=Path(f"{name}.pt"),
        classes=list(classes),
        videos_per_s=1.0,
    )
    write_reports(result, tmp_path / name)
    return tmp_path / name


# RGB right on v0 and v1; flow right on v2 and v3, and nearly right on v1
RGB = [[2.0, 0.1, 0.3], [0.2, 1.5, 0.9], [1.1, 0.2, 0.4], [0.9, 1.0, 0.8]]
FLOW = [[0.1, 0.9, 0.5], [0.4, 0.7, 0.8], [0.0, 0.1, 1.6], [0.2, 0.1, 1.9]]


def test_eval_reports_keep_every_videos_full_score_vector(tmp_path):
    folder = evaluation(tmp_path, "rgb", RGB)
    read = read_scores(folder)
    assert read.videos == tuple(VIDEOS) and read.classes == tuple(CLASSES)
    assert read.labels.tolist() == LABELS
    assert torch.equal(read.scores, torch.tensor(RGB, dtype=torch.float32).double())
    header = (folder / "scores.csv").read_text().splitlines()[0]
    assert header == "video,label,left,right,up"


def test_fused_scores_are_the_weighted_average_of_the_models(tmp_path):
    rgb, flow = evaluation(tmp_path, "rgb", RGB), evaluation(tmp_path, "flow", FLOW)
    result = fuse([rgb, flow], [1.0, 1.5]).result
    a = torch.tensor(RGB, dtype=torch.float32).double()
    b = torch.tensor(FLOW, dtype=torch.float32).double()
    assert torch.equal(result.scores, (1.0 * a + 1.5 * b) / 2.5)
    equal = fuse([rgb, flow]).result  # default: the plain average, the TSM authors' fusion
    assert torch.equal(equal.scores, (a + b) / 2)


def test_fused_accuracies_on_a_constructed_case(tmp_path):
    rgb, flow = evaluation(tmp_path, "rgb", RGB), evaluation(tmp_path, "flow", FLOW)
    # alone: RGB 2 of 4 right (v0, v1), flow 2 of 4 (v2, v3)
    assert fuse([rgb, rgb]).result.top1 == 50.0 and fuse([flow, flow]).result.top1 == 50.0
    # the average: v0 left 1.05, v1 right 1.1 > up 0.85, v2 up 1.0 > left 0.55, v3 up 1.35
    fused = fuse([rgb, flow]).result
    assert fused.top1 == 100.0 and fused.top5 == 100.0
    assert [p.top_labels[0] for p in fused.predictions] == [0, 1, 2, 2]
    # flow at 4x: v0 goes right (0.74 against left 0.48): 3 of 4; left 0/1, right 1/1, up 2/2
    heavy = fuse([rgb, flow], [1.0, 4.0], out_dir=tmp_path / "fused").result
    assert heavy.top1 == 75.0
    assert heavy.mean_class_accuracy == pytest.approx(100 * (0 + 1 + 1) / 3)
    assert [r.accuracy for r in heavy.per_class] == [0.0, 100.0, 100.0]
    assert heavy.confusion.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 2]]
    written = {p.name for p in (tmp_path / "fused").iterdir()}
    assert written == {
        "per_class.csv",
        "confusion.csv",
        "confusion.png",
        "predictions.csv",
        "scores.csv",
    }
    assert torch.equal(read_scores(tmp_path / "fused").scores, heavy.scores.float().double())


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (
            {"videos": ["a/v0", "a/v1", "b/vX", "c/v3"]},
            "video 3: 'b/v2' (label 2) and 'b/vX' (label 2)",
        ),
        ({"labels": [0, 1, 1, 2]}, "video 3: 'b/v2' (label 2) and 'b/v2' (label 1)"),
        ({"videos": VIDEOS[:3], "labels": LABELS[:3]}, "4 and 3 videos"),
    ],
)
def test_evaluations_of_other_videos_are_refused_in_one_line_naming_both(tmp_path, change, what):
    rgb = evaluation(tmp_path, "rgb", RGB)
    scores = FLOW[: len(change.get("videos", VIDEOS))]
    flow = evaluation(tmp_path, "flow", scores, **change)
    with pytest.raises(DataError) as info:
        fuse([rgb, flow], out_dir=tmp_path / "fused")
    assert str(info.value) == (
        f"{rgb / 'scores.csv'} and {flow / 'scores.csv'}: score other videos ({what}); "
        "evaluate both models on lists of the same videos in the same order (the RGB and the "
        "flow list of one set)"
    )
    assert not (tmp_path / "fused").exists()


def test_evaluations_of_other_classes_are_refused(tmp_path):
    rgb = evaluation(tmp_path, "rgb", RGB)
    flow = evaluation(tmp_path, "flow", FLOW, classes=["left", "up", "right"])
    with pytest.raises(DataError) as info:
        fuse([rgb, flow])
    assert str(info.value) == (
        f"{rgb / 'scores.csv'} and {flow / 'scores.csv'}: score other classes (3 and 3, first "
        "difference at class 1); fuse evaluations of models of the same classes, in the same "
        "order"
    )


def test_bad_weights_and_missing_scores_are_one_line(tmp_path):
    rgb, flow = evaluation(tmp_path, "rgb", RGB), evaluation(tmp_path, "flow", FLOW)
    with pytest.raises(UsageError, match="--weights gives 3 weights for 2 evaluations"):
        fuse([rgb, flow], [1, 1, 1])
    with pytest.raises(UsageError, match="--weights must be numbers >= 0, not all 0, got 0,0"):
        fuse([rgb, flow], [0, 0])
    with pytest.raises(UsageError, match="give two or more evaluations"):
        fuse([rgb])
    (tmp_path / "old").mkdir()
    with pytest.raises(DataError) as info:
        fuse([rgb, tmp_path / "old"])
    assert str(info.value) == (
        f"{tmp_path / 'old' / 'scores.csv'}: no such file; write it with tsm eval --out "
        f"{tmp_path / 'old'}"
    )


def test_the_command_prints_the_fused_accuracies_and_writes_the_json(tmp_path):
    rgb, flow = evaluation(tmp_path, "rgb", RGB), evaluation(tmp_path, "flow", FLOW)
    out = tmp_path / "fused.json"
    result = CliRunner().invoke(
        cli, ["fuse", str(rgb), str(flow), "--weights", "1,4", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"model 1     {rgb / 'scores.csv'}  x 1",
        f"model 2     {flow / 'scores.csv'}  x 4",
        "top-1       75.00 %",
        "top-5       100.00 %",
        "mean class  66.67 %",
        "videos      4",
        f"json        {out}",
    ]
    summary = json.loads(out.read_text())
    assert summary["top1"] == 75.0 and summary["weights"] == [1.0, 4.0]
    assert summary["inputs"] == [str(rgb / "scores.csv"), str(flow / "scores.csv")]
    bad = CliRunner().invoke(cli, ["fuse", str(rgb), str(flow), "--weights", "1;2"])
    assert bad.exit_code == 2
