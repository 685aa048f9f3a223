"""``tsm stream`` from every kind of source: a file over HTTP gives the file's predictions, a
URL cut mid-stream keeps (and says) what was scored, a camera through a fake device, a frame
folder with a stride, ``--jsonl`` events, Ctrl-C, and the errors that come before any frame."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner
from live_fakes import FakeDevice, Opener, fake_pixels

from tsmcli.cli import cli
from tsmcli.engine.convert import convert_online
from tsmcli.engine.online import load_online_model, step_frame
from tsmcli.engine.stream import stream
from tsmcli.errors import UsageError
from tsmcli.model.checkpoint import checkpoint_dict
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe

CLASSES = ["up", "down", "left"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A converted tiny one-way ResNet-18 (random weights, logits of order 1)."""
    root = tmp_path_factory.mktemp("stream")
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_segments=4, shift="unidirectional")
    with torch.no_grad():
        model.new_fc.weight.normal_(0.0, model.feature_dim**-0.5)
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch="resnet18", num_classes=3, num_segments=4, shift="unidirectional"),
        data=DataConfig(input_size=32, scale_size=32, source="videos"),
    )
    checkpoint = root / "ckpt.pt"
    save_checkpoint(checkpoint_dict(model, recipe=recipe.to_dict(), classes=CLASSES), checkpoint)
    convert_online(checkpoint, root / "model", verify_frames=3, latency_reps=1)
    return root / "model"


def same_steps(a, b) -> bool:
    """The same frames with the same running top-k (latencies differ)."""
    key = lambda s: (s.index, s.time, s.top)  # noqa: E731
    return [key(s) for s in a] == [key(s) for s in b]


def test_a_file_served_over_http_gives_the_files_predictions(
    model_dir, tmp_path, make_video, serve, deadline
):
    path = make_video(tmp_path / "clip.mkv", num_frames=12, size=40, fps=25)
    with deadline(120):
        from_file = stream(path, model_dir, topk=3, keep_steps=True)
        from_url = stream(f"{serve(tmp_path)}/clip.mkv", model_dir, topk=3, keep_steps=True)
    assert from_file.frames == from_url.frames == 12 and len(from_url.steps) == 12
    assert same_steps(from_file.steps, from_url.steps)
    assert [s.index for s in from_url.steps] == list(range(12))
    assert [s.time for s in from_url.steps] == [k / 25 for k in range(12)]
    for result in (from_file, from_url):
        assert (result.decoded, result.dropped, result.ending) == (12, 0, "finished")
        assert not result.live and result.last == result.steps[-1]


def test_a_url_cut_mid_stream_keeps_and_says_what_was_scored(
    model_dir, tmp_path, make_video, serve, deadline
):
    path = make_video(tmp_path / "clip.mkv", num_frames=30, size=40, fps=25)
    data = path.read_bytes()
    (tmp_path / "half.mkv").write_bytes(data[: len(data) // 2])  # what the server sends
    reference = stream(tmp_path / "half.mkv", model_dir, topk=2, keep_steps=True).steps
    assert 0 < len(reference) < 30
    url = f"{serve(tmp_path, half=True)}/clip.mkv"
    events = tmp_path / "out" / "events.jsonl"
    with deadline(120):
        result = CliRunner().invoke(
            cli, ["stream", url, "--model", str(model_dir), "--topk", "2", "--jsonl", str(events)]
        )
    assert result.exit_code == 1, result.output
    n = len(reference)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["index"], e["time"]) for e in lines] == [(s.index, s.time) for s in reference]
    assert [e["top"] for e in lines] == [[c.to_dict() for c in s.top] for s in reference]
    assert all(e["latency_ms"] > 0 for e in lines)
    assert len(result.stdout.splitlines()) == n  # a line per frame scored
    summary, error = result.stderr.strip().splitlines()[-2:]
    assert summary.startswith(
        f"{url}: {n} frames scored at stride 1 (the model's), 0 dropped ({n} decoded); stopped "
    )
    assert summary.endswith(f"; {events} holds every frame scored")
    # the reason counts the frames read before the failure; the decoder then gave the rest
    assert re.match(rf"error: {re.escape(url)}: stopped mid-stream after \d+ frames \(", error)
    assert error.endswith(f"; the {n} frames scored before are in {events}")


def test_a_camera_streams_through_the_device_and_an_unplugged_one_ends_the_run(model_dir):
    opener = Opener(FakeDevice(rate=100, fail_after=12))
    result = stream(None, model_dir, topk=3, camera=0, opener=opener, keep_steps=True)
    assert result.live and result.failed and result.source.startswith("camera 0 (")
    assert result.reason == "stopped mid-stream after 12 frames (Input/output error)"
    assert result.decoded == 12 and result.frames + result.dropped == 12
    indices = [s.index for s in result.steps]
    assert indices == sorted(set(indices)) and indices[-1] == 11  # the last frame is scored
    # the running average over exactly the frames delivered, in their order
    model = load_online_model(model_dir)
    buffers, total = model.initial_buffers(), 0
    with torch.no_grad():
        for count, step in enumerate(result.steps, start=1):
            image = torch.from_numpy(fake_pixels(step.index)).permute(2, 0, 1)  # (3, H, W)
            logits, buffers = step_frame(model, model.prepare(image[None]), buffers)
            total = total + logits
            probs = (total[0] / count).softmax(0)
            assert step.scores == tuple(sorted(probs.tolist(), reverse=True))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="v4l2 is Linux's")
