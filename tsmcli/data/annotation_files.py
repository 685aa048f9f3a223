"""What every annotation reader needs: finding the files, reading their text, naming classes.

Annotation files are read as UTF-8 (a BOM is dropped); a byte that is not UTF-8, JSON that does
not parse, a class that is not the dataset's or a label file in another order is a
``DataError`` naming the file and line.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tsmcli.data.manifest import SPLITS, DatasetManifest
from tsmcli.errors import DataError


def search_dirs(folder: Path, most: int = 20) -> list[Path]:
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


def find_file(dirs: list[Path], names: Iterable[str], **fmt: Any) -> Path | None:
    """The first of ``names`` (formatted with ``fmt``) in the first of ``dirs`` holding one."""
    names = [n.format(**fmt) for n in names]
    for folder in dirs:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def split_files(manifest: DatasetManifest, dirs: list[Path]) -> Iterator[tuple[str, Path]]:
    """``(split, annotation file)`` for each split whose file is present, in SPLITS order."""
    for role in SPLITS:
        path = find_file(dirs, manifest.annotations.get(role, ()))
        if path is not None:
            yield role, path


def read_text(path: Path) -> str:
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


def read_lines(path: Path) -> list[str]:
    """Text lines without their line ends (LF or CRLF); a BOM is dropped."""
    return read_text(path).splitlines()


def load_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); download the annotation file again"
        ) from exc


def json_type(value: Any) -> str:
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


def class_lookup(
    classes: list[str], extra: Callable[[str], Iterable[str]] = lambda n: ()
) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for index, name in enumerate(classes):
        lookup.setdefault(name, index)
        for alias in extra(name):
            lookup.setdefault(alias, index)
    return lookup


def unknown_class(where: str, name: str, classes: list[str], dataset: str) -> DataError:
    close = difflib.get_close_matches(name, classes, n=1)
    hint = f" (closest: {close[0]!r})" if close else ""
    return DataError(
        f"{where}: class {name!r} is not one of the {len(classes)} {dataset} "
        f"classes{hint}; is this the right annotation file for {dataset}?"
    )


def check_own_labels(
    manifest: DatasetManifest, dirs: list[Path], read_names: Callable[[Path], list[str]]
) -> None:
    """The dataset's own class file (the manifest's ``labels`` annotation), when it is there,
    must list the shipped classes in the shipped order, or label indices would drift.
    ``read_names`` reads the class names from it, in its order."""
    path = find_file(dirs, manifest.annotations.get("labels", ()))
    if path is None:
        return
    names, official = read_names(path), manifest.classes("official")
    for number, (got, want) in enumerate(zip(names, official, strict=False), start=1):
        if got != want:
            raise DataError(
                f"{path}:{number}: class {got!r} where the official {manifest.name} order "
                f"has {want!r}; use the dataset's original label file"
            )
    if len(names) != len(official):
        raise DataError(
            f"{path}: {len(names)} classes, {manifest.name} has {len(official)}; "
            "use the dataset's original label file"
        )
