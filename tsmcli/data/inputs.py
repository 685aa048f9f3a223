"""What ``tsm predict`` runs on: video files and frame folders named on the command line,
found inside the folders named there.

A path given is used as it is: a file is a video (whatever its extension: it was named), a
folder is a frame folder when it holds the first frame of the frame template
(``img_00001.jpg``, ``layout.FRAME_TEMPLATE``, or the checkpoint's own template), and any other
folder is searched, recursively and in name order, for videos (a ``layout.VIDEO_EXTENSIONS``
name) and frame folders. A frame folder found in the search is an input, and the search does
not go inside it; names starting with ``.`` (temp and partial folders) are skipped, and
symbolic links to folders are not followed (no loop). An input found twice is kept once.

A path that does not exist, or a folder with nothing to predict on, is an input that failed
(``error`` says why in one line), so that one bad argument does not stop the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tsmcli.choices import SOURCES
from tsmcli.data.layout import FRAME_TEMPLATE, VIDEO_EXTENSIONS, check_frame_template, is_video

FRAMES, VIDEOS = SOURCES  # what an input is
DEFAULT_FPS = 30.0  # frames per second of a frame folder, which records none (--fps)


@dataclass(frozen=True)
class FoundInput:
    """One input: a video file or a frame folder, or a path given that holds neither."""

    path: Path
    source: str  # FRAMES or VIDEOS
    error: str | None = None  # set when nothing can be predicted on at this path


def is_frame_folder(path: Path, template: str = FRAME_TEMPLATE) -> bool:
    """Whether ``path`` is a folder holding the first frame named by ``template``."""
    return path.is_dir() and (path / template.format(1)).is_file()


def find_inputs(paths: Sequence[str | Path], template: str = FRAME_TEMPLATE) -> list[FoundInput]:
    """The inputs named by ``paths``, in the order given (a folder's in name order)."""
    check_frame_template(template)
    found: list[FoundInput] = []
    seen: set[Path] = set()

    def add(item: FoundInput) -> None:
        key = Path(os.path.abspath(item.path))
        if key not in seen:
            seen.add(key)
            found.append(item)

    for given in paths:
        path = Path(given)
        if is_frame_folder(path, template):
            add(FoundInput(path, FRAMES))
        elif path.is_dir():
            inside = list(_search(path, template))
            if not inside:
                add(FoundInput(path, VIDEOS, _empty_folder(path, template)))
            for item in inside:
                add(item)
        elif path.exists():
            add(FoundInput(path, VIDEOS))
        else:
            add(FoundInput(path, VIDEOS, f"{path}: no such file or folder; check the path"))
    return found


def _search(folder: Path, template: str) -> Iterator[FoundInput]:
    """Videos and frame folders under ``folder``, depth first in name order."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return  # an unreadable sub-folder holds nothing we can read
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        if entry.is_dir(follow_symlinks=False):
            if is_frame_folder(path, template):
                yield FoundInput(path, FRAMES)
            else:
                yield from _search(path, template)
        elif entry.is_file() and is_video(path):
            yield FoundInput(path, VIDEOS)


def _empty_folder(path: Path, template: str) -> str:
    return (
        f"{path}: no video ({', '.join(VIDEO_EXTENSIONS)}) or frame folder "
        f"({template.format(1)}, ...) found in it; give videos or frame folders"
    )
