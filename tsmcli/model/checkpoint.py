"""Checkpoints as models: read a file once, build the model it holds, write ours.

``read_checkpoint`` reads a file once (``weights_only=True``, ``model.weights``) into a
``CheckpointInfo``: its format, the model config, class names and recipe stored with ours,
and its tensors. A command reads its checkpoint once and passes the info on: ``load_model``,
``load_weights_for_finetune`` and the engine's evaluation take it in place of a path.

``checkpoint_dict`` is the one builder of our checkpoint header (``format``,
``format_version``, ``model_config``, ``recipe``, ``classes``, ``state_dict``); a training
run adds its state (``epoch``, ``optimizer``, ...) as extra keys.

Official TSM and mmaction2 files do not record their architecture: ``load_model`` takes it
as a partial spec (``model.spec.ArchOverrides``, or its keys as keywords) and reads the
number of classes from the head's weights.

A checkpoint may be named by the model zoo (``tsm-k400-r50-8f``) wherever a path is taken:
``read_checkpoint`` is the one place that resolves a name (``zoo_cache.resolve_checkpoint``:
the cached file, downloaded and verified when missing) and keeps its entry, whose
architecture becomes the defaults of ``load_model`` (``arch_options``) and whose class list,
in the checkpoint's label order, becomes ``classes``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli.errors import CheckpointError, UsageError
from tsmcli.model.backbones import get_backbone, shifted_module_names
from tsmcli.model.spec import SPEC_KEYS, ArchOverrides, ModelSpec, as_overrides
from tsmcli.model.tsn import TSN, load_imagenet_weights, with_input_channels
from tsmcli.model.weights import (
    FORMAT,
    FORMAT_VERSION,
    checkpoint_format,
    load_checkpoint,
    load_state_dict_strict,
    raw_state_dict,
    rewrap_shift_keys,
    some,
    video_state_dict,
)
from tsmcli.zoo import ZooEntry
from tsmcli.zoo_cache import locate, resolve_checkpoint

logger = logging.getLogger(__name__)

# The spec keys a file's layout or a model zoo entry can say: the others (num_classes, dropout,
# partial_bn) follow from the weights or do not change what they compute.
_LAYOUT_KEYS = (
    "arch",
    "num_segments",
    "shift",
    "shift_div",
    "shift_place",
    "modality",
    "new_length",
)
# what official / mmaction2 files do not record and a caller (or the zoo entry) must give
REQUIRED_FOR_IMPORT = ("arch", "num_segments", "shift")
IMPORTED_FORMATS = ("official", "mmaction2", "online_demo")  # files without a model_config
# What a file's layout says of its architecture. The online demo's is MobileNetV2 with the
# one-way shift of 1/8 of the channels; a streaming model has no clip length, so its clip
# view (tsm eval --checkpoint) takes 8 frames unless num_segments is given.
IMPLIED_BY_FORMAT = {
    "online_demo": {
        "arch": "mobilenet_v2",
        "shift": "unidirectional",
        "shift_div": 8,
        "shift_place": "blockres",
        "num_segments": 8,
    }
}
# Keys that say where the weights sit: given values that contradict the file are an error.
# The others (shift, shift_div, num_segments) change what the same weights compute: a given
# value wins (with a warning for the shift).
_WEIGHT_KEYS = ("arch", "shift_place", "modality", "new_length")
# Where an imported file keeps its first convolution, whose input channels say what a segment
# is: 3, an RGB frame; 2 * L, L stacked x/y flow images (official, mmaction2, MobileNetV2).
_FIRST_CONV_KEYS = (
    "base_model.conv1.weight",
    "backbone.conv1.conv.weight",
    "base_model.features.0.0.weight",
    "features.0.0.weight",
)
_HEADER = ("format", "format_version", "model_config", "recipe", "classes", "state_dict")


@dataclass(frozen=True, eq=False)
class CheckpointInfo:
    """One checkpoint file, read once: what the commands need to know about it.

    ``model_config`` is as stored (checked when a model is built from it); ``recipe`` is the
    resolved recipe stored with ours, as plain values (``recipe.Recipe.from_stored`` types
    it); ``state_dict`` holds the file's tensors without a DataParallel ``module.`` prefix,
    in the file's own key layout; ``content`` is the whole dict (a run's training state).
    ``zoo`` is the model zoo entry when the checkpoint was named (``classes`` then come from
    its class list unless the file holds names).
    """

    path: Path
    format: str  # one of model.weights.FORMATS
    model_config: Mapping[str, Any] | None = None
    classes: tuple[str, ...] | None = None
    recipe: Mapping[str, Any] | None = None
    state_dict: Mapping[str, Tensor] | None = field(default=None, repr=False)
    content: Mapping[str, Any] = field(default_factory=dict, repr=False)
    zoo: ZooEntry | None = None

    @property
    def label(self) -> str:
        """How messages name it: the zoo name and file, or the path."""
        return f"{self.zoo.name} ({self.path})" if self.zoo is not None else str(self.path)


def read_checkpoint(checkpoint: str | Path, arch: ArchOverrides | None = None) -> CheckpointInfo:
    """Read a checkpoint file, or the model zoo checkpoint so named (downloaded and verified
    first when it is not cached), with ``weights_only=True`` into a ``CheckpointInfo``. An
    unknown name lists the closest names; an unreadable file, or a name whose file cannot be
    fetched (it says where to put it), is one ``CheckpointError`` line. ``arch`` is what the
    model will be built with over what the file records: an ``arch`` or ``shift_place`` that
    contradicts a name's entry is refused before any download."""
    if arch:
        where, entry = locate(checkpoint)
        if entry is not None:
            label = f"{entry.name} ({where})"
            source = f"the model zoo's {entry.name}"
            _check_fit(label, entry.model_options(), source, arch.given())
    path, entry = resolve_checkpoint(checkpoint)
    content = load_checkpoint(path)
    fmt = checkpoint_format(content)
    ours = fmt == FORMAT
    config, classes, recipe = (
        content.get(key) if ours else None for key in ("model_config", "classes", "recipe")
    )
    if not classes and entry is not None:
        classes = entry.class_names()
    return CheckpointInfo(
        path=path,
        format=fmt,
        model_config=config if isinstance(config, Mapping) else None,
        classes=tuple(str(name) for name in classes) if classes else None,
        recipe=recipe if isinstance(recipe, Mapping) else None,
        state_dict=raw_state_dict(content),
        content=content,
        zoo=entry,
    )


