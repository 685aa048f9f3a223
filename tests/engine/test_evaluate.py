"""tsm eval end to end on tiny frame folders: exact numbers, reports, protocols, bad input.

Most tests swap the network for ``TableModel``, whose scores are fixed per video (each
video's frames are a flat grey that names it), so every accuracy is known by hand. One test
runs a real ResNet-18 TSN to check the view averaging against the model applied view by view.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tsmcli.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from tsmcli.engine import evaluate as evaluate_module
from tsmcli.engine.evaluate import evaluate
from tsmcli.engine.views import PROTOCOLS
from tsmcli.errors import CheckpointError, DataError
from tsmcli.model.checkpoint import ArchOverrides
from tsmcli.recipe import DataConfig, ModelConfig, Recipe
from tsmcli.view_request import ViewRequest

SIZE = 32
SEGMENTS = 2
CLASSES = ["walk", "run", "jump", "swim", "ride", "climb", "throw"]
NUM_CLASSES = len(CLASSES)


def grey_level(video: int) -> int:
    return 40 * video + 20


def write_jpeg(image: torch.Tensor, path) -> None:
    """uint8 (3, H, W) -> JPEG file."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=100)


def write_frames(folder, levels, size=SIZE) -> None:
    """One flat grey JPEG per level: img_00001.jpg, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, level in enumerate(levels, start=1):
        write_jpeg(
            torch.full((3, size, size), level, dtype=torch.uint8), folder / f"img_{k:05d}.jpg"
        )


def write_dataset(root, labels, num_frames=8, classes=CLASSES, list_name="list.txt"):
    """Video i: ``num_frames`` frames of grey ``grey_level(i)``; returns the list path."""
    for i in range(len(labels)):
        write_frames(root / f"v{i}", [grey_level(i)] * num_frames)
    lines = [f"v{i} {num_frames} {label}" for i, label in enumerate(labels)]
    list_file = root / list_name
    list_file.write_text("\n".join(lines) + "\n")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return list_file


def write_checkpoint(
    path,
    num_classes=NUM_CLASSES,
    sampling="segments",
    state_dict=None,
    model_config=None,
    arch="resnet18",
    input_size=SIZE,
    scale_size=SIZE,
):
    """One of our checkpoints: the recipe carries the data settings eval must use."""
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch=arch, num_classes=num_classes, num_segments=SEGMENTS),
        data=DataConfig(
            source="frames", input_size=input_size, scale_size=scale_size, sampling=sampling
        ),
    )
    torch.save(
        {
            "format": "tsmcli",
            "format_version": 1,
            "model_config": model_config or {},
            "recipe": recipe.to_dict(),
            "classes": CLASSES[:num_classes],
            "state_dict": state_dict or {},
            "epoch": 1,
        },
        path,
    )
    return path


def pixel_level(x: torch.Tensor) -> torch.Tensor:
    """Mean grey level (0-255) of each normalised clip (B, T, 3, H, W) -> (B,)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    return ((x * std + mean) * 255).mean(dim=(1, 2, 3, 4))


class TableModel(torch.nn.Module):
    """Scores row ``i`` of ``table`` for a clip of video i (recognised by its grey level)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))
        self.num_classes = self.table.shape[1]
        self.num_segments = SEGMENTS
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        video = ((pixel_level(x) - 20) / 40).round().long()
        return self.table[video]


class LevelModel(torch.nn.Module):
    """Two classes scored (clip grey level, 55): the winner depends on every view's level."""

    num_classes = 2
    num_segments = SEGMENTS

    def forward(self, x):
        level = pixel_level(x)
        return torch.stack([level, torch.full_like(level, 55.0)], dim=1)


def use_model(monkeypatch, model):
    monkeypatch.setattr(evaluate_module, "load_model", lambda path, **kwargs: model)
    return model


# Scores of 5 videos over 7 classes; labels 0, 1, 1, 2, 3.
LABELS = [0, 1, 1, 2, 3]
TABLE = [
    [5, 1, 0, 0, 0, 0, 0],  # label 0: top-1
    [0, 3, 0, 0, 0, 0, 0],  # label 1: top-1
    [2, 2, 0, 0, 0, 0, 0],  # label 1: ties with class 0 and loses (lower index first): top-2
    [6, 5, 0, 4, 3, 2, 1],  # label 2: ranked last
    [1, 0, 0, 2, 3, 0, 0],  # label 3: second, behind class 4 (never in the ground truth)
]


@pytest.fixture
def table_setup(tmp_path, monkeypatch):
    root = tmp_path / "data"
    list_file = write_dataset(root, LABELS)
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    model = use_model(monkeypatch, TableModel(TABLE))
    return root, list_file, checkpoint, model


