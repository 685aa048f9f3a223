"""StreamingTSM: frame by frame it is exactly the offline one-way model on the whole clip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsmcli.model.shift import TemporalShift
from tsmcli.model.streaming import FrameModel, StreamingTSM, run_stream
from tsmcli.model.tsn import build_model

TOL = 1e-4
SIZES = {"resnet18": 64, "resnet50": 32, "mobilenet_v2": 32}  # small, but every stage > 0 px


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_batchnorm(model: nn.Module, size: int, seed: int) -> None:
    """Random BN statistics and affine terms, at a scale where every layer's output stays O(1).

    The running statistics are first measured on 16+ random frames (train mode, one batch),
    then perturbed: measured, so that deep nets neither explode nor vanish (which would make a
    1e-4 comparison either meaningless or float32-noise bound); perturbed, so they are not
    batch statistics the eval forward could accidentally reproduce.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        clips = max(2, -(-16 // model.num_segments))  # at least 16 frames per statistic
        model(torch.randn(clips, model.num_segments, 3, size, size, generator=generator))
    model.eval()
    with torch.no_grad():
        for bn in norms:
            n = bn.num_features
            bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(n, generator=generator))
            bn.running_var.mul_(0.8 + 0.4 * torch.rand(n, generator=generator))
            bn.weight.copy_(0.5 + 0.3 * torch.rand(n, generator=generator))
            bn.bias.copy_(0.1 * torch.randn(n, generator=generator))


def make_model(
    arch: str, num_segments: int, shift: str = "unidirectional", seed: int = 0, **options
):
    torch.manual_seed(seed)
    model = build_model(
        arch, num_classes=7, num_segments=num_segments, shift=shift, dropout=0.5, **options
    )
    randomize_batchnorm(model, SIZES[arch], seed)
    with torch.no_grad():  # the official head init (std 0.001) would make every logit ~0
        model.new_fc.weight.normal_(0.0, model.feature_dim**-0.5)
        model.new_fc.bias.normal_(0.0, 0.1)
    return model.eval()


@pytest.mark.parametrize("num_frames", [1, 2, 9])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_stream_equals_offline_one_way_model(arch, num_frames):
    size = SIZES[arch]
    model = make_model(arch, num_frames)
    streaming = StreamingTSM(model).eval()
    clip = torch.randn(1, num_frames, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        offline_frames = model.frame_logits(clip)[0]  # (T, K)
        offline_clip = model(clip)[0]  # (K,)
        offline_features = model.features(clip)[0]  # (T, D)
        buffers = streaming.initial_buffers(size, size)
        online = run_stream(streaming, clip[0], buffers).outputs  # (T, K)
        online_features = run_stream(streaming.forward_features, clip[0], buffers).outputs
        # every frame with fresh zero buffers: what a stream that dropped its state would give
        stateless = run_stream(
            lambda frame, *_: streaming(frame, *buffers), clip[0], buffers
        ).outputs

    assert online.shape == offline_frames.shape
    assert (online - offline_frames).abs().max() < TOL
    assert (online.mean(0) - offline_clip).abs().max() < TOL
    assert (online_features - offline_features).abs().max() < TOL
    # The comparison can fail: outputs are O(1), and from frame 1 on the carried buffers move
    # the output far beyond the tolerance.
    assert 0.1 < offline_frames.abs().max() < 50
    assert torch.equal(stateless[0], online[0])
    if num_frames > 1:
        assert (stateless[1:] - online[1:]).abs().max() > 100 * TOL


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_one_zero_buffer_per_shifted_block_shaped_like_its_input(arch):
    size = SIZES[arch]
    model = make_model(arch, 1)
    fold_div = model.config()["shift_div"]
    seen: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
        for m in model.modules()
        if isinstance(m, TemporalShift)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 3, size, size))
    for hook in hooks:
        hook.remove()
    expected = [(1, c // fold_div, h, w) for _, c, h, w in seen]

    streaming = StreamingTSM(model)
    buffers = streaming.initial_buffers(size, size)
    assert streaming.num_buffers == len(hooks) == len(expected) > 0
    assert streaming.buffer_shapes(size, size) == expected
    assert [tuple(b.shape) for b in buffers] == expected
    assert all(b.dtype == torch.float32 and not b.any() for b in buffers)
    assert streaming.cache_bytes(size, size) == 4 * sum(b.numel() for b in buffers)


def test_resnet18_buffers_by_hand():
    """At 64 px ResNet-18's blocks see 16, 8, 4, 2 px; each buffer is 1/8 of the block input."""
    streaming = StreamingTSM(
        build_model("resnet18", num_classes=3, num_segments=4, shift="unidirectional")
    )
    assert streaming.buffer_shapes(64, 64) == [
        (1, 8, 16, 16),
        (1, 8, 16, 16),  # layer1: 64 channels in
        (1, 8, 16, 16),
        (1, 16, 8, 8),  # layer2: 64 then 128
        (1, 16, 8, 8),
        (1, 32, 4, 4),  # layer3: 128 then 256
        (1, 32, 4, 4),
        (1, 64, 2, 2),  # layer4: 256 then 512
    ]
    assert streaming.cache_bytes(64, 64) == 4 * (3 * 8 * 256 + 2 * 16 * 64 + 2 * 32 * 16 + 64 * 4)


def test_streaming_model_reuses_the_offline_modules():
    model = make_model("resnet18", 2, shift="bidirectional")
    streaming = StreamingTSM(model)
    offline_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in streaming.parameters()} == offline_params
    assert set(streaming.backbone.state_dict()) == set(model.base_model.state_dict())
    assert all(not isinstance(m, TemporalShift) for m in streaming.modules())


def test_no_state_between_calls_and_buffer_count_checked():
    model = make_model("resnet18", 2)
    streaming = StreamingTSM(model).eval()
    frame = torch.randn(1, 3, 64, 64)
    buffers = [torch.randn(s) for s in streaming.buffer_shapes(64, 64)]
    with torch.no_grad():
        first = streaming(frame, *buffers)
        second = streaming(frame, *buffers)
    assert len(first) == 1 + streaming.num_buffers
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # A new buffer is exactly the first 1/8 of the channels its block received.
    assert torch.equal(first[1], _first_block_input(model, frame)[:, :8])
    with pytest.raises(ValueError, match="expected 8 buffers"):
        streaming(frame, *buffers[:-1])


def _first_block_input(model, frame):
    base = model.base_model
    with torch.no_grad():
        return base.maxpool(base.relu(base.bn1(base.conv1(frame))))


def test_frame_model_is_the_same_network_without_shift():
    model = make_model("mobilenet_v2", 2)
    tsn = build_model("mobilenet_v2", num_classes=7, num_segments=1, shift="none").eval()
    tsn.load_state_dict({k.replace(".net.", "."): v for k, v in model.state_dict().items()})
    frame = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (FrameModel(model)(frame) - tsn(frame[None])).abs().max() < 1e-5


def test_block_placement_and_no_shift_stream_exactly():
    """Whole-block shifts (shift_place="block") stream like residual ones; a TSN without shift
    has no buffers and is its 2D network frame by frame."""
    clip = torch.randn(1, 3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for shift, place, buffers in [("unidirectional", "block", 8), ("none", "blockres", 0)]:
        model = make_model("resnet18", 3, shift=shift, shift_place=place)
        streaming = StreamingTSM(model).eval()
        assert streaming.num_buffers == buffers
        with torch.no_grad():
            online = run_stream(streaming, clip[0], streaming.initial_buffers(64, 64)).outputs
            offline = model.frame_logits(clip)[0]  # (T, K)
        assert (online - offline).abs().max() < TOL
        assert offline.abs().max() > 0.1


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v2"])
def test_a_step_leaves_its_inputs_as_they_were(arch):
    """The splice writes into activations in place and puts them back: the caller's frame and
    buffers are untouched, and so a step repeated on the same inputs gives the same outputs."""
    size = SIZES[arch]
    streaming = StreamingTSM(make_model(arch, 2)).eval()
    frame = torch.randn(1, 3, size, size)
    buffers = [torch.randn(s) for s in streaming.buffer_shapes(size, size)]
    frame_before, buffers_before = frame.clone(), [b.clone() for b in buffers]
    with torch.inference_mode():
        first = streaming(frame, *buffers)
        second = streaming(frame, *buffers)
    assert torch.equal(frame, frame_before)
    assert all(torch.equal(a, b) for a, b in zip(buffers, buffers_before, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # new buffers own their memory: no view into an activation of the step
    assert all(b._base is None for b in first[1:])
