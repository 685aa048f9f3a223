"""A network's architecture as one typed value, checked in one place. torch-free: the CLI and
the recipe import it without importing torch.

``ModelSpec`` holds the keys that decide a TSN/TSM network (its input among them: ``modality``
rgb, one frame a segment, or flow, ``new_length`` stacked x/y optical flow images a segment): ``TSN(spec)`` builds it,
``TSN.config()`` is it as the plain dict our checkpoints store (``model_config``), and the
recipe's ``model`` section extends it (with the weights to start from). ``ArchOverrides`` is a
partial spec: the keys a caller gives over what a checkpoint records (``--arch``,
``--segments``, ``--shift``, ...; ``arch=`` of ``evaluate``, ``predict``, ``convert_online`` and
``load_model``). ``check_model`` is the one validator of them all; ``arch`` is the backbone
registry's to check (``model.backbones.get_backbone``), when the model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tsmcli import choices
from tsmcli.errors import TSMError, UsageError


@dataclass(frozen=True)
class ModelSpec:
    """What a TSN/TSM network is (its weights aside). Built from invalid values it raises a
    ``UsageError`` naming the key (``model num_segments must be at least 1, got 0``)."""

    arch: str  # a backbone of model.backbones' registry
    num_classes: int
    num_segments: int = 8  # frames per clip (T)
    shift: Literal[choices.SHIFT_MODES] = "bidirectional"  # none: TSN
    shift_div: int = 8  # 1/shift_div of the channels move each way
    shift_place: Literal[choices.SHIFT_PLACES] = "blockres"
    dropout: float = 0.5  # before the head
    partial_bn: bool = False  # in training, every BatchNorm but the first keeps ImageNet's
    modality: Literal[choices.MODALITIES] = "rgb"  # what a segment is: an RGB frame, or flow
    # consecutive frames a segment stacks: x/y flow pairs, 2 * new_length input channels (the
    # first convolution's); None: the official default, 1 for rgb, 5 for flow
    new_length: int | None = None

    def __post_init__(self) -> None:
        check_model(self.as_dict())
        object.__setattr__(self, "dropout", float(self.dropout))
        self._resolve_new_length()

    def _resolve_new_length(self) -> None:
        """``new_length`` None becomes its modality's default (a frozen field, set once)."""
        if self.new_length is None:
            object.__setattr__(self, "new_length", DEFAULT_NEW_LENGTH[self.modality])

    @property
    def input_channels(self) -> int:
        """Channels of one segment: 3 (RGB), or x and y of ``new_length`` flow images."""
        return 3 if self.modality == "rgb" else 2 * int(self.new_length or 1)

    def as_dict(self) -> dict[str, Any]:
        """The keys as ``TSN.config()`` returns them and our checkpoints store them."""
        return {key: getattr(self, key) for key in SPEC_KEYS}


SPEC_KEYS = tuple(f.name for f in dataclasses.fields(ModelSpec))
# the official TSN's new_length when none is given (ops/models.py: 1 for RGB, 5 for Flow)
DEFAULT_NEW_LENGTH = {"rgb": 1, "flow": 5}


def _count(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


# key -> (what holds for a valid value, what the message says it must be), in checking order
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": (_count(1), "must be at least 1"),
    "num_segments": (_count(1), "must be at least 1"),
    "shift_div": (_count(choices.MIN_SHIFT_DIV), f"must be at least {choices.MIN_SHIFT_DIV}"),
    "dropout": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v < 1.0,
        "must be in [0, 1)",
    ),
    "shift": (
        lambda v: v in choices.SHIFT_MODES,
        f"must be one of {', '.join(choices.SHIFT_MODES)}",
    ),
    "shift_place": (
        lambda v: v in choices.SHIFT_PLACES,
        f"must be one of {', '.join(choices.SHIFT_PLACES)}",
    ),
    "partial_bn": (lambda v: isinstance(v, bool), "must be true or false"),
    "modality": (
        lambda v: v in choices.MODALITIES,
        f"must be one of {', '.join(choices.MODALITIES)}",
    ),
    "new_length": (lambda v: v is None or _count(1)(v), "must be at least 1 (or null: default)"),
}
# the recipe's model.num_classes: 0 reads the number from classes.txt
_CLASSES_FROM_LIST = (_count(0), "must be 0 (from classes.txt) or more")


