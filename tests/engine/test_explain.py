"""``tsm explain`` and ``tsm features``: Grad-CAM over the whole clip (the shift respected),
deterministic, pointing where the evidence is on a constructed model; features that are
exactly the classifier's input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from tsmcli.cli import cli
from tsmcli.engine.evaluate import evaluate
from tsmcli.engine.explain import (
    default_layer,
    explain,
    grad_cam,
    pixel_attributions,
    pixel_map,
)
from tsmcli.engine.features import features
from tsmcli.errors import UsageError
from tsmcli.model.checkpoint import checkpoint_dict, load_model
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["up", "down", "left"]


class Colours(nn.Module):
    """A clip model whose evidence is known: a 1x1 convolution passes the red and green
    channels through, global pooling and a linear head score them; class 0 is 'red'."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = self.conv.weight[1, 1] = 1.0
            self.head.weight.copy_(torch.eye(2))

    def forward(self, clip):  # (1, T, 3, H, W)
        maps = self.conv(clip.flatten(0, 1))  # (T, 2, H, W)
        return self.head(maps.mean(dim=(2, 3))).mean(dim=0, keepdim=True)  # (1, 2)


def test_grad_cam_is_the_class_weighted_activation_and_points_at_the_evidence():
    clip = torch.zeros(1, 4, 3, 16, 16)
    for t in range(4):
        clip[0, t, 0, 2 + 3 * t : 5 + 3 * t, 4:7] = 1.0  # a red square moving down
        clip[0, t, 1, 10:13, 10:13] = 0.5  # a green one that stays
    model = Colours()
    maps, label, logits = grad_cam(model, clip, model.conv, target=0)
    red = clip[0, :, 0]
    assert label == 0 and torch.equal(maps, red / red.max())  # CAM of conv + pooling + linear
    for t in range(4):
        y, x = np.unravel_index(int(maps[t].argmax()), (16, 16))
        assert 2 + 3 * t <= y < 5 + 3 * t and 4 <= x < 7
    green, label, _ = grad_cam(model, clip, model.conv, target=None)
    assert label == 0 and torch.equal(green, maps)  # the top-1 is red here
    assert torch.equal(grad_cam(model, clip, model.conv, target=1)[0], clip[0, :, 1] / 0.5)


@pytest.mark.parametrize("shift", ["none", "bidirectional"])
def test_a_frames_map_depends_on_the_other_frames_only_through_the_shift(shift):
    """The clip goes through one graph: with the shift, changing the last frame changes the
    first frame's map; without it (TSN) it cannot."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_segments=8, shift=shift).eval()
    clip = torch.randn(1, 8, 3, 32, 32)
    other = clip.clone()
    other[0, -1] = torch.randn(3, 32, 32)
    layer = model.base_model.layer2
    first, label, _ = grad_cam(model, clip, layer, target=1)
    second, _, _ = grad_cam(model, other, layer, target=1)
    assert label == 1 and torch.equal(first, grad_cam(model, clip, layer, target=1)[0])
    unscaled = [m[0] * 1.0 for m in (first, second)]
    changed = not torch.allclose(unscaled[0] / unscaled[0].max(), unscaled[1] / unscaled[1].max())
    assert changed == (shift != "none")


def test_the_default_layer_keeps_maps_of_at_least_four_pixels():
    assert default_layer("resnet", 224) == "base_model.layer4"  # 7x7
    assert default_layer("resnet", 64) == "base_model.layer3"  # 4x4
    assert default_layer("resnet", 32) == "base_model.layer2"
    assert default_layer("mobilenet_v2", 224) == "base_model.features"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three tiny videos, their list, one of them as a frame folder, and a checkpoint."""
    from conftest import write_video

    from tsmcli.data.decode import open_video

    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_segments=4)
    with torch.no_grad():
        model.new_fc.weight.normal_(0.0, 0.5)
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch="resnet18", num_classes=3, num_segments=4),
        data=DataConfig(input_size=32, scale_size=32, source="videos"),
    )
    checkpoint = root / "ckpt.pt"
    save_checkpoint(checkpoint_dict(model, recipe=recipe.to_dict(), classes=CLASSES), checkpoint)
    lines = []
    for i in range(3):
        write_video(root / "videos" / f"v{i}.mp4", num_frames=12, size=32, seed=i)
        lines.append(f"v{i}.mp4 12 {i}\n")
    (root / "videos" / "val.txt").write_text("".join(lines))
    folder = root / "frames" / "v0"
    folder.mkdir(parents=True)
    for k, frame in enumerate(open_video(root / "videos" / "v0.mp4").get(range(12))):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"img_{k + 1:05d}.jpg")
    return root, checkpoint


