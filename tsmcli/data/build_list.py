"""``tsm build-list``: a dataset's annotations + the frames or videos on disk -> TSN lists.

Four steps, each a function below: **collect** the annotated clips (``annotations`` reads the
files the dataset's manifest names, ``root_index`` finds each clip under ``--root``) and drop
the **repeats**; **measure** each clip (frames in its folder, or decoded frames of its video);
**write** the lists, ``classes.txt``, ``missing.txt`` and ``duplicates.txt``.

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

import logging
import math
import os
import zlib
from collections import defaultdict
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tsmcli.choices import CONFLICT_POLICIES
from tsmcli.data.annotations import AnnotationFormat, Record, format_of, read_annotations
from tsmcli.data.decode import count_frames, open_video
from tsmcli.data.layout import check_frame_template, check_source
from tsmcli.data.lists import CLASSES_FILE, ListEntry, write_classes, write_list
from tsmcli.data.manifest import SPLITS, DatasetManifest, load_manifest
from tsmcli.data.root_index import UNSPLIT, Row, detect_template, folder_rows, match
from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import atomic_write, check_writable_dir
from tsmcli.zoo import list_entries

log = logging.getLogger(__name__)

MISSING_FILE = "missing.txt"
DUPLICATES_FILE = "duplicates.txt"


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
    test_protocol: str = "single"  # the tsm eval --protocol to test with (the manifest's)
    # (model zoo name, top-1) of each number published on this dataset with that protocol
    published: tuple[tuple[str, float], ...] = ()


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
    family = format_of(manifest)
    root, out = Path(root), Path(out)
    _check_arguments(root, out, source, split, conflicting_labels, template)
    if family is None:
        clips = _collect_folder(root, source, val_fraction)
    else:
        folder = Path(annotations) if annotations is not None else root
        clips = _collect(
            manifest, family, root, folder, source, split, label_order, conflicting_labels
        )
    if clips.source == "frames":
        used = [row.rel for row in clips.rows if row.rel]
        template = template or detect_template(root, used, manifest.frame_template)
    else:
        template = None
    _refuse_spaces(root, clips.rows)
    entries, missing = _measure_all(root, clips, template, workers)
    if family is None:
        entries = _stratified_split(entries.pop(UNSPLIT), val_fraction, seed, clips.classes)
    return _write(out, manifest, clips, entries, missing, template)


def _check_arguments(
    root: Path,
    out: Path,
    source: str | None,
    split: int,
    conflicting_labels: str,
    template: str | None,
) -> None:
    """Refuse what can be refused before reading anything (an out folder that cannot be
    written is refused here too, before any clip is measured)."""
    if not root.is_dir():
        raise DataError(
            f"{root}: --root is not a folder; pass the folder of frame folders or videos"
        )
    if source is not None:
        check_source(source)
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


# ---------------------------------------------------------------------------- collect


@dataclass(frozen=True)
class _Repeats:
    """The annotation rows ``_drop_repeats`` left out (``duplicates.txt`` lines) and counts."""

    lines: tuple[str, ...] = ()
    duplicates: int = 0
    overlaps: int = 0
    conflicts: int = 0


@dataclass(frozen=True)
class _Clips:
    """The collected clips: class names in label order, one row per clip, what ROOT holds,
    and the annotation rows left out (repeats, rows without a label)."""

    classes: list[str]
    rows: list[Row]
    source: str
    repeats: _Repeats = _Repeats()
    unlabeled: dict[str, int] = field(default_factory=dict)  # split -> rows without a label
    test_protocol: str = "single"  # the tsm eval --protocol to test with (the manifest's)


def _collect_folder(root: Path, source: str | None, val_fraction: float) -> _Clips:
    """The ``folder`` dataset: every clip of ``ROOT/<class>/``, split later by class."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    classes, rows, source = folder_rows(root, source)
    return _Clips(classes, rows, source)


def _collect(
    manifest: DatasetManifest,
    family: AnnotationFormat,
    root: Path,
    folder: Path,
    source: str | None,
    split: int,
    label_order: str,
    conflicting_labels: str,
) -> _Clips:
    """An annotated dataset: the labelled rows of its annotation files in ``folder``, each
    clip once (``_drop_repeats``), looked up under the root."""
    classes = manifest.classes(label_order)
    found = read_annotations(family, manifest, folder, split, classes)
    records, repeats = _drop_repeats(found.records, classes, conflicting_labels)
    rows, source = match(root, records, source, family.clip_key)
    unlabeled = {k: v for k, v in found.unlabeled.items() if v}
    return _Clips(classes, rows, source, repeats, unlabeled)


def _drop_repeats(
    records: list[Record], classes: list[str], conflicting_labels: str
) -> tuple[list[Record], _Repeats]:
    """Each clip once, in split order (train, val, test) and then file order.

    A clip listed again in its split is a duplicate; a clip listed again in a later split
    leaves that split, so no clip is trained on and also scored. A clip with two different
    labels is a DataError naming both rows (``conflicting_labels="error"``), keeps its first
    label (``"first"``) or is left out (``"drop"``). Clips are compared by the key they are
    found by under the root, the identity every annotation format defines."""
    ordered = sorted(records, key=lambda r: SPLITS.index(r.split))  # stable: keeps file order
    groups: dict[Hashable, list[Record]] = defaultdict(list)
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
    kept: list[Record] = []
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


