"""``tsm build-list``: a dataset's annotations + the frames or videos on disk -> TSN lists.

Each supported dataset has a manifest ``datasets/<name>.yaml`` (annotation file names, class
list, frame template, flip pairs, test protocol) and an adapter here that turns its
annotation files into records ``(split, clip key, label)``. The records are then matched
against what is really under ``--root``: the root is scanned once (to depth 4) and clips are
found by name, so the mmaction2 layout, the official TSM layout and a flat folder all work.

Entries whose video or frame folder is missing, empty or unreadable are left out of the lists
and written to ``OUT/missing.txt`` (``<split>\\t<name>\\t<reason>``), as the official TSM
scripts do, instead of being dropped silently (mmaction2) or failing mid-training.

A clip annotated twice is written once: a repeat within a split, or a clip already in an
earlier split (train, then val, then test), is left out and listed in ``OUT/duplicates.txt``;
a clip under two different labels is refused unless ``conflicting_labels`` says which to keep.

Unlabelled test sets (Kinetics with withheld labels, SSv1, SSv2, Jester) are not written:
a list line needs a label and every consumer of ``test.txt`` scores against it. Their count
is reported in ``BuildListResult.unlabeled``.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import math
import os
import zlib
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from tsmcli.data.decode import (
    VIDEO_EXTENSIONS,
    check_frame_template,
    count_frames,
    is_video,
    open_video,
)
from tsmcli.data.lists import (
    CLASSES_FILE,
    ListEntry,
    atomic_write_text,
    read_classes,
    write_classes,
    write_list,
)
from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import check_writable_dir
from tsmcli.resources import ZOO_REGISTRY, datasets_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SOURCES = ("frames", "videos")
LABEL_ORDERS = ("official", "sorted")
# What build_list does with a clip annotated with two different labels.
CONFLICT_POLICIES = ("error", "first", "drop")
# Frame names seen in the wild, tried (after the manifest's) when --template is not given.
KNOWN_TEMPLATES = ("img_{:05d}.jpg", "{:05d}.jpg", "{:06d}.jpg", "image_{:05d}.jpg")
MISSING_FILE = "missing.txt"
DUPLICATES_FILE = "duplicates.txt"
SCAN_DEPTH = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ViewProtocol:
    """The views a dataset is usually scored with (see the dataset's manifest)."""

    clips: int = 1
    crops: int = 1
    full_res: bool = False
    twice_sample: bool = False
    dense: bool = False


@dataclass(frozen=True)
class DatasetManifest:
    """A dataset's manifest ``datasets/<name>.yaml``, checked on load."""

    name: str
    path: Path
    description: str
    adapter: str
    num_classes: int | None
    labels: str | None  # class list, relative to datasets/; None: classes come from the root
    label_orders: tuple[str, ...]
    annotations: dict[str, tuple[str, ...]]  # role -> candidate file names
    frame_template: str
    flip: str  # default flip mode: "on" or "off"
    flip_pairs: tuple[tuple[int, int], ...]  # indices in the label file's order
    test_protocol: ViewProtocol

    def classes(self, label_order: str = "official") -> list[str]:
        """Class names in label order: the shipped file's order, or sorted."""
        if self.labels is None:
            raise DataError(
                f"{self.path}: dataset {self.name!r} takes its classes from the "
                "root's folders, not from a class list"
            )
        if label_order not in self.label_orders:
            raise UsageError(
                f"label order {label_order!r} is not offered for {self.name}; "
                f"choose one of {', '.join(self.label_orders)}"
            )
        names = read_classes(self.path.parent / self.labels)
        if self.num_classes is not None and len(names) != self.num_classes:
            raise DataError(
                f"{self.path.parent / self.labels}: {len(names)} classes, the manifest "
                f"says {self.num_classes}; reinstall tsmcli"
            )
        return sorted(names) if label_order == "sorted" else names

    def flip_pairs_for(self, classes: list[str]) -> list[tuple[int, int]]:
        """The flip pairs as indices of ``classes`` (matched by name, so any label order works)."""
        if not self.flip_pairs:
            return []
        official = self.classes("official")
        position = {name: i for i, name in enumerate(classes)}
        pairs = []
        for a, b in self.flip_pairs:
            if official[a] in position and official[b] in position:
                pairs.append((position[official[a]], position[official[b]]))
        return pairs


def list_manifests() -> list[str]:
    """Names of the shipped dataset manifests (the model zoo registry beside them is not one)."""
    return sorted(p.stem for p in datasets_dir().glob("*.yaml") if p.name != ZOO_REGISTRY)


def load_manifest(name: str) -> DatasetManifest:
    """The shipped manifest of a dataset; an unknown name is an error naming the closest one."""
    path = datasets_dir() / f"{name}.yaml"
    if not path.is_file() or path.name == ZOO_REGISTRY:
        known = list_manifests()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(known)}"
        raise UsageError(f"unknown dataset {name!r}; {hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc}); reinstall tsmcli") from exc
    return _parse_manifest(name, path, raw)


