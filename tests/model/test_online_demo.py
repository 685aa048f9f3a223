"""The official online demo's checkpoint layout (issue 12, deliverable 4): its keys are read
by load_model, the same weights stream the same in it and in the official offline layout, and
the model read from it streams as the official online network does."""

from __future__ import annotations

import pytest
import torch
from zoo_files import (
    SHIFT_BLOCK_IDX,
    OnlineDemoMobileNetV2,
    official_mobilenet_layout,
    online_demo_layout,
    randomize,
)

from tsmcli.errors import CheckpointError, UsageError
from tsmcli.model.checkpoint import load_model, read_checkpoint
from tsmcli.model.streaming import StreamingTSM, run_stream
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import ONLINE_DEMO_SHIFTED_BLOCKS, checkpoint_format

CLASSES, SIZE, FRAMES = 5, 32, 6

pytestmark = pytest.mark.usefixtures("one_thread")


def one_way_mobilenet(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", CLASSES, num_segments=4, shift="unidirectional")
    return randomize(model, seed)


def frames(seed: int = 1) -> torch.Tensor:
    return torch.randn(FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def stream(model) -> torch.Tensor:
    """Per-frame logits (T, K) of ``model`` run frame by frame, zero buffers at the start."""
    streaming = StreamingTSM(model).eval()
    with torch.no_grad():
        return run_stream(streaming, frames(), streaming.initial_buffers(SIZE, SIZE)).outputs


def test_online_demo_keys_are_those_of_the_official_network():
    """What online_demo_layout writes (and load_model reads) is the state dict of the online
    demo's own network, key for key and shape for shape, and its shifted blocks are ours."""
    ours = online_demo_layout(one_way_mobilenet())
    official = OnlineDemoMobileNetV2(CLASSES).state_dict()
    official = {k: tuple(v.shape) for k, v in official.items() if "num_batches" not in k}
    assert {k: tuple(v.shape) for k, v in ours.items()} == official
    assert "features.3.conv.0.weight" in official and "classifier.weight" in official
    assert tuple(i + 1 for i in SHIFT_BLOCK_IDX) == ONLINE_DEMO_SHIFTED_BLOCKS  # features[0]: stem
    shifted = sorted(int(name.split(".")[1]) for name in _wrapped(one_way_mobilenet()))
    assert tuple(shifted) == ONLINE_DEMO_SHIFTED_BLOCKS
    assert checkpoint_format(ours) == "online_demo"
    assert checkpoint_format(official_mobilenet_layout(one_way_mobilenet())) == "official"


def _wrapped(model) -> list[str]:
    from tsmcli.model.backbones import shifted_module_names

    return shifted_module_names(model.base_model)


def test_offline_and_online_demo_layouts_stream_the_same(tmp_path):
    """The same weights written in the official offline layout and in the online demo's give
    bit-identical per-frame logits through the streaming model, equal to the model's own."""
    model = one_way_mobilenet()
    offline, online = tmp_path / "offline.pth", tmp_path / "mobilenetv2_online.pth.tar"
    torch.save({"epoch": 1, "state_dict": official_mobilenet_layout(model)}, offline)
    torch.save(online_demo_layout(model), online)
    from_offline = load_model(offline, arch="mobilenet_v2", num_segments=4, shift="unidirectional")
    from_online = load_model(online)  # the layout says MobileNetV2, one-way, 1/8
    assert read_checkpoint(online).format == "online_demo"
    assert from_online.config() == {**from_offline.config(), "num_segments": 8}
    expected = stream(model)
    assert expected.abs().max() > 0.1 and expected.shape == (FRAMES, CLASSES)
    assert torch.equal(stream(from_offline), expected)
    assert torch.equal(stream(from_online), expected)


def test_the_model_read_from_the_demo_file_streams_as_the_official_network(tmp_path):
    """The official online network (rebuilt from its structure) with random weights, saved as
    the demo saves it, then read by load_model: per-frame logits and shift buffers agree
    with the official network's own frame-by-frame run (to float rounding: its pooling)."""
    torch.manual_seed(3)
    official = randomize(OnlineDemoMobileNetV2(CLASSES), seed=3)
    path = tmp_path / "mobilenetv2_jester_online.pth.tar"
    torch.save(official.state_dict(), path)
    streaming = StreamingTSM(load_model(path)).eval()
    buffers = streaming.initial_buffers(SIZE, SIZE)
    official_buffers = [b.clone() for b in buffers]
    with torch.no_grad():
        for frame in frames():
            ours, *buffers = streaming(frame.unsqueeze(0), *buffers)
            theirs, *official_buffers = official(frame.unsqueeze(0), *official_buffers)
            assert theirs.abs().max() > 0.1
            assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)
    assert len(buffers) == len(official_buffers) == 10
    for mine, theirs in zip(buffers, official_buffers, strict=True):
        assert torch.allclose(mine, theirs, rtol=0, atol=1e-5)


def test_the_demo_layout_is_mobilenet_v2_only(tmp_path):
    path = tmp_path / "online.pth.tar"
    torch.save(online_demo_layout(one_way_mobilenet()), path)
    with pytest.raises(UsageError) as info:
        load_model(path, arch="resnet50")
    assert str(info.value) == (
        f"{path}: is arch='mobilenet_v2' (its online_demo layout), so arch='resnet50' cannot "
        "fit its weights; drop the arch option"
    )
    # a shift of another place, or none, finds no wrapper where the demo's blocks shift
    with pytest.raises(CheckpointError, match=r"weights do not fit the model: 10 missing"):
        load_model(path, shift="none")
