"""Recipes: everything a training run needs, as frozen dataclasses read strictly from YAML.

A recipe has four sections, ``model``, ``data``, ``optim`` and ``train``, plus a ``name``
(the run dir's default name; the file's stem when the file does not set it). Every key has a
default, so a recipe file only needs the keys it changes; the shipped recipes spell out all
of them. Loading is strict: an unknown key or a value of the wrong type is a ``RecipeError``
naming the dotted key (``optim.lr``), what was expected and the closest valid key.

Data paths (``data.root``, ``data.train_list``, ``data.val_list``, ``model.pretrained``,
``model.init_from``, ``train.distill_from``) are used as written: a relative path is relative to the directory the
command runs in, not to the recipe file, so one shipped recipe serves every checkout.

YAML 1.1 quirks are smoothed over where the meaning is clear: ``flip: off`` (which YAML reads
as ``false``) means ``"off"``, and ``1e-4`` (which YAML reads as a string) is a float.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from tsmcli import choices
from tsmcli.data.layout import FRAME_TEMPLATE, check_frame_template, flow_y_template
from tsmcli.errors import RecipeError
from tsmcli.model.spec import ModelSpec, check_model
from tsmcli.resources import recipes_dir
from tsmcli.schema import apply_override, build_sections
from tsmcli.schema import check_types as _check_types
from tsmcli.schema import plain as _plain
from tsmcli.schema import require as _require

SECTIONS = ("model", "data", "optim", "train")


@dataclass(frozen=True)
class ModelConfig(ModelSpec):
    """The network (``model.spec.ModelSpec``: backbone, segments, where and how much to
    shift, head) and the weights it starts from."""

    _section: ClassVar[str] = "model"

    arch: str = "resnet50"
    num_classes: int = 0  # 0: the number of lines of classes.txt beside data.train_list
    pretrained: str | None = None  # torchvision ImageNet state dict (.pth) for the backbone
    init_from: str | None = None  # checkpoint to fine-tune from: ours, official TSM or mmaction2

    def spec(self, num_classes: int) -> ModelSpec:
        """The network with ``num_classes`` outputs (this section's, or classes.txt's)."""
        return ModelSpec(**{**self.as_dict(), "num_classes": num_classes})

    def __post_init__(self) -> None:
        _check_types(self)
        check_model(self.as_dict(), prefix="model.", error=RecipeError, classes_from_list=True)
        self._resolve_new_length()


@dataclass(frozen=True)
class DataConfig:
    """Where the videos and lists are, how they are decoded, sampled and augmented."""

    _section: ClassVar[str] = "data"

    dataset: str | None = None  # manifest name in datasets/ (left/right pairs for flip: swap)
    root: str = "."
    train_list: str = "train.txt"
    val_list: str | None = None  # None: no validation
    source: Literal[choices.SOURCES] = "frames"
    backend: Literal[choices.BACKENDS] = "decord"
    frame_template: str = FRAME_TEMPLATE
    input_size: int = 224
    scale_size: int = 256  # val: short side resized to this, then a centre crop of input_size
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)  # train multi-scale crop
    # segments: train on one random frame inside each segment (official); even: frames one
    # segment apart from one random offset (every clip keeps the video's speed); dense: T
    # frames with stride 64 / T. Validation takes the segment centres (dense: its window).
    sampling: Literal[choices.SAMPLINGS] = "segments"
    flip: Literal[choices.FLIP_MODES] = "on"  # swap: flip and swap left/right labels
    # which videos an epoch trains on: uniform, each once in a seeded order; balanced, as many
    # draws as videos, each class drawn equally often (a rare class's videos repeat), for a
    # list whose classes are far from equal in size (tsm doctor warns above 10:1)
    sampler: Literal[choices.SAMPLERS] = "uniform"
    skip_bad: bool = False
    # train: per clip and RGB channel, a gain in [1 - j, 1 + j] and an offset of up to j * 128
    # levels (0: off); the same in every frame, so the motion is untouched
    colour_jitter: float = 0.0
    # MiB of decoded frames (from JPEGs or videos) each loading process keeps in memory, per
    # dataset (0: none): a small set is then decoded once, not once an epoch
    frame_cache_mb: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.input_size >= 16, "data.input_size", "must be at least 16", self.input_size)
        _require(
            self.scale_size >= self.input_size,
            "data.scale_size",
            "must be at least data.input_size",
            self.scale_size,
        )
        _require(
            len(self.scales) > 0 and all(0 < s <= 1 for s in self.scales),
            "data.scales",
            "must be a non-empty list of numbers in (0, 1]",
            list(self.scales),
        )
        _require(
            self.frame_cache_mb >= 0,
            "data.frame_cache_mb",
            "must be >= 0 (0: off)",
            self.frame_cache_mb,
        )
        _require(
            0.0 <= self.colour_jitter < 1.0,
            "data.colour_jitter",
            "must be in [0, 1) (0: off)",
            self.colour_jitter,
        )
        _require(
            self.flip != "swap" or self.dataset is not None,
            "data.flip",
            "swap needs data.dataset (the manifest with the left/right label pairs)",
            self.flip,
        )
        check_frame_template(self.frame_template, "data.frame_template", RecipeError)


@dataclass(frozen=True)
class OptimConfig:
    """SGD (the official optimiser) or AdamW over the official parameter groups; lr given for
    ``reference_batch_size``. AdamW is for training small models from scratch (the demo)."""

    _section: ClassVar[str] = "optim"

    optimizer: Literal[choices.OPTIMIZERS] = "sgd"
    lr: float = 0.02
    reference_batch_size: int = 128  # lr is scaled by (global batch) / (this)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal[choices.SCHEDULES] = "step"
    lr_steps: tuple[float, ...] = (20.0, 40.0)  # epochs at which step multiplies the lr by 0.1
    warmup_epochs: float = 0.0
    clip_grad: float = 20.0  # max global gradient norm; 0 turns clipping off
    fc_lr5: bool | None = None  # None: on when model.pretrained or model.init_from is set

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.lr > 0, "optim.lr", "must be positive", self.lr)
        _require(
            self.reference_batch_size >= 1,
            "optim.reference_batch_size",
            "must be at least 1",
            self.reference_batch_size,
        )
        _require(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)", self.momentum)
        _require(
            self.weight_decay >= 0, "optim.weight_decay", "must be 0 or more", self.weight_decay
        )
        _require(
            list(self.lr_steps) == sorted(self.lr_steps),
            "optim.lr_steps",
            "must be in increasing order",
            list(self.lr_steps),
        )
        _require(
            self.warmup_epochs >= 0, "optim.warmup_epochs", "must be 0 or more", self.warmup_epochs
        )
        _require(self.clip_grad >= 0, "optim.clip_grad", "must be 0 (off) or more", self.clip_grad)


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, batch per process, loader workers, precision, seeding, outputs."""

    _section: ClassVar[str] = "train"

    epochs: int = 50
    # > 0: this many optimizer steps whatever the train list's size, in whole epochs (the last
    # completes the count; train.epochs unused): a small list gets as many updates as a large
    steps: int = 0
    batch_size: int = 16  # per process; the global batch is this times the number of processes
    # one optimizer step every N batches, on their mean gradient: the global batch (the lr's
    # scale) is batch_size x processes x N; an epoch's last batches, fewer than N, are left out
    accumulate: int = 1
    workers: int = 4  # DataLoader worker processes per training process
    amp: Literal[choices.AMP_MODES] = "none"  # on the CPU only bf16, where native; else refused
    channels_last: bool = False
    compile: bool = False  # torch.compile the model: faster steps after a compile of its own
    device: Literal[choices.DEVICES] = "auto"
    seed: int = 0
    deterministic: bool = False  # deterministic kernels (slower); CPU runs are exact without it
    eval_every: int = 1  # validate every N epochs, and always after the last one
    # write last.pt (and curves.png) every N epochs, at a new best top-1 and after the last
    # epoch; Ctrl-C always saves. Short epochs (a small list) need not each pay for a save.
    save_every: int = 1
    out_dir: str = "runs"  # the run dir is out_dir/<recipe name> unless --out says otherwise
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    log_every: int = 50  # a log line every N steps when there is no progress bar
    # distillation: a teacher checkpoint whose softened outputs are distill_weight of the loss
    distill_from: str | None = None
    distill_weight: float = 0.5  # the rest is cross-entropy with the labels
    distill_temperature: float = 1.0
    label_smoothing: float = 0.0  # target (1 - s) on the label, s over all classes; 0: off
    # auto: each clip's cross-entropy weighted by N / (K * n_c) (n_c: its class's videos in
    # the train list, K: the classes that have any), so the mean weight over the list's clips
    # is 1 and the loss keeps its scale; the alternative to data.sampler: balanced
    class_weights: Literal[choices.CLASS_WEIGHTS] = "none"

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.epochs >= 1, "train.epochs", "must be at least 1", self.epochs)
        _require(self.steps >= 0, "train.steps", "must be 0 (use train.epochs) or more", self.steps)
        _require(self.batch_size >= 1, "train.batch_size", "must be at least 1", self.batch_size)
        _require(self.accumulate >= 1, "train.accumulate", "must be at least 1", self.accumulate)
        _require(self.workers >= 0, "train.workers", "must be 0 or more", self.workers)
        _require(self.eval_every >= 1, "train.eval_every", "must be at least 1", self.eval_every)
        _require(self.save_every >= 1, "train.save_every", "must be at least 1", self.save_every)
        _require(self.log_every >= 1, "train.log_every", "must be at least 1", self.log_every)
        _require(
            0.0 <= self.distill_weight <= 1.0,
            "train.distill_weight",
            "must be between 0 and 1",
            self.distill_weight,
        )
        _require(
            self.distill_temperature > 0,
            "train.distill_temperature",
            "must be positive",
            self.distill_temperature,
        )
        _require(
            0.0 <= self.label_smoothing < 1.0,
            "train.label_smoothing",
            "must be in [0, 1)",
            self.label_smoothing,
        )


_SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe. ``to_dict``/``from_dict`` round-trip through plain builtins."""

    name: str = "recipe"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _require(
            isinstance(self.name, str)
            and bool(self.name.strip())
            and self.name not in (".", "..")
            and not any(ch in self.name for ch in "/\\\0"),
            "name",
            "must be a single folder name, not '.' or '..' and without '/' or '\\' (it names "
            "the run dir inside train.out_dir)",
            self.name,
        )
        for section, cls in _SECTION_TYPES.items():
            if not isinstance(getattr(self, section), cls):
                raise RecipeError(
                    f"{section} must be a {cls.__name__}, got {type(getattr(self, section)).__name__}"
                )
        _require(  # with train.steps the epochs are known only from the list: checked there
            self.train.steps > 0 or self.optim.warmup_epochs <= self.train.epochs,
            "optim.warmup_epochs",
            "must not exceed train.epochs",
            self.optim.warmup_epochs,
        )
        if self.model.modality == "flow":
            _check_flow_data(self.data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars: what recipe.yaml and checkpoints store."""
        out: dict[str, Any] = {"name": self.name}
        for section in SECTIONS:
            config = getattr(self, section)
            out[section] = {
                f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)
            }
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "recipe") -> Recipe:
        """Build a recipe from nested mappings, strictly; errors are prefixed with ``source``."""
        try:
            return _from_mapping(raw)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None

    @classmethod
    def from_stored(cls, raw: Mapping[str, Any] | None, source: str) -> Recipe | None:
        """The recipe stored in a checkpoint (``CheckpointInfo.recipe``), typed; None when
        there is none. A recipe stored by an older tsmcli lacks the keys added since: their
        defaults fill them, as in a recipe file that leaves them out."""
        if raw is None:
            return None
        return cls.from_dict(raw, source=f"{source} (stored recipe)")

    def to_yaml(self) -> str:
        """The recipe as YAML text, keys in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Load a recipe file, or a shipped recipe by name (``demo`` or ``demo.yaml``), then apply
    ``overrides`` (``"optim.lr=0.01"``; the value is read as YAML) with the same checks."""
    path = find_recipe(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}: not valid YAML{where}; fix the syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{path}: a recipe must be a mapping with sections {', '.join(SECTIONS)}")
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    raw.setdefault("name", path.stem)
    return _with_overrides(raw, list(overrides), str(path))


