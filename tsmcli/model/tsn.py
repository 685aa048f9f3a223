"""The TSN wrapper: T frames through a 2D backbone (with or without shift), one head,
average consensus. Structure and names follow the official code, so its checkpoints load
key for key: ``base_model`` (backbone), ``new_fc`` (the video head).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from tsmcli.errors import CheckpointError
from tsmcli.model.backbones import average_rgb_kernel, build_backbone, shifted_module_names
from tsmcli.model.spec import ModelSpec, check_known
from tsmcli.model.weights import (
    imagenet_state_dict,
    load_checkpoint,
    load_state_dict_strict,
    raw_state_dict,
)
from tsmcli.zoo_cache import resolve_checkpoint

logger = logging.getLogger(__name__)


class TSN(nn.Module):
    """Temporal Segment Network; with a shift, the Temporal Shift Module model.

    Input (B, T, C, H, W) with T = ``num_segments`` and C = ``spec.input_channels`` (3 for
    RGB; for flow, x and y of ``new_length`` consecutive flow images, x1, y1, x2, y2, ...: the
    official TSN's ``modality='Flow'``); output (B, num_classes) logits, the mean over frames
    of per-frame logits (the head runs per frame, as in the official code).
    ``spec`` is what it is (``model.num_segments`` and the other keys read as attributes too,
    but ``model.dropout``: that is the layer); ``config()`` is the spec as our checkpoints
    store it. ``build_model`` builds one from keywords and loads ImageNet weights.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        for key, value in spec.as_dict().items():
            if key != "dropout":  # the name of the layer below
                setattr(self, key, value)
        self.base_model, self.backbone = build_backbone(spec)
        self.feature_dim = self.backbone.feature_dim
        self.dropout = nn.Dropout(p=spec.dropout)
        self.new_fc = nn.Linear(self.feature_dim, spec.num_classes)
        # official init of the new head: small weights so training starts near uniform scores
        nn.init.normal_(self.new_fc.weight, 0.0, 0.001)
        nn.init.zeros_(self.new_fc.bias)
        self.train()  # apply partial BN's requires_grad now, before an optimizer is built

    def config(self) -> dict[str, Any]:
        """The spec as a plain dict (``model_config`` in our checkpoints): the keyword
        arguments of ``build_model`` that rebuild this model (weights aside)."""
        return self.spec.as_dict()

    def features(self, x: Tensor) -> Tensor:
        """Per-frame backbone features (B, T, D), before dropout and the head."""
        if x.dim() != 5 or x.shape[1] != self.num_segments:
            raise ValueError(
                f"expected input (B, {self.num_segments}, C, H, W), got "
                f"{tuple(x.shape)}; build the model with num_segments="
                f"{x.shape[1] if x.dim() == 5 else '?'} to use another clip length"
            )
        channels = self.spec.input_channels
        if x.shape[2] != channels:
            raise ValueError(
                f"expected {channels} channels a segment ({self.modality}, new_length "
                f"{self.new_length}), got input {tuple(x.shape)}"
            )
        batch, frames = x.shape[:2]
        flat = x.reshape(batch * frames, *x.shape[2:])  # (B*T, C, H, W)
        return self.base_model(flat).view(batch, frames, -1)  # (B, T, D)

    def frame_logits(self, x: Tensor) -> Tensor:
        """Per-frame logits (B, T, K): the head applied to every frame's feature."""
        return self.new_fc(self.dropout(self.features(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Clip logits (B, K): average consensus of the per-frame logits."""
        return self.frame_logits(x).mean(dim=1)

    def train(self, mode: bool = True) -> TSN:
        """With ``partial_bn``, training keeps every BatchNorm but the first in eval mode with
        frozen affine parameters (official ``partialBN``: small batches of frames give poor
        batch statistics, so ImageNet's are kept)."""
        super().train(mode)
        if mode and self.spec.partial_bn:
            norms = [m for m in self.base_model.modules() if isinstance(m, nn.BatchNorm2d)]
            for norm in norms[1:]:
                norm.eval()
                norm.weight.requires_grad_(False)
                norm.bias.requires_grad_(False)
        return self


def build_model(
    arch: str, num_classes: int, *, pretrained: str | Path | None = None, **options: Any
) -> TSN:
    """A TSN/TSM model of ``ModelSpec(arch, num_classes, **options)`` (``num_segments``,
    ``shift``, ``shift_div``, ``shift_place``, ``dropout``, ``partial_bn``; each checked, an
    unknown one refused); ``pretrained`` is a torchvision ImageNet state dict for the backbone
    (a path, or a model zoo backbone's name such as ``imagenet-resnet50``).

    ``shift`` is ``"none"`` (TSN), ``"bidirectional"`` (offline TSM) or ``"unidirectional"``
    (online TSM). The model is returned in training mode.
    """
    check_known(options)
    model = TSN(ModelSpec(arch, num_classes, **options))
    if pretrained is not None:
        load_pretrained_backbone(model, pretrained)
    return model


def load_pretrained_backbone(model: TSN, path: str | Path) -> None:
    """Load a torchvision ImageNet state dict (``layer1.0.conv1.weight``, ``fc.weight``) into
    ``model.base_model``: keys are mapped onto the shift wrappers (``conv1.net.weight``) and
    the ImageNet classifier is ignored. ``path`` may be a model zoo backbone's name
    (``imagenet-resnet50``: the cached file, downloaded and verified when missing)."""
    path, entry = resolve_checkpoint(path)
    if entry is not None and (not entry.is_backbone or entry.arch != model.arch):
        what = "a video model" if not entry.is_backbone else f"{entry.arch} weights"
        raise CheckpointError(
            f"{entry.name}: is {what}, not an ImageNet {model.arch} backbone; give the "
            f"{model.arch} backbone (tsm zoo list) or a torchvision {model.arch} state dict"
        )
    state = raw_state_dict(load_checkpoint(path))
    if state is None:
        raise CheckpointError(
            f"{path}: not a state dict of tensors; give a torchvision "
            "ImageNet state dict (e.g. resnet50-11ad3fa6.pth)"
        )
    load_imagenet_weights(model, state, path)


def load_imagenet_weights(model: TSN, state: Mapping[str, Tensor], path: str | Path) -> None:
    """``load_pretrained_backbone`` for the tensors of a file already read. A flow model's
    first convolution takes the RGB kernel averaged over its inputs and repeated over its own
    (``backbones.average_rgb_kernel``, the official flow init)."""
    mapped = imagenet_state_dict(
        state, head=model.backbone.head, wrapped=shifted_module_names(model.base_model)
    )
    mapped = with_input_channels(mapped, model, "")
    load_state_dict_strict(model.base_model, mapped, f"{path} (ImageNet {model.arch} weights)")
    logger.info("loaded ImageNet weights from %s into %s", path, model.arch)


def with_input_channels(state: Mapping[str, Tensor], model: TSN, prefix: str) -> dict[str, Tensor]:
    """``state`` with an RGB first kernel (3 inputs) made the flow model's (its averaged RGB
    kernel over ``model``'s input channels), as the official TSN starts a flow network from
    RGB weights; any other kernel is left as it is (a shape that still does not fit is
    ``load_state_dict_strict``'s to report). ``prefix``: of the backbone's keys in ``state``
    (``base_model.`` in a whole TSN's)."""
    key = f"{prefix}{model.backbone.first_conv}.weight"
    weight = state.get(key)
    channels = model.spec.input_channels
    if weight is None or weight.dim() != 4 or weight.shape[1] != 3 or channels == 3:
        return dict(state)
    logger.info("%s: RGB kernel averaged over %d flow input channels", key, channels)
    return {**state, key: average_rgb_kernel(weight, channels)}
