"""Weight files: safe load and atomic save, which format a file is, and key maps onto ours.

Every file is read with ``torch.load(..., weights_only=True)``: a checkpoint from the
internet can hold tensors and plain values, never code. Every file is written atomically
(``fileio.atomic_write_with``): a crash or a full disk mid-save leaves the previous file as
it was.

Formats (``checkpoint_format``):

- ``tsmcli``: ours, ``{"format": "tsmcli", "format_version": 1, "model_config": ...,
  "recipe": ..., "classes": ..., "state_dict": ..., + training state}`` (built by
  ``model.checkpoint.checkpoint_dict``; ``format_version`` 1 files are read as they are).
- ``official``: official TSM releases, ``{"state_dict": {"module.base_model.layer1.0.conv1
  .net.weight", ..., "module.new_fc.weight"}}``.
- ``mmaction2``: mmaction2 TSM files, ``backbone.layer1.0.conv1.conv.net.weight``,
  ``cls_head.fc_cls.weight``.
- ``online_demo``: the official online MobileNetV2 (``online_demo/mobilenet_v2_tsm.py`` of
  the TSM repository, e.g. the Jester gesture model): a plain state dict with flat blocks
  (``features.3.conv.0.weight``), no shift module (its blocks splice the buffer in
  ``forward``) and the head as ``classifier.weight``.
- ``torchvision``: an ImageNet backbone (``layer1.0.conv1.weight``, ``fc.weight``).

This module knows key layouts, not networks: it imports no model module, and the facts it
needs about a backbone (its family, the attribute of its classifier, which modules carry a
shift wrapper) are passed in as plain values.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tsmcli.errors import CheckpointError
from tsmcli.fileio import atomic_write_with

FORMAT = "tsmcli"
FORMAT_VERSION = 1
FORMATS = (FORMAT, "official", "mmaction2", "online_demo", "torchvision", "unknown")
_PLAIN_TYPES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.dtype,
    torch.device,
    torch.Size,
)  # exact types (see _check_plain)


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
        culprit = _refused_global(str(exc))
        if culprit is not None:
            raise CheckpointError(
                f"{path}: holds Python objects that loading would run ({culprit}); refused: "
                "tsmcli loads weights only. If you trust the file, re-save its state dict "
                "with torch.save(model.state_dict()) where it was made"
            ) from exc
        raise CheckpointError(
            f"{path}: not a checkpoint (not a file written by torch.save, "
            "or damaged); check the path, or re-download or re-save it"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a dict of weights; "
            "save a state dict or a checkpoint dict instead"
        )
    return obj


# How torch's safe unpickler (torch/_weights_only_unpickler.py) words a refused Python
# object: a global not on its allow list, or one of a blocked module (os.system pickles as
# posix.system). A damaged file fails otherwise (an unknown opcode, a bad zip).
_REFUSED = (
    re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),
)


def _refused_global(message: str) -> str | None:
    """The Python object named in the safe loader's refusal ``message``; None when the
    message is not a refusal (a damaged file, random bytes)."""
    for pattern in _REFUSED:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


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
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only tensors and "
        "plain Python values (convert it, e.g. dataclasses.asdict, float(), "
        "torch.from_numpy)"
    )


# ---------------------------------------------------------------------------------------------
# formats


def checkpoint_format(ckpt: Mapping[str, Any]) -> str:
    """One of ``FORMATS``: ``"tsmcli"``, ``"official"``, ``"mmaction2"``,
    ``"online_demo"``, ``"torchvision"`` or ``"unknown"``."""
    if ckpt.get("format") == FORMAT:
        return FORMAT
    state = raw_state_dict(ckpt)
    if state is None:
        return "unknown"
    if any(key.startswith("base_model.") for key in state):
        return "official"
    if any(key.startswith("backbone.") for key in state):
        return "mmaction2"
    if "features.0.0.weight" in state and "classifier.weight" in state:
        return "online_demo"  # torchvision's MobileNetV2 head is classifier.1 (after dropout)
    if ("conv1.weight" in state and "fc.weight" in state) or "features.0.0.weight" in state:
        return "torchvision"
    return "unknown"


def raw_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor] | None:
    """The tensors of a checkpoint (its ``state_dict`` or itself), without a DataParallel
    ``module.`` prefix; None when there is no such dict."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping) or not state:
        return None
    if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()):
        return None
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


# ---------------------------------------------------------------------------------------------
# key maps onto ours: base_model.* (the backbone, shift wrappers as .net), new_fc.* (the head)


