"""Checkpoint files: atomic save, safe load, and models from ours, official TSM and mmaction2.

Every file is read with ``torch.load(..., weights_only=True)``: a checkpoint from the
internet can hold tensors and plain values, never code. Every file is written atomically: a
crash or a full disk mid-save leaves the previous file as it was.

Our format (``format_version`` 1) is a plain dict::

    {"format": "tsmcli", "format_version": 1, "model_config": TSN.config(),
     "recipe": resolved recipe dict, "classes": [names] or None, "state_dict": ...,
     + training state ("epoch", "optimizer", ...)}

Official TSM release files (``{"state_dict": {"module.base_model.layer1.0.conv1.net.weight",
..., "module.new_fc.weight"}}``) and mmaction2 TSM files (``backbone.layer1.0.conv1.conv.net
.weight``, ``cls_head.fc_cls.weight``) do not record their architecture: ``load_model`` takes
it by keyword and reads the number of classes from the head's weights.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tsmcli.errors import CheckpointError, UsageError
from tsmcli.fileio import atomic_write_with
from tsmcli.model.backbones import BackboneSpec, get_backbone, shifted_module_names
from tsmcli.model.tsn import TSN, build_model

logger = logging.getLogger(__name__)

FORMAT = "tsmcli"
FORMAT_VERSION = 1
# build_model keywords a checkpoint can be rebuilt with (pretrained is not one: weights follow)
MODEL_KEYS = ("arch", "num_classes", "num_segments", "shift", "shift_div", "shift_place",
              "dropout", "partial_bn")
# what official / mmaction2 files do not record and a caller must give
REQUIRED_FOR_IMPORT = ("arch", "num_segments", "shift")
_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device,
                torch.Size)  # exact types (see _check_plain)


# ---------------------------------------------------------------------------------------------
# files


def save_checkpoint(obj: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (``fileio.atomic_write_with``): on any failure,
    a full disk included, the old file is left untouched. ``obj`` may hold only tensors and
    plain values (checked first), so that ``load_checkpoint`` can read it back with
    ``weights_only=True``."""
    _check_plain(obj, "checkpoint")
    return atomic_write_with(path, lambda handle: torch.save(dict(obj), handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on CPU with ``weights_only=True``; every failure is a one-line
    ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        # The safe loader names the class it refused ("Unsupported global: GLOBAL
        # argparse.Namespace ..."); anything else it cannot read is not a checkpoint at all.
        culprit = next((line.strip() for line in str(exc).splitlines()
                        if "Unsupported global" in line), None)
        if culprit is not None:
            raise CheckpointError(
                f"{path}: refused by the safe loader (weights_only=True): {culprit}; if you "
                "trust the file, re-save only its tensors: torch.save(torch.load(path, "
                "weights_only=False)['state_dict'], 'weights.pth')") from exc
        raise CheckpointError(f"{path}: not a checkpoint (not a file written by torch.save, "
                              "or damaged); check the path, or re-download or re-save it"
                              ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of weights; "
                              "save a state dict or a checkpoint dict instead")
    return obj


def checkpoint_dict(model: TSN, *, recipe: Mapping[str, Any] | None = None,
                    classes: list[str] | None = None, **training_state: Any) -> dict[str, Any]:
    """Our checkpoint dict for ``model``; ``training_state`` adds keys such as ``epoch``,
    ``optimizer``, ``scheduler``, ``best_top1``."""
    reserved = {"format", "format_version", "model_config", "recipe", "classes", "state_dict"}
    clash = sorted(reserved & set(training_state))
    if clash:
        raise ValueError(f"training state may not use the reserved keys {clash}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": model.config(),
            "recipe": dict(recipe) if recipe is not None else None,
            "classes": list(classes) if classes is not None else None,
            "state_dict": model.state_dict(), **training_state}


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything ``weights_only=True`` could not read back (a dataclass, a numpy
    scalar, a defaultdict): better a TypeError now than an unloadable file later. Types are
    checked exactly, since subclasses of float or dict (numpy scalars, defaultdict) pickle
    as their own class."""
    if isinstance(value, Tensor) or type(value) in _PLAIN_TYPES:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold only tensors and "
                    "plain Python values (convert it, e.g. dataclasses.asdict, float(), "
                    "torch.from_numpy)")


# ---------------------------------------------------------------------------------------------
# formats


def checkpoint_format(ckpt: Mapping[str, Any]) -> str:
    """``"tsmcli"``, ``"official"``, ``"mmaction2"``, ``"torchvision"`` or ``"unknown"``."""
    if ckpt.get("format") == FORMAT:
        return FORMAT
    state = _raw_state_dict(ckpt)
    if state is None:
        return "unknown"
    if any(key.startswith("base_model.") for key in state):
        return "official"
    if any(key.startswith("backbone.") for key in state):
        return "mmaction2"
    if ("conv1.weight" in state and "fc.weight" in state) or "features.0.0.weight" in state:
        return "torchvision"
    return "unknown"


def _raw_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor] | None:
    """The tensors of a checkpoint (its ``state_dict`` or itself), without a DataParallel
    ``module.`` prefix; None when there is no such dict."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping) or not state:
        return None
    if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()):
        return None
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def _from_official(state: Mapping[str, Tensor], spec: BackboneSpec) -> dict[str, Tensor]:
    """Official TSM keys to ours. ResNets already match; the official MobileNetV2 is its own
    flat layout, renamed onto torchvision's. A release trained with dropout 0 keeps its head
    inside the backbone (``base_model.fc``), which is our ``new_fc``."""
    converted = {}
    head = f"base_model.{spec.head}."
    # torchvision's nested layout (features.3.conv.0.0.weight) means the keys are ours already
    flat_mobilenet = spec.family == "mobilenet_v2" and not any(
        re.match(r"base_model\.features\.\d+\.conv\.\d+\.\d+\.", key) for key in state)
    for key, value in state.items():
        if key.startswith(head):
            key = "new_fc." + key[len(head):]
        elif key.startswith("base_model.") and flat_mobilenet:
            key = "base_model." + _official_mobilenet_key(key[len("base_model."):], state)
        converted[key] = value
    return converted


# official MobileNetV2 block: a flat Sequential; torchvision nests conv+BN+ReLU6 triples
_MOBILENET_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MOBILENET_PLAIN = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def _official_mobilenet_key(key: str, state: Mapping[str, Tensor]) -> str:
    match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
    if match is None:
        return key
    block, index, rest = match.groups()
    expanded = any(k.startswith(f"base_model.features.{block}.conv.7.") for k in state)
    table = _MOBILENET_EXPANDED if expanded else _MOBILENET_PLAIN
    return f"features.{block}.conv.{table.get(index, index)}.{rest}"


_MMACTION2_RENAMES = (
    (re.compile(r"^conv1\.conv\."), "conv1."),
    (re.compile(r"^conv1\.bn\."), "bn1."),
    (re.compile(r"\.conv(\d)\.conv\."), r".conv\1."),
    (re.compile(r"\.conv(\d)\.bn\."), r".bn\1."),
    (re.compile(r"\.downsample\.conv\."), ".downsample.0."),
    (re.compile(r"\.downsample\.bn\."), ".downsample.1."),
)


def _from_mmaction2(state: Mapping[str, Tensor], spec: BackboneSpec,
                    source: str) -> dict[str, Tensor]:
    """mmaction2 ``ResNetTSM`` + ``TSMHead`` keys to ours: its ConvModule pairs
    (``conv1.conv``/``conv1.bn``) become torchvision's ``conv1``/``bn1``; the shift wrapper's
    ``net`` stays where it is."""
    if spec.family != "resnet":
        raise CheckpointError(f"{source}: mmaction2 checkpoints are read for ResNet backbones "
                              f"only, not {spec.name}; convert it to a torchvision layout first")
    converted = {}
    for key, value in state.items():
        if key.startswith("data_preprocessor."):
            continue  # normalisation constants, not weights
        if key.startswith("cls_head.fc_cls."):
            key = "new_fc." + key[len("cls_head.fc_cls."):]
        elif key.startswith("backbone."):
            rest = key[len("backbone."):]
            for pattern, replacement in _MMACTION2_RENAMES:
                rest = pattern.sub(replacement, rest)
            key = "base_model." + rest
        converted[key] = value
    return converted


def _video_state_dict(ckpt: Mapping[str, Any], fmt: str, spec: BackboneSpec,
                      source: str) -> dict[str, Tensor]:
    """Our key layout (``base_model.*``, ``new_fc.*``) for a tsmcli, official or mmaction2 file."""
    state = _raw_state_dict(ckpt)
    if state is None:
        raise CheckpointError(f"{source}: has no 'state_dict' of tensors; is it a checkpoint?")
    if fmt == "official":
        return _from_official(state, spec)
    if fmt == "mmaction2":
        return _from_mmaction2(state, spec, source)
    return state


# ---------------------------------------------------------------------------------------------
# loading into models


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor],
                           source: str) -> None:
    """Load every tensor or fail with ONE line: counts of missing, unexpected and reshaped keys
    and up to three of each. Only ``num_batches_tracked`` counters may be absent (old files
    lack them; they do not affect outputs)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in state_dict if k in expected
                and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_some(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
        if reshaped:
            shown = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
                     for k in reshaped]
            problems.append(f"{len(reshaped)} of another shape, file vs model ({_some(shown)})")
        raise CheckpointError(f"{source}: weights do not fit the model: {'; '.join(problems)}; "
                              "check arch, shift, shift_place and num_classes")
    full = {k: v for k, v in expected.items() if k not in state_dict}  # num_batches_tracked
    full.update(state_dict)
    model.load_state_dict(full, strict=True)


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def load_model(path: str | Path, **arch_overrides: Any) -> TSN:
    """The model stored in ``path``, in eval mode.

    Our checkpoints rebuild from their ``model_config``; ``arch_overrides`` change keys of it
    (e.g. ``num_segments=16`` to test on longer clips). Official TSM and mmaction2 files need
    ``arch``, ``num_segments`` and ``shift`` (``shift_div`` 8 and ``shift_place`` "blockres"
    unless given); ``num_classes`` is read from the head's weights.
    """
    path = Path(path)
    unknown = sorted(set(arch_overrides) - set(MODEL_KEYS))
    if unknown:
        raise UsageError(f"unknown model option(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(MODEL_KEYS)}")
    ckpt = load_checkpoint(path)
    fmt = checkpoint_format(ckpt)
    if fmt == FORMAT:
        config = _our_config(ckpt, path)
        config.update(arch_overrides)
        state = _video_state_dict(ckpt, fmt, get_backbone(config["arch"]), str(path))
    elif fmt in ("official", "mmaction2"):
        missing = [key for key in REQUIRED_FOR_IMPORT if key not in arch_overrides]
        if missing:
            label = "an official TSM" if fmt == "official" else "an mmaction2"
            raise CheckpointError(
                f"{path}: {label} checkpoint does not record its architecture; pass "
                f"{', '.join(f'{key}=' for key in missing)} (e.g. arch='resnet50', "
                "num_segments=8, shift='bidirectional'; also shift_div=, shift_place= if not "
                "8 and 'blockres')")
        state = _video_state_dict(ckpt, fmt, get_backbone(arch_overrides["arch"]), str(path))
        head = state.get("new_fc.weight")
        if head is None or head.dim() != 2:
            raise CheckpointError(f"{path}: no classifier weights (new_fc / fc_cls) found; "
                                  "is it a video model checkpoint?")
        config = {"num_classes": int(head.shape[0]), **arch_overrides}
    elif fmt == "torchvision":
        raise CheckpointError(f"{path}: is an ImageNet backbone without a video head; use it "
                              "as pretrained= (build_model) or as the fine-tuning init")
    else:
        raise CheckpointError(f"{path}: not a tsmcli, official TSM or mmaction2 checkpoint "
                              f"(first keys: {_some(list(_raw_state_dict(ckpt) or ckpt))})")
    model = build_model(**config)
    load_state_dict_strict(model, state, str(path))
    logger.info("loaded %s (%s): %s", path, fmt, config)
    return model.eval()


def _our_config(ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is newer than this tsmcli "
                              f"reads ({FORMAT_VERSION}); upgrade tsmcli")
    config = ckpt.get("model_config")
    if not isinstance(config, Mapping) or "arch" not in config or "num_classes" not in config:
        raise CheckpointError(f"{path}: its model_config is missing or incomplete; the file "
                              "is damaged, re-save it")
    extra = sorted(set(config) - set(MODEL_KEYS))
    if extra:
        raise CheckpointError(f"{path}: model_config has unknown keys {extra}; upgrade tsmcli")
    return dict(config)


def load_pretrained_backbone(model: TSN, path: str | Path) -> None:
    """Load a torchvision ImageNet state dict (``layer1.0.conv1.weight``, ``fc.weight``) into
    ``model.base_model``: keys are mapped onto the shift wrappers (``conv1.net.weight``) and
    the ImageNet classifier is ignored."""
    path = Path(path)
    state = _raw_state_dict(load_checkpoint(path))
    if state is None:
        raise CheckpointError(f"{path}: not a state dict of tensors; give a torchvision "
                              "ImageNet state dict (e.g. resnet50-11ad3fa6.pth)")
    head = f"{model.spec.head}."
    state = {key: value for key, value in state.items() if not key.startswith(head)}
    load_state_dict_strict(model.base_model, _onto_shift_wrappers(model.base_model, state),
                           f"{path} (ImageNet {model.arch} weights)")
    logger.info("loaded ImageNet weights from %s into %s", path, model.arch)


def _onto_shift_wrappers(backbone: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename plain torchvision keys of modules that are now wrapped by a ``TemporalShift``:
    ``layer1.0.conv1.weight`` -> ``layer1.0.conv1.net.weight`` (``layer1.0.net.conv1.weight``
    for the ``block`` placement)."""
    wrapped = set(shifted_module_names(backbone))
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in wrapped:
                key = f"{prefix}.net.{'.'.join(parts[cut:])}"
                break
        renamed[key] = value
    return renamed