def test_numbers_match_the_hand_computed_values(table_setup, tmp_path):
    root, list_file, checkpoint, model = table_setup
    out, json_path = tmp_path / "report", tmp_path / "eval.json"
    result = evaluate(
        checkpoint,
        list_file,
        root,
        views="sthv2",
        batch_size=2,
        workers=0,
        out_dir=out,
        json_path=json_path,
    )
    assert result.top1 == 40.0  # videos 0 and 1
    assert result.top5 == 80.0  # all but video 3
    # Ground-truth classes 0..3: 100, 50, 0, 0. Class 4 (predicted only) is not averaged in;
    # mmaction2 would count it as 0% and report 30.
    assert result.mean_class_accuracy == 37.5
    assert result.num_videos == 5
    assert result.views == 6  # 1 clip twice-sampled x 3 crops
    assert {s[0] for s in model.shapes} <= {12, 6}  # batches of 2 (last 1) videos x 6 views
    assert sum(s[0] for s in model.shapes) == 5 * 6
    assert torch.equal(result.scores, torch.tensor(TABLE, dtype=torch.float32))
    assert [p.top_labels for p in result.predictions][2:4] == [(0, 1, 2, 3, 4), (0, 1, 3, 4, 5)]
    expected_confusion = torch.zeros(7, 7, dtype=torch.long)
    for true, pred in [(0, 0), (1, 1), (1, 0), (2, 0), (3, 4)]:
        expected_confusion[true, pred] += 1
    assert torch.equal(result.confusion, expected_confusion)

    summary = json.loads(json_path.read_text())
    assert set(summary) == {
        "top1",
        "top5",
        "mean_class_accuracy",
        "num_videos",
        "views",
        "checkpoint",
        "protocol",
    }
    assert (summary["top1"], summary["top5"], summary["mean_class_accuracy"]) == (40.0, 80.0, 37.5)
    assert (summary["num_videos"], summary["views"]) == (5, 6)
    assert summary["checkpoint"] == str(checkpoint)
    assert summary["protocol"] == {
        "name": "sthv2",
        "clips": 1,
        "crops": 3,
        "full_res": True,
        "twice_sample": True,
        "dense": False,
        "average": "score",
    }

    per_class = list(csv.reader((out / "per_class.csv").open()))
    assert per_class == [
        ["class", "name", "support", "correct", "accuracy"],
        ["0", "walk", "1", "1", "100.0000"],
        ["1", "run", "2", "1", "50.0000"],
        ["2", "jump", "1", "0", "0.0000"],
        ["3", "swim", "1", "0", "0.0000"],
        ["4", "ride", "0", "0", ""],
        ["5", "climb", "0", "0", ""],
        ["6", "throw", "0", "0", ""],
    ]
    confusion = list(csv.reader((out / "confusion.csv").open()))
    assert confusion[0] == ["class", "name", *map(str, range(7))]
    assert [[int(c) for c in row[2:]] for row in confusion[1:]] == expected_confusion.tolist()
    predictions = list(csv.reader((out / "predictions.csv").open()))
    assert predictions[0] == [
        "video",
        "label",
        "pred_1",
        "score_1",
        "pred_2",
        "score_2",
        "pred_3",
        "score_3",
        "pred_4",
        "score_4",
        "pred_5",
        "score_5",
    ]
    assert predictions[3] == ["v2", "1", "0", "2", "1", "2", "2", "0", "3", "0", "4", "0"]
    assert predictions[5] == ["v4", "3", "4", "3", "3", "2", "0", "1", "1", "0", "2", "0"]
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "top_confusions.txt").exists()


def test_scores_are_averaged_over_all_views_before_top_k(tmp_path, monkeypatch):
    # One video whose frame k has grey 10k + 20. With 2 segments of 8 frames, twice-sampling
    # takes frames (2, 6) -> mean grey 60 and frames (0, 4) -> 40, each in 3 crops.
    root = tmp_path / "data"
    write_frames(root / "v0", [10 * k + 20 for k in range(8)])
    list_file = root / "list.txt"
    list_file.write_text("v0 8 1\n")
    checkpoint = write_checkpoint(tmp_path / "best.pt", num_classes=2)
    use_model(monkeypatch, LevelModel())
    result = evaluate(checkpoint, list_file, root, views="sthv2", workers=0)
    assert result.views == 6
    # Mean of six views: (50, 55) -> class 1, although the first view alone (60, 55) says 0.
    assert result.scores[0].tolist() == pytest.approx([50.0, 55.0], abs=1.0)
    assert result.top1 == 100.0
    single = evaluate(checkpoint, list_file, root, workers=0)  # centres only: (60, 55)
    assert single.views == 1 and single.top1 == 0.0


