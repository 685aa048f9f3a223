"""Models: the temporal shift, backbones, the TSN wrapper, weight files and checkpoints.

The names below are imported lazily, so that importing one module of the package (the
torch-free ``spec``, say, for ``ModelSpec``) does not import torch and torchvision's model zoo
with the backbones.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_NAMES = {
    "BackboneSpec": "backbones",
    "build_backbone": "backbones",
    "get_backbone": "backbones",
    "list_backbones": "backbones",
    "register_backbone": "backbones",
    "shifted_module_names": "backbones",
    "CheckpointInfo": "checkpoint",
    "InitReport": "checkpoint",
    "checkpoint_dict": "checkpoint",
    "load_model": "checkpoint",
    "load_weights_for_finetune": "checkpoint",
    "read_checkpoint": "checkpoint",
    "TemporalShift": "shift",
    "shift_plan": "shift",
    "shifted_pointwise_conv": "shift",
    "temporal_shift": "shift",
    "ArchOverrides": "spec",
    "ModelSpec": "spec",
    "check_model": "spec",
    "TSN": "tsn",
    "build_model": "tsn",
    "load_pretrained_backbone": "tsn",
    "FORMAT_VERSION": "weights",
    "checkpoint_format": "weights",
    "load_checkpoint": "weights",
    "load_state_dict_strict": "weights",
    "save_checkpoint": "weights",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'tsmcli.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tsmcli.model.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
