"""Streaming evaluation and ``tsm stream``: the running average equals the offline one-way model."""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings

import pytest
import torch
from click.testing import CliRunner

from tsmcli.cli import cli
from tsmcli.data import transforms
from tsmcli.data.decode import open_video
from tsmcli.engine.convert import convert_online
from tsmcli.engine.metrics import topk_accuracy
from tsmcli.engine.online import evaluate_online
from tsmcli.engine.stream import stream
from tsmcli.model.checkpoint import checkpoint_dict, load_model
from tsmcli.model.export import rebuild
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe

SIZE = 32
CLASSES = ["up", "down", "left"]
VIDEO_FRAMES = [5, 7, 9]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A converted tiny ResNet-18 (random weights) and its checkpoint."""
    root = tmp_path_factory.mktemp("online")
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_segments=4, shift="unidirectional")
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.0)
        model.new_fc.weight.normal_(0.0, model.feature_dim**-0.5)  # logits O(1), not ~0
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch="resnet18", num_classes=3, num_segments=4, shift="unidirectional"),
        data=DataConfig(input_size=SIZE, scale_size=SIZE, source="videos"),
    )
    checkpoint = root / "ckpt.pt"
    save_checkpoint(checkpoint_dict(model, recipe=recipe.to_dict(), classes=CLASSES), checkpoint)
    convert_online(checkpoint, root / "model", verify_frames=3, latency_reps=1)
    return root / "model", checkpoint


@pytest.fixture
def videos(tmp_path, make_video):
    """Three tiny H.264 videos of different lengths and their list file."""
    lines = []
    for label, frames in enumerate(VIDEO_FRAMES):
        make_video(tmp_path / f"v{label}.mp4", num_frames=frames, size=40, seed=label)
        lines.append(f"v{label}.mp4 {frames} {label}\n")
    (tmp_path / "val.txt").write_text("".join(lines))
    return tmp_path


def offline_running_means(checkpoint, path, scale_size):
    """Running means of the offline one-way model's per-frame logits over all frames: (T, K)."""
    video = open_video(path)
    frames = transforms.normalize(
        transforms.eval_views(
            video.get(range(video.num_frames)), input_size=SIZE, scale_size=scale_size
        )[0]
    )  # (T, 3, S, S)
    model = rebuild(load_model(checkpoint), shift="unidirectional", num_segments=len(frames))
    with torch.no_grad():
        per_frame = model.frame_logits(frames[None])[0]  # (T, K)
        clip = model(frames[None])[0]
    running = per_frame.cumsum(0) / torch.arange(1, len(frames) + 1)[:, None]
    assert (running[-1] - clip).abs().max() < 1e-5
    return running


def test_evaluate_online_equals_offline_one_way_frame_averages(model_dir, videos):
    out, checkpoint = model_dir
    scale = json.loads((out / "report.json").read_text())["scale_size"]
    result = evaluate_online(out, videos / "val.txt", videos)

    running = [offline_running_means(checkpoint, videos / f"v{i}.mp4", scale) for i in range(3)]
    labels = torch.arange(3)
    reference = torch.stack([r[-1] for r in running])  # (3, K)
    assert result.num_videos == 3 and result.num_frames == sum(VIDEO_FRAMES)
    assert (result.scores - reference).abs().max() < 1e-4
    assert result.top1 == topk_accuracy(reference, labels, (1,))[1]
    assert result.top1_at[100] == result.top1
    for percent in (25, 50):
        seen = torch.stack([r[math.ceil(percent * len(r) / 100) - 1] for r in running])
        assert result.top1_at[percent] == topk_accuracy(seen, labels, (1,))[1]
    assert result.top5 == 100.0  # 3 classes: the label is always among the top 5
    assert result.latency_ms > 0