def as_info(
    checkpoint: str | Path | CheckpointInfo, arch: ArchOverrides | None = None
) -> CheckpointInfo:
    """``checkpoint`` itself when it was read already, else the file read now (``arch``: as
    ``read_checkpoint`` takes it)."""
    if isinstance(checkpoint, CheckpointInfo):
        return checkpoint
    return read_checkpoint(checkpoint, arch)


def checkpoint_dict(
    model: TSN,
    *,
    recipe: Mapping[str, Any] | None = None,
    classes: list[str] | tuple[str, ...] | None = None,
    **training_state: Any,
) -> dict[str, Any]:
    """Our checkpoint dict for ``model`` (weights detached, on the CPU); ``training_state``
    adds keys such as ``epoch``, ``optimizer``, ``scheduler``, ``best_top1``."""
    clash = sorted(set(_HEADER) & set(training_state))
    if clash:
        raise ValueError(f"training state may not use the reserved keys {clash}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config(),
        "recipe": dict(recipe) if recipe is not None else None,
        "classes": list(classes) if classes is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **training_state,
    }


def missing_architecture(info: CheckpointInfo, arch: ArchOverrides) -> list[str]:
    """The keys an imported file needs that it does not record, its layout and zoo entry do
    not imply, and ``arch`` does not give (none for ours)."""
    if info.format not in IMPORTED_FORMATS:
        return []
    known = {**recorded_options(info), **arch.given()}
    return [key for key in REQUIRED_FOR_IMPORT if key not in known]


def recorded_options(info: CheckpointInfo) -> dict[str, Any]:
    """The architecture keys ``info`` is known to have: ours as their ``model_config``
    records them; a file that does not record them as far as its layout implies them and its
    zoo entry says (the entry wins)."""
    if info.format == FORMAT:
        config = info.model_config or {}
        return {key: config[key] for key in _LAYOUT_KEYS if key in config}
    if info.format not in IMPORTED_FORMATS:
        return {}
    known = {**IMPLIED_BY_FORMAT.get(info.format, {}), **_input_of(info.state_dict or {})}
    if info.zoo is not None:
        known.update(info.zoo.model_options())
    return known


