"""``tsm predict``: the scores of eval for the same videos, class names, a timeline of windows
for long videos, and bad inputs that are one line each while the others go on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tsmcli.cli import cli
from tsmcli.data import windows as windows_module
from tsmcli.data.decode import open_video
from tsmcli.data.lists import read_classes
from tsmcli.data.windows import plan_windows
from tsmcli.engine.evaluate import evaluate
from tsmcli.engine.predict import predict
from tsmcli.engine.predictions import timeline_panels
from tsmcli.errors import CheckpointError, DataError, UsageError
from tsmcli.model.checkpoint import ArchOverrides, checkpoint_dict
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe
from tsmcli.resources import labels_dir
from tsmcli.zoo_cache import cache_path

K400 = "tsm-k400-r50-8f"
CLASSES = ["walk", "run", "jump"]
FRAMES = [9, 16, 21]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_checkpoint(path, num_classes=3, classes=CLASSES):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=num_classes, num_segments=4)
    with torch.no_grad():
        model.new_fc.weight.normal_(0.0, 0.5)  # probabilities that differ from 1/K
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch="resnet18", num_classes=num_classes, num_segments=4),
        data=DataConfig(input_size=32, scale_size=40, source="videos"),
    )
    save_checkpoint(checkpoint_dict(model, recipe=recipe.to_dict(), classes=classes), path)
    return path, model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three videos and the same clips as frame folders, each with its list; a checkpoint."""
    from conftest import write_video

    root = tmp_path_factory.mktemp("predict")
    checkpoint, _ = tiny_checkpoint(root / "ckpt.pt")
    video_lines, frame_lines = [], []
    for i, count in enumerate(FRAMES):
        video = write_video(root / "videos" / f"v{i}.mp4", num_frames=count, size=48, seed=i)
        video_lines.append(f"v{i}.mp4 {count} {i}\n")
        folder = root / "frames" / f"f{i}"
        folder.mkdir(parents=True)
        for k, frame in enumerate(open_video(video).get(range(count))):
            Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"img_{k + 1:05d}.jpg")
        frame_lines.append(f"f{i} {count} {i}\n")
    (root / "videos" / "val.txt").write_text("".join(video_lines))
    (root / "frames" / "val.txt").write_text("".join(frame_lines))
    return root, checkpoint


@pytest.mark.parametrize(
    ("source", "protocol", "workers"),
    [("videos", "single", 0), ("videos", "sthv2", 0), ("frames", "single", 1)],
)
def test_predict_gives_evals_scores_for_the_same_videos(data, source, protocol, workers):
    root, checkpoint = data
    folder = root / source
    expected = evaluate(
        checkpoint,
        folder / "val.txt",
        folder,
        views=protocol,
        source=source,
        batch_size=2,
        workers=workers,
    )
    got = predict([folder], checkpoint, views=protocol, batch_size=2, workers=workers)
    names = [f"v{i}.mp4" if source == "videos" else f"f{i}" for i in range(3)]
    assert [p.path for p in got.predictions] == [folder / n for n in names]
    assert [p.source for p in got.predictions] == [source] * 3
    assert torch.equal(torch.stack([p.scores for p in got.predictions]), expected.scores)
    assert got.views == expected.views == (1 if protocol == "single" else 6)
    assert got.protocol == expected.protocol and got.failed == 0
    for p in got.predictions:  # the top-k: softmax of the view-averaged scores, best first
        probs = p.scores.softmax(0)
        order = torch.argsort(probs, descending=True).tolist()
        assert [c.label for c in p.top] == order
        assert [c.name for c in p.top] == [CLASSES[k] for k in order]
        assert [c.probability for c in p.top] == [float(probs[k]) for k in order]


