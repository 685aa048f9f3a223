"""Backbone registry and shift placement: exact counts and positions per architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsmcli.errors import UsageError
from tsmcli.model.backbones import (
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
    shifted_module_names,
)
from tsmcli.model.shift import TemporalShift
from tsmcli.model.spec import ModelSpec

# a backbone with more parameters runs on the meta device where a test only needs its shapes
REAL_FORWARD_MAX_PARAMS = 30_000_000


def meta_backbone(arch: str, **kwargs):
    """Build on the meta device: structure only, no weight init (ResNet-152 in milliseconds)."""
    with torch.device("meta"):
        return build_backbone(ModelSpec(arch, num_classes=1, **kwargs))


def test_registry_lists_the_torchvision_architectures():
    assert list_backbones() == [
        "mobilenet_v2",
        "resnet101",
        "resnet152",
        "resnet18",
        "resnet18_narrow",
        "resnet34",
        "resnet50",
    ]
    assert {name: get_backbone(name).feature_dim for name in list_backbones()} == {
        "mobilenet_v2": 1280,
        "resnet101": 2048,
        "resnet152": 2048,
        "resnet18": 512,
        "resnet18_narrow": 256,
        "resnet34": 512,
        "resnet50": 2048,
    }


def test_unknown_arch_suggests_the_closest():
    with pytest.raises(UsageError) as info:
        get_backbone("resnet5")
    assert str(info.value) == (
        "unknown arch 'resnet5'; did you mean 'resnet50'? choose one of "
        "mobilenet_v2, resnet101, resnet152, resnet18, resnet18_narrow, resnet34, resnet50"
    )
    with pytest.raises(UsageError, match="choose one of mobilenet_v2, resnet101"):
        get_backbone("vgg")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_backbone(
            "resnet18", family="resnet", feature_dim=512, head="fc", insert_shift=lambda *args: []
        )(lambda: nn.Identity())


# blockres: every block's conv1; ResNet-101/152 (23+ blocks in layer3): every other block of
# each stage, first included: 101 -> 2+2+12+2, 152 -> 2+4+18+2. block: every block.
@pytest.mark.parametrize(
    ("arch", "place", "count"),
    [
        ("resnet18", "blockres", 8),
        ("resnet34", "blockres", 16),
        ("resnet50", "blockres", 16),
        ("resnet18_narrow", "blockres", 8),
        ("resnet18_narrow", "block", 8),
        ("resnet101", "blockres", 18),
        ("resnet152", "blockres", 26),
        ("resnet18", "block", 8),
        ("resnet50", "block", 16),
        ("resnet101", "block", 33),
        ("resnet152", "block", 50),
        ("mobilenet_v2", "blockres", 10),
    ],
)
def test_number_of_shifted_modules(arch, place, count):
    model, _ = meta_backbone(arch, shift="bidirectional", shift_place=place)
    assert len(shifted_module_names(model)) == count


def test_resnet101_shifts_every_other_block():
    model, _ = meta_backbone("resnet101", shift="bidirectional")
    names = shifted_module_names(model)
    assert [n for n in names if n.startswith("layer3.")] == [
        f"layer3.{i}.conv1" for i in range(0, 23, 2)
    ]
    assert [n for n in names if n.startswith("layer1.")] == ["layer1.0.conv1", "layer1.2.conv1"]
    assert not isinstance(model.layer3[1].conv1, TemporalShift)


def test_resnet50_blockres_wraps_conv1_of_every_block():
    model, _ = meta_backbone("resnet50", shift="unidirectional", shift_div=4, num_segments=3)
    expected = [
        f"layer{s}.{i}.conv1"
        for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True)
        for i in range(n)
    ]
    assert shifted_module_names(model) == expected
    for name in expected:
        module = model.get_submodule(name)
        assert isinstance(module.net, nn.Conv2d) and module.net.kernel_size == (1, 1)
        assert (module.num_segments, module.fold_div, module.direction) == (3, 4, "unidirectional")
    assert "layer1.0.conv1.net.weight" in model.state_dict()  # official key layout
    assert isinstance(model.fc, nn.Identity)


def test_block_placement_wraps_whole_blocks():
    model, _ = meta_backbone("resnet18", shift="bidirectional", shift_place="block")
    assert isinstance(model.layer2[1], TemporalShift)
    assert type(model.layer2[1].net).__name__ == "BasicBlock"
    assert "layer2.1.net.conv1.weight" in model.state_dict()


def test_mobilenet_v2_shifts_expanding_residual_blocks_before_the_expansion():
    model, spec = meta_backbone("mobilenet_v2", shift="bidirectional")
    # features 1 has no expansion; 2, 4, 7, 11, 14, 17 change shape (no skip connection)
    assert shifted_module_names(model) == [
        f"features.{i}.conv.0.0" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)
    ]
    wrapped = model.features[3].conv[0][0]
    assert isinstance(wrapped.net, nn.Conv2d) and wrapped.net.kernel_size == (1, 1)
    assert wrapped.net.in_channels == 24 and wrapped.net.out_channels == 144  # expansion 6
    assert isinstance(model.classifier, nn.Identity) and spec.head == "classifier"
    with pytest.raises(UsageError, match="ResNets only"):
        meta_backbone("mobilenet_v2", shift="bidirectional", shift_place="block")


@pytest.mark.parametrize("arch", list_backbones())
def test_shift_none_inserts_nothing(arch):
    model, _ = meta_backbone(arch, shift="none")
    assert shifted_module_names(model) == []
    assert not any(".net." in key for key in model.state_dict())


def test_bad_shift_options_are_refused_by_the_spec():
    with pytest.raises(UsageError, match="^model shift must be one of none, bidirectional"):
        meta_backbone("resnet18", shift="both")
    with pytest.raises(UsageError, match="^model shift_place must be one of blockres, block"):
        meta_backbone("resnet18", shift_place="res")


@pytest.mark.parametrize("arch", list_backbones())
def test_feature_dim_is_the_output_size(arch):
    """On 32 px frames; a large backbone (ResNet-101/152) on the meta device: the same shapes
    without the seconds of its initialisation and forward."""
    model, _ = meta_backbone(arch, num_segments=2)
    big = sum(p.numel() for p in model.parameters()) > REAL_FORWARD_MAX_PARAMS
    torch.manual_seed(0)
    with torch.device("meta" if big else "cpu"):
        model, spec = build_backbone(ModelSpec(arch, num_classes=1, num_segments=2))
        with torch.no_grad():
            out = model.eval()(torch.randn(2 * 2, 3, 32, 32))  # (N*T, D)
    assert out.shape == (4, spec.feature_dim)


def test_narrow_resnet_is_resnet18_at_a_width():
    """At width 64 it is torchvision's ResNet-18 key for key and shape for shape (so the ResNet
    shift placement and checkpoint layout apply); resnet18_narrow is it at width 32: every
    convolution and norm has half the channels (about a quarter of the parameters)."""
    import torchvision

    from tsmcli.model.backbones import NarrowResNet

    with torch.device("meta"):
        full = NarrowResNet(64).state_dict()
        reference = torchvision.models.resnet18(weights=None).state_dict()
        narrow, _ = build_backbone(ModelSpec("resnet18_narrow", num_classes=1, shift="none"))
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in reference.items()}
    half = narrow.state_dict()
    assert half.keys() == {k for k in reference if not k.startswith("fc.")}
    for key, value in half.items():
        want = reference[key].shape
        if value.dim() == 4:  # conv: both channel counts halved (the stem keeps its 3 inputs)
            assert value.shape == (want[0] // 2, max(3, want[1] // 2), *want[2:]), key
        else:  # norms: half the channels
            assert value.shape == tuple(d // 2 for d in want), key


def test_narrow_resnet_computes_what_torchvisions_resnet18_computes():
    """At width 64, with torchvision's ResNet-18 weights loaded, the same outputs."""
    import torchvision

    from tsmcli.model.backbones import NarrowResNet

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    ours = NarrowResNet(64).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_resnet18_narrow_shifts_conv1_of_every_block_and_streams_exactly():
    model, _ = meta_backbone("resnet18_narrow", shift="unidirectional")
    expected = [f"layer{s}.{i}.conv1" for s in (1, 2, 3, 4) for i in (0, 1)]
    assert shifted_module_names(model) == expected
    from tsmcli.model.streaming import StreamingTSM, run_stream
    from tsmcli.model.tsn import build_model

    torch.manual_seed(0)
    tsm = build_model("resnet18_narrow", 5, num_segments=6, shift="unidirectional").eval()
    clip = torch.randn(1, 6, 3, 32, 32)
    streaming = StreamingTSM(tsm).eval()
    with torch.no_grad():
        stream = run_stream(streaming, clip[0], streaming.initial_buffers(32, 32)).outputs
        assert torch.allclose(stream, tsm.frame_logits(clip)[0], atol=1e-5)