def test_a_camera_that_cannot_be_opened_is_one_line_naming_the_device(model_dir):
    result = CliRunner().invoke(cli, ["stream", "--camera", "99", "--model", str(model_dir)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: camera 99 (/dev/video99, v4l2): cannot be opened (")
    assert line.endswith(
        "check that the camera is connected, not used by another program, and readable by you"
    )


def test_a_frame_folder_with_a_stride_scores_every_other_frame(model_dir, tmp_path):
    from PIL import Image

    every, even = tmp_path / "every", tmp_path / "even"
    every.mkdir()
    even.mkdir()
    for k in range(9):
        image = torch.full((20, 30, 3), 25 * k, dtype=torch.uint8).numpy()
        Image.fromarray(image).save(every / f"img_{k + 1:05d}.jpg", quality=95)
        if k % 2 == 0:
            shutil.copy(every / f"img_{k + 1:05d}.jpg", even / f"img_{k // 2 + 1:05d}.jpg")
    strided = stream(every, model_dir, stride=2, keep_steps=True)
    reference = stream(even, model_dir, keep_steps=True)
    assert [s.index for s in strided.steps] == [0, 2, 4, 6, 8]
    assert [s.top for s in strided.steps] == [s.top for s in reference.steps]
    assert (strided.frames, strided.dropped, strided.ending) == (5, 0, "finished")
    assert strided.steps[0].time is None  # a frame folder has no clock


def test_ctrl_c_ends_the_run_with_what_was_scored(model_dir, tmp_path, make_video, monkeypatch):
    path = make_video(tmp_path / "clip.mp4", num_frames=10, size=32)
    events = tmp_path / "events.jsonl"

    def stop_after_three(step):
        if step.index == 2:
            raise KeyboardInterrupt

    result = stream(path, model_dir, jsonl=events, on_step=stop_after_three)
    assert (result.ending, result.frames) == ("interrupted", 3)
    assert result.reason == "stopped by Ctrl-C after 3 frames scored"
    assert len(events.read_text().splitlines()) == 3

    from tsmcli.commands import predict as commands

    monkeypatch.setattr(commands, "_print_step", stop_after_three)
    printed = CliRunner().invoke(cli, ["stream", str(path), "--model", str(model_dir)])
    assert printed.exit_code == 130
    # decoded: the frames the reader had read ahead too (at most data.live.FILE_BOUND more)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: 3 frames scored at stride 1 \(the model's\), 0 dropped \([3-7] decoded\); "
        r"stopped by Ctrl-C after 3 frames scored\n",
        printed.stderr,
    )


def test_errors_before_any_frame(model_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    runner = CliRunner()
    nowhere = tmp_path / "no-model"  # read only after the output is checked
    refused = runner.invoke(
        cli, ["stream", "x.mp4", "--model", str(nowhere), "--jsonl", str(tmp_path / "file" / "e")]
    )
    assert refused.exit_code == 2
    assert refused.output.strip() == (
        f"error: --jsonl {tmp_path / 'file' / 'e'}: {tmp_path / 'file'} is a file, not a "
        "folder; choose another path"
    )
    both = runner.invoke(cli, ["stream", "x.mp4", "--camera", "0", "--model", str(model_dir)])
    neither = runner.invoke(cli, ["stream", "--model", str(model_dir)])
    assert (both.exit_code, neither.exit_code) == (2, 2)
    assert both.output.strip() == "error: give a SOURCE or --camera N, not both (got x.mp4 and 0)"
    assert (
        neither.output.strip() == "error: give a SOURCE (a file, frame folder or URL) or --camera N"
    )
    missing = runner.invoke(cli, ["stream", str(tmp_path / "no.mp4"), "--model", str(model_dir)])
    assert missing.exit_code == 1
    assert missing.output.strip().startswith(f"error: {tmp_path / 'no.mp4'}: cannot open video (")


def test_the_model_leaves_the_reader_a_core_and_torch_its_threads_after(
    model_dir, tmp_path, make_video, monkeypatch
):
    from tsmcli.engine import stream as module

    monkeypatch.setattr(module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert module.default_threads() == 3
    monkeypatch.setattr(module.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert module.default_threads() == 1  # one core: the model still gets a thread

    path = make_video(tmp_path / "clip.mp4", num_frames=4, size=32)
    before = torch.get_num_threads()  # 1 (the one_thread fixture)
    seen = []
    for threads in (2, None):
        stream(
            path, model_dir, threads=threads, on_step=lambda s: seen.append(torch.get_num_threads())
        )
        assert torch.get_num_threads() == before
    assert seen == [2] * 4 + [1] * 4  # None: default_threads(), 1 on the one core above
    with pytest.raises(UsageError, match="--threads must be at least 1, got 0"):
        stream(path, model_dir, threads=0)
