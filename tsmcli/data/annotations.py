"""Annotation files -> records ``(split, clip key, label)``: one reader per dataset family.

A manifest names its family as ``adapter``; each family is one function registered here with
``@annotation_format(name)``, so a new dataset is one reader and one manifest. A reader gets
the manifest, the folders to look in, the UCF101/HMDB51 split number and the class names in
label order, and returns every labelled row as a ``Record`` (rows without a label, as in
withheld test sets, are only counted). It raises a ``DataError`` naming the file and line of
anything it cannot read (with the helpers of ``annotation_files``); it never looks at the
clips themselves (``root_index`` does).

The ``folder`` dataset has no annotation files: its classes are the folders of the root.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsmcli.data.annotation_files import (
    check_own_labels,
    class_lookup,
    find_file,
    json_type,
    load_json,
    read_lines,
    read_text,
    search_dirs,
    split_files,
    unknown_class,
)
from tsmcli.data.manifest import DatasetManifest
from tsmcli.errors import DataError

FOLDER = "folder"  # the adapter of the dataset without annotation files


@dataclass(frozen=True)
class Record:
    """One annotated clip, before it is looked up on disk."""

    split: str
    key: Hashable  # what the clip is found by under the root
    label: int
    name: str  # how missing.txt names it
    origin: str  # where it was read ("file:line"), for duplicates.txt and errors
    hints: tuple[str, ...] = ()  # folder names that pick one of several matches


@dataclass
class AnnotationSet:
    """What a reader found: the labelled rows, and the count of unlabelled rows per split."""

    records: list[Record] = field(default_factory=list)
    unlabeled: dict[str, int] = field(default_factory=lambda: defaultdict(int))


Reader = Callable[[DatasetManifest, list[Path], int, list[str]], AnnotationSet]


@dataclass(frozen=True)
class AnnotationFormat:
    """A dataset family: its reader, and how a file or folder name under the root becomes the
    key its records are found by (None: the name itself)."""

    name: str
    read: Reader
    clip_key: Callable[[str], Hashable | None] | None = None


FORMATS: dict[str, AnnotationFormat] = {}


def annotation_format(
    name: str, clip_key: Callable[[str], Hashable | None] | None = None
) -> Callable[[Reader], Reader]:
    """Register the decorated reader as the family ``name`` (a manifest's ``adapter``)."""

    def register(read: Reader) -> Reader:
        FORMATS[name] = AnnotationFormat(name, read, clip_key)
        return read

    return register


def format_of(manifest: DatasetManifest) -> AnnotationFormat | None:
    """The family a manifest names; None for the ``folder`` dataset."""
    if manifest.adapter == FOLDER:
        return None
    if manifest.adapter not in FORMATS:
        raise DataError(f"{manifest.path}: unknown adapter {manifest.adapter!r}")
    return FORMATS[manifest.adapter]


def read_annotations(
    family: AnnotationFormat,
    manifest: DatasetManifest,
    folder: Path,
    split: int,
    classes: list[str],
) -> AnnotationSet:
    """Every annotation row of ``manifest``'s files in ``folder`` (or a subfolder of it)."""
    if not folder.is_dir():
        raise DataError(
            f"{folder}: --annotations is not a folder; pass the folder of the "
            f"{manifest.name} annotation files"
        )
    found = family.read(manifest, search_dirs(folder), split, classes)
    if not found.records and not found.unlabeled:
        names = sorted(
            {
                n.format(split=split, name="<class>")
                for names in manifest.annotations.values()
                for n in names
            }
        )
        raise DataError(
            f"{folder}: no {manifest.name} annotation file here (looked for "
            f"{', '.join(names)}); pass --annotations FOLDER"
        )
    return found


# ---------------------------------------------------------------------------- the families


def _kinetics_aliases(name: str) -> list[str]:
    """Folder spellings of a Kinetics class: mmaction2 (spaces -> _) and TSM (also drops "()')."""
    mm = name.replace(" ", "_")
    return [mm, "".join(ch for ch in mm if ch not in "\"()'")]


def _kinetics_key(stem: str) -> Hashable | None:
    """(youtube_id, start) from ``<id>_<start:06d>_<end:06d>`` or ``<id>_<start>``.

    An id is 11 characters and may hold ``_``, hence ``rsplit`` and the length check.
    """
    parts = stem.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and len(parts[0]) == 11:
        return parts[0], int(parts[1])
    parts = stem.rsplit("_", 1)
    if len(parts) == 2 and parts[1].isdigit() and len(parts[0]) == 11:
        return parts[0], int(parts[1])
    parts = stem.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], int(parts[1])
    return None


