"""Registry of 2D backbones and where the temporal shift goes in each.

Adding a backbone is one decorated function that returns the network with random weights
(torchvision's, never downloading any, or one built here from torchvision's blocks) plus,
for a new family, one function that inserts the shift. Every entry knows its feature
dimension and the attribute of its ImageNet classifier, which the TSN wrapper replaces by
``Identity``.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, conv1x1

from tsmcli.errors import UsageError
from tsmcli.model.shift import TemporalShift
from tsmcli.model.spec import ModelSpec

logger = logging.getLogger(__name__)

# insert(model, num_segments, shift_div, direction, place) -> names of the TemporalShift modules
ShiftInserter = Callable[[nn.Module, int, int, str, str], list[str]]


@dataclass(frozen=True)
class BackboneSpec:
    """What the TSN wrapper and the checkpoint importers need to know about a backbone."""

    name: str
    family: str  # "resnet" or "mobilenet_v2": decides shift placement and key layouts
    feature_dim: int  # size of the pooled feature that feeds the classifier
    head: str  # attribute of the ImageNet classifier ("fc" / "classifier")
    build: Callable[[], nn.Module]  # the network with random weights
    insert_shift: ShiftInserter
    first_conv: str = "conv1"  # qualified name of the first convolution (the input's)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str,
    *,
    family: str,
    feature_dim: int,
    head: str,
    insert_shift: ShiftInserter,
    first_conv: str = "conv1",
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator: register a function returning a freshly initialised network as ``name``."""

    def decorator(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneSpec(
            name, family, feature_dim, head, build, insert_shift, first_conv
        )
        return build

    return decorator


def list_backbones() -> list[str]:
    """Names accepted as ``arch``, sorted."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The registry entry for ``name``; an unknown name suggests the closest known one."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(f"unknown arch {name!r}; {hint}choose one of {', '.join(list_backbones())}")


def build_backbone(spec: ModelSpec) -> tuple[nn.Module, BackboneSpec]:
    """The backbone of ``spec`` with its classifier replaced by ``Identity`` and the shift
    inserted (``spec`` is checked already; its ``arch`` is checked here).

    The returned network maps (N*T, 3, H, W) frames to (N*T, feature_dim) features.
    """
    backbone = get_backbone(spec.arch)
    model = backbone.build()
    setattr(model, backbone.head, nn.Identity())
    if spec.input_channels != 3:
        widen_first_conv(model, backbone.first_conv, spec.input_channels)
    if spec.shift != "none":
        names = backbone.insert_shift(
            model, spec.num_segments, spec.shift_div, spec.shift, spec.shift_place
        )
        logger.debug(
            "%s: %s shift in %d modules (%s)", spec.arch, spec.shift, len(names), spec.shift_place
        )
    return model, backbone


def widen_first_conv(model: nn.Module, name: str, channels: int) -> None:
    """Give the convolution ``name`` of ``model`` ``channels`` inputs, as the official TSN
    builds a flow network from an RGB one (``_construct_flow_model``): the kernel averaged
    over its RGB inputs and repeated over the new ones, the bias and every other setting
    kept. An ImageNet kernel so averaged responds to a flow image's gradients as the RGB
    one did to intensity; a random one stays random. The module keeps its own class."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    new = _unset_conv(type(old), old, channels)
    with torch.no_grad():
        new.weight.copy_(average_rgb_kernel(old.weight, channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    setattr(parent, attr, new)


def _unset_conv(kind: type[nn.Conv2d], like: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A ``kind`` with the settings of ``like`` but ``in_channels`` inputs, its parameters
    left unset (no random numbers drawn), on ``like``'s device and dtype (the meta device too:
    a model counted, not built)."""
    return nn.utils.skip_init(
        kind,
        in_channels,
        like.out_channels,
        like.kernel_size,
        stride=like.stride,
        padding=like.padding,
        dilation=like.dilation,
        groups=like.groups,
        bias=like.bias is not None,
        padding_mode=like.padding_mode,
        device=like.weight.device,
        dtype=like.weight.dtype,
    )


def average_rgb_kernel(weight: Tensor, channels: int) -> Tensor:
    """A (out, 3, kh, kw) kernel as one of ``channels`` inputs: its mean over the input
    channels, repeated (out, channels, kh, kw), contiguous."""
    return weight.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1).contiguous()


def shifted_module_names(model: nn.Module) -> list[str]:
    """Qualified names of the ``TemporalShift`` modules in ``model``, in forward order."""
    return [name for name, module in model.named_modules() if isinstance(module, TemporalShift)]


# ---------------------------------------------------------------------------------------------
# where the shift goes


def _shift_resnet(
    model: nn.Module, num_segments: int, shift_div: int, direction: str, place: str
) -> list[str]:
    """Official placement: ``blockres`` wraps ``conv1`` of each residual block (its residual
    branch only), ``block`` wraps whole blocks. With 23+ blocks in layer3 (ResNet-101/152)
    ``blockres`` shifts every other block of each stage, starting with the first."""
    every = 2 if len(model.layer3) >= 23 and place == "blockres" else 1
    names = []
    for stage_name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(model, stage_name)
        for index in range(0, len(stage), every):
            if place == "block":
                stage[index] = TemporalShift(stage[index], num_segments, shift_div, direction)
                names.append(f"{stage_name}.{index}")
            else:
                block = stage[index]
                block.conv1 = TemporalShift(block.conv1, num_segments, shift_div, direction)
                names.append(f"{stage_name}.{index}.conv1")
    return names


def _shift_mobilenet_v2(
    model: nn.Module, num_segments: int, shift_div: int, direction: str, place: str
) -> list[str]:
    """As the paper's online model: shift before the pointwise expansion of every inverted
    residual block that has a skip connection and an expansion (10 blocks). The wrapped
    module is the expansion's ``Conv2d`` (``conv[0][0]``), so its BN and ReLU6 stay put."""
    if place != "blockres":
        raise UsageError(
            f"shift_place {place!r} is defined for ResNets only; use 'blockres' for mobilenet_v2"
        )
    names = []
    for name, module in model.features.named_children():
        # torchvision's conv: [pw expansion, dw, pw-linear conv, BN] with an expansion, 3 without
        if (
            isinstance(module, InvertedResidual)
            and module.use_res_connect
            and len(module.conv) == 4
        ):
            expansion = module.conv[0]
            expansion[0] = TemporalShift(expansion[0], num_segments, shift_div, direction)
            names.append(f"features.{name}.conv.0.0")
    return names


# ---------------------------------------------------------------------------------------------
# a backbone of our own


@functools.lru_cache(maxsize=256)
def _one_output_window(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int] | None:
    """Along one axis of a convolution (no dilation): when it has a single output, the first
    tap that reads the input and how many do (the rest read zero padding); else None. The
    output's window starts ``padding`` before the input, so those taps read its first
    pixels."""
    if (size + 2 * padding - kernel) // stride != 0:
        return None
    first = max(0, padding)
    return first, min(kernel, size + padding) - first


class OneOutputConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes a 1x1 output as the matrix product it is.

    At 32 px the last stage of a ResNet sees 1x1 frames (2x2 into its stride-2 convolution):
    each output then reads one window of the input through one crop of the kernel, and the
    other taps read only zero padding, which the convolution kernels multiply all the same.
    A 3x3 convolution on a 1x1 frame is a 1x1 one: 1/9 of the work, and the crop's
    gradient is the kernel's (zero on the taps that read padding). Equal to ``nn.Conv2d``
    to float rounding; any other output size takes ``nn.Conv2d``'s own path, and so do
    graph captures (``torch.jit.trace``, ONNX export), so that an exported model does not
    bake in the frame size it was captured at.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.groups != 1
            or self.dilation != (1, 1)
            or not isinstance(self.padding, tuple)
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
        ):
            return super().forward(x)
        axes = zip(x.shape[-2:], self.kernel_size, self.stride, self.padding, strict=True)
        windows = [_one_output_window(*axis) for axis in axes]
        if None in windows:
            return super().forward(x)
        (top, rows), (left, cols) = windows
        taps = self.weight[:, :, top : top + rows, left : left + cols]
        read = x[:, :, :rows, :cols]
        return F.linear(read.flatten(1), taps.flatten(1), self.bias)[:, :, None, None]


def convert_convs(module: nn.Module, kind: type[nn.Conv2d]) -> None:
    """Replace every convolution under ``module`` that is not a ``kind`` by a ``kind`` with the
    same settings and the same parameters (shared, not copied; no random numbers drawn)."""
    for name, child in module.named_children():
        if not isinstance(child, nn.Conv2d):
            convert_convs(child, kind)
        elif type(child) is not kind:
            new = _unset_conv(kind, child, child.in_channels)
            new.weight, new.bias = child.weight, child.bias
            setattr(module, name, new)


class NarrowResNet(nn.Module):
    """torchvision's ResNet-18 layout (7x7 stride-2 stem, max-pool, four stages of two basic
    blocks, stages 2-4 halving the resolution) with ``width`` channels in the first stage
    instead of 64, so ``width ** 2 / 64 ** 2`` of its multiply-adds.

    Built from torchvision's own blocks and named like its ResNet (``conv1``, ``bn1``,
    ``layer1``..``layer4``, ``fc``), so the ResNet shift placement, the streaming model, the
    exporters and the checkpoint layout apply unchanged.
    """

    def __init__(self, width: int, blocks: tuple[int, int, int, int] = (2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = width
        for index, count in enumerate(blocks):
            out = width * 2**index
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or channels != out:
                downsample = nn.Sequential(conv1x1(channels, out, stride), nn.BatchNorm2d(out))
            stage = [BasicBlock(channels, out, stride, downsample)]
            stage += [BasicBlock(out, out) for _ in range(count - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            channels = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 1000)  # replaced by Identity in a TSN, like torchvision's
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        convert_convs(self, OneOutputConv2d)  # the last stage's 1x1 frames at 32 px

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, width, H / 4, W / 4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------
# the registry (torchvision architectures, weights=None: nothing is ever downloaded)


@register_backbone(
    "resnet18", family="resnet", feature_dim=512, head="fc", insert_shift=_shift_resnet
)
def resnet18() -> nn.Module:
    """ResNet-18: basic blocks 2-2-2-2."""
    return torchvision.models.resnet18(weights=None)


@register_backbone(
    "resnet34", family="resnet", feature_dim=512, head="fc", insert_shift=_shift_resnet
)
def resnet34() -> nn.Module:
    """ResNet-34: basic blocks 3-4-6-3."""
    return torchvision.models.resnet34(weights=None)


@register_backbone(
    "resnet50", family="resnet", feature_dim=2048, head="fc", insert_shift=_shift_resnet
)
def resnet50() -> nn.Module:
    """ResNet-50: bottlenecks 3-4-6-3, the paper's main backbone."""
    return torchvision.models.resnet50(weights=None)


@register_backbone(
    "resnet101", family="resnet", feature_dim=2048, head="fc", insert_shift=_shift_resnet
)
def resnet101() -> nn.Module:
    """ResNet-101: bottlenecks 3-4-23-3."""
    return torchvision.models.resnet101(weights=None)


@register_backbone(
    "resnet152", family="resnet", feature_dim=2048, head="fc", insert_shift=_shift_resnet
)
def resnet152() -> nn.Module:
    """ResNet-152: bottlenecks 3-8-36-3."""
    return torchvision.models.resnet152(weights=None)


@register_backbone(
    "mobilenet_v2",
    family="mobilenet_v2",
    feature_dim=1280,
    head="classifier",
    insert_shift=_shift_mobilenet_v2,
    first_conv="features.0.0",
)
def mobilenet_v2() -> nn.Module:
    """MobileNetV2 (width 1.0), the backbone of the paper's online model."""
    return torchvision.models.mobilenet_v2(weights=None)


@register_backbone(
    "resnet18_narrow", family="resnet", feature_dim=256, head="fc", insert_shift=_shift_resnet
)
def resnet18_narrow() -> nn.Module:
    """ResNet-18 at half width (32-64-128-256 channels): a quarter of its multiply-adds and a
    quarter of its parameters, for small frames on a CPU (the demo's 32 px). Its two blocks a
    stage keep ResNet-18's 8 shifted blocks: with one block a stage, a TSM of the same width
    learned the demo's classes far slower (43% after 252 steps against 79% after 210, 150
    videos a class, 6 classes)."""
    return NarrowResNet(32)
