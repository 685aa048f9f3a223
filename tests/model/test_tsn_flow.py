"""Flow models: the official TSN(modality='Flow') rebuilt from its published definition gives
our logits on the same weights and input; its first convolution is built from RGB weights as
the official code builds it; the official Kinetics flow checkpoint's layout loads by its zoo
name; a flow model is refused a streaming conversion in one line.

The official flow network (mit-han-lab/temporal-shift-module, ops/models.py, read for this and
not copied): ``TSN.__init__`` builds the RGB network (shift inserted, the ImageNet classifier
replaced by dropout) and then ``_construct_flow_model`` replaces the first ``nn.Conv2d`` found in
``base_model.modules()`` by one of ``2 * new_length`` inputs whose kernel is the RGB kernel
averaged over its 3 inputs and expanded; ``forward`` views its input ``(B, T * 2L, H, W)`` as
``(B * T, 2L, H, W)``.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from test_checkpoint import OfficialTSN, official_file, randomize
from torch import nn
from zoo_files import use_zoo

from tsmcli.errors import UsageError
from tsmcli.model.checkpoint import load_model, load_weights_for_finetune, read_checkpoint
from tsmcli.model.spec import check_streamable
from tsmcli.model.streaming import StreamingTSM
from tsmcli.model.tsn import build_model

SEGMENTS, SIZE, NEW_LENGTH = 8, 32, 5


class OfficialFlowTSN(OfficialTSN):
    """The official TSN with ``modality='Flow'``: the RGB network (with ``imagenet``'s weights
    when given, as ``pretrain='imagenet'`` loads them), then the flow model."""

    def __init__(
        self,
        arch: str,
        num_class: int,
        num_segments: int,
        new_length: int,
        imagenet: dict | None = None,
        **options,
    ):
        super().__init__(arch, num_class, num_segments, **options)
        if imagenet is not None:  # keys of an unshifted torchvision network
            kept = {k: v for k, v in imagenet.items() if not k.startswith("fc.")}
            self.base_model.load_state_dict(kept, strict=False)
        self.new_length = new_length
        modules = list(self.base_model.modules())
        first = next(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
        conv, container = modules[first], modules[first - 1]
        kernel = conv.weight.detach().clone()
        shape = kernel.shape[:1] + (2 * new_length,) + kernel.shape[2:]
        flow_conv = nn.Conv2d(
            2 * new_length,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            bias=conv.bias is not None,
        )
        flow_conv.weight.data = kernel.mean(dim=1, keepdim=True).expand(shape).contiguous()
        name = list(container.state_dict().keys())[0][: -len(".weight")]
        setattr(container, name, flow_conv)

    def forward(self, input):  # (B, T * 2L, H, W)
        sample_len = 2 * self.new_length
        base_out = self.base_model(input.view((-1, sample_len) + input.size()[-2:]))
        if self.new_fc is not None:
            base_out = self.new_fc(base_out)
        return base_out.view((-1, self.num_segments) + base_out.size()[1:]).mean(dim=1)


def flow_clips(seed: int = 1, batch: int = 2) -> torch.Tensor:
    """Normalised flow clips (B, T, 2L, H, W), x1, y1, x2, y2, ... in each segment."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, SEGMENTS, 2 * NEW_LENGTH, SIZE, SIZE, generator=generator)


def official_logits(reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference(x.reshape(x.shape[0], -1, *x.shape[-2:]))  # official (B, T * 2L, H, W)


@pytest.mark.parametrize("shift", ["bidirectional", "none"])
def test_flow_logits_equal_the_official_flow_tsn(tmp_path, shift):
    torch.manual_seed(0)
    reference = OfficialFlowTSN("resnet50", 7, SEGMENTS, NEW_LENGTH, is_shift=shift != "none")
    reference = randomize(reference)
    assert reference.base_model.conv1.weight.shape == (64, 2 * NEW_LENGTH, 7, 7)
    path = official_file(tmp_path, reference)
    # the first convolution's 10 inputs say "flow, 5 images a segment": nothing to give
    model = load_model(path, arch="resnet50", num_segments=SEGMENTS, shift=shift)
    assert (model.modality, model.new_length, model.spec.input_channels) == ("flow", 5, 10)
    x = flow_clips()
    expected = official_logits(reference, x)
    assert expected.abs().min() > 1e-3  # a relative comparison of logits far from zero
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=0)