def apply_overrides(recipe: Recipe, overrides: Iterable[str]) -> Recipe:
    """A copy of ``recipe`` with ``key=value`` overrides applied (same checks as ``--set``)."""
    return _with_overrides(recipe.to_dict(), list(overrides), "recipe")


def _with_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> Recipe:
    """The recipe ``raw`` with ``overrides`` applied. An error names what caused it: the
    recipe (``source``) when it is wrong on its own, else the first ``--set`` that makes it
    wrong (``--set train.epochs=2: optim.warmup_epochs must not exceed train.epochs``). A
    recipe only the overrides complete (``flip: swap`` plus ``--set data.dataset=...``) is
    fine."""
    combined = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(combined, item)
    try:
        recipe = _from_mapping(combined)
    except RecipeError as exc:
        error = exc
    else:
        _check_run_length(recipe, overrides)
        return recipe
    partial = copy.deepcopy(raw)
    blame = source
    for item in [None, *overrides]:
        if item is not None:
            _apply_override(partial, item)
            blame = f"--set {item}"
        try:
            _from_mapping(partial)
        except RecipeError as exc:
            raise RecipeError(f"{blame}: {exc}") from None
    raise RecipeError(f"{source}: {error}") from None


def _check_run_length(recipe: Recipe, overrides: list[str]) -> None:
    """``train.steps`` > 0 decides a run's length and ``train.epochs`` is then unused: a
    ``--set train.epochs`` on such a recipe would be ignored without a word, unless the same
    overrides set ``train.steps`` too (to 0, to train by epochs)."""
    keys = {item.partition("=")[0].strip(): item for item in overrides}
    if recipe.train.steps > 0 and "train.epochs" in keys and "train.steps" not in keys:
        raise RecipeError(
            f"--set {keys['train.epochs']}: the recipe sets train.steps={recipe.train.steps}, "
            "which decides the run's length; add --set train.steps=0 to train by epochs"
        )


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file: an existing path, else a shipped recipe with that name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = recipes_dir() / f"{name}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = shipped_recipes()
    if path.is_dir():
        raise RecipeError(
            f"{name_or_path}: is a folder, not a recipe file; give a .yaml file or a shipped "
            f"recipe name ({', '.join(names)})"
        )
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise RecipeError(
        f"{name_or_path}: no such recipe file or shipped recipe; {hint}"
        f"shipped recipes: {', '.join(names)}"
    )


def _check_flow_data(data: DataConfig) -> None:
    """What a flow model's data must be: flow frame folders (``tsm extract --flow``) named by
    the template of their x images, without colour jitter (flow images have no colours)."""
    _require(
        data.source == "frames",
        "data.source",
        "must be frames with model.modality flow (flow frame folders: tsm extract --flow)",
        data.source,
    )
    flow_y_template(data.frame_template, "data.frame_template", RecipeError)
    _require(
        data.colour_jitter == 0,
        "data.colour_jitter",
        "must be 0 with model.modality flow (flow images have no colours to change)",
        data.colour_jitter,
    )


# ---------------------------------------------------------------------------------------------
# strict mapping


def _from_mapping(raw: Mapping[str, Any]) -> Recipe:
    return Recipe(
        name=raw.get("name", "recipe") if isinstance(raw, Mapping) else "recipe",
        **build_sections(raw, _SECTION_TYPES, what="a recipe"),
    )


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one ``section.key=value`` in the raw nested dict, checking key and type now."""
    apply_override(raw, item, _SECTION_TYPES)
