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


def meta_backbone(arch: str, **kwargs):
    """Build on the meta device: structure only, no weight init (ResNet-152 in milliseconds)."""
    with torch.device("meta"):
        return build_backbone(arch, num_segments=kwargs.pop("num_segments", 8), **kwargs)


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


@pytest.mark.parametrize("arch", ["resnet18", "resnet152", "mobilenet_v2", "resnet18_narrow"])
def test_shift_none_inserts_nothing(arch):
    model, _ = meta_backbone(arch, shift="none")
    assert shifted_module_names(model) == []
    assert not any(".net." in key for key in model.state_dict())


def test_bad_shift_options():
    with pytest.raises(UsageError, match="Unknown shift 'both'"):
        meta_backbone("resnet18", shift="both")
    with pytest.raises(UsageError, match="Unknown shift_place 'res'"):
        meta_backbone("resnet18", shift_place="res")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2", "resnet18_narrow"])
def test_feature_dim_is_the_output_size(arch):
    torch.manual_seed(0)
    model, spec = build_backbone(arch, num_segments=2, shift="bidirectional")
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
        narrow, _ = build_backbone("resnet18_narrow", num_segments=8, shift="none")
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