def _seconds(text: str | None) -> int | None:
    """A Kinetics time column as whole seconds (``"417"``, ``"3.0"``); None when it is not a
    finite number >= 0 (a clip name cannot hold ``inf``, ``nan`` or a minus sign)."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) and value >= 0 else None


@annotation_format("kinetics", clip_key=_kinetics_key)
def _kinetics(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> AnnotationSet:
    """Kinetics CSVs (``label,youtube_id,time_start,time_end,...``); a clip is found by its
    YouTube id and start second, whatever its file or folder is called after them."""
    out = AnnotationSet()
    lookup = class_lookup(classes, _kinetics_aliases)
    for role, path in split_files(manifest, dirs):
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        need = [c for c in ("youtube_id", "time_start", "time_end") if c not in header]
        if need:
            raise DataError(
                f"{path}: no {need[0]!r} column in the header {header}; "
                "is this a Kinetics annotation CSV?"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            yid = (row["youtube_id"] or "").strip()
            start, end = _seconds(row["time_start"]), _seconds(row["time_end"])
            if start is None or end is None:
                raise DataError(
                    f"{where}: time_start/time_end must be seconds (finite numbers >= 0), got "
                    f"{row['time_start']!r}, {row['time_end']!r}; fix or remove this row"
                )
            if not yid:
                raise DataError(f"{where}: empty youtube_id; the CSV row is malformed")
            label = (row.get("label") or "").strip()
            if not label:
                out.unlabeled[role] += 1
                continue
            if label not in lookup:
                raise unknown_class(where, label, classes, manifest.name)
            name = f"{yid}_{start:06d}_{end:06d}"
            hints = (label, *_kinetics_aliases(label))
            out.records.append(Record(role, (yid, start), lookup[label], name, where, hints))
    return out


@annotation_format("sth_csv")
def _sth_csv(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> AnnotationSet:
    """SSv1 and Jester: ``<id>;<class>`` lines, no header, split once on the first ``;``."""
    check_own_labels(
        manifest, dirs, lambda path: [line.strip() for line in read_lines(path) if line.strip()]
    )
    out = AnnotationSet()
    lookup = class_lookup(classes)
    for role, path in split_files(manifest, dirs):
        for number, line in enumerate(read_lines(path), start=1):
            if not line.strip():
                continue
            vid, _, label = (part.strip() for part in line.partition(";"))
            if not vid or any(ch.isspace() for ch in vid):
                raise DataError(f"{path}:{number}: expected '<id>;<class>', got {line!r}")
            if not label:
                out.unlabeled[role] += 1
                continue
            if label not in lookup:
                raise unknown_class(f"{path}:{number}", label, classes, manifest.name)
            out.records.append(Record(role, vid, lookup[label], vid, f"{path}:{number}"))
    return out


@annotation_format("sthv2_json")
def _sthv2_json(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> AnnotationSet:
    """SSv2: the class is the entry's ``template`` with ``[`` and ``]`` deleted."""
    check_own_labels(manifest, dirs, _sthv2_label_names)
    out = AnnotationSet()
    lookup = class_lookup(classes)
    for role, path in split_files(manifest, dirs):
        entries = load_json(path)
        if not isinstance(entries, list):
            raise DataError(f'{path}: expected a JSON array of {{"id": ..., "template": ...}}')
        for position, entry in enumerate(entries):
            vid, template, where = _sthv2_entry(entry, f"{path}: entry {position}")
            if not template:
                out.unlabeled[role] += 1
                continue
            name = template.replace("[", "").replace("]", "")
            if name not in lookup:
                raise unknown_class(where, name, classes, manifest.name)
            out.records.append(Record(role, vid, lookup[name], vid, where))
    return out


