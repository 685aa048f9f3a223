"""Writing files safely: one atomic write, and checks that an output path can be written.

Every file tsmcli writes goes through ``atomic_write`` (or ``atomic_write_with`` for writers
that take a file object, such as ``torch.save`` and ``Figure.savefig``): the bytes go to a
temp file beside the target (``.NAME.XXXXXXXX.tmp``), are flushed and fsynced, and the temp
file is renamed over the target. A reader never sees half a file, and a crash, a Ctrl-C or a
full disk leaves the previous file as it was. The temp file is created with mode 0666 minus
the umask, like any file ``open`` creates, so outputs follow the user's umask. A full disk
is one line naming the folder (``OutputError``), not an ``OSError``.

``check_writable_dir`` / ``check_writable_file`` run before the work that fills an output,
so a bad ``--out`` or ``--json`` is found in a second, not after an hour of evaluation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tsmcli.errors import OutputError, TSMError, UsageError

_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")
_FULL = {errno.ENOSPC: "no space left on", getattr(errno, "EDQUOT", -1): "disk quota exceeded on"}


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``: ``.NAME.XXXXXXXX.tmp`` (what ``remove_stale_temps``
    recognises)."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 with the newlines as given) to ``path`` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return atomic_write_with(path, lambda handle: handle.write(payload))


def atomic_write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a binary temp file beside ``path``, then fsync it and rename
    it over ``path``. On any failure the temp file is removed and ``path`` is untouched; a
    full disk is an ``OutputError`` naming the folder."""
    path = Path(path)
    with _no_space_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode: 0666 & ~umask
        try:
            with os.fdopen(fd, "wb") as handle:
                recorder = _WriteErrors(handle)
                try:
                    write(recorder)
                except Exception as exc:
                    if recorder.error is None or exc is recorder.error:
                        raise
                    raise recorder.error from exc  # the errno the writer's own error dropped
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _sync_dir(path.parent)
    return path


class _WriteErrors:
    """A binary file that remembers the ``OSError`` of a failed write. Some writers raise
    their own error instead: ``torch.save`` on a full disk says "[enforce fail at
    inline_container.cc] unexpected pos", dropping the errno that says what happened."""

    def __init__(self, handle: IO[bytes]):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def atomic_link(source: str | Path, target: str | Path) -> Path:
    """Make ``target`` a second name of ``source``'s file, atomically (a copy where hard links
    are not supported). ``source`` is later replaced by a new file (a rename), so ``target``
    keeps these bytes without writing them twice."""
    source, target = Path(source), Path(target)
    with _no_space_as_error(target):
        tmp = temp_path(target)
        try:
            try:
                os.link(source, tmp)
            except OSError as exc:
                if exc.errno in _FULL:
                    raise
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _sync_dir(target.parent)
    return target


def remove_stale_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files a killed write of one of ``names`` left in ``folder``
    (``.NAME.XXXXXXXX.tmp`` only: nothing else is touched). Returns what was removed."""
    folder, wanted = Path(folder), set(names)
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in folder.iterdir():
            match = _TEMP.match(entry.name)
            if match and match["name"] in wanted and entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def check_writable_dir(path: str | Path, what: str, error: type[TSMError] = UsageError) -> None:
    """Fail now, with one line naming ``what`` (``--out``), unless ``path`` is a folder that
    can be written or can be created. Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path}: is a file, not a folder; choose a folder")
    _check_creatable(path, path, what, error)


def check_writable_file(path: str | Path, what: str, error: type[TSMError] = UsageError) -> None:
    """Fail now unless a file can be written at ``path`` (its folder exists or can be
    created and is writable, and ``path`` is not a folder). Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path}: is a folder; give a file name")
    _check_creatable(path.parent, path, what, error)


def _check_creatable(folder: Path, given: Path, what: str, error: type[TSMError]) -> None:
    """The nearest existing ancestor of ``folder`` (itself included) must be a writable
    folder: then ``mkdir(parents=True)`` and a write inside will work. Errors name ``given``,
    the path as the user wrote it."""
    probe = folder
    while not probe.exists():
        if probe.is_symlink():
            raise error(f"{what} {given}: {probe} is a broken symbolic link; fix or remove it")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise error(f"{what} {given}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise error(
            f"{what} {given}: {probe} is not writable (permission denied); choose "
            "another path or fix its permissions"
        )


@contextlib.contextmanager
def _no_space_as_error(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``path`` becomes one ``OutputError`` line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        folder = path.parent.resolve() if path.parent.exists() else path.parent
        raise OutputError(
            f"{_FULL[exc.errno]} {folder} while writing {path.name}; free some "
            f"space and run again (the previous {path.name}, if any, is "
            "unchanged)"
        ) from exc


def _sync_dir(folder: Path) -> None:
    """Make a rename durable where the OS allows (not on every filesystem)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