def _parse_manifest(name: str, path: Path, raw: Any) -> DatasetManifest:
    keys = [f.name for f in fields(DatasetManifest) if f.name not in ("name", "path")]
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a manifest is a mapping of {', '.join(keys)}")
    for key in raw:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{path}: unknown key {key!r}{hint}")
    absent = [key for key in keys if key not in raw]
    if absent:
        raise DataError(f"{path}: missing key {absent[0]!r}")
    if raw["flip"] not in ("on", "off"):
        raise DataError(f'{path}: flip must be "on" or "off" (quoted), got {raw["flip"]!r}')
    if (
        not set(raw["label_orders"] or ()) <= set(LABEL_ORDERS)
        or "official" not in raw["label_orders"]
    ):
        raise DataError(f"{path}: label_orders must include 'official', from {LABEL_ORDERS}")
    if raw["adapter"] not in _ADAPTERS and raw["adapter"] != "folder":
        raise DataError(f"{path}: unknown adapter {raw['adapter']!r}")
    try:
        protocol = ViewProtocol(**(raw["test_protocol"] or {}))
        pairs = tuple((int(a), int(b)) for a, b in raw["flip_pairs"] or ())
        annotations = {
            str(role): tuple(str(n) for n in names)
            for role, names in (raw["annotations"] or {}).items()
        }
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: malformed test_protocol, flip_pairs or annotations ({exc})"
        ) from exc
    return DatasetManifest(
        name=name,
        path=path,
        description=str(raw["description"]),
        adapter=str(raw["adapter"]),
        num_classes=raw["num_classes"],
        labels=raw["labels"],
        label_orders=tuple(raw["label_orders"]),
        annotations=annotations,
        frame_template=check_frame_template(str(raw["frame_template"]), f"{path}: frame_template"),
        flip=raw["flip"],
        flip_pairs=pairs,
        test_protocol=protocol,
    )


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BuildListResult:
    """What ``build_list`` wrote."""

    dataset: str
    source: str  # "frames" or "videos"
    template: str | None  # frame file template (frames only); the dataset needs it too
    lists: dict[str, Path]  # split -> list file written
    counts: dict[str, int]  # split -> entries written
    classes_file: Path
    num_classes: int
    num_missing: int
    missing_file: Path
    duplicates_file: Path  # every annotation row left out as a repeat, and why
    num_duplicates: int = 0  # rows repeating a clip earlier in the same split
    num_overlaps: int = 0  # rows of a clip already in an earlier split (train, val, test)
    num_conflicts: int = 0  # clips annotated with two different labels (conflicting_labels)
    unlabeled: dict[str, int] = field(default_factory=dict)  # split -> rows without a label


@dataclass(frozen=True)
class _Record:
    """One annotated clip, before it is looked up on disk."""

    split: str
    key: Hashable  # what the clip is found by under the root
    label: int
    name: str  # how missing.txt names it
    origin: str  # where it was read ("file:line"), for duplicates.txt and errors
    hints: tuple[str, ...] = ()  # folder names that pick one of several matches


@dataclass
class _Annotations:
    records: list[_Record] = field(default_factory=list)
    unlabeled: dict[str, int] = field(default_factory=lambda: defaultdict(int))


# ---------------------------------------------------------------------------- annotation files


def _search_dirs(folder: Path, most: int = 20) -> list[Path]:
    """Where annotation files may be: the folder, and its subfolders when there are few (an
    archive unpacks into one; a folder of thousands of clips is not searched)."""
    subs = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                subs.append(Path(entry.path))
                if len(subs) > most:
                    return [folder]
    return [folder, *sorted(subs)]