def video_state_dict(
    state: Mapping[str, Tensor], fmt: str, *, family: str, head: str, arch: str, source: str
) -> dict[str, Tensor]:
    """Our key layout for the tensors of a tsmcli, official, mmaction2 or online-demo file.
    ``family`` (``resnet``, ``mobilenet_v2``), ``head`` (the backbone's classifier
    attribute) and ``arch`` describe the backbone the weights are for."""
    if fmt == "official":
        return _from_official(state, family, head)
    if fmt == "mmaction2":
        return _from_mmaction2(state, family, arch, source)
    if fmt == "online_demo":
        return _from_online_demo(state, family, arch, source)
    return dict(state)


def _from_official(state: Mapping[str, Tensor], family: str, head: str) -> dict[str, Tensor]:
    """Official TSM keys to ours. ResNets already match; the official MobileNetV2 is its own
    flat layout, renamed onto torchvision's. A release trained with dropout 0 keeps its head
    inside the backbone (``base_model.fc``), which is our ``new_fc``."""
    converted = {}
    head = f"base_model.{head}."
    # torchvision's nested layout (features.3.conv.0.0.weight) means the keys are ours already
    flat_mobilenet = family == "mobilenet_v2" and not any(
        re.match(r"base_model\.features\.\d+\.conv\.\d+\.\d+\.", key) for key in state
    )
    for key, value in state.items():
        if key.startswith(head):
            key = "new_fc." + key[len(head) :]
        elif key.startswith("base_model.") and flat_mobilenet:
            key = "base_model." + _official_mobilenet_key(key[len("base_model.") :], state)
        converted[key] = value
    return converted


# official MobileNetV2 block: a flat Sequential; torchvision nests conv+BN+ReLU6 triples
_MOBILENET_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MOBILENET_PLAIN = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def _official_mobilenet_key(
    key: str, state: Mapping[str, Tensor], prefix: str = "base_model."
) -> str:
    """A flat official block key (``features.3.conv.4.weight``, without ``prefix``) in
    torchvision's nesting (``features.3.conv.1.1.weight``); other keys stay as they are."""
    match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
    if match is None:
        return key
    block, index, rest = match.groups()
    expanded = any(k.startswith(f"{prefix}features.{block}.conv.7.") for k in state)
    table = _MOBILENET_EXPANDED if expanded else _MOBILENET_PLAIN
    return f"features.{block}.conv.{table.get(index, index)}.{rest}"


# The blocks of the online demo's MobileNetV2 that shift (InvertedResidualWithShift in
# online_demo/mobilenet_v2_tsm.py of mit-han-lab/temporal-shift-module, read at commit
# 436e7cf0bec151a73b25fe91e06709af876a04df), as indices of ``features``: its
# shift_block_idx (2, 4, 5, 7, 8, 9, 11, 12, 14, 15) counts the
# inverted residual blocks from 0, and features[0] is the stem. They are the blocks with a
# skip connection and an expansion, where model.backbones inserts the shift too; the demo's
# shift has no module, so their expansion conv is ``conv.0`` there and ``conv.0.0.net`` here.
ONLINE_DEMO_SHIFTED_BLOCKS = (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)


def _from_online_demo(
    state: Mapping[str, Tensor], family: str, arch: str, source: str
) -> dict[str, Tensor]:
    """The online demo's MobileNetV2 keys to ours: flat blocks nested as torchvision's, the
    shifted blocks' expansion moved under the shift wrapper, ``classifier`` as ``new_fc``."""
    if family != "mobilenet_v2":
        raise CheckpointError(
            f"{source}: holds the official online demo's MobileNetV2 (features.N.conv..., "
            f"classifier), not a {arch}; load it with arch='mobilenet_v2'"
        )
    converted = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            converted["new_fc." + key[len("classifier.") :]] = value
            continue
        key = _official_mobilenet_key(key, state, prefix="")
        match = re.fullmatch(r"features\.(\d+)\.conv\.0\.0\.(.+)", key)
        if match and int(match.group(1)) in ONLINE_DEMO_SHIFTED_BLOCKS:
            key = f"features.{match.group(1)}.conv.0.0.net.{match.group(2)}"
        converted["base_model." + key] = value
    return converted


_MMACTION2_RENAMES = (
    (re.compile(r"^conv1\.conv\."), "conv1."),
    (re.compile(r"^conv1\.bn\."), "bn1."),
    (re.compile(r"\.conv(\d)\.conv\."), r".conv\1."),
    (re.compile(r"\.conv(\d)\.bn\."), r".bn\1."),
    (re.compile(r"\.downsample\.conv\."), ".downsample.0."),
    (re.compile(r"\.downsample\.bn\."), ".downsample.1."),
)