def test_the_first_convolution_is_built_from_imagenet_weights_as_the_official_one(tmp_path):
    torch.manual_seed(0)
    imagenet = randomize(torchvision.models.resnet18(weights=None)).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet, path)
    reference = OfficialFlowTSN("resnet18", 3, SEGMENTS, 3, imagenet=imagenet, is_shift=False)
    ours = build_model(
        "resnet18",
        3,
        num_segments=SEGMENTS,
        shift="none",
        modality="flow",
        new_length=3,
        pretrained=path,
    )
    expected = reference.base_model.state_dict()
    assert expected["conv1.weight"].shape == (64, 6, 7, 7)
    assert not torch.equal(expected["conv1.weight"][:, 0], expected["conv1.weight"][:, 0] * 0)
    got = ours.base_model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_an_rgb_checkpoint_starts_a_flow_model_with_its_averaged_first_kernel(tmp_path):
    torch.manual_seed(0)
    rgb = randomize(OfficialTSN("resnet18", 4, SEGMENTS))
    path = official_file(tmp_path, rgb)
    flow = build_model("resnet18", 4, num_segments=SEGMENTS, modality="flow")
    report = load_weights_for_finetune(flow, path)
    assert report.head_loaded
    rgb_kernel = rgb.base_model.conv1.weight
    assert torch.equal(
        flow.base_model.conv1.weight, rgb_kernel.mean(dim=1, keepdim=True).expand(-1, 10, -1, -1)
    )
    assert torch.equal(
        flow.base_model.layer2[0].conv1.net.weight, rgb.base_model.layer2[0].conv1.net.weight
    )


def test_the_official_kinetics_flow_checkpoint_loads_by_its_zoo_name(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = randomize(OfficialFlowTSN("resnet50", 400, SEGMENTS, NEW_LENGTH), seed=2)
    content = {
        "epoch": 50,
        "arch": "resnet50",
        "best_prec1": 55.7,
        "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
    }
    assert "module.base_model.layer1.0.conv1.net.weight" in content["state_dict"]
    use_zoo(monkeypatch, tmp_path / "home", {"tsm-k400-r50-flow-8f": ({}, content)})
    info = read_checkpoint("tsm-k400-r50-flow-8f")
    assert info.path.name == "TSM_kinetics_Flow_resnet50_shift8_blockres_avg_segment8_e50.pth"
    model = load_model(info)
    assert model.config() | {"dropout": 0.5} == {
        "arch": "resnet50",
        "num_classes": 400,
        "num_segments": 8,
        "shift": "bidirectional",
        "shift_div": 8,
        "shift_place": "blockres",
        "dropout": 0.5,
        "partial_bn": False,
        "modality": "flow",
        "new_length": 5,
    }
    x = flow_clips(batch=1)
    with torch.no_grad():
        ours, expected = model(x), official_logits(reference, x)
    # relative to the logits' scale: among 400 some are near zero
    assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max()
    with pytest.raises(UsageError, match="cannot fit its weights"):
        load_model(info, modality="rgb")  # the entry says flow: contradicting it is refused


def test_a_flow_model_is_refused_a_streaming_conversion_in_one_line():
    model = build_model("resnet18", 3, num_segments=SEGMENTS, modality="flow")
    message = (
        "best.pt: is a flow model (modality flow, 10 input channels); a streaming model takes "
        "RGB frames one at a time, and streaming flow needs a flow source (optical flow from "
        "each new frame and the one before), which tsm stream and convert-online do not "
        "have; convert an RGB model"
    )
    with pytest.raises(UsageError) as info:
        check_streamable(model.spec, "best.pt")
    assert str(info.value) == message
    with pytest.raises(UsageError, match="streaming flow needs a flow source"):
        StreamingTSM(model)
    check_streamable(build_model("resnet18", 3).spec, "rgb.pt")  # RGB streams