def test_protocol_presets_and_overrides(table_setup):
    root, list_file, checkpoint, model = table_setup
    expected_views = {"single": 1, "kinetics": 30, "sthv2": 6}
    for name, views in expected_views.items():
        model.shapes.clear()
        result = evaluate(checkpoint, list_file, root, views=name, batch_size=5, workers=0)
        assert result.views == views
        assert model.shapes == [(5 * views, SEGMENTS, 3, SIZE, SIZE)]
        assert result.protocol == PROTOCOLS[name]
        assert result.top1 == 40.0  # the fixed scores do not depend on the views
    result = evaluate(
        checkpoint,
        list_file,
        root,
        views=ViewRequest("kinetics", clips=2, crops=1),
        batch_size=5,
        workers=0,
    )
    assert result.views == 2
    assert result.protocol.name == "kinetics (clips=2, crops=1)"
    assert (result.protocol.dense, result.protocol.full_res) == (True, True)


def test_dense_recipe_defaults_to_dense_views(tmp_path, monkeypatch):
    root = tmp_path / "data"
    list_file = write_dataset(root, LABELS)
    checkpoint = write_checkpoint(tmp_path / "best.pt", sampling="dense")
    use_model(monkeypatch, TableModel(TABLE))
    assert evaluate(checkpoint, list_file, root, workers=0).protocol.dense
    explicit = evaluate(checkpoint, list_file, root, views="single", workers=0)
    assert not explicit.protocol.dense


def test_many_classes_list_the_top_confusions_instead_of_a_heat_map(tmp_path, monkeypatch):
    root = tmp_path / "data"
    names = [f"class{k}" for k in range(61)]
    list_file = write_dataset(root, [60, 60, 5], classes=names)
    table = torch.zeros(3, 61)
    table[0, 3] = table[1, 3] = table[2, 5] = 1.0  # two videos of class 60 called class 3
    checkpoint = write_checkpoint(tmp_path / "best.pt", num_classes=7)
    use_model(monkeypatch, TableModel(table))
    result = evaluate(checkpoint, list_file, root, workers=0, out_dir=tmp_path / "out")
    assert result.top1 == pytest.approx(100 / 3)
    assert not (tmp_path / "out" / "confusion.png").exists()
    lines = (tmp_path / "out" / "top_confusions.txt").read_text().splitlines()
    assert lines[0].startswith("# 61 classes")
    assert lines[1:] == ["2\t100.0%\tclass60 -> class3"]


# --------------------------------------------------------------------------------------------
# bad input: one line naming the file and line


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_label_outside_the_checkpoint_classes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    list_file = write_dataset(root, [0, 1, 2], classes=None)
    list_file.write_text("v0 8 0\n\nv1 8 1\nv2 8 9\n")  # the blank line still counts
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    use_model(monkeypatch, TableModel(TABLE))
    with pytest.raises(CheckpointError) as exc_info:
        evaluate(checkpoint, list_file, root, workers=0)
    message = _one_line(exc_info)
    assert f"{list_file}:4: label 9" in message
    assert f"{checkpoint} has 7 classes" in message


def test_classes_txt_disagreeing_with_the_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "data"
    list_file = write_dataset(root, [0, 1], classes=CLASSES[:5])
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    use_model(monkeypatch, TableModel(TABLE))
    with pytest.raises(CheckpointError) as exc_info:
        evaluate(checkpoint, list_file, root, workers=0)
    message = _one_line(exc_info)
    assert "7 classes" in message and f"{root / 'classes.txt'} lists 5" in message


def test_malformed_list_line_is_named(tmp_path, monkeypatch):
    root = tmp_path / "data"
    list_file = write_dataset(root, [0, 1])
    list_file.write_text("v0 8 0\nv1 8\n")
    use_model(monkeypatch, TableModel(TABLE))
    with pytest.raises(DataError) as exc_info:
        evaluate(write_checkpoint(tmp_path / "best.pt"), list_file, root, workers=0)
    assert f"{list_file}:2:" in _one_line(exc_info)


def test_missing_video_is_named(tmp_path, monkeypatch):
    root = tmp_path / "data"
    list_file = write_dataset(root, [0, 1])
    list_file.write_text("v0 8 0\nv1 8 1\ngone 8 1\n")
    use_model(monkeypatch, TableModel(TABLE))
    with pytest.raises(DataError) as exc_info:
        evaluate(write_checkpoint(tmp_path / "best.pt"), list_file, root, workers=0)
    message = _one_line(exc_info)
    assert str(root / "gone") in message and f"{list_file}:3" in message