def _input_of(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """What the first convolution of an imported file's weights says a segment is: its
    ``modality`` and ``new_length`` (none when it is not found or says neither)."""
    for key in _FIRST_CONV_KEYS:
        weight = state.get(key)
        if weight is None or weight.dim() != 4:
            continue
        channels = int(weight.shape[1])
        if channels == 3:
            return {"modality": "rgb", "new_length": 1}
        if channels % 2 == 0:
            return {"modality": "flow", "new_length": channels // 2}
        return {}
    return {}


def arch_options(info: CheckpointInfo, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` architecture keys over what ``info`` is known to be (``recorded_options``).
    A given ``arch`` or ``shift_place`` that contradicts it cannot fit the weights: a
    ``UsageError``. A given ``shift`` or ``shift_div`` wins with a warning (the same weights
    computing otherwise, as one-way conversion does); ``num_segments`` is a test-time choice."""
    known = recorded_options(info)
    if info.zoo is not None:
        source = f"the model zoo's {info.zoo.name}"
    elif info.format == FORMAT:
        source = "its model_config"
    else:
        source = f"its {info.format} layout"
    _check_fit(info.label, known, source, given)
    for key, value in given.items():
        if key in known and known[key] != value and key != "num_segments":
            logger.warning(
                "%s: %s=%r as given, not %r (%s): the weights were trained otherwise",
                info.label,
                key,
                value,
                known[key],
                source,
            )
    return {**known, **given}


def _check_fit(label: str, known: Mapping[str, Any], source: str, given: Mapping[str, Any]) -> None:
    """A ``UsageError`` for a given key that says where the weights sit (``arch``,
    ``shift_place``) and contradicts what the checkpoint is known to be (``known``). Without
    a shift, the recorded ``shift_place`` places nothing: any placement fits."""
    for key in _WEIGHT_KEYS:
        if key == "shift_place" and known.get("shift") == "none":
            continue
        if key in given and key in known and given[key] != known[key]:
            raise UsageError(
                f"{label}: is {key}={known[key]!r} ({source}), so {key}={given[key]!r} "
                f"cannot fit its weights; drop the {key} option"
            )


def load_model(
    checkpoint: str | Path | CheckpointInfo,
    arch: ArchOverrides | str | None = None,
    **keywords: Any,
) -> TSN:
    """The model stored in ``checkpoint`` (a path, a model zoo name, or a ``CheckpointInfo``
    already read), in eval mode.

    ``arch`` is the partial spec given over what the file records (``ArchOverrides``), or, as
    a convenience, its keys are given as keywords: ``load_model(path, num_segments=16)`` tests
    one of our checkpoints on longer clips; ``shift="none"`` runs the same weights as TSN.
    Our checkpoints rebuild from their ``model_config``. Official TSM and mmaction2 files need
    ``arch``, ``num_segments`` and ``shift`` (``shift_div`` 8 and ``shift_place`` "blockres"
    unless given), which a model zoo name and the online demo's layout supply. Given keys win
    within limits (``arch_options``: a contradicting ``arch`` or ``shift_place`` is an error,
    a name's checked before its download); ``num_classes`` is read from the head's weights.
    Weights holding NaN or infinity are refused.
    """
    overrides = as_overrides(arch, keywords)
    info = as_info(checkpoint, overrides)
    spec, state = _spec_and_weights(info, arch_options(info, overrides.given()))
    model = TSN(spec)
    state = _keyed_for_shift(state, info, model)
    load_state_dict_strict(model, state, str(info.path))
    logger.info("loaded %s (%s): %s", info.path, info.format, model.config())
    return model.eval()


def _keyed_for_shift(
    state: dict[str, Tensor], info: CheckpointInfo, model: TSN
) -> dict[str, Tensor]:
    """``state`` keyed for ``model`` when its shift is off and the one ``info`` records on, or
    the other way round: a shift has no weights, but a shifted layer's sit under its wrapper
    (``conv1.net.weight``). Only our files record their shift; in another layout the given
    keys say where the wrappers are."""
    stored = (info.model_config or {}) if info.format == FORMAT else {}
    shift = stored.get("shift")
    if shift is None or (shift == "none") == (model.shift == "none"):
        return state
    if shift == "none":  # into the wrappers the model has
        names = shifted_module_names(model.base_model)
        return rewrap_shift_keys(state, unwrap=(), wrap=[f"base_model.{n}" for n in names])
    with torch.device("meta"):  # out of those the file's network had: only names are needed
        place = stored.get("shift_place", model.shift_place)
        shifted = TSN(replace(model.spec, shift=shift, shift_place=place))
    names = shifted_module_names(shifted.base_model)
    return rewrap_shift_keys(state, unwrap=[f"base_model.{n}" for n in names], wrap=())


def _spec_and_weights(
    info: CheckpointInfo,
    overrides: Mapping[str, Any],
) -> tuple[ModelSpec, dict[str, Tensor]]:
    """The spec of the model in ``info`` and its weights in our layout."""
    path, fmt = info.path, info.format
    if fmt == FORMAT:
        spec = ModelSpec(**{**_our_config(info), **overrides})
        return spec, _video_weights(info, spec.arch)
    if fmt in IMPORTED_FORMATS:
        missing = [key for key in REQUIRED_FOR_IMPORT if key not in overrides]
        if missing:
            label = "an official TSM" if fmt == "official" else f"an {fmt}"
            raise CheckpointError(
                f"{path}: {label} checkpoint does not record its architecture; pass "
                f"{', '.join(f'{key}=' for key in missing)} (e.g. arch='resnet50', "
                "num_segments=8, shift='bidirectional'; also shift_div=, shift_place= if not "
                "8 and 'blockres')"
            )
        state = _video_weights(info, overrides["arch"])
        head = state.get("new_fc.weight")
        if head is None or head.dim() != 2:
            raise CheckpointError(
                f"{path}: no classifier weights (new_fc / fc_cls) found; "
                "is it a video model checkpoint?"
            )
        return ModelSpec(**{"num_classes": int(head.shape[0]), **overrides}), state
    if fmt == "torchvision":
        raise CheckpointError(
            f"{path}: is an ImageNet backbone without a video head; use it "
            "as pretrained= (build_model) or as the fine-tuning init"
        )
    raise CheckpointError(
        f"{path}: not a tsmcli, official TSM or mmaction2 checkpoint "
        f"(first keys: {some(list(info.state_dict or info.content))})"
    )


def _video_weights(info: CheckpointInfo, arch: str) -> dict[str, Tensor]:
    """The tensors of a tsmcli, official or mmaction2 file in our key layout for ``arch``."""
    if info.state_dict is None:
        raise CheckpointError(f"{info.path}: has no 'state_dict' of tensors; is it a checkpoint?")
    spec = get_backbone(arch)
    return video_state_dict(
        info.state_dict,
        info.format,
        family=spec.family,
        head=spec.head,
        arch=spec.name,
        source=str(info.path),
    )


def _our_config(info: CheckpointInfo) -> dict[str, Any]:
    version = info.content.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{info.path}: format_version {version!r} is newer than this "
            f"tsmcli reads ({FORMAT_VERSION}); upgrade tsmcli"
        )
    config = info.model_config
    if config is None or "arch" not in config or "num_classes" not in config:
        raise CheckpointError(
            f"{info.path}: its model_config is missing or incomplete; the "
            "file is damaged, re-save it"
        )
    extra = sorted(set(config) - set(SPEC_KEYS))
    if extra:
        raise CheckpointError(f"{info.path}: model_config has unknown keys {extra}; upgrade tsmcli")
    return dict(config)


@dataclass(frozen=True)
class InitReport:
    """What ``load_weights_for_finetune`` loaded."""

    source_format: str  # tsmcli, official, mmaction2 or torchvision
    head_loaded: bool  # False: new_fc keeps its fresh init (other classes, or an ImageNet file)


def load_weights_for_finetune(model: TSN, checkpoint: str | Path | CheckpointInfo) -> InitReport:
    """Initialise ``model`` from any checkpoint we read, to fine-tune it: every weight is
    loaded, except the head when the number of classes differs (it keeps its fresh init).
    The file's architecture must match the model's; its clip length need not, and an RGB
    file starts a flow model (its first kernel averaged over the flow channels, as the
    official TSN starts a flow network)."""
    info = as_info(checkpoint)
    path, fmt = info.path, info.format
    if fmt == "torchvision":
        load_imagenet_weights(model, info.state_dict or {}, path)
        return InitReport(fmt, head_loaded=False)
    if fmt == "unknown":
        raise CheckpointError(
            f"{path}: not a tsmcli, official TSM, mmaction2 or torchvision "
            "checkpoint; cannot initialise from it"
        )
    if info.zoo is not None and info.zoo.arch != model.arch:
        raise CheckpointError(
            f"{info.label}: holds {info.zoo.arch} weights, the model is a {model.arch}; "
            f"set model.arch to {info.zoo.arch} or initialise from a {model.arch} checkpoint"
        )
    state = _video_weights(info, model.arch)
    head = state.get("new_fc.weight")
    head_loaded = head is not None and tuple(head.shape) == tuple(model.new_fc.weight.shape)
    if not head_loaded:
        logger.info(
            "%s: head has %s classes, the model %d: new_fc starts fresh",
            path,
            "no" if head is None else head.shape[0],
            model.num_classes,
        )
        state = {k: v for k, v in state.items() if not k.startswith("new_fc.")}
        state.update({f"new_fc.{k}": v for k, v in model.new_fc.state_dict().items()})
    state = with_input_channels(state, model, "base_model.")  # an RGB file into a flow model
    state = _keyed_for_shift(state, info, model)
    load_state_dict_strict(model, state, str(path))
    return InitReport(fmt, head_loaded=head_loaded)