def test_stream_yields_the_running_top_k_of_every_frame(model_dir, videos):
    out, checkpoint = model_dir
    scale = json.loads((out / "report.json").read_text())["scale_size"]
    steps = stream(videos / "v2.mp4", out, topk=2, keep_steps=True).steps
    running = offline_running_means(checkpoint, videos / "v2.mp4", scale)

    assert [s.index for s in steps] == list(range(VIDEO_FRAMES[2]))
    for step, mean in zip(steps, running, strict=True):
        probs = mean.softmax(0)
        best = torch.argsort(probs, descending=True)[:2]
        assert step.labels == tuple(CLASSES[i] for i in best)
        assert step.scores == pytest.approx([float(probs[i]) for i in best], abs=1e-5)
        assert step.latency_ms > 0

    printed = CliRunner().invoke(
        cli, ["stream", str(videos / "v0.mp4"), "--model", str(out), "--topk", "1"]
    )
    assert printed.exit_code == 0, printed.output
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == VIDEO_FRAMES[0] and all(line.startswith("frame ") for line in lines)
    assert printed.stderr == (
        f"{videos / 'v0.mp4'}: 5 frames scored at stride 1 (the model's), 0 dropped (5 decoded); reached the end of "
        "the stream\n"
    )
    assert lines[-1].split()[4] in CLASSES  # "frame 4  1.23 ms  <label> <score>"


# ---------------------------------------------------------------------------------------------
# nothing in a model dir runs without --trust-torchscript


class WritesAFile(torch.nn.Module):
    """A hostile online.pt: a scripted step that saves a file wherever it likes (here outside
    the model dir), then answers like the real one so that nothing looks wrong."""

    def __init__(self, target: str, num_classes: int):
        super().__init__()
        self.target = target
        self.num_classes = num_classes

    def forward(
        self,
        frame: torch.Tensor,
        b0: torch.Tensor,
        b1: torch.Tensor,
        b2: torch.Tensor,
        b3: torch.Tensor,
        b4: torch.Tensor,
        b5: torch.Tensor,
        b6: torch.Tensor,
        b7: torch.Tensor,
    ):
        torch.save(frame, self.target)
        return torch.zeros(1, self.num_classes), b0, b1, b2, b3, b4, b5, b6, b7


@pytest.fixture
def hostile_dir(model_dir, tmp_path):
    """A copy of the model dir whose online.pt writes ``tmp_path/outside/pwned.pt``."""
    out, _ = model_dir
    hostile = tmp_path / "hostile"
    shutil.copytree(out, hostile)
    target = tmp_path / "outside" / "pwned.pt"
    target.parent.mkdir()
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, still loadable
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(
            torch.jit.script(WritesAFile(str(target), len(CLASSES))), str(hostile / "online.pt")
        )
    return hostile, target


def _one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    return line[len("error: ") :]


def test_a_hostile_online_pt_does_not_run_without_the_flag(model_dir, hostile_dir, videos):
    out, _ = model_dir
    hostile, target = hostile_dir
    runner = CliRunner()
    streamed = runner.invoke(cli, ["stream", str(videos / "v2.mp4"), "--model", str(hostile)])
    evaluated = runner.invoke(
        cli,
        [
            "eval",
            "--online",
            str(hostile),
            "--list",
            str(videos / "val.txt"),
            "--root",
            str(videos),
        ],
    )
    assert streamed.exit_code == 0 and evaluated.exit_code == 0, streamed.output + evaluated.output
    assert not target.exists()  # online.pt was never loaded
    genuine = runner.invoke(cli, ["stream", str(videos / "v2.mp4"), "--model", str(out)])
    # the same model as the genuine dir's: the same top-k on every line (latencies differ)
    assert [line.split()[4:] for line in streamed.stdout.splitlines()] == [
        line.split()[4:] for line in genuine.stdout.splitlines()
    ]
    assert evaluate_online(hostile, videos / "val.txt", videos).scores.equal(
        evaluate_online(out, videos / "val.txt", videos).scores
    )
    assert not target.exists()
    # the flag is what loads online.pt (so this test would see it run without one)
    trusted = runner.invoke(
        cli, ["stream", str(videos / "v0.mp4"), "--model", str(hostile), "--trust-torchscript"]
    )
    assert trusted.exit_code == 0, trusted.output
    assert target.exists()


def test_the_rebuilt_model_equals_the_torchscript_one(model_dir, videos):
    out, _ = model_dir
    rebuilt = evaluate_online(out, videos / "val.txt", videos)
    scripted = evaluate_online(out, videos / "val.txt", videos, trust_torchscript=True)
    assert (rebuilt.scores - scripted.scores).abs().max() < 1e-5
    assert rebuilt.top1 == scripted.top1 and rebuilt.num_frames == scripted.num_frames
    steps = stream(videos / "v1.mp4", out, topk=3, keep_steps=True).steps
    trusted = stream(videos / "v1.mp4", out, topk=3, trust_torchscript=True, keep_steps=True).steps
    assert [s.labels for s in steps] == [s.labels for s in trusted]
    assert [s.scores for s in steps] == [pytest.approx(s.scores, abs=1e-6) for s in trusted]