# --------------------------------------------------------------------------------------------
# the real model


def test_real_tsn_scores_equal_the_per_view_mean(tmp_path):
    from tsmcli.data.dataset import VideoClipDataset
    from tsmcli.data.settings import ClipSize
    from tsmcli.model.tsn import build_model

    torch.manual_seed(0)
    model = build_model(arch="resnet18", num_classes=3, num_segments=SEGMENTS, dropout=0.0).eval()
    checkpoint = write_checkpoint(
        tmp_path / "best.pt",
        num_classes=3,
        state_dict=model.state_dict(),
        model_config=model.config(),
    )
    root = tmp_path / "data"
    generator = torch.Generator().manual_seed(1)
    for i in range(3):  # textured frames, so the six views differ
        folder = root / f"v{i}"
        folder.mkdir(parents=True)
        for k in range(1, 9):
            image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=generator)
            write_jpeg(image, folder / f"img_{k:05d}.jpg")
    list_file = root / "list.txt"
    list_file.write_text("v0 8 0\nv1 8 2\nv2 8 1\n")
    (root / "classes.txt").write_text("a\nb\nc\n")

    dataset = VideoClipDataset(
        list_file,
        root,
        clip=ClipSize(SEGMENTS, input_size=SIZE, scale_size=SIZE),
        views=PROTOCOLS["sthv2"],
    )
    with torch.no_grad():
        per_view = torch.stack([model(normalize(dataset[i].clip)) for i in range(3)])  # (N, V=6, K)
    assert per_view.shape == (3, 6, 3)
    for average, expected in [
        ("score", per_view.mean(dim=1)),
        ("prob", per_view.softmax(dim=2).mean(dim=1)),
    ]:
        result = evaluate(
            checkpoint,
            list_file,
            root,
            views=ViewRequest("sthv2", average=average),
            batch_size=1,
            workers=0,
        )
        assert result.views == 6
        torch.testing.assert_close(result.scores, expected, rtol=1e-5, atol=1e-6)


def test_official_checkpoint_takes_the_architecture_by_option(tmp_path):
    from tsmcli.cli import cli
    from tsmcli.model.tsn import build_model

    torch.manual_seed(0)
    model = build_model(arch="resnet18", num_classes=3, num_segments=SEGMENTS, dropout=0.0)
    state = model.state_dict()
    ours = write_checkpoint(
        tmp_path / "ours.pt",
        num_classes=3,
        state_dict=state,
        model_config=model.config(),
        input_size=224,
        scale_size=256,
    )
    official = tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": v for k, v in state.items()}}, official)
    root = tmp_path / "data"
    list_file = write_dataset(root, [2, 1], classes=["a", "b", "c"])

    # Official files carry no recipe: 224 after short side 256, source detected (frames).
    expected = evaluate(ours, list_file, root, workers=0)
    got = evaluate(
        official,
        list_file,
        root,
        workers=0,
        arch=ArchOverrides(arch="resnet18", num_segments=SEGMENTS, shift="bidirectional"),
    )
    assert torch.equal(got.scores, expected.scores)

    # The file name says resnet50 / 8 segments: never read, so without options it is an error.
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "--checkpoint",
            str(official),
            "--list",
            str(list_file),
            "--root",
            str(root),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {official}: an official TSM checkpoint does not record")
    assert "--arch, --segments, --shift" in lines[0]


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_prints_the_summary_and_writes_json(table_setup, tmp_path):
    from tsmcli.cli import cli

    root, list_file, checkpoint, _ = table_setup
    json_path = tmp_path / "eval.json"
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--list",
            str(list_file),
            "--root",
            str(root),
            "--protocol",
            "sthv2",
            "--crops",
            "1",
            "--workers",
            "0",
            "--json",
            str(json_path),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.output.splitlines())
    assert rows["top-1"] == "40.00 %" and rows["top-5"] == "80.00 %"
    assert rows["mean class"] == "37.50 %"
    assert rows["videos"] == "5" and rows["views"] == "2"
    assert rows["protocol"] == "sthv2 (crops=1)"
    assert json.loads(json_path.read_text())["views"] == 2


def test_cli_checkpoint_and_online_are_exclusive(tmp_path):
    from tsmcli.cli import cli

    base = ["eval", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path)]
    for extra in (
        [],
        ["--checkpoint", "a.pt", "--online", "dir"],
        ["--model", "m", "--online", "d"],
    ):
        result = CliRunner().invoke(cli, base + extra)
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            "error: give exactly one of --checkpoint CKPT, --model MODEL_DIR (tsm export) or "
            "--online MODEL_DIR (tsm convert-online)"
        ]
    for option in (["--trust-torchscript"], ["--stride", "3"]):
        result = CliRunner().invoke(cli, [*base, "--checkpoint", "a.pt", *option])
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            f"error: {option[0]} applies to --online only; drop it"
        ]