def test_bad_inputs_are_one_line_each_and_the_others_go_on(data, tmp_path):
    root, checkpoint = data
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 50)
    empty = tmp_path / "empty"
    empty.mkdir()
    good, folder, missing = root / "videos" / "v1.mp4", root / "frames" / "f2", tmp_path / "no.mp4"
    inputs = [good, missing, corrupt, folder, empty]
    out_json, out_csv = tmp_path / "p.jsonl", tmp_path / "p.csv"
    args = ["predict", *map(str, inputs), "--checkpoint", str(checkpoint), "--topk", "2"]
    result = CliRunner().invoke(
        cli, [*args, "--json", str(out_json), "--csv", str(out_csv), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    reference = predict([good, folder], checkpoint, topk=2, workers=0).predictions
    errors = {
        missing: f"{missing}: no such file or folder; check the path",
        corrupt: f"{corrupt}: cannot open video (",
        empty: f"{empty}: no video (.mp4, .avi, .webm, .mkv, .mov) or frame folder",
    }
    table = result.stdout.splitlines()
    assert table[0].split() == ["input", "top-2"]
    for line, path in zip(table[1:6], inputs, strict=True):
        assert line.startswith(str(path))
        text = line[len(str(path)) :].strip()
        if path in errors:
            assert text.startswith(f"error: {errors[path]}")
        else:
            top = next(p.top for p in reference if p.path == path)
            assert text == "  ".join(f"{c.name} {c.probability:.3f}" for c in top)
    assert "inputs      5 (3 failed)" in result.stdout

    lines = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert [line["input"] for line in lines] == [str(p) for p in inputs]
    for line, path in zip(lines, inputs, strict=True):
        if path in errors:
            assert line["error"].startswith(errors[path]) and line["top"] is None
        else:
            top = next(p.top for p in reference if p.path == path)
            assert line["error"] is None and line["top"] == [c.to_dict() for c in top]
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["input"] for r in rows] == [str(p) for p in inputs]
    assert [bool(r["error"]) for r in rows] == [path in errors for path in inputs]
    assert rows[0]["class_1"] == reference[0].top[0].name


def test_every_input_failed_is_exit_1_with_the_outputs_written(data, tmp_path):
    root, checkpoint = data
    out_json = tmp_path / "p.jsonl"
    inputs = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    result = CliRunner().invoke(
        cli, ["predict", *inputs, "--checkpoint", str(checkpoint), "--json", str(out_json)]
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: every input failed (2 of 2); see above"
    )
    assert [json.loads(line)["input"] for line in out_json.read_text().splitlines()] == inputs


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path):
    (tmp_path / "file").write_text("x")
    never_read = tmp_path / "no-such-checkpoint.pt"  # read only after the outputs are checked
    base = ["predict", str(tmp_path), "--checkpoint", str(never_read)]
    cases = {
        ("--json", "file/p.jsonl"): "--json {0}/file/p.jsonl: {0}/file is a file, not a "
        "folder; choose another path",
        ("--csv", "."): "--csv {0}: is a folder; give a file name",
        ("--plot", "file/t.png", "--window", "2"): "--plot {0}/file/t.png: {0}/file is a file, "
        "not a folder; choose another path",
        ("--plot", "t.png"): "--stride and --plot need --window SECONDS (a timeline of windows)",
        ("--window", "0"): "--window must be a positive, finite number of seconds, got 0.0",
    }
    for (option, value, *rest), expected in cases.items():
        args = [*base, option, str(tmp_path / value) if "." in value else value, *rest]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == "error: " + expected.format(tmp_path)


def test_timeline_of_windows_in_json_csv_and_plot(data, tmp_path, make_video, monkeypatch):
    root, checkpoint = data
    long = make_video(tmp_path / "long.mp4", num_frames=60, size=40, fps=10)
    folder = root / "frames" / "f1"  # 16 frames: at --fps 4, 4 s
    log = []

    class Counting:
        def __init__(self, source):
            self.source, self.path, self.num_frames = source, source.path, source.num_frames
            self.fps, self.timestamps = source.fps, source.timestamps
            log.append("open")

        def get(self, indices):
            log.append(len(indices))
            return self.source.get(indices)

    real = windows_module.open_video
    monkeypatch.setattr(windows_module, "open_video", lambda p, b: Counting(real(p, b)))
    paths = {k: tmp_path / f"t.{k}" for k in ("jsonl", "csv", "png")}
    result = predict(
        [long, folder],
        checkpoint,
        window=2.0,
        stride=1.0,
        fps=4.0,
        topk=2,
        workers=0,
        json_path=paths["jsonl"],
        csv_path=paths["csv"],
        plot_path=paths["png"],
    )
    video, frames = result.predictions
    plan = plan_windows(60, 10.0, 2.0, 1.0)
    assert [(w.start, w.end) for w in video.windows] == [(w.start / 10, w.stop / 10) for w in plan]
    assert [(w.start, w.end) for w in frames.windows] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]
    assert video.fps == 10.0 and frames.fps == 4.0
    # the video: opened once to count its frames, once to read; one read of 4 frames a window
    assert log == ["open", "open", *[4] * len(plan)]
    mean = torch.stack([w.scores for w in video.windows]).mean(0)
    assert torch.equal(video.scores, mean) and video.top[0].label == int(mean.argmax())

    lines = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert lines[0]["fps"] == 10.0 and lines[0]["windows"] == [w.to_dict() for w in video.windows]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(plan) + 3  # one row a window, no row for the whole video
    assert [(r["start"], r["end"]) for r in rows[:2]] == [("0.000", "2.000"), ("1.000", "3.000")]
    assert rows[0]["class_1"] == video.windows[0].top[0].name
    panel, _ = timeline_panels(result)  # what the PNG draws
    name, times, curves = panel.title, panel.times, panel.curves
    assert name == str(long) and times == [(w.start + w.end) / 2 for w in video.windows]
    assert {w.top[0].name for w in video.windows} <= set(curves)  # every window's best class
    probs = torch.stack([w.scores for w in video.windows]).softmax(1)
    assert all(curves[c] == probs[:, CLASSES.index(c)].tolist() for c in curves)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.written == [paths["jsonl"], paths["csv"], paths["png"]]