def test_old_or_damaged_model_dirs_are_one_line_errors(model_dir, videos, tmp_path):
    out, _ = model_dir
    runner = CliRunner()
    video = str(videos / "v0.mp4")

    def copy(name: str):
        target = tmp_path / name
        shutil.copytree(out, target)
        return target

    old = copy("old")
    (old / "online_weights.pt").unlink()  # a model dir from before online_weights.pt
    message = _one_line_error(runner.invoke(cli, ["stream", video, "--model", str(old)]))
    assert message == (
        f"{old / 'online_weights.pt'}: missing (a model dir from an older tsmcli holds only "
        "TorchScript, which can run code); run tsm convert-online again, or pass "
        f"--trust-torchscript if you trust {old / 'online.pt'}"
    )
    assert (
        runner.invoke(cli, ["stream", video, "--model", str(old), "--trust-torchscript"]).exit_code
        == 0
    )

    corrupt = copy("corrupt")
    (corrupt / "online.pt").write_bytes(b"\x00garbage" * 100)
    assert runner.invoke(cli, ["stream", video, "--model", str(corrupt)]).exit_code == 0
    message = _one_line_error(
        runner.invoke(cli, ["stream", video, "--model", str(corrupt), "--trust-torchscript"])
    )
    assert message.startswith(f"{corrupt / 'online.pt'}: not a readable TorchScript file (")
    assert message.endswith("convert the checkpoint again with tsm convert-online")
    (corrupt / "online_weights.pt").write_bytes(b"\x00garbage" * 100)
    message = _one_line_error(runner.invoke(cli, ["stream", video, "--model", str(corrupt)]))
    assert message.startswith(f"{corrupt / 'online_weights.pt'}: not a checkpoint")

    report = json.loads((out / "report.json").read_text())
    edits = {
        "not json": ("{ height: 32", "not valid JSON"),
        "list": ("[1, 2]", "holds a list, not the report object"),
        "height": (
            {**report, "height": "32"},
            "height must be an integer of at least 16, got '32'",
        ),
        "scale": ({**report, "scale_size": 8}, "scale_size must be an integer of at least 32"),
        "shapes": ({**report, "buffer_shapes": [[1, -8]]}, "buffer_shapes must be a list of"),
        "resized": (
            {**report, "height": 48, "width": 48, "scale_size": 48},
            "buffer_shapes do not match",
        ),
    }
    for name, (content, expected) in edits.items():
        edited = copy(name)
        text = content if isinstance(content, str) else json.dumps(content)
        (edited / "report.json").write_text(text)
        for command in (
            ["stream", video, "--model", str(edited)],
            [
                "eval",
                "--online",
                str(edited),
                "--list",
                str(videos / "val.txt"),
                "--root",
                str(videos),
            ],
        ):
            message = _one_line_error(runner.invoke(cli, command))
            assert message.startswith(f"{edited / 'report.json'}: ") and expected in message
            assert "convert" in message
    # trusting the TorchScript of an edited report: the step fails, in one line
    message = _one_line_error(
        runner.invoke(
            cli, ["stream", video, "--model", str(tmp_path / "resized"), "--trust-torchscript"]
        )
    )
    assert message.startswith(f"{tmp_path / 'resized' / 'online.pt'}: failed on a 48x48 frame")


