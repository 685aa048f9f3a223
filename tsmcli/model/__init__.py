"""Models: the temporal shift, backbones, the TSN wrapper and checkpoint I/O."""

from tsmcli.model.backbones import (
    SHIFT_MODES,
    SHIFT_PLACES,
    BackboneSpec,
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
    shifted_module_names,
)
from tsmcli.model.checkpoint import (
    FORMAT_VERSION,
    InitReport,
    checkpoint_dict,
    checkpoint_format,
    load_checkpoint,
    load_model,
    load_pretrained_backbone,
    load_state_dict_strict,
    load_weights_for_finetune,
    save_checkpoint,
)
from tsmcli.model.shift import TemporalShift, shift_plan, shifted_pointwise_conv, temporal_shift
from tsmcli.model.tsn import TSN, build_model

__all__ = [
    "FORMAT_VERSION",
    "SHIFT_MODES",
    "SHIFT_PLACES",
    "TSN",
    "BackboneSpec",
    "InitReport",
    "TemporalShift",
    "build_backbone",
    "build_model",
    "checkpoint_dict",
    "checkpoint_format",
    "get_backbone",
    "list_backbones",
    "load_checkpoint",
    "load_model",
    "load_pretrained_backbone",
    "load_state_dict_strict",
    "load_weights_for_finetune",
    "register_backbone",
    "save_checkpoint",
    "shift_plan",
    "shifted_module_names",
    "shifted_pointwise_conv",
    "temporal_shift",
]