def test_cli_online_calls_the_streaming_evaluation(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tsmcli.cli import cli
    from tsmcli.engine import online

    calls = []

    def fake_evaluate_online(model_dir, list_file, root, **kwargs):
        calls.append((model_dir, list_file, root, kwargs))
        return SimpleNamespace(
            top1=50.0,
            top5=100.0,
            mean_class_accuracy=50.0,
            top1_at={25: 25.0, 100: 50.0},
            num_videos=2,
            num_frames=16,
            latency_ms=1.5,
            stride=3,
            stride_from="the training list's median video (24 frames) over 8 segments",
        )

    monkeypatch.setattr(online, "evaluate_online", fake_evaluate_online)
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "--online",
            str(tmp_path / "m"),
            "--list",
            str(tmp_path / "l.txt"),
            "--root",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls == [
        (
            tmp_path / "m",
            tmp_path / "l.txt",
            tmp_path,
            {
                "source": None,
                "backend": None,
                "stride": None,
                "trust_torchscript": False,
                "precision": "fp32",
            },
        )
    ]
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.output.splitlines())
    assert rows["top-1"] == "50.00 %" and rows["top-1 at 25%"] == "25.00 %"
    assert rows["frames fed"] == (
        "one frame in 3 (the training list's median video (24 frames) over 8 segments)"
    )
    assert rows["frames"] == "16" and rows["latency"] == "1.50 ms/frame"


def test_cli_one_line_error_for_bad_input(table_setup, tmp_path):
    from tsmcli.cli import cli

    root, list_file, checkpoint, _ = table_setup
    list_file.write_text("v0 8 0\nv1 8 x\n")
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--list",
            str(list_file),
            "--root",
            str(root),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {list_file}:2:")


def test_an_error_in_a_data_worker_is_the_original_one_line(table_setup):
    from tsmcli.cli import cli

    root, list_file, checkpoint, model = table_setup
    for frame in (root / "v2").iterdir():
        frame.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--list",
            str(list_file),
            "--root",
            str(root),
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {root / 'v2' / 'img_0000'}")
    assert "DataLoader worker" not in line and "Traceback" not in line


def test_unwritable_json_or_out_is_refused_before_evaluating(table_setup, tmp_path):
    from tsmcli.cli import cli

    root, list_file, checkpoint, model = table_setup
    (tmp_path / "file").write_text("x")
    base = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--list",
        str(list_file),
        "--root",
        str(root),
        "--workers",
        "0",
    ]
    cases = {
        (
            "--json",
            tmp_path / "file" / "eval.json",
        ): f"--json {tmp_path / 'file' / 'eval.json'}: {tmp_path / 'file'} is a file, not a "
        "folder; choose another path",
        ("--json", tmp_path): f"--json {tmp_path}: is a folder; give a file name",
        ("--out", tmp_path / "file"): f"--out {tmp_path / 'file'}: is a file, not a folder; "
        "choose a folder",
        (
            "--out",
            tmp_path / "file" / "reports",
        ): f"--out {tmp_path / 'file' / 'reports'}: {tmp_path / 'file'} is a file, not a "
        "folder; choose another path",
    }
    for (option, path), expected in cases.items():
        result = CliRunner().invoke(cli, [*base, option, str(path)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [f"error: {expected}"]
    assert model.shapes == []  # refused before a single clip was scored
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize(
    ("source", "backend", "workers", "loaded"),
    [
        ("videos", "decord", 1, "decord"),
        ("videos", "pyav", 1, "av"),
        ("frames", "decord", 1, None),
        ("videos", "decord", 0, None),
    ],
)
def test_the_loader_forks_its_workers_with_the_decoder_already_imported(
    source, backend, workers, loaded
):
    # in a fresh interpreter: whether views_loader imported the decoder before the workers
    code = f"""
import json, sys, types, torch
from tsmcli.data.settings import Reading
from tsmcli.engine.scoring import views_loader
dataset = types.SimpleNamespace(reading=Reading(source={source!r}, backend={backend!r}))
before = {{"decord", "av"}} & set(sys.modules)
views_loader(dataset, 1, {workers}, torch.device("cpu"))
print(json.dumps([sorted(before), sorted({{"decord", "av"}} & set(sys.modules))]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    before, after = json.loads(result.stdout)
    assert before == []
    assert after == ([] if loaded is None else [loaded])