# (input size, kernel, stride, padding): each gives a 1x1 output
ONE_OUTPUT = [
    ((1, 1), 3, 1, 1),  # the last stage's 3x3 on 1x1 frames: only the centre tap reads them
    ((2, 2), 3, 2, 1),  # its stride-2 entry: the lower-right 2x2 taps
    ((2, 2), 1, 2, 0),  # its downsample: one pixel of four
    ((1, 2), 3, 2, 1),  # not square
    ((1, 1), 7, 2, 3),  # a 7x7 stride-2 stem on a 1x1 frame
    ((2, 2), 2, 1, 0),  # no padding: every tap
]


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), ONE_OUTPUT)
def test_one_output_conv_is_the_convolution_as_a_matrix_product(size, kernel, stride, padding):
    """Output and every gradient equal ``F.conv2d``'s (float64, to rounding); the taps that
    read only padding get exactly zero gradient, as the convolution gives them."""
    from tsmcli.model.backbones import OneOutputConv2d

    torch.manual_seed(0)
    conv = OneOutputConv2d(5, 7, kernel, stride=stride, padding=padding, bias=True).double()
    x = torch.randn(3, 5, *size, dtype=torch.double, requires_grad=True)
    out = conv(x)
    assert type(out.grad_fn).__name__ != "ConvolutionBackward0"  # the matrix product ran
    want = nn.functional.conv2d(x, conv.weight, conv.bias, stride, padding)
    assert out.shape == want.shape == (3, 7, 1, 1)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(want)
    ours = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad_out)
    theirs = torch.autograd.grad(want, (x, conv.weight, conv.bias), grad_out)
    for got, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(ours[1] == 0, theirs[1] == 0)