def _from_mmaction2(
    state: Mapping[str, Tensor], family: str, arch: str, source: str
) -> dict[str, Tensor]:
    """mmaction2 ``ResNetTSM`` + ``TSMHead`` keys to ours: its ConvModule pairs
    (``conv1.conv``/``conv1.bn``) become torchvision's ``conv1``/``bn1``; the shift wrapper's
    ``net`` stays where it is."""
    if family != "resnet":
        raise CheckpointError(
            f"{source}: mmaction2 checkpoints are read for ResNet backbones "
            f"only, not {arch}; convert it to a torchvision layout first"
        )
    converted = {}
    for key, value in state.items():
        if key.startswith("data_preprocessor."):
            continue  # normalisation constants, not weights
        if key.startswith("cls_head.fc_cls."):
            key = "new_fc." + key[len("cls_head.fc_cls.") :]
        elif key.startswith("backbone."):
            rest = key[len("backbone.") :]
            for pattern, replacement in _MMACTION2_RENAMES:
                rest = pattern.sub(replacement, rest)
            key = "base_model." + rest
        converted[key] = value
    return converted


def imagenet_state_dict(
    state: Mapping[str, Tensor], *, head: str, wrapped: Iterable[str]
) -> dict[str, Tensor]:
    """A torchvision ImageNet state dict (``layer1.0.conv1.weight``, ``fc.weight``) as the
    backbone of a TSN: the ImageNet classifier (``head``) is dropped and the keys of modules
    now wrapped by a ``TemporalShift`` (the qualified names ``wrapped``) are renamed onto the
    wrapper: ``layer1.0.conv1.weight`` -> ``layer1.0.conv1.net.weight``
    (``layer1.0.net.conv1.weight`` for the ``block`` placement)."""
    kept = {key: value for key, value in state.items() if not key.startswith(f"{head}.")}
    return rewrap_shift_keys(kept, unwrap=(), wrap=wrapped)


def rewrap_shift_keys(
    state: Mapping[str, Tensor], *, unwrap: Iterable[str], wrap: Iterable[str]
) -> dict[str, Tensor]:
    """The same tensors keyed for a network whose shift wrappers sit elsewhere, or nowhere.
    A shift has no weights of its own, but a shifted module's sit under its wrapper's
    ``net``: the keys under each qualified name in ``unwrap`` leave their wrapper
    (``a.net.weight`` -> ``a.weight``), then those under each name in ``wrap`` enter one
    (``a.weight`` -> ``a.net.weight``)."""
    unwrap, wrap = set(unwrap), set(wrap)
    renamed = {}
    for key, value in state.items():
        for name in unwrap:
            if key.startswith(f"{name}.net."):
                key = f"{name}.{key[len(name) + len('.net.') :]}"
                break
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in wrap:
                key = f"{prefix}.net.{'.'.join(parts[cut:])}"
                break
        renamed[key] = value
    return renamed


def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity, buffers (BN statistics) included: such a model
    loads and runs, and its every output is nonsense. One pass over the floating-point
    tensors; only a tensor found bad is counted."""
    floats = [(key, value) for key, value in state.items() if value.is_floating_point()]
    bad = [key for key, value in floats if not bool(torch.isfinite(value).all())]
    if not bad:
        return
    count = sum(int((~torch.isfinite(state[key])).sum()) for key in bad)
    total = sum(value.numel() for _, value in floats)
    raise CheckpointError(
        f"{source}: {count} of {total} weights are NaN or infinite (first: {bad[0]}); the "
        "checkpoint is damaged or came from a diverged run; use an earlier checkpoint"
    )


# ---------------------------------------------------------------------------------------------
# loading into a module


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load every tensor or fail with ONE line: counts of missing, unexpected and reshaped keys
    and up to three of each. Only ``num_batches_tracked`` counters may be absent (old files
    lack them; they do not affect outputs). Weights holding NaN or infinity are refused
    (``check_finite``): every load of weights into a model goes through here."""
    check_finite(state_dict, source)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [
        k
        for k in state_dict
        if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({some(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({some(unexpected)})")
        if reshaped:
            shown = [
                f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in reshaped
            ]
            problems.append(f"{len(reshaped)} of another shape, file vs model ({some(shown)})")
        raise CheckpointError(
            f"{source}: weights do not fit the model: {'; '.join(problems)}; "
            "check arch, shift, shift_place, num_classes, modality and new_length"
        )
    full = {k: v for k, v in expected.items() if k not in state_dict}  # num_batches_tracked
    full.update(state_dict)
    model.load_state_dict(full, strict=True)


def some(keys: list[str]) -> str:
    """Up to three of ``keys`` for a one-line message."""
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