def check_model(
    values: Mapping[str, Any],
    *,
    prefix: str = "model ",
    error: type[TSMError] = UsageError,
    classes_from_list: bool = False,
) -> None:
    """The one check of model keys: the first of ``values`` that is out of range is an
    ``error`` naming it (``{prefix}{key} must be ..., got ...``): ``model num_segments`` for
    the API, ``model.num_segments`` and a ``RecipeError`` for a recipe. Only the keys given
    are checked, so a partial spec checks what it gives. ``classes_from_list``: a
    ``num_classes`` of 0 means "from classes.txt" (the recipe's)."""
    for key, (holds, what) in _RULES.items():
        if key not in values:
            continue
        if key == "num_classes" and classes_from_list:
            holds, what = _CLASSES_FROM_LIST
        if not holds(values[key]):
            raise error(f"{prefix}{key} {what}, got {values[key]!r}")
    if values.get("modality") == "rgb" and values.get("new_length") not in (None, 1):
        raise error(
            f"{prefix}new_length must be 1 with modality rgb (one RGB frame a segment), got "
            f"{values['new_length']!r}; stacked frames are flow's (modality flow)"
        )


def check_streamable(spec: ModelSpec, label: str) -> None:
    """A streaming model steps on one RGB frame at a time. A flow model's segment is optical
    flow between consecutive frames, which a stream of RGB frames does not carry: refused in
    one line naming ``label`` (the checkpoint)."""
    if spec.modality == "flow":
        raise UsageError(
            f"{label}: is a flow model (modality flow, {spec.input_channels} input channels); "
            "a streaming model takes RGB frames one at a time, and streaming flow needs a flow "
            "source (optical flow from each new frame and the one before), which tsm stream "
            "and convert-online do not have; convert an RGB model"
        )


def check_known(keys: Mapping[str, Any]) -> None:
    """A ``UsageError`` for keys that are not the spec's."""
    unknown = sorted(set(keys) - set(SPEC_KEYS))
    if unknown:
        raise UsageError(
            f"unknown model option(s) {', '.join(unknown)}; choose from {', '.join(SPEC_KEYS)}"
        )


class ArchOverrides:
    """A partial ``ModelSpec``: the keys a caller gives, over what a checkpoint records (our
    ``model_config``, an imported file's layout, a model zoo entry). A key left out, or None,
    is as recorded. ``ArchOverrides(num_segments=16)`` tests one of our checkpoints on longer
    clips; official TSM and mmaction2 files need ``arch``, ``num_segments`` and ``shift``.
    Each key given is checked as the spec checks it; an unknown key is a ``UsageError``."""

    __slots__ = ("_given",)

    def __init__(self, **keys: Any) -> None:
        check_known(keys)
        given = {key: value for key, value in keys.items() if value is not None}
        check_model(given)
        self._given = given

    def given(self) -> dict[str, Any]:
        """The keys that were given."""
        return dict(self._given)

    def __bool__(self) -> bool:
        return bool(self._given)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchOverrides) and self._given == other._given

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._given.items())))

    def __repr__(self) -> str:
        return f"ArchOverrides({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


def as_overrides(arch: ArchOverrides | str | None, keywords: Mapping[str, Any]) -> ArchOverrides:
    """``arch`` when it is the partial spec already; else the spec's keys given as keywords
    (``arch="resnet50", num_segments=8``), the convenience of ``load_model``."""
    if isinstance(arch, ArchOverrides):
        if keywords:
            raise UsageError(
                f"give the model options as arch=ArchOverrides(...) or as keywords, not both "
                f"(got {', '.join(sorted(keywords))} beside {arch!r})"
            )
        return arch
    return ArchOverrides(**({"arch": arch} if arch is not None else {}), **keywords)
