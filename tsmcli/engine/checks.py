"""The checks of a list before any work, shared by training, evaluation and online evaluation.

A command reads each list once (``data.lists.read_list_file``: a malformed line or an empty
list is refused there) and hands the ``ListFile`` to these checks and then to its dataset.
Each rule is written once: every label is in range (``ListFile.check_labels``), ``classes.txt``
beside a list has the model's class count, every listed video or frame folder is present.
Each problem is one error that names the file (and line) and says what to fix; the caller
says whose rule it is (``owner``: the checkpoint, ``model.num_classes``), what to do about it
(``hint``), and which option names the data (``--root`` or ``data.root``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tsmcli.data.lists import CLASSES_FILE, ListFile
from tsmcli.errors import CheckpointError, DataError, RecipeError, TSMError
from tsmcli.recipe import Recipe
from tsmcli.zoo import ZooEntry, list_entries
from tsmcli.zoo_cache import locate

log = logging.getLogger(__name__)

MISSING_SHOWN = 3  # missing entries named in the message
EVAL_HINT = "evaluate on a list of the dataset the model was trained on"


def check_present(
    listed: ListFile, root: Path, source: str, template: str, *, options: tuple[str, str]
) -> None:
    """Every listed video (or frame folder, with its first and last frame) exists under
    ``root``. Stat calls only, before any decoding (and on every rank alike). ``options``
    name the root and the source where the user set them (``--root``, ``--source``)."""
    from tsmcli.data.lists import find_missing

    entries = listed.entries
    missing = find_missing(entries, root, source, template)
    if not missing:
        return
    index = next(i for i, e in enumerate(entries) if e.path == missing[0])
    what = "frame folder (or its first/last frame)" if source == "frames" else "video"
    shown = ", ".join(missing[:MISSING_SHOWN])
    raise DataError(
        f"{root / missing[0]}: no such {what}, listed at {listed.path}:"
        f"{listed.line(index)}; {len(missing)} of {len(entries)} entries are "
        f"missing (first: {shown}); check {options[0]} and {options[1]}, or rebuild the list "
        "with tsm build-list"
    )


def classes_beside(
    listed: ListFile, num_classes: int, *, owner: str, hint: str, error: type[TSMError]
) -> list[str] | None:
    """The names in ``classes.txt`` beside the list (None when there is none), which must be
    ``num_classes`` names."""
    classes = listed.classes
    if classes is not None and len(classes) != num_classes:
        raise error(
            f"{owner} has {num_classes} classes but {listed.path.parent / CLASSES_FILE} "
            f"lists {len(classes)}; {hint}"
        )
    return classes


def resolve_classes(train_list: ListFile, num_classes: int) -> tuple[list[str] | None, int]:
    """Training: the class names in ``classes.txt`` beside ``train_list`` (None when there is
    none) and the class count: ``num_classes`` (``model.num_classes``), or the names' count
    when it is 0."""
    if num_classes:
        classes = classes_beside(
            train_list,
            num_classes,
            owner="model.num_classes",
            hint="set model.num_classes to 0 (from classes.txt)",
            error=RecipeError,
        )
        return classes, num_classes
    if train_list.classes:
        return train_list.classes, len(train_list.classes)
    raise DataError(
        f"{train_list.path.parent / CLASSES_FILE}: not found, and model.num_classes is 0 (read "
        "it from classes.txt); write classes.txt beside the list or set model.num_classes"
    )


def check_train_list(
    listed: ListFile, num_classes: int, root: Path, source: str, frame_template: str
) -> None:
    """Training: refuse a label outside ``0..num_classes-1`` or an entry whose data is
    missing under ``root`` (``read_list_file`` refused an empty list)."""
    listed.check_labels(num_classes, owner="the model", hint="fix the list or model.num_classes")
    check_present(listed, root, source, frame_template, options=("data.root", "data.source"))


def eval_class_names(
    listed: ListFile, num_classes: int, stored: Sequence[str] | None, checkpoint: str | Path
) -> list[str]:
    """Evaluation: class names for the reports. ``classes.txt`` beside the list must match
    the model's class count, and must not list the checkpoint's classes in another order
    (the labels would score other outputs: the published checkpoints' silent ~0%); other
    names win over those stored in the checkpoint, with a warning; without either, the names
    are the label numbers."""
    names = classes_beside(
        listed,
        num_classes,
        owner=f"{checkpoint}: the model",
        hint=EVAL_HINT,
        error=CheckpointError,
    )
    classes_file = listed.path.parent / CLASSES_FILE
    stored = list(stored) if stored else None
    if names is not None and stored is not None and names != stored:
        if sorted(names) == sorted(stored):
            raise CheckpointError(
                f"{classes_file}: lists the classes of {checkpoint} in "
                "another order, so each label would be scored against another class's output; "
                f"rebuild the list in the checkpoint's order ({_rebuild_in_order(stored)})"
            )
        log.warning(
            "%s: class names differ from those stored in %s; reporting the list's names",
            classes_file,
            checkpoint,
        )
    for given in (names, stored):
        if given is not None and len(given) == num_classes:
            return list(given)
    return [str(i) for i in range(num_classes)]


def _rebuild_in_order(classes: Sequence[str]) -> str:
    """How to list a dataset with ``classes`` in this order: the ``tsm build-list`` label order
    of the shipped dataset whose class list it is, where the dataset offers that order (each
    manifest says which it does); else the order the model was trained with."""
    from tsmcli.data.manifest import list_manifests, load_manifest

    for name in list_manifests():
        manifest = load_manifest(name)
        if manifest.labels is None or manifest.num_classes not in (None, len(classes)):
            continue
        for order in manifest.label_orders:
            if manifest.classes(order) == list(classes):
                return f"tsm build-list --dataset {name} --label-order {order}"
    return "the order it was trained with"


# ---------------------------------------------------------------------------------------------
# the checkpoints a recipe names


def check_recipe_checkpoints(recipe: Recipe, *, resume: bool) -> None:
    """``model.pretrained``, ``model.init_from`` (not read when resuming) and
    ``train.distill_from`` each name an existing file or a model zoo checkpoint that fits the
    model: checked before any work and without network (a name's file is fetched when the
    model is built). Each problem is one ``RecipeError`` naming the key; an unknown name
    lists the closest names."""
    m, t = recipe.model, recipe.train
    keys = [("train.distill_from", t.distill_from)]
    if not resume:
        keys = [("model.pretrained", m.pretrained), ("model.init_from", m.init_from), *keys]
    for key, value in keys:
        if not value:
            continue
        try:
            _, entry = locate(value)
        except TSMError as exc:
            raise RecipeError(f"{key}: {exc}") from None
        problem = None if entry is None else _zoo_misfit(key, entry, m.arch)
        if problem:
            raise RecipeError(f"{key}: {entry.name} {problem}")


def _zoo_misfit(key: str, entry: ZooEntry, arch: str) -> str | None:
    """Why the model zoo checkpoint ``entry`` cannot serve as ``key`` for a ``arch`` model."""
    if key == "model.pretrained":
        if not entry.is_backbone:
            return "is a video model, not an ImageNet backbone; give it as model.init_from"
        if entry.arch != arch:
            fits = [e.name for e in list_entries() if e.is_backbone and e.arch == arch]
            instead = f"use {fits[0]}" if fits else f"give a torchvision {arch} state dict"
            return f"is an ImageNet {entry.arch} backbone and model.arch is {arch}; {instead}"
    elif key == "model.init_from" and entry.arch != arch:
        return (
            f"holds {entry.arch} weights and model.arch is {arch}; set model.arch to "
            f"{entry.arch} or initialise from a {arch} checkpoint"
        )
    elif key == "train.distill_from" and entry.is_backbone:
        return "is an ImageNet backbone without a video head; a teacher is a video model"
    return None