def test_class_names_from_a_file_a_shipped_list_or_the_label_numbers(data, tmp_path):
    root, checkpoint = data
    video = root / "videos" / "v0.mp4"
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    assert predict([video], checkpoint, classes=names, workers=0).classes == ["a", "b", "c"]
    assert predict([video], checkpoint, workers=0).classes == CLASSES  # the checkpoint's

    # an official TSM file (no names, no architecture) of the 51 HMDB classes
    _, model = tiny_checkpoint(tmp_path / "ours.pt", num_classes=51, classes=None)
    official = tmp_path / "official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, official)
    arch = ArchOverrides(arch="resnet18", num_segments=4, shift="bidirectional")
    plain = predict([video], official, arch=arch, workers=0)
    assert plain.classes == [str(k) for k in range(51)]
    hmdb = read_classes(labels_dir() / "hmdb51.txt")
    named = predict([video], official, arch=arch, classes="hmdb51", workers=0)
    assert (
        named.classes == hmdb
        and named.predictions[0].top[0].name == hmdb[plain.predictions[0].top[0].label]
    )
    with pytest.raises(UsageError) as info:  # hmdb51's list has one order
        predict([video], official, arch=arch, classes="hmdb51", label_order="sorted")
    assert str(info.value) == (
        "label order 'sorted' is not offered for hmdb51; choose one of official"
    )

    with pytest.raises(CheckpointError) as info:
        predict([video], checkpoint, classes="hmdb51", workers=0)
    assert str(info.value) == (
        f"--classes hmdb51: 51 class names, but {checkpoint} has 3 classes; give the class "
        "list of the dataset the model was trained on"
    )
    with pytest.raises(DataError, match=r"^--classes hmdb: no such file, nor a shipped dataset"):
        predict([video], checkpoint, classes="hmdb", workers=0)


def test_the_public_api_names_the_workflows():
    import tsmcli
    from tsmcli.engine.stream import stream

    assert tsmcli.predict is predict and tsmcli.stream is stream
    assert {"predict", "stream"} <= set(dir(tsmcli))


def test_a_model_zoo_name_is_its_cached_file_with_its_architecture_and_names(
    data, tmp_path, monkeypatch
):
    """A zoo name resolves through read_checkpoint: $TSM_HOME is built here (a tiny ResNet-18
    of 2 frames in the official layout at tsm-k400-r50-8f's cache path, no network); the entry
    gives the architecture flags and the 400 Kinetics names."""
    from zoo_files import randomize, use_zoo

    video = data[0] / "videos" / "v0.mp4"
    torch.manual_seed(0)
    model = randomize(build_model("resnet18", 400, num_segments=2, shift="bidirectional"))
    official = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    tiny = {"arch": "resnet18", "segments": 2}
    entries = use_zoo(monkeypatch, tmp_path / "home", {K400: (tiny, official)})
    by_name = predict([video], K400, topk=3, workers=0)
    path = cache_path(entries[K400])
    flags = ArchOverrides(arch="resnet18", num_segments=2, shift="bidirectional")
    by_path = predict([video], path, arch=flags, topk=3, workers=0)
    (named,), (plain,) = by_name.predictions, by_path.predictions
    assert torch.equal(named.scores, plain.scores) and by_name.checkpoint == str(path)
    names = entries[K400].class_names()
    assert by_name.classes == names and len(names) == 400
    assert by_path.classes == [str(k) for k in range(400)]  # the file alone has no names
    assert [c.name for c in named.top] == [names[c.label] for c in plain.top]

    args = ["predict", str(video), "--topk", "1", "--workers", "0", "--device", "cpu"]
    result = CliRunner().invoke(cli, [*args, "--checkpoint", K400])
    assert result.exit_code == 0, result.output
    best = named.top[0]
    assert result.stdout.splitlines()[1] == f"{video}  {best.name} {best.probability:.3f}"
    typo = CliRunner().invoke(cli, [*args, "--checkpoint", "tsm-k400-r50-9f"])
    assert typo.exit_code == 2  # a usage error, as for eval
    assert typo.output.strip() == (
        "error: 'tsm-k400-r50-9f' is neither a checkpoint file nor a model zoo name; did you "
        "mean 'tsm-k400-r50-8f' or 'tsm-k400-r50-16f' or 'tsn-k400-r50'?"
    )


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 8 cores faked, none started
def test_default_workers_are_no_more_than_the_batches_to_overlap(monkeypatch):
    """One batch (``tsm predict clip.mp4``) has nothing to overlap: no worker is started."""
    from tsmcli.engine import scoring
    from tsmcli.engine.scoring import views_loader

    monkeypatch.setattr(scoring.os, "cpu_count", lambda: 8)
    cpu = torch.device("cpu")
    for items, batch, expected in [(1, 4, 0), (4, 4, 0), (5, 4, 1), (9, 2, 4), (100, 4, 4)]:
        assert views_loader(list(range(items)), batch, None, cpu).num_workers == expected
    monkeypatch.setattr(scoring.os, "cpu_count", lambda: 2)
    assert views_loader(list(range(100)), 4, None, cpu).num_workers == 2
    assert views_loader(list(range(1)), 4, 3, cpu).num_workers == 3  # given: as given