def test_stream_into_a_closed_pipe_exits_quietly(model_dir, videos):
    """``tsm stream ... | head``: the reader is gone before the first line; no traceback, no
    'internal error', exit 0."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out, _ = model_dir
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TSM_DEBUG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tsmcli", "stream", str(videos / "v2.mp4"), "--model", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    process.stdout.close()  # as head does once it has its lines
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    assert "error" not in stderr.decode().lower()  # no "internal error", no BrokenPipeError


def test_the_model_dir_records_the_training_stride_and_streams_at_it(model_dir, tmp_path):
    """Trained on 4-segment clips of 12-frame videos, the model saw every third frame: that
    is what tsm stream and tsm eval --online feed by default, and say so."""
    _, checkpoint = model_dir
    train = tmp_path / "train.txt"
    train.write_text("a 12 0\nb 12 1\nc 13 2\nd 200 0\n")  # median 12: stride 3
    stored = torch.load(checkpoint, weights_only=True)
    stored["recipe"]["data"]["train_list"] = str(train)
    moved = tmp_path / "ckpt.pt"
    save_checkpoint(stored, moved)
    out = tmp_path / "model"
    result = convert_online(moved, out, verify_frames=3, latency_reps=1)
    why = "the training list's median video (12 frames) over 4 segments"
    assert (result.frame_stride, result.frame_stride_from) == (3, why)
    report = json.loads((out / "report.json").read_text())
    assert (report["frame_stride"], report["frame_stride_from"]) == (3, why)

    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    for k in range(10):
        Image.new("RGB", (SIZE, SIZE), (25 * k, 0, 0)).save(frames / f"img_{k + 1:05d}.jpg")
    by_default = stream(frames, out, keep_steps=True)
    assert [s.index for s in by_default.steps] == [0, 3, 6, 9]
    assert (by_default.stride, by_default.stride_from) == (3, why)
    given = stream(frames, out, stride=1, keep_steps=True)
    assert (len(given.steps), given.stride, given.stride_from) == (10, 1, "given")

    (tmp_path / "val.txt").write_text("frames 10 0\n")
    online = evaluate_online(out, tmp_path / "val.txt", tmp_path, source="frames")
    assert (online.num_frames, online.stride, online.stride_from) == (4, 3, why)
    printed = CliRunner().invoke(
        cli,
        [
            "eval",
            "--online",
            str(out),
            "--list",
            str(tmp_path / "val.txt"),
            "--root",
            str(tmp_path),
        ],
    )
    assert printed.exit_code == 0, printed.output
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in printed.output.splitlines())
    assert rows["frames fed"] == f"one frame in 3 ({why})"

    no_list = dict(stored)
    no_list["recipe"] = {
        **stored["recipe"],
        "data": {**stored["recipe"]["data"], "train_list": str(tmp_path / "gone.txt")},
    }
    save_checkpoint(no_list, tmp_path / "elsewhere.pt")
    unknown = convert_online(
        tmp_path / "elsewhere.pt", tmp_path / "m2", verify_frames=3, latency_reps=1
    )
    assert unknown.frame_stride == 1
    assert unknown.frame_stride_from == (
        f"not recorded: the training list {tmp_path / 'gone.txt'} was not readable"
    )
    chosen = convert_online(moved, tmp_path / "m3", verify_frames=3, latency_reps=1, stride=2)
    assert (chosen.frame_stride, chosen.frame_stride_from) == (2, "given to tsm convert-online")


def test_an_online_evaluation_writes_the_same_reports_as_an_offline_one(
    model_dir, videos, tmp_path
):
    out, _ = model_dir
    args = ["eval", "--online", str(out), "--list", str(videos / "val.txt"), "--root", str(videos)]
    summary, reports = tmp_path / "online.json", tmp_path / "reports"
    printed = CliRunner().invoke(cli, [*args, "--json", str(summary), "--out", str(reports)])
    assert printed.exit_code == 0, printed.output
    result = evaluate_online(out, videos / "val.txt", videos)
    written = json.loads(summary.read_text())
    assert written["top1"] == result.top1 and written["num_videos"] == 3
    assert written["num_frames"] == sum(VIDEO_FRAMES)
    assert (written["stride"], written["model"]) == (1, str(out / "online_weights.pt"))
    assert written["protocol"]["name"] == "streaming"
    assert written["top1_at"] == {str(p): v for p, v in result.top1_at.items()}
    assert sorted(p.name for p in reports.iterdir()) == [
        "confusion.csv",
        "confusion.png",
        "per_class.csv",
        "predictions.csv",
        "scores.csv",
    ]
    rows = (reports / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("video,label,pred_1,score_1") and len(rows) == 4


def test_a_classes_file_that_does_not_fit_the_outputs_is_refused(model_dir, videos, tmp_path):
    out, _ = model_dir
    short = tmp_path / "short"
    shutil.copytree(out, short)
    (short / "classes.txt").write_text("up\ndown\n")  # the model has 3 outputs
    message = _one_line_error(
        CliRunner().invoke(cli, ["stream", str(videos / "v0.mp4"), "--model", str(short)])
    )
    assert message == (
        f"{short / 'classes.txt'}: names 2 classes, but the model has 3 outputs; restore the "
        "file written by tsm convert-online, or convert the checkpoint again"
    )
