"""What is under ``--root``: annotated clips found by name, in whatever layout they lie.

The root is scanned once (to depth 4) and clips are found by name, so the mmaction2 layout,
the official TSM layout and a flat folder all work. The ``folder`` dataset instead reads
``ROOT/<class>/<clip>``. Each clip becomes a ``Row``: where it is (or that it was not found),
its split, its label and its name for ``missing.txt``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tsmcli.choices import SOURCES
from tsmcli.data.annotations import Record
from tsmcli.data.layout import FRAME_TEMPLATE, VIDEO_EXTENSIONS, is_video
from tsmcli.errors import DataError

log = logging.getLogger(__name__)

SCAN_DEPTH = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Frame names seen in the wild, tried (after the manifest's) when --template is not given.
KNOWN_TEMPLATES = (FRAME_TEMPLATE, "{:05d}.jpg", "{:06d}.jpg", "image_{:05d}.jpg")
UNSPLIT = "unsplit"  # the folder dataset's split is drawn after the clips are checked


class Row(NamedTuple):
    """One annotated clip as found under the root."""

    split: str
    rel: str | None  # path relative to the root; None when it was not found
    label: int
    name: str  # how missing.txt names it
    reason: str  # why it cannot be used ("" when found)


@dataclass
class _RootIndex:
    """Videos and frame folders under the root, by name (file stem or folder name)."""

    videos: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    frame_dirs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def match(
    root: Path,
    records: list[Record],
    source: str | None,
    clip_key: Callable[[str], Hashable | None] | None,
) -> tuple[list[Row], str]:
    """Find each record's clip under the root (by ``clip_key`` of its name, or the name
    itself); pick frames or videos when not told."""
    index = _scan_root(root)
    tables: dict[str, dict[Any, list[str]]] = {"videos": index.videos, "frames": index.frame_dirs}
    if clip_key is not None:
        tables = {k: _rekey(v, clip_key) for k, v in tables.items()}
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
    rows: list[Row] = []
    for record in records:
        paths = table.get(record.key)
        rel = _pick(paths, record.hints) if paths else None
        rows.append(Row(record.split, rel, record.label, record.name, "" if rel else "not found"))
    return rows, source


def folder_rows(root: Path, source: str | None) -> tuple[list[str], list[Row], str]:
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
    rows: list[Row] = []
    for label, name in enumerate(classes):
        for clip in found[name][source]:
            rel = clip.relative_to(root).as_posix()
            rows.append(Row(UNSPLIT, rel, label, rel, ""))
    return classes, rows, source


def detect_template(root: Path, folders: list[str], preferred: str) -> str:
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