def _sthv2_label_names(path: Path) -> list[str]:
    """SSv2's labels JSON: an object of class name -> index (as a string)."""
    mapping = load_json(path)
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a JSON object of class name -> index")
    try:
        return [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: class indices must be integers (as strings)") from exc


def _sthv2_entry(entry: Any, where: str) -> tuple[str, str | None, str]:
    """``(id, template or None, where)`` of one SSv2 entry, its JSON types checked."""
    if not isinstance(entry, dict):
        raise DataError(
            f"{where} is a JSON {json_type(entry)}, not an object with "
            '"id" and "template"; download the annotation file again'
        )
    raw_id = entry.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise DataError(
            f'{where}: "id" is a JSON {json_type(raw_id)}, not a string; '
            "download the annotation file again"
        )
    vid = str(raw_id).strip()
    if not vid:
        raise DataError(f'{where} has no "id"; download the annotation file again')
    where = f"{where} (id {vid})"
    template = entry.get("template")
    if template is not None and not isinstance(template, str):
        raise DataError(
            f'{where}: "template" is a JSON {json_type(template)}, not a string; '
            "download the annotation file again"
        )
    return vid, template, where


@annotation_format("ucf101")
def _ucf101(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> AnnotationSet:
    """UCF101 split files: ``<Class>/<video>.avi [1-based label]``; the class is the folder."""
    official = manifest.classes("official")
    check_own_labels(manifest, dirs, _class_ind_names)
    out = AnnotationSet()
    lookup = class_lookup(classes)
    for role in ("train", "val"):
        path = find_file(dirs, manifest.annotations[role], split=split)
        if path is None:
            continue
        for number, line in enumerate(read_lines(path), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{number}"
            class_name, sep, file_name = parts[0].partition("/")
            if not sep or len(parts) > 2:
                raise DataError(f"{where}: expected '<Class>/<video>.avi [label]', got {line!r}")
            if class_name not in lookup:
                raise unknown_class(where, class_name, classes, manifest.name)
            if len(parts) == 2 and parts[1] != str(official.index(class_name) + 1):
                raise DataError(
                    f"{where}: label {parts[1]} does not match folder {class_name} "
                    f"(classInd {official.index(class_name) + 1}); this copy of the "
                    "split files is edited, use the official one"
                )
            stem = Path(file_name).stem
            name = f"{class_name}/{stem}"
            out.records.append(Record(role, stem, lookup[class_name], name, where, (class_name,)))
    return out


def _class_ind_names(path: Path) -> list[str]:
    """UCF101's classInd.txt: ``<1-based index> <ClassName>`` lines, in order."""
    names: list[str] = []
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(names) + 1:
            raise DataError(
                f"{path}:{number}: expected '{len(names) + 1} <ClassName>', got {line!r}"
            )
        names.append(parts[1])
    return names


@annotation_format("hmdb51")
def _hmdb51(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> AnnotationSet:
    """HMDB51: ``<class>_test_split<k>.txt`` per class, ``<video>.avi <0|1|2>`` lines."""
    out = AnnotationSet()
    lookup = class_lookup(classes)
    absent, where = [], dirs[0]
    for class_name in manifest.classes("official"):
        path = find_file(dirs, manifest.annotations["splits"], name=class_name, split=split)
        if path is None:
            absent.append(manifest.annotations["splits"][0].format(name=class_name, split=split))
            continue
        where = path.parent
        for number, line in enumerate(read_lines(path), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{number}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] == "0":
                continue
            stem = Path(parts[0]).stem
            role = "train" if parts[1] == "1" else "val"
            name, origin = f"{class_name}/{stem}", f"{path}:{number}"
            out.records.append(Record(role, stem, lookup[class_name], name, origin, (class_name,)))
    if absent and len(absent) < len(classes):
        raise DataError(
            f"{where / absent[0]}: split file is missing ({len(absent)} of "
            f"{len(classes)} are); unpack all 153 files of test_train_splits.rar"
        )
    return out