def test_the_timeline_draws_every_window_winner_even_beyond_five():
    from tsmcli.engine.predictions import InputPrediction, PredictResult, WindowPrediction
    from tsmcli.engine.views import PROTOCOLS

    names = [f"c{k}" for k in range(8)]
    windows = []
    for w, best in enumerate([0, 1, 2, 3, 4, 5]):  # six classes each best somewhere
        scores = torch.zeros(8)
        scores[best], scores[7] = 5.0 + (best == 5), 4.0  # c7: never best, always second
        windows.append(WindowPrediction(float(w), w + 1.0, (), scores))
    video = InputPrediction(Path("long.mp4"), "videos", (), windows=tuple(windows), fps=8.0)
    result = PredictResult([video], "c.pt", PROTOCOLS["single"], 1, names, 2, 1.0, 1.0, 1.0)
    (panel,) = timeline_panels(result)
    curves = panel.curves
    assert list(curves) == ["c5", "c0", "c1", "c2", "c3", "c4"]  # every winner, by its peak
    two = PredictResult(
        [InputPrediction(Path("a.mp4"), "videos", (), windows=tuple(windows[:2]), fps=8.0)],
        *("c.pt", PROTOCOLS["single"], 1, names, 2, 1.0, 1.0, 1.0),
    )
    assert list(timeline_panels(two)[0].curves) == ["c0", "c1", "c7", "c2", "c3"]  # the rest


def test_a_variable_rate_video_is_windowed_by_when_its_frames_are_shown(tmp_path):
    """40 frames, 2 s at 4 fps then 2 s at 16 fps, in a stream that says 8 fps: the windows
    are the four seconds the video lasts, not five of the nominal rate."""
    from odd_videos import SLOW_THEN_FAST_MS, write_vfr

    checkpoint, _ = tiny_checkpoint(tmp_path / "c.pt")
    video = write_vfr(tmp_path / "vfr.mp4", SLOW_THEN_FAST_MS)
    (found,) = predict([video], checkpoint, window=1.0, workers=0).predictions
    assert [(w.start, w.end) for w in found.windows] == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_intervals_of_a_timeline_in_the_table_json_and_csv(data, tmp_path):
    root, checkpoint = data
    long = root / "videos" / "v2.mp4"  # 21 frames at 8 fps
    paths = {k: tmp_path / f"i.{k}" for k in ("jsonl", "csv")}
    args = [
        "predict",
        str(long),
        "--checkpoint",
        str(checkpoint),
        "--window",
        "1",
        "--stride",
        "0.5",
        "--intervals",
        "--threshold",
        "0",
        "--min-duration",
        "0",
        "--json",
        str(paths["jsonl"]),
        "--csv",
        str(paths["csv"]),
    ]
    printed = CliRunner().invoke(cli, args)
    assert printed.exit_code == 0, printed.output
    (line,) = [json.loads(x) for x in paths["jsonl"].read_text().splitlines()]
    found = line["intervals"]
    windows = line["windows"]
    assert found and all(0 <= i["start"] < i["end"] <= 21 / 8 + 1e-6 for i in found)
    # an interval spans whole windows: it starts where one starts and ends where one ends
    assert {i["start"] for i in found} <= {w["start"] for w in windows}
    assert {i["end"] for i in found} <= {w["end"] for w in windows}
    assert {i["class"] for i in found} <= set(CLASSES)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["kind"] for r in rows].count("interval") == len(found)
    assert f"actions ({len(found)}):" in printed.output
    refused = CliRunner().invoke(
        cli, ["predict", str(long), "--checkpoint", str(checkpoint), "--intervals"]
    )
    assert refused.exit_code == 2 and "--intervals needs --window" in refused.output
