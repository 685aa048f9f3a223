"""File-system rules that several commands share, at the bottom layer beside ``errors``.

A command that writes into a folder checks it before the work, so a path that can never be
written (a file where the folder goes, a file among its parents, a folder without write
permission) is one clear line at the start instead of an OSError at the end. A file that
others read is written atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tsmcli.errors import TSMError, UsageError


def check_output_dir(path: str | Path, what: str, error: type[TSMError] = UsageError) -> Path:
    """Refuse an output folder that cannot be created or written, with one line naming
    ``what`` (the option or argument, e.g. ``--out``) and the path; returns the path.

    Nothing is created: a folder that does not exist yet is fine when its nearest existing
    parent is a folder this process may write in.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(
            f"{what} {path} is a file, not a folder; give a folder path or move the file away"
        )
    existing = path
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise error(
            f"{what} {path}: {existing} is not a folder, so nothing can be made under it; "
            "give another path"
        )
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise error(
            f"{what} {path}: no permission to write in {existing}; give a folder you can write to"
        )
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temp file in the same folder, fsync, rename over ``path``: on any
    failure the old file is left as it was and the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
