"""File-system checks that several commands share, at the bottom layer beside ``errors``.

A command that writes into a folder checks it before the work, so a path that can never be
written (a file where the folder goes, a file among its parents, a folder without write
permission) is one clear line at the start instead of an OSError at the end.
"""

from __future__ import annotations

import os
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
