"""TSN list files and ``classes.txt``: the hand-off between ``tsm build-list`` and training.

A list line is ``<path relative to root> <num_frames> <label>``, space separated (the format of
the official TSM code and of mmaction2's rawframe lists). Both readers split on whitespace,
so a path with a space cannot be written. ``classes.txt`` beside a list holds one class name
a line; the line number (0-based) is the label.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tsmcli.data.layout import FRAME_TEMPLATE, check_frame_template, check_source
from tsmcli.errors import DataError, TSMError
from tsmcli.fileio import atomic_write

CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class ListEntry:
    """One video of a list: where it is (relative to the root), its frame count, its label."""

    path: str
    num_frames: int
    label: int


def read_list(path: str | Path) -> list[ListEntry]:
    """Read a list file; CRLF line ends and blank lines are tolerated, anything else malformed
    is a DataError naming the file and line."""
    return _parse_list(Path(path))[0]


def _parse_list(path: Path) -> tuple[list[ListEntry], list[int]]:
    """The entries of a list file and the 1-based line of each."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: list file does not exist; build it with tsm build-list") from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: list file is not UTF-8 text; build it with tsm build-list"
        ) from exc
    entries, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise DataError(
                f"{path}:{number}: expected '<path> <num_frames> <label>', got "
                f"{len(fields)} field(s); rebuild the list with tsm build-list"
            )
        rel, frames, label = fields
        try:
            num_frames, label_index = int(frames), int(label)
        except ValueError as exc:
            raise DataError(
                f"{path}:{number}: num_frames and label must be integers, got "
                f"{frames!r} {label!r}; rebuild the list with tsm build-list"
            ) from exc
        if num_frames < 1 or label_index < 0:
            raise DataError(
                f"{path}:{number}: num_frames must be >= 1 and label >= 0, got "
                f"{num_frames} {label_index}; rebuild the list with tsm build-list"
            )
        entries.append(ListEntry(rel, num_frames, label_index))
        lines.append(number)
    return entries, lines


def write_list(path: str | Path, entries: Iterable[ListEntry]) -> Path:
    """Write a list file atomically (a reader never sees half a list)."""
    path = Path(path)
    lines = []
    for entry in entries:
        if not entry.path or any(ch.isspace() for ch in entry.path):
            raise DataError(
                f"{entry.path!r}: list paths cannot be empty or contain spaces (the "
                "list format splits on whitespace); rename the file or folder"
            )
        lines.append(f"{entry.path} {int(entry.num_frames)} {int(entry.label)}\n")
    atomic_write(path, "".join(lines))
    return path


def read_classes(path: str | Path) -> list[str]:
    """Class names, one a line; the line number is the label. Trailing blank lines are fine."""
    path = Path(path)
    try:
        lines = [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError as exc:
        raise DataError(f"{path}: class list does not exist; build it with tsm build-list") from exc
    while lines and not lines[-1]:
        lines.pop()
    seen: dict[str, int] = {}
    for number, name in enumerate(lines, start=1):
        if not name:
            raise DataError(
                f"{path}:{number}: blank class name; remove the line (line numbers "
                "are labels, so check the list files too)"
            )
        if name in seen:
            raise DataError(
                f"{path}:{number}: class {name!r} repeats line {seen[name]}; "
                "each class must appear once"
            )
        seen[name] = number
    return lines


def write_classes(path: str | Path, classes: Iterable[str]) -> Path:
    """Write ``classes.txt`` atomically."""
    path = Path(path)
    names = list(classes)
    for name in names:
        if not name.strip() or "\n" in name or "\r" in name:
            raise DataError(
                f"{path}: class name {name!r} is empty or spans lines; fix the label map"
            )
    atomic_write(path, "".join(f"{name}\n" for name in names))
    return path


def classes_for_list(list_path: str | Path) -> list[str] | None:
    """The class names in ``classes.txt`` beside a list file, or None when there is none."""
    candidate = Path(list_path).parent / CLASSES_FILE
    return read_classes(candidate) if candidate.is_file() else None


@dataclass(frozen=True)
class ListFile:
    """A list file read once (``read_list_file``), for every check and dataset of a command:
    its entries, the class names of the ``classes.txt`` beside it (None: there is none, or it
    was not read), and where each entry is written, for messages. The rules of a list are
    here, each with its one message: it is not empty, and its labels are in range."""

    path: Path
    entries: tuple[ListEntry, ...]
    classes: list[str] | None = None
    lines: tuple[int, ...] = ()  # the 1-based line of each entry; () when entry k is on k + 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "entries", tuple(self.entries))  # a list given stays unshared
        if not self.entries:
            raise DataError(f"{self.path}: the list is empty; check tsm build-list's missing.txt")

    def line(self, index: int) -> int:
        """The 1-based line of the ``index``-th entry (blank lines are not entries)."""
        return self.lines[index] if self.lines else index + 1

    def first(self, count: int | None) -> ListFile:
        """The list of its first ``count`` entries (None: all)."""
        if count is None or count >= len(self.entries):
            return self
        return replace(self, entries=self.entries[:count], lines=self.lines[:count])

    def check_labels(
        self, num_classes: int, *, owner: str, hint: str, error: type[TSMError] = DataError
    ) -> None:
        """Every label in ``0..num_classes-1``; else one line naming the list line, ``owner``
        (what has ``num_classes`` classes) and what to do (``hint``)."""
        bad = next((i for i, e in enumerate(self.entries) if e.label >= num_classes), None)
        if bad is None:
            return
        raise error(
            f"{self.path}:{self.line(bad)}: label {self.entries[bad].label} is outside "
            f"0..{num_classes - 1} ({owner} has {num_classes} classes); {hint}"
        )

    def check_classes(self) -> None:
        """Every label names a class of the ``classes.txt`` beside the list, if there is one."""
        if self.classes is not None:
            self.check_labels(
                len(self.classes),
                owner=str(self.path.parent / CLASSES_FILE),
                hint="rebuild both with tsm build-list",
            )


def read_list_file(path: str | Path, *, classes: bool = True) -> ListFile:
    """The list file at ``path`` and, with ``classes``, the ``classes.txt`` beside it: each
    read once, here. A malformed line, a missing file or an empty list is a ``DataError``."""
    path = Path(path)
    entries, lines = _parse_list(path)
    consecutive = lines == list(range(1, len(lines) + 1))
    return ListFile(
        path,
        tuple(entries),
        classes_for_list(path) if classes and entries else None,
        () if consecutive else tuple(lines),
    )


def find_missing(
    entries: Iterable[ListEntry], root: str | Path, source: str, template: str = FRAME_TEMPLATE
) -> list[str]:
    """List paths of the entries that cannot be loaded: a missing or empty video, or a frame
    folder without its first or last frame. Stat calls only, so a pre-flight check of a
    large list is quick (on plain strings: pathlib's joins cost twice the stat calls)."""
    check_source(source)
    if source == "frames":
        check_frame_template(template)
    root_text, join, isfile = os.fspath(root), os.path.join, os.path.isfile
    first = template.format(1)
    missing = []
    for entry in entries:
        path = join(root_text, entry.path)
        if source == "videos":
            try:
                ok = os.stat(path).st_size > 0
            except OSError:
                ok = False
        else:
            last = template.format(entry.num_frames)
            ok = isfile(join(path, first)) and isfile(join(path, last))
        if not ok:
            missing.append(entry.path)
    return missing