def test_explain_writes_each_inputs_strip_animation_and_maps(data, tmp_path):
    root, checkpoint = data
    out = tmp_path / "out"
    inputs = [root / "videos" / "v1.mp4", root / "frames" / "v0", root / "nothing.mp4"]
    result = explain(inputs, checkpoint, out_dir=out, target="down")
    video, folder, missing = result.explanations
    assert result.layer == "base_model.layer2" and missing.error is not None
    assert (video.label, video.name) == (1, "down") and video.frame_indices == (1, 4, 7, 10)
    assert video.maps.shape == (4, 32, 32) and video.frames.shape == (4, 32, 32, 3)
    assert video.maps.min() >= 0 and 0.5 < video.maps.max() <= 1.0  # the peak, upsampled
    assert np.array_equal(np.load(out / "v1.npy"), video.maps.astype(np.float32))
    assert (out / "v1.png").read_bytes()[:4] == b"\x89PNG" and Image.open(
        out / "v1.gif"
    ).n_frames == 4
    again = explain([root / "videos" / "v1.mp4"], checkpoint, target=1).explanations[0]
    assert np.array_equal(again.maps, video.maps)  # deterministic
    with pytest.raises(UsageError, match="--class 'jump' is not a class of this model"):
        explain(inputs, checkpoint, target="jump")
    with pytest.raises(UsageError, match="--layer 'base_model.layer9' is not a module"):
        explain(inputs, checkpoint, layer="base_model.layer9")
    refused = CliRunner().invoke(
        cli, ["explain", str(inputs[0]), "--checkpoint", str(checkpoint), "--out", str(out)]
    )
    assert refused.exit_code == 2 and "already exists; pass --overwrite" in refused.output


def test_features_are_the_classifiers_input(data, tmp_path):
    root, checkpoint = data
    listed = root / "videos" / "val.txt"
    clip = features(checkpoint=checkpoint, list_file=listed, root=root / "videos", workers=0)
    expected = evaluate(checkpoint, listed, root / "videos", workers=0).scores
    head = load_model(checkpoint).eval().new_fc
    with torch.no_grad():
        assert torch.allclose(head(torch.from_numpy(clip.features)), expected, atol=1e-5)
    assert [row["label"] for row in clip.index] == [0, 1, 2] and clip.views == 1
    frame = features(checkpoint=checkpoint, list_file=listed, root=root / "videos", level="frame")
    assert frame.features.shape == (3, 4, clip.features.shape[1])
    assert np.allclose(frame.features.mean(axis=1), clip.features, atol=1e-6)

    out = tmp_path / "feats"
    printed = CliRunner().invoke(
        cli,
        [
            "features",
            str(root / "videos" / "v2.mp4"),
            str(root / "missing.mp4"),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--dtype",
            "float16",
            "--crops",
            "3",
        ],
    )
    assert printed.exit_code == 0, printed.output
    stored = np.load(out / "features.npy")
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert stored.dtype == np.float16 and stored.shape == (2, clip.features.shape[1])
    assert [(r["row"], r["views"]) for r in rows] == [(0, 3), (1, 3)]
    assert rows[0]["error"] is None and "missing.mp4" in rows[1]["error"]
    with pytest.raises(UsageError, match="give INPUTs, or --list and --root, not both"):
        features([root / "videos" / "v2.mp4"], checkpoint, list_file=listed, root=root)