def _refuse_spaces(root: Path, rows: list[Row]) -> None:
    """A list line splits on whitespace: a clip path with a space is refused before any work."""
    spaced = next((r.rel for r in rows if r.rel and any(ch.isspace() for ch in r.rel)), None)
    if spaced is not None:
        raise DataError(
            f"{root / spaced}: list paths cannot contain spaces (the list format splits on "
            "whitespace); rename it (e.g. spaces to '_', as mmaction2's rename_classnames.sh does)"
        )


# ---------------------------------------------------------------------------- measure


def _measure_all(
    root: Path, clips: _Clips, template: str | None, workers: int | None
) -> tuple[dict[str, list[ListEntry]], list[str]]:
    """Each clip's frame count, in threads: ``(split -> list entries, missing.txt lines)``."""

    def measure(row: Row) -> tuple[int, str]:
        if not row.rel:
            return 0, row.reason
        return _measure(root / row.rel, clips.source, template or "")

    entries: dict[str, list[ListEntry]] = defaultdict(list)
    missing: list[str] = []
    pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
    try:
        measured = tqdm(
            pool.map(measure, clips.rows),
            total=len(clips.rows),
            desc="build-list",
            unit="clip",
            disable=None,
            leave=False,
        )
        for row, (num_frames, reason) in zip(clips.rows, measured, strict=True):
            if num_frames:
                entries[row.split].append(ListEntry(row.rel or "", num_frames, row.label))
            else:
                missing.append(f"{row.split}\t{row.name}\t{reason}")
    finally:
        # On Ctrl-C (or any error) the clips not started are cancelled and the ones running
        # are not waited for here: a `with` block would wait for every queued clip.
        pool.shutdown(wait=False, cancel_futures=True)
    if not any(entries.values()):
        first = clips.rows[0].name if clips.rows else "-"
        raise DataError(
            f"{root}: none of the {len(clips.rows)} annotated clips was found here as "
            f"{clips.source} (first: {first}); check --root and --source"
        )
    return entries, missing


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


def _stratified_split(
    entries: list[ListEntry], val_fraction: float, seed: int, classes: list[str]
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
    for label, name in enumerate(classes):
        clips = sorted(by_class[label], key=lambda e: e.path)
        n = len(clips)
        n_val = math.floor(n * val_fraction + 0.5)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2:
            n_val = 0
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        val = set(rng.permutation(n)[:n_val].tolist())
        for i, entry in enumerate(clips):
            split["val" if i in val else "train"].append(entry)
    return split


# ---------------------------------------------------------------------------- write


def _write(
    out: Path,
    manifest: DatasetManifest,
    clips: _Clips,
    entries: dict[str, list[ListEntry]],
    missing: list[str],
    template: str | None,
) -> BuildListResult:
    """Write the lists of the splits annotated (test only when it has labelled clips),
    ``classes.txt``, ``missing.txt`` and ``duplicates.txt``, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    annotated = {row.split for row in clips.rows} | set(entries)
    lists = {
        s: write_list(out / f"{s}.txt", entries.get(s, []))
        for s in SPLITS
        if s in entries or (s in annotated and s != "test")
    }
    classes_file = write_classes(out / CLASSES_FILE, clips.classes)
    missing_file = out / MISSING_FILE
    atomic_write(missing_file, "".join(f"{line}\n" for line in missing))
    if missing:
        log.warning("%d annotated clips are missing or empty; see %s", len(missing), missing_file)
    repeats = clips.repeats
    duplicates_file = out / DUPLICATES_FILE
    atomic_write(duplicates_file, "".join(f"{line}\n" for line in repeats.lines))
    if repeats.lines:
        log.warning(
            "%d annotation rows repeat a clip and were left out; see %s",
            len(repeats.lines),
            duplicates_file,
        )
    for split_name, count in clips.unlabeled.items():
        log.info(
            "%s: %d entries have no label (withheld by the dataset); not written", split_name, count
        )
    return BuildListResult(
        dataset=manifest.name,
        source=clips.source,
        template=template,
        lists=lists,
        counts={s: len(entries.get(s, [])) for s in lists},
        classes_file=classes_file,
        num_classes=len(clips.classes),
        num_missing=len(missing),
        missing_file=missing_file,
        duplicates_file=duplicates_file,
        num_duplicates=repeats.duplicates,
        num_overlaps=repeats.overlaps,
        num_conflicts=repeats.conflicts,
        unlabeled=clips.unlabeled,
        test_protocol=manifest.test_protocol,
        published=_published(manifest.name, manifest.test_protocol),
    )


def _published(dataset: str, protocol: str) -> tuple[tuple[str, float], ...]:
    """(model zoo name, top-1) of each number the model zoo lists for ``dataset`` measured
    with the preset ``protocol`` as it is (none for most datasets)."""
    return tuple(
        (entry.name, result.top1)
        for entry in list_entries()
        if entry.dataset == dataset
        for result in entry.results
        if result.protocol.preset == protocol and not result.protocol.overrides()
    )
