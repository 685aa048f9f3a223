"""A dataset's manifest: ``datasets/<name>.yaml``, read strictly into a ``DatasetManifest``.

A manifest says which annotation files a dataset has, where its class list is, how its frames
are named, which classes swap under a horizontal flip and how it is usually scored. Every
``*.yaml`` in ``datasets/`` is a manifest (the class lists sit in ``datasets/labels/``); a key
that is unknown, missing or of the wrong kind is a ``DataError`` naming the file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from tsmcli.choices import LABEL_ORDERS
from tsmcli.data.layout import check_frame_template
from tsmcli.data.lists import read_classes
from tsmcli.errors import DataError, UsageError
from tsmcli.resources import datasets_dir

SPLITS = ("train", "val", "test")  # the roles of annotation files, in the order they are read


@dataclass(frozen=True)
class DatasetManifest:
    """A dataset's manifest ``datasets/<name>.yaml``, checked on load."""

    name: str
    path: Path
    description: str
    adapter: str  # the annotation format (data/annotations.py), or "folder"
    num_classes: int | None
    labels: str | None  # class list, relative to datasets/; None: classes come from the root
    label_orders: tuple[str, ...]
    annotations: dict[str, tuple[str, ...]]  # role -> candidate file names
    frame_template: str
    flip: str  # default flip mode: "on" or "off"
    flip_pairs: tuple[tuple[int, int], ...]  # indices in the label file's order
    test_protocol: str  # the tsm eval --protocol preset to test with (the published numbers')

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
    """Names of the shipped dataset manifests."""
    return sorted(p.stem for p in datasets_dir().glob("*.yaml"))


def load_manifest(name: str) -> DatasetManifest:
    """The shipped manifest of a dataset; an unknown name is an error naming the closest one."""
    path = datasets_dir() / f"{name}.yaml"
    if not path.is_file():
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
    if not isinstance(raw["test_protocol"], str) or not raw["test_protocol"].isidentifier():
        raise DataError(
            f"{path}: test_protocol names a preset of tsm eval --protocol (e.g. single), "
            f"got {raw['test_protocol']!r}"
        )
    try:
        pairs = tuple((int(a), int(b)) for a, b in raw["flip_pairs"] or ())
        annotations = {
            str(role): tuple(str(n) for n in names)
            for role, names in (raw["annotations"] or {}).items()
        }
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed flip_pairs or annotations ({exc})") from exc
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
        test_protocol=raw["test_protocol"],
    )