def _find_file(dirs: list[Path], names: Iterable[str], **fmt: Any) -> Path | None:
    """The first of ``names`` (formatted with ``fmt``) in the first of ``dirs`` holding one."""
    names = [n.format(**fmt) for n in names]
    for folder in dirs:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _split_files(manifest: DatasetManifest, dirs: list[Path]) -> Iterator[tuple[str, Path]]:
    """``(split, annotation file)`` for each split whose file is present, in SPLITS order."""
    for role in SPLITS:
        path = _find_file(dirs, manifest.annotations.get(role, ()))
        if path is not None:
            yield role, path


def _read_text(path: Path) -> str:
    """An annotation file's text, a BOM dropped; bytes that are not UTF-8 are a DataError
    naming the line and the byte, as every annotation file of the supported datasets is
    UTF-8 (or ASCII) as published."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        undecoded = exc.object  # the bytes after the BOM, if any
        offset = len(data) - len(undecoded) + exc.start
        line = undecoded.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}); "
            "re-save the file as UTF-8"
        ) from exc


def _read_lines(path: Path) -> list[str]:
    """Text lines without their line ends (LF or CRLF); a BOM is dropped."""
    return _read_text(path).splitlines()


def _class_lookup(
    classes: list[str], extra: Callable[[str], Iterable[str]] = lambda n: ()
) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for index, name in enumerate(classes):
        lookup.setdefault(name, index)
        for alias in extra(name):
            lookup.setdefault(alias, index)
    return lookup


def _unknown_class(where: str, name: str, classes: list[str], dataset: str) -> DataError:
    close = difflib.get_close_matches(name, classes, n=1)
    hint = f" (closest: {close[0]!r})" if close else ""
    return DataError(
        f"{where}: class {name!r} is not one of the {len(classes)} {dataset} "
        f"classes{hint}; is this the right annotation file for {dataset}?"
    )


def _check_label_file(path: Path, names: list[str], official: list[str], dataset: str) -> None:
    """The dataset's own class file must agree with the shipped one, or indices would drift."""
    for number, (got, want) in enumerate(zip(names, official, strict=False), start=1):
        if got != want:
            raise DataError(
                f"{path}:{number}: class {got!r} where the official {dataset} order "
                f"has {want!r}; use the dataset's original label file"
            )
    if len(names) != len(official):
        raise DataError(
            f"{path}: {len(names)} classes, {dataset} has {len(official)}; "
            "use the dataset's original label file"
        )


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