def _activation_and_gradient(model, clip, layer, label):
    """``layer``'s output on ``clip`` (detached) and the gradient of ``label``'s score there,
    computed apart from ``grad_cam`` to check it."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = model(clip)
    handle.remove()
    (gradient,) = torch.autograd.grad(logits[0, label], store["a"])
    return store["a"].detach(), gradient


def test_layercam_weighs_each_position_by_its_own_positive_gradient():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_segments=4).eval()
    clip = torch.randn(1, 4, 3, 32, 32)
    maps, label, _ = grad_cam(model, clip, model.base_model.layer1, 2, "layercam")
    a, grad = _activation_and_gradient(model, clip, model.base_model.layer1, 2)
    expected = torch.relu((torch.relu(grad) * a).sum(1))
    assert label == 2 and torch.allclose(maps, expected / expected.max(), atol=1e-6)


def test_gradcam_plus_plus_weighs_channels_by_their_positive_gradients():
    """Grad-CAM++'s closed form: alpha = g^2 / (2 g^2 + sum(A) g^3), a channel's weight the
    sum of alpha * relu(g) over the frame."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_segments=4).eval()
    clip = torch.randn(1, 4, 3, 32, 32)
    maps, label, _ = grad_cam(model, clip, model.base_model.layer1, 1, "gradcam++")
    a, g = _activation_and_gradient(model, clip, model.base_model.layer1, 1)
    denominator = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
    alpha = torch.where(denominator != 0, g**2 / denominator, torch.zeros_like(g))
    weights = (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)
    expected = torch.relu((weights * a).sum(1))
    assert label == 1 and torch.allclose(maps, expected / expected.max(), atol=1e-6)
    assert not torch.allclose(maps, grad_cam(model, clip, model.base_model.layer1, 1)[0])


def test_input_x_gradient_is_each_pixels_share_of_the_score():
    """The colour model's score for red is the mean red value: its gradient is the same for
    every red pixel and zero for the others, so input x gradient is the red channel; smoothed,
    it still peaks on the red square in every frame."""
    clip = torch.zeros(1, 4, 3, 16, 16)
    for t in range(4):
        clip[0, t, 0, 2 + 3 * t : 5 + 3 * t, 4:7] = 1.0
        clip[0, t, 1, 10:13, 10:13] = 0.5
    model = Colours()
    raw, label, _ = pixel_map(model, clip, target=0, blur=0)
    red = clip[0, :, 0]
    assert label == 0 and torch.allclose(raw, red / red.max())
    smooth, _, _ = pixel_map(model, clip, target=0)
    assert smooth.shape == (4, 16, 16) and float(smooth.max()) == pytest.approx(1.0)
    for t in range(4):
        y, x = np.unravel_index(int(smooth[t].argmax()), (16, 16))
        assert 2 + 3 * t <= y < 5 + 3 * t and 4 <= x < 7
    green, _, _ = pixel_map(model, clip, target=1, blur=0)
    assert torch.allclose(green, clip[0, :, 1] / 0.5)


def test_integrated_gradients_add_up_to_the_scores_rise_from_the_baseline():
    """Completeness: the attributions sum to score(clip) - score(zeros), to the trapezoid
    rule's error; for a model linear in its input they are input x gradient exactly."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_segments=4).eval()
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        rise = float(model(clip)[0, 2] - model(torch.zeros_like(clip))[0, 2])
    shares, label, logits = pixel_attributions(model, clip, 2, steps=64)
    assert label == 2 and torch.equal(logits, model(clip).detach())
    assert float(shares.sum()) == pytest.approx(rise, rel=0.02)
    colours = Colours()
    linear, _, _ = pixel_attributions(colours, clip, 0, steps=4)
    assert torch.allclose(linear, pixel_attributions(colours, clip, 0, steps=0)[0], atol=1e-7)


@pytest.mark.parametrize("method", ["inputxgrad", "intgrad"])
def test_pixel_methods_map_the_input_and_refuse_a_layer(data, method):
    root, checkpoint = data
    video = root / "videos" / "v1.mp4"
    result = explain([video], checkpoint, method=method)
    (found,) = result.explanations
    assert result.layer == "input" and found.maps.shape == (4, 32, 32)
    again = explain([video], checkpoint, method=method).explanations[0]
    assert np.array_equal(found.maps, again.maps)  # deterministic
    args = ["explain", str(video), "--checkpoint", str(checkpoint), "--method", method]
    refused = CliRunner().invoke(cli, [*args, "--layer", "base_model.layer1"])
    assert refused.exit_code == 2 and "leave out --layer" in refused.output
    assert "a layer's method (gradcam, gradcam++, layercam)" in refused.output
