"""Streaming evaluation and ``tsm stream``: the running average equals the offline one-way model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from tsmcli.cli import cli
from tsmcli.data import transforms
from tsmcli.data.decode import open_video
from tsmcli.engine.metrics import topk_accuracy
from tsmcli.engine.online import evaluate_online, stream
from tsmcli.model.checkpoint import load_model, save_checkpoint
from tsmcli.model.export import convert_online, rebuild
from tsmcli.model.tsn import build_model
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
        model.new_fc.weight.normal_(0.0, model.feature_dim ** -0.5)  # logits O(1), not ~0
    recipe = Recipe(name="tiny", model=ModelConfig(arch="resnet18", num_classes=3, num_segments=4,
                                                   shift="unidirectional"),
                    data=DataConfig(input_size=SIZE, scale_size=SIZE, source="videos"))
    checkpoint = root / "ckpt.pt"
    save_checkpoint({"format": "tsmcli", "format_version": 1, "model_config": model.config(),
                     "recipe": recipe.to_dict(), "classes": CLASSES,
                     "state_dict": model.state_dict()}, checkpoint)
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
    frames = transforms.normalize(transforms.eval_views(
        video.get(range(video.num_frames)), input_size=SIZE, scale_size=scale_size)[0])  # (T, 3, S, S)
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
    steps = list(stream(videos / "v2.mp4", out, topk=2))
    running = offline_running_means(checkpoint, videos / "v2.mp4", scale)

    assert [s.index for s in steps] == list(range(VIDEO_FRAMES[2]))
    for step, mean in zip(steps, running, strict=True):
        probs = mean.softmax(0)
        best = torch.argsort(probs, descending=True)[:2]
        assert step.labels == tuple(CLASSES[i] for i in best)
        assert step.scores == pytest.approx([float(probs[i]) for i in best], abs=1e-5)
        assert step.latency_ms > 0

    printed = CliRunner().invoke(cli, ["stream", str(videos / "v0.mp4"), "--model", str(out),
                                       "--topk", "1"])
    assert printed.exit_code == 0, printed.output
    lines = printed.output.strip().splitlines()
    assert len(lines) == VIDEO_FRAMES[0] and all(line.startswith("frame ") for line in lines)
    assert lines[-1].split()[4] in CLASSES  # "frame 4  1.23 ms  <label> <score>"