@dataclass(frozen=True)
class InitReport:
    """What ``load_weights_for_finetune`` loaded."""

    source_format: str  # tsmcli, official, mmaction2 or torchvision
    head_loaded: bool  # False: new_fc keeps its fresh init (other classes, or an ImageNet file)


def load_weights_for_finetune(model: TSN, path: str | Path) -> InitReport:
    """Initialise ``model`` from any checkpoint we read, to fine-tune it: every weight is
    loaded, except the head when the number of classes differs (it keeps its fresh init).
    The file's architecture must match the model's; its clip length need not."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    fmt = checkpoint_format(ckpt)
    if fmt == "torchvision":
        load_pretrained_backbone(model, path)
        return InitReport(fmt, head_loaded=False)
    if fmt == "unknown":
        raise CheckpointError(f"{path}: not a tsmcli, official TSM, mmaction2 or torchvision "
                              "checkpoint; cannot initialise from it")
    state = _video_state_dict(ckpt, fmt, model.spec, str(path))
    head = state.get("new_fc.weight")
    head_loaded = head is not None and tuple(head.shape) == tuple(model.new_fc.weight.shape)
    if not head_loaded:
        logger.info("%s: head has %s classes, the model %d: new_fc starts fresh", path,
                    "no" if head is None else head.shape[0], model.num_classes)
        state = {k: v for k, v in state.items() if not k.startswith("new_fc.")}
        state.update({f"new_fc.{k}": v for k, v in model.new_fc.state_dict().items()})
    load_state_dict_strict(model, state, str(path))
    return InitReport(fmt, head_loaded=head_loaded)