def _kinetics(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> _Annotations:
    out = _Annotations()
    lookup = _class_lookup(classes, _kinetics_aliases)
    for role, path in _split_files(manifest, dirs):
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
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
                raise _unknown_class(where, label, classes, manifest.name)
            out.records.append(
                _Record(
                    role,
                    (yid, start),
                    lookup[label],
                    f"{yid}_{start:06d}_{end:06d}",
                    where,
                    (label, *_kinetics_aliases(label)),
                )
            )
    return out


def _seconds(text: str | None) -> int | None:
    """A Kinetics time column as whole seconds (``"417"``, ``"3.0"``); None when it is not a
    finite number >= 0 (a clip name cannot hold ``inf``, ``nan`` or a minus sign)."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) and value >= 0 else None


def _sth_csv(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> _Annotations:
    """SSv1 and Jester: ``<id>;<class>`` lines, no header, split once on the first ``;``."""
    label_file = _find_file(dirs, manifest.annotations.get("labels", ()))
    if label_file is not None:
        names = [line.strip() for line in _read_lines(label_file) if line.strip()]
        _check_label_file(label_file, names, manifest.classes("official"), manifest.name)
    out = _Annotations()
    lookup = _class_lookup(classes)
    for role, path in _split_files(manifest, dirs):
        for number, line in enumerate(_read_lines(path), start=1):
            if not line.strip():
                continue
            vid, _, label = (part.strip() for part in line.partition(";"))
            if not vid or any(ch.isspace() for ch in vid):
                raise DataError(f"{path}:{number}: expected '<id>;<class>', got {line!r}")
            if not label:
                out.unlabeled[role] += 1
                continue
            if label not in lookup:
                raise _unknown_class(f"{path}:{number}", label, classes, manifest.name)
            out.records.append(_Record(role, vid, lookup[label], vid, f"{path}:{number}"))
    return out


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); download the annotation file again"
        ) from exc


def _sthv2_json(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> _Annotations:
    """SSv2: the class is the entry's ``template`` with ``[`` and ``]`` deleted."""
    label_file = _find_file(dirs, manifest.annotations.get("labels", ()))
    if label_file is not None:
        mapping = _load_json(label_file)
        if not isinstance(mapping, dict):
            raise DataError(f"{label_file}: expected a JSON object of class name -> index")
        try:
            names = [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{label_file}: class indices must be integers (as strings)") from exc
        _check_label_file(label_file, names, manifest.classes("official"), manifest.name)
    out = _Annotations()
    lookup = _class_lookup(classes)
    for role, path in _split_files(manifest, dirs):
        entries = _load_json(path)
        if not isinstance(entries, list):
            raise DataError(f'{path}: expected a JSON array of {{"id": ..., "template": ...}}')
        for position, entry in enumerate(entries):
            where = f"{path}: entry {position}"
            if not isinstance(entry, dict):
                raise DataError(
                    f"{where} is a JSON {_json_type(entry)}, not an object with "
                    '"id" and "template"; download the annotation file again'
                )
            raw_id = entry.get("id")
            if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
                raise DataError(
                    f'{where}: "id" is a JSON {_json_type(raw_id)}, not a string; '
                    "download the annotation file again"
                )
            vid = str(raw_id).strip()
            if not vid:
                raise DataError(f'{where} has no "id"; download the annotation file again')
            where = f"{where} (id {vid})"
            template = entry.get("template")
            if template is not None and not isinstance(template, str):
                raise DataError(
                    f'{where}: "template" is a JSON {_json_type(template)}, not a string; '
                    "download the annotation file again"
                )
            if not template:
                out.unlabeled[role] += 1
                continue
            name = template.replace("[", "").replace("]", "")
            if name not in lookup:
                raise _unknown_class(where, name, classes, manifest.name)
            out.records.append(_Record(role, vid, lookup[name], vid, where))
    return out


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    for kind, name in (
        (bool, "boolean"),
        (str, "string"),
        (int | float, "number"),
        (list, "array"),
        (dict, "object"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _ucf101(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> _Annotations:
    """UCF101 split files: ``<Class>/<video>.avi [1-based label]``; the class is the folder."""
    official = manifest.classes("official")
    class_ind = _find_file(dirs, manifest.annotations.get("labels", ()))
    if class_ind is not None:
        names = []
        for number, line in enumerate(_read_lines(class_ind), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(names) + 1:
                raise DataError(
                    f"{class_ind}:{number}: expected '{len(names) + 1} <ClassName>', got {line!r}"
                )
            names.append(parts[1])
        _check_label_file(class_ind, names, official, manifest.name)
    out = _Annotations()
    lookup = _class_lookup(classes)
    for role in ("train", "val"):
        path = _find_file(dirs, manifest.annotations[role], split=split)
        if path is None:
            continue
        for number, line in enumerate(_read_lines(path), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{number}"
            rel = parts[0]
            class_name, sep, file_name = rel.partition("/")
            if not sep or len(parts) > 2:
                raise DataError(f"{where}: expected '<Class>/<video>.avi [label]', got {line!r}")
            if class_name not in lookup:
                raise _unknown_class(where, class_name, classes, manifest.name)
            if len(parts) == 2 and parts[1] != str(official.index(class_name) + 1):
                raise DataError(
                    f"{where}: label {parts[1]} does not match folder {class_name} "
                    f"(classInd {official.index(class_name) + 1}); this copy of the "
                    "split files is edited, use the official one"
                )
            stem = Path(file_name).stem
            out.records.append(
                _Record(
                    role, stem, lookup[class_name], f"{class_name}/{stem}", where, (class_name,)
                )
            )
    return out


def _hmdb51(
    manifest: DatasetManifest, dirs: list[Path], split: int, classes: list[str]
) -> _Annotations:
    """HMDB51: ``<class>_test_split<k>.txt`` per class, ``<video>.avi <0|1|2>`` lines."""
    out = _Annotations()
    lookup = _class_lookup(classes)
    absent, where = [], dirs[0]
    for class_name in manifest.classes("official"):
        path = _find_file(dirs, manifest.annotations["splits"], name=class_name, split=split)
        if path is None:
            absent.append(manifest.annotations["splits"][0].format(name=class_name, split=split))
            continue
        where = path.parent
        for number, line in enumerate(_read_lines(path), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{number}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] == "0":
                continue
            stem = Path(parts[0]).stem
            role = "train" if parts[1] == "1" else "val"
            out.records.append(
                _Record(
                    role,
                    stem,
                    lookup[class_name],
                    f"{class_name}/{stem}",
                    f"{path}:{number}",
                    (class_name,),
                )
            )
    if absent and len(absent) < len(classes):
        raise DataError(
            f"{where / absent[0]}: split file is missing ({len(absent)} of "
            f"{len(classes)} are); unpack all 153 files of test_train_splits.rar"
        )
    return out


_ADAPTERS: dict[str, Callable[[DatasetManifest, list[Path], int, list[str]], _Annotations]] = {
    "kinetics": _kinetics,
    "sth_csv": _sth_csv,
    "sthv2_json": _sthv2_json,
    "ucf101": _ucf101,
    "hmdb51": _hmdb51,
}


# ---------------------------------------------------------------------------- the root


@dataclass
class _RootIndex:
    """Videos and frame folders under the root, by name (file stem or folder name)."""

    videos: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    frame_dirs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _scan_root(root: Path, max_depth: int = SCAN_DEPTH) -> _RootIndex:
    """One walk of the root: video files anywhere, and folders below the top that hold images
    (frame folders) or nothing at all (empty frame folders, reported as such). Hidden entries
    are skipped; a frame folder is recognised at its first image, without listing it all."""
    index = _RootIndex()
    stack: list[tuple[str | Path, str, int]] = [(root, "", 0)]
    while stack:
        folder, rel, depth = stack.pop()
        subdirs, has_images, has_entries = [], False, False
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                has_entries = True
                suffix = os.path.splitext(entry.name)[1].lower()
                if suffix in IMAGE_SUFFIXES:
                    has_images = True
                    break
                entry_rel = f"{rel}/{entry.name}" if rel else entry.name
                if suffix in VIDEO_EXTENSIONS and entry.is_file():
                    index.videos[entry.name[: -len(suffix)]].append(entry_rel)
                elif entry.is_dir():
                    subdirs.append((entry.path, entry_rel))
        if depth > 0 and (has_images or not has_entries):
            index.frame_dirs[os.path.basename(folder)].append(rel)
        elif depth < max_depth:
            stack.extend((p, r, depth + 1) for p, r in subdirs)
    return index


def _rekey(
    table: dict[str, list[str]], key_fn: Callable[[str], Hashable | None]
) -> dict[Hashable, list[str]]:
    out: dict[Hashable, list[str]] = defaultdict(list)
    for stem, paths in table.items():
        key = key_fn(stem)
        if key is not None:
            out[key].extend(paths)
    return out


def _pick(paths: list[str], hints: tuple[str, ...]) -> str:
    """One path of several with the same name: the one inside a folder named like the class."""
    if len(paths) > 1 and hints:
        inside = [p for p in paths if p.rpartition("/")[0].rpartition("/")[2] in hints]
        if inside:
            paths = inside
    if len(paths) > 1:
        log.warning(
            "%d clips named %s under the root; using %s",
            len(paths),
            Path(paths[0]).name,
            sorted(paths)[0],
        )
    return sorted(paths)[0]


def _detect_template(root: Path, folders: list[str], preferred: str) -> str:
    """The frame template the folders use: the manifest's, or a known one that matches."""
    candidates = list(dict.fromkeys([preferred, *KNOWN_TEMPLATES]))
    sample = [root / f for f in folders[:50]]
    hits = [sum((folder / t.format(1)).is_file() for folder in sample) for t in candidates]
    if max(hits, default=0) > 0:
        return candidates[hits.index(max(hits))]
    non_empty = next((f for f in sample if any(f.iterdir())), None)
    if non_empty is not None:
        raise DataError(
            f"{non_empty}: no frame named like {', '.join(t.format(1) for t in candidates)}; "
            "pass the frame file template with --template (e.g. 'frame{:04d}.jpg')"
        )
    return preferred


def _measure(path: Path, source: str, template: str) -> tuple[int, str]:
    """(num_frames, "") or (0, why it cannot be used)."""
    if source == "frames":
        frames = count_frames(path, template)
        return (frames, "") if frames else (0, f"empty frame folder (no {template.format(1)})")
    if path.stat().st_size == 0:
        return 0, "empty video file"
    try:
        return open_video(path, "decord").num_frames, ""
    except DataError as exc:
        return 0, f"unreadable video ({str(exc).partition(': ')[2]})"


# ---------------------------------------------------------------------------- build_list


def build_list(
    dataset: str,
    root: str | Path,
    out: str | Path,
    *,
    annotations: str | Path | None = None,
    source: str | None = None,
    split: int = 1,
    val_fraction: float = 0.25,
    seed: int = 0,
    template: str | None = None,
    label_order: str = "official",
    workers: int | None = None,
    conflicting_labels: str = "error",
) -> BuildListResult:
    """Write ``train.txt``, ``val.txt`` (``test.txt`` for a labelled test set), ``classes.txt``
    and ``missing.txt`` under ``out`` for the frames or videos under ``root``.

    ``annotations`` is the folder of the dataset's annotation files (default: ``root``).
    ``template`` is the frame file name template; None detects it, starting with the
    manifest's. ``split`` picks the UCF101/HMDB51 split; ``val_fraction`` and ``seed`` the
    ``folder`` dataset's stratified split. ``label_order`` ("official" or "sorted") is offered
    for SSv1 and Jester, whose two codebases disagree (see labels/README.md). ``workers``
    threads count frames and open videos (default: up to 8); both wait on I/O or decord's C
    code, which runs without the GIL.

    A clip annotated twice is written once: a repeat in the same split is a duplicate, a
    clip also in an earlier split (train, val, test) leaves the later one; both are counted
    and listed in ``duplicates.txt``. A clip with two different labels is a ``DataError``
    unless ``conflicting_labels`` is ``"first"`` (keep the first label read) or ``"drop"``
    (leave the clip out).
    """
    manifest = load_manifest(dataset)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(
            f"{root}: --root is not a folder; pass the folder of frame folders or videos"
        )
    if source is not None and source not in SOURCES:
        raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if split not in (1, 2, 3):
        raise UsageError(f"split must be 1, 2 or 3, got {split}")
    if conflicting_labels not in CONFLICT_POLICIES:
        raise UsageError(
            f"conflicting_labels must be one of {', '.join(CONFLICT_POLICIES)}, "
            f"got {conflicting_labels!r}"
        )
    if template is not None:
        check_frame_template(template, "--template", UsageError)
    check_writable_dir(out, "--out")
    repeats = _Repeats()
    unlabeled: dict[str, int] = {}
    if manifest.adapter == "folder":
        if not 0.0 <= val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
        classes, rows, source = _folder_rows(root, source)
    else:
        classes = manifest.classes(label_order)
        folder = Path(annotations) if annotations is not None else root
        if not folder.is_dir():
            raise DataError(
                f"{folder}: --annotations is not a folder; pass the folder of the "
                f"{manifest.name} annotation files"
            )
        found = _ADAPTERS[manifest.adapter](manifest, _search_dirs(folder), split, classes)
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
        unlabeled = {k: v for k, v in found.unlabeled.items() if v}
        records, repeats = _drop_repeats(found.records, classes, conflicting_labels)
        rows, source = _match(root, records, source, manifest.adapter == "kinetics")
    if source == "frames":
        template = template or _detect_template(
            root, [r[1] for r in rows if r[1]], manifest.frame_template
        )
    else:
        template = None

    spaced = next((r[1] for r in rows if r[1] and any(ch.isspace() for ch in r[1])), None)
    if spaced is not None:
        raise DataError(
            f"{root / spaced}: list paths cannot contain spaces (the list format splits on "
            "whitespace); rename it (e.g. spaces to '_', as mmaction2's rename_classnames.sh does)"
        )

    def measure(row: _Row) -> tuple[int, str]:
        return _measure(root / row[1], source, template or "") if row[1] else (0, row[4])

    entries: dict[str, list[ListEntry]] = defaultdict(list)
    missing: list[str] = []
    pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
    try:
        measured = tqdm(
            pool.map(measure, rows),
            total=len(rows),
            desc="build-list",
            unit="clip",
            disable=None,
            leave=False,
        )
        for (split_name, rel, label, name, _), (num_frames, reason) in zip(
            rows, measured, strict=True
        ):
            if num_frames:
                entries[split_name].append(ListEntry(rel or "", num_frames, label))
            else:
                missing.append(f"{split_name}\t{name}\t{reason}")
    finally:
        # On Ctrl-C (or any error) the clips not started are cancelled and the ones running
        # are not waited for here: a `with` block would wait for every queued clip.
        pool.shutdown(wait=False, cancel_futures=True)
    if not any(entries.values()):
        raise DataError(
            f"{root}: none of the {len(rows)} annotated clips was found here as "
            f"{source} (first: {rows[0][3] if rows else '-'}); check --root and --source"
        )
    if manifest.adapter == "folder":
        entries = _stratified_split(
            entries.pop(_UNSPLIT), len(classes), val_fraction, seed, classes
        )

    out.mkdir(parents=True, exist_ok=True)
    annotated = {r[0] for r in rows} | set(entries)
    lists = {
        s: write_list(out / f"{s}.txt", entries[s])
        for s in SPLITS
        if s in entries or (s in annotated and s != "test")
    }
    classes_file = write_classes(out / CLASSES_FILE, classes)
    missing_file = out / MISSING_FILE
    atomic_write_text(missing_file, "".join(f"{line}\n" for line in missing))
    if missing:
        log.warning("%d annotated clips are missing or empty; see %s", len(missing), missing_file)
    duplicates_file = out / DUPLICATES_FILE
    atomic_write_text(duplicates_file, "".join(f"{line}\n" for line in repeats.lines))
    if repeats.lines:
        log.warning(
            "%d annotation rows repeat a clip and were left out; see %s",
            len(repeats.lines),
            duplicates_file,
        )
    for split_name, count in unlabeled.items():
        log.info(
            "%s: %d entries have no label (withheld by the dataset); not written", split_name, count
        )
    return BuildListResult(
        dataset=manifest.name,
        source=source,
        template=template,
        lists=lists,
        counts={s: len(entries[s]) for s in lists},
        classes_file=classes_file,
        num_classes=len(classes),
        num_missing=len(missing),
        missing_file=missing_file,
        duplicates_file=duplicates_file,
        num_duplicates=repeats.duplicates,
        num_overlaps=repeats.overlaps,
        num_conflicts=repeats.conflicts,
        unlabeled=unlabeled,
    )


# A row: (split, path relative to root or None when not found, label, name, reason).
_Row = tuple[str, str | None, int, str, str]
_UNSPLIT = "unsplit"  # the folder dataset's split is drawn after the clips are checked


@dataclass(frozen=True)
class _Repeats:
    """The annotation rows ``_drop_repeats`` left out (``duplicates.txt`` lines) and counts."""

    lines: tuple[str, ...] = ()
    duplicates: int = 0
    overlaps: int = 0
    conflicts: int = 0


def _drop_repeats(
    records: list[_Record], classes: list[str], conflicting_labels: str
) -> tuple[list[_Record], _Repeats]:
    """Each clip once, in split order (train, val, test) and then file order.

    A clip listed again in its split is a duplicate; a clip listed again in a later split
    leaves that split, so no clip is trained on and also scored. A clip with two different
    labels is a DataError naming both rows (``conflicting_labels="error"``), keeps its first
    label (``"first"``) or is left out (``"drop"``). Clips are compared by the key they are
    found by under the root, the identity every adapter defines."""
    ordered = sorted(records, key=lambda r: SPLITS.index(r.split))  # stable: keeps file order
    groups: dict[Hashable, list[_Record]] = defaultdict(list)
    for record in ordered:
        groups[record.key].append(record)
    conflicting = {key for key, group in groups.items() if len({r.label for r in group}) > 1}
    if conflicting and conflicting_labels == "error":
        group = next(g for g in groups.values() if g[0].key in conflicting)
        first, other = group[0], next(r for r in group if r.label != group[0].label)
        raise DataError(
            f"clip {first.name}: labelled {classes[first.label]!r} ({first.origin}) and "
            f"{classes[other.label]!r} ({other.origin}); fix the annotations, or pass "
            "--conflicting-labels first (keep the first label) or drop (leave the clip out)"
        )
    kept: list[_Record] = []
    lines: list[str] = []
    duplicates = overlaps = 0
    for record in ordered:
        first = groups[record.key][0]
        if record.key in conflicting and conflicting_labels == "drop":
            labels = ", ".join(f"{classes[r.label]!r} ({r.origin})" for r in groups[record.key])
            why = f"labelled {labels}; left out"
        elif record is first:
            kept.append(record)
            continue
        elif record.label != first.label:
            why = (
                f"labelled {classes[record.label]!r} ({record.origin}), first "
                f"{classes[first.label]!r} ({first.origin}); kept the first"
            )
        elif record.split == first.split:
            duplicates += 1
            why = f"listed again ({record.origin}) after {first.origin}"
        else:
            overlaps += 1
            why = f"also in {first.split} ({first.origin}); left out of {record.split}"
        lines.append(f"{record.split}\t{record.name}\t{why}")
    return kept, _Repeats(tuple(lines), duplicates, overlaps, len(conflicting))


def _match(
    root: Path, records: list[_Record], source: str | None, kinetics: bool
) -> tuple[list[_Row], str]:
    """Find each record's clip under the root; pick frames or videos when not told."""
    index = _scan_root(root)
    tables: dict[str, dict[Any, list[str]]] = {"videos": index.videos, "frames": index.frame_dirs}
    if kinetics:
        tables = {k: _rekey(v, _kinetics_key) for k, v in tables.items()}
    if source is None:
        hits = {k: sum(r.key in table for r in records) for k, table in tables.items()}
        source = "videos" if hits["videos"] > hits["frames"] else "frames"
        log.info(
            "--source not given: %s (found %d videos, %d frame folders named in the annotations)",
            source,
            hits["videos"],
            hits["frames"],
        )
    table = tables[source]
    rows: list[_Row] = []
    for record in records:
        paths = table.get(record.key)
        rel = _pick(paths, record.hints) if paths else None
        rows.append((record.split, rel, record.label, record.name, "" if rel else "not found"))
    return rows, source


def _folder_rows(root: Path, source: str | None) -> tuple[list[str], list[_Row], str]:
    """ROOT/<class>/<clip>: classes are the sorted folder names holding clips of the source."""
    found: dict[str, dict[str, list[Path]]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        items = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        found[class_dir.name] = {
            "videos": [p for p in items if p.is_file() and is_video(p)],
            "frames": [p for p in items if p.is_dir()],
        }
    if source is None:
        totals = {s: sum(len(v[s]) for v in found.values()) for s in SOURCES}
        source = "videos" if totals["videos"] > totals["frames"] else "frames"
    classes = [name for name, items in found.items() if items[source]]
    for name in sorted(found.keys() - set(classes)):
        log.warning("%s: no %s in this class folder; the class is left out", root / name, source)
    if not classes:
        raise DataError(
            f"{root}: no class folder holds {source}; the folder dataset expects "
            "ROOT/<class_name>/<video or frame folder>"
        )
    rows: list[_Row] = []
    for label, name in enumerate(classes):
        for clip in found[name][source]:
            rel = clip.relative_to(root).as_posix()
            rows.append((_UNSPLIT, rel, label, rel, ""))
    return classes, rows, source


def _stratified_split(
    entries: list[ListEntry], num_classes: int, val_fraction: float, seed: int, classes: list[str]
) -> dict[str, list[ListEntry]]:
    """Split each class's usable clips into train and val, reproducibly.

    A class's clips (sorted by path) are shuffled by a generator seeded with
    ``(seed, crc32(class name))``, so its split does not move when other classes are added or
    removed. ``round(n * val_fraction)`` go to val, but at least 1 and at most ``n - 1`` when
    ``n >= 2`` and ``val_fraction > 0``; a class with one clip keeps it for training.
    """
    by_class: dict[int, list[ListEntry]] = defaultdict(list)
    for entry in entries:
        by_class[entry.label].append(entry)
    split: dict[str, list[ListEntry]] = {"train": [], "val": []}
    for label in range(num_classes):
        clips = sorted(by_class[label], key=lambda e: e.path)
        n = len(clips)
        n_val = math.floor(n * val_fraction + 0.5)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2:
            n_val = 0
        rng = np.random.default_rng([seed, zlib.crc32(classes[label].encode("utf-8"))])
        val = set(rng.permutation(n)[:n_val].tolist())
        for i, entry in enumerate(clips):
            split["val" if i in val else "train"].append(entry)
    return split
