"""Pre-flight checks of a training run's lists, before any training: the class count agrees
with ``classes.txt``, no list is empty, every label is in range, every video is present.
Each problem is one error that names the file (and line) and says what to fix."""

from __future__ import annotations

from pathlib import Path

from tsmcli.errors import DataError, RecipeError

_MISSING_SHOWN = 3


def resolve_classes(train_list: Path, num_classes: int) -> tuple[list[str] | None, int]:
    """The class names in ``classes.txt`` beside ``train_list`` (None when there is none) and
    the class count: ``num_classes`` (``model.num_classes``), or the names' count when it is 0."""
    from tsmcli.data.lists import classes_for_list

    classes = classes_for_list(train_list)
    if num_classes:
        if classes is not None and len(classes) != num_classes:
            raise RecipeError(
                f"model.num_classes is {num_classes} but {train_list.parent / 'classes.txt'} "
                f"has {len(classes)} classes; set model.num_classes to 0 (from classes.txt)"
            )
        return classes, num_classes
    if classes:
        return classes, len(classes)
    raise DataError(
        f"{train_list.parent / 'classes.txt'}: not found, and model.num_classes is 0 (read it "
        "from classes.txt); write classes.txt beside the list or set model.num_classes"
    )


def check_list(
    list_file: Path, num_classes: int, root: Path, source: str, frame_template: str
) -> None:
    """Refuse an empty list, a label outside ``0..num_classes-1``, or an entry whose data is
    missing under ``root``."""
    from tsmcli.data.dataset import find_missing
    from tsmcli.data.lists import read_list

    entries = read_list(list_file)
    if not entries:
        raise DataError(f"{list_file}: the list is empty; rebuild it with tsm build-list")
    _check_labels(list_file, [e.label for e in entries], num_classes)
    missing = find_missing(entries, root, source, frame_template)
    if missing:
        shown = ", ".join(str(p) for p in missing[:_MISSING_SHOWN])
        raise DataError(
            f"{list_file}: {len(missing)} of {len(entries)} entries point at missing data "
            f"under {root} (first: {shown}); check data.root and data.source, or rebuild the "
            "list with tsm build-list"
        )


def _check_labels(list_file: Path, labels: list[int], num_classes: int) -> None:
    bad = next((i for i, label in enumerate(labels) if label >= num_classes), None)
    if bad is None:
        return
    nonblank = [
        n
        for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1)
        if line.split()
    ]
    raise DataError(
        f"{list_file}:{nonblank[bad]}: label {labels[bad]} is outside 0..{num_classes - 1} "
        f"({num_classes} classes); fix the list or model.num_classes"
    )