@pytest.mark.parametrize("size", [(2, 2), (4, 4), (8, 3)])
def test_one_output_conv_leaves_larger_outputs_to_the_convolution(size):
    from tsmcli.model.backbones import OneOutputConv2d

    torch.manual_seed(0)
    conv = OneOutputConv2d(4, 6, 3, padding=1, bias=False)
    x = torch.randn(2, 4, *size)
    out = conv(x)
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    assert torch.equal(out, nn.functional.conv2d(x, conv.weight, None, 1, 1))


def test_a_traced_one_output_conv_works_at_other_frame_sizes():
    """Graph capture takes the convolution's path, so the trace does not bake in the 1x1
    frame it was captured at."""
    from tsmcli.model.backbones import OneOutputConv2d

    torch.manual_seed(0)
    conv = OneOutputConv2d(4, 6, 3, padding=1).eval()
    with torch.no_grad():
        traced = torch.jit.trace(conv, torch.randn(1, 4, 1, 1))
        x = torch.randn(2, 4, 5, 5)
        assert torch.equal(traced(x), nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1))


def test_narrow_resnet_on_32_px_frames_matches_torchvisions_resnet18():
    """At 32 px the last stage sees 1x1 frames and every one of its convolutions takes the
    matrix product; at width 64 with ResNet-18's weights, outputs and weight gradients still
    equal torchvision's to float rounding."""
    import torchvision

    from tsmcli.model.backbones import NarrowResNet, OneOutputConv2d

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).double()
    ours = NarrowResNet(64)
    swapped = [m for m in ours.modules() if isinstance(m, OneOutputConv2d)]
    assert len(swapped) == 20  # every convolution: the stem's and the blocks' take the check
    ours.double().load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.double)
    out, want = ours(x), reference(x)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    want.square().sum().backward()
    for (name, got), expected in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-8, atol=1e-8, msg=name)


def test_swapping_in_one_output_convs_changes_no_weight(monkeypatch):
    """The swap keeps each convolution's parameters and draws no random numbers: the same
    seed gives the same initial weights, key for key, as the network without it."""
    from tsmcli.model import backbones

    torch.manual_seed(0)
    swapped = backbones.NarrowResNet(32).state_dict()
    monkeypatch.setattr(backbones, "convert_convs", lambda module, kind: None)
    torch.manual_seed(0)
    plain = backbones.NarrowResNet(32)
    assert not any(isinstance(m, backbones.OneOutputConv2d) for m in plain.modules())
    assert list(swapped) == list(plain.state_dict())
    assert all(torch.equal(swapped[k], v) for k, v in plain.state_dict().items())
