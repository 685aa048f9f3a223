"""Tiny annotated datasets on disk for the build-list tests: frame folders of one grey JPEG
repeated, the shipped class lists, and list files read back as lines."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import encode_jpeg

from tsmcli.data.lists import read_classes
from tsmcli.resources import labels_dir

_JPEG = bytes(encode_jpeg(torch.full((3, 8, 8), 128, dtype=torch.uint8)).numpy())


def frames(folder: Path, count: int, template: str = "img_{:05d}.jpg") -> Path:
    """A frame folder of ``count`` tiny JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, count + 1):
        (folder / template.format(k)).write_bytes(_JPEG)
    return folder


def labels(name: str) -> list[str]:
    return read_classes(labels_dir() / name)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()
