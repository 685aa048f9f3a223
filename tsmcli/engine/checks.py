"""The checks of a list before any work, shared by training, evaluation, online evaluation and
``tsm doctor``.

A command reads each list once (``data.lists.read_list_file``: a malformed line or an empty
list is refused there) and hands the ``ListFile`` to these checks and then to its dataset.
Each rule is written once: every label is in range (``ListFile.check_labels``), ``classes.txt``
beside a list has the model's class count, every listed video or frame folder is present.
Each problem is one error that names the file (and line) and says what to fix; the caller
says whose rule it is (``owner``: the checkpoint, ``model.num_classes``), what to do about it
(``hint``), and which option names the data (``--root`` or ``data.root``).

The checks a list can pass and still be worth a word (a video listed twice, the same video in
train and val, classes far apart in size, classes without a validation video) return
``Finding``s instead of raising: ``tsm train`` logs the warnings and stops on the errors,
``tsm doctor`` reports them all. A raised rule becomes a finding through
``Finding.from_error``, so both commands say the same line.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tsmcli.data.lists import CLASSES_FILE, ListFile
from tsmcli.engine.findings import Finding
from tsmcli.errors import CheckpointError, DataError, RecipeError, TSMError
from tsmcli.recipe import Recipe
from tsmcli.zoo import ZooEntry, list_entries
from tsmcli.zoo_cache import locate

log = logging.getLogger(__name__)

MISSING_SHOWN = 3  # missing entries named in the message
EVAL_HINT = "evaluate on a list of the dataset the model was trained on"
# Above this ratio of the largest class's videos to the smallest's, a train list is called
# imbalanced. The usual benchmarks stay under it (Kinetics-400 about 4:1, UCF101 about 2:1);
# past it the smallest classes get under a tenth of the largest's gradient steps.
IMBALANCE_RATIO = 10.0
CLASSES_SHOWN = 3  # class names quoted in a message
REMEDY = (
    "set data.sampler=balanced (every class drawn alike each epoch) or "
    "train.class_weights=auto (inverse-frequency loss weights)"
)


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
    check_train_labels(listed, num_classes)
    check_present(listed, root, source, frame_template, options=("data.root", "data.source"))


def check_train_labels(listed: ListFile, num_classes: int) -> None:
    """Training: every label in ``0..num_classes-1`` (the model's classes)."""
    listed.check_labels(num_classes, owner="the model", hint="fix the list or model.num_classes")


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
        log.warning("%s", names_differ(classes_file, checkpoint).line)
    for given in (names, stored):
        if given is not None and len(given) == num_classes:
            return list(given)
    return [str(i) for i in range(num_classes)]


def names_differ(classes_file: Path, checkpoint: str | Path) -> Finding:
    """``classes.txt`` names other classes than the checkpoint stores (the reports use the
    list's names): a warning."""
    return Finding(
        "warning",
        "checkpoint.class_names",
        f"{classes_file}: its class names differ from those stored in {checkpoint} (reports "
        "use the list's)",
        "check that the list is of the dataset the model was trained on",
        str(classes_file),
    )


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
# what a list can pass and still be worth a word


def list_findings(
    train: ListFile,
    val: ListFile | None,
    num_classes: int,
    classes: Sequence[str] | None,
    *,
    remedied: bool,
) -> list[Finding]:
    """The findings of a train list (and its val list) that no rule refuses: videos listed
    twice, videos in both lists, the class sizes (``remedied``: the recipe already evens them
    out) and classes without a validation video. Counting only: fast on any list."""
    found = duplicate_entries(train)
    found += class_balance(train, num_classes, classes, remedied=remedied)
    if val is not None:
        found += duplicate_entries(val)
        found += train_val_overlap(train, val)
        found += classes_without_val(train, val, num_classes, classes)
    return found


def _key(path: str) -> str:
    """A list path as a file: ``./a.mp4`` and ``a.mp4`` are one video."""
    return os.path.normpath(path)


def duplicate_entries(listed: ListFile) -> list[Finding]:
    """A video listed twice in one list: a warning (it is trained on twice as often), an
    error where the two lines give it two labels."""
    first: dict[str, int] = {}
    found = []
    for index, entry in enumerate(listed.entries):
        seen = first.setdefault(_key(entry.path), index)
        if seen == index:
            continue
        other, where = listed.entries[seen], f"{listed.path}:{listed.line(index)}"
        if other.label != entry.label:
            found.append(
                Finding(
                    "error",
                    "list.conflicting_labels",
                    f"{where}: {entry.path} is labelled {entry.label} here and {other.label} "
                    f"at line {listed.line(seen)}",
                    "keep the line with the right label, or fix the annotations and rebuild "
                    "the list with tsm build-list",
                    str(listed.path),
                )
            )
            continue
        found.append(
            Finding(
                "warning",
                "list.duplicates",
                f"{where}: {entry.path} is listed again (first at line {listed.line(seen)})",
                "remove the repeated line: a video listed twice is trained on twice as often "
                "(tsm build-list writes each clip once)",
                str(listed.path),
            )
        )
    return found


def train_val_overlap(train: ListFile, val: ListFile) -> list[Finding]:
    """A video in both the train and the val list: validated after being trained on."""
    in_train: dict[str, int] = {}
    for index, entry in enumerate(train.entries):
        in_train.setdefault(_key(entry.path), index)
    found = []
    for index, entry in enumerate(val.entries):
        trained = in_train.get(_key(entry.path))
        if trained is not None:
            found.append(
                Finding(
                    "warning",
                    "list.overlap",
                    f"{val.path}:{val.line(index)}: {entry.path} is also in {train.path} "
                    f"(line {train.line(trained)})",
                    "remove it from one of the lists: a video trained on inflates the "
                    "validation accuracy (tsm build-list keeps it in train only)",
                    str(val.path),
                )
            )
    return found


def _name(classes: Sequence[str] | None, label: int) -> str:
    return repr(classes[label]) if classes and label < len(classes) else f"label {label}"


def class_balance(
    listed: ListFile, num_classes: int, classes: Sequence[str] | None, *, remedied: bool
) -> list[Finding]:
    """The class sizes of a train list: a note; a warning (the remedy with it) where the
    largest class has more than ``IMBALANCE_RATIO`` times the videos of the smallest, unless
    the recipe already evens them out (``remedied``), and where classes have no video."""
    counts = Counter(e.label for e in listed.entries if e.label < num_classes)
    if not counts:
        return []
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    ratio = counts[largest] / counts[smallest]
    sizes = (
        f"the largest class ({_name(classes, largest)}, {counts[largest]} videos) has "
        f"{ratio:.1f}x the videos of the smallest ({_name(classes, smallest)}, "
        f"{counts[smallest]})"
    )
    if ratio == 1:
        sizes = f"{counts[largest]} each"
    path = str(listed.path)
    if ratio <= IMBALANCE_RATIO or remedied:
        found = [
            Finding(
                "note",
                "list.balance",
                f"{path}: {len(listed.entries)} videos in {len(counts)} classes, {sizes}",
                "data.sampler=balanced evens them out"
                if remedied
                else f"nothing to do up to {IMBALANCE_RATIO:g}:1",
                path,
            )
        ]
    else:
        found = [
            Finding(
                "warning",
                "list.imbalance",
                f"{path}: {sizes}, over {IMBALANCE_RATIO:g}:1",
                REMEDY,
                path,
            )
        ]
    empty = [c for c in range(num_classes) if c not in counts]
    if empty:
        found.append(
            Finding(
                "warning",
                "list.empty_classes",
                f"{path}: {len(empty)} of the {num_classes} classes have no video "
                f"({_names(classes, empty)})",
                "add videos of them, or leave them out of classes.txt and rebuild the list "
                "(a class never trained on is never predicted)",
                path,
            )
        )
    return found


def _names(classes: Sequence[str] | None, labels: Sequence[int]) -> str:
    shown = ", ".join(_name(classes, c) for c in labels[:CLASSES_SHOWN])
    return shown + (", ..." if len(labels) > CLASSES_SHOWN else "")


def classes_without_val(
    train: ListFile, val: ListFile, num_classes: int, classes: Sequence[str] | None
) -> list[Finding]:
    """Classes of the train list with no video in the val list: their accuracy is never
    measured."""
    trained = {e.label for e in train.entries if e.label < num_classes}
    validated = {e.label for e in val.entries}
    unseen = sorted(trained - validated)
    if not unseen:
        return []
    return [
        Finding(
            "warning",
            "list.val_classes",
            f"{val.path}: {len(unseen)} of the {len(trained)} classes of {train.path} have no "
            f"video here ({_names(classes, unseen)})",
            "add validation videos of them, or their accuracy is never measured (tsm "
            "build-list --val-fraction splits every class)",
            str(val.path),
        )
    ]


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
