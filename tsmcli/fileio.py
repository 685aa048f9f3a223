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

``check_outputs`` is the one rule for the files a command writes: never one of the same
command's inputs, never two outputs on one path, an existing file replaced only when the user
said ``--overwrite``. A special file (``/dev/stdout``, a FIFO, a device) is written through,
appending, and never replaced by a regular file. ``exclusive_lock`` keeps a second process out
of a folder a first one is writing (a run dir, an extraction's DST).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tsmcli.errors import OutputError, TSMError, UsageError

_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")
FULL_DISK = {
    errno.ENOSPC: "no space left on",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded on",
}


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
    if writes_through(path):
        return _write_through(path, write)
    return _replace_from_temp(path, lambda tmp: _fill(tmp, write))


def _fill(tmp: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create ``tmp`` (mode 0666 minus the umask) and ``write`` into it, flushed and fsynced."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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


def _replace_from_temp(target: Path, fill: Callable[[Path], None]) -> Path:
    """``fill`` a fresh temp file beside ``target``, then rename it over ``target``; on any
    failure the temp file is removed and ``target`` is untouched, and a full disk is an
    ``OutputError`` naming the folder."""
    with _no_space_as_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(target)
        try:
            fill(tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    sync_dir(target.parent)
    return target


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

    def link_or_copy(tmp: Path) -> None:
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno in FULL_DISK:
                raise
            shutil.copyfile(source, tmp)

    return _replace_from_temp(target, link_or_copy)


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
    if writes_through(path):
        if not os.access(path, os.W_OK):
            raise error(f"{what} {path}: is not writable (permission denied); choose another path")
        return
    _check_creatable(path.parent, path, what, error)


def writes_through(path: str | Path) -> bool:
    """Whether a write to ``path`` goes through the existing file instead of replacing it: a
    special file (a device, a FIFO, a socket) or anything under ``/dev`` or ``/proc``
    (``/dev/stdout`` redirected to a regular file is still the shell's file, not ours)."""
    absolute = os.path.abspath(path)
    if absolute.startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(absolute).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _write_through(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write into a special file as it is: appending, so that ``--json /dev/stdout`` after a
    shell's ``> out.txt`` adds to what the command printed instead of truncating it."""
    with _no_space_as_error(path), open(path, "ab") as handle:
        write(handle)
        handle.flush()
    return path


@dataclass(frozen=True)
class Output:
    """A file a command will write, with the option the user named it by (``--json``)."""

    option: str
    path: Path


def outputs(**named: str | Path | None) -> list[Output]:
    """``Output``s of the options given (``json=path``, ``csv=None``: left out); a keyword
    ``out_csv`` names the option ``--out-csv``."""
    return [
        Output("--" + option.replace("_", "-"), Path(path))
        for option, path in named.items()
        if path is not None
    ]


def check_outputs(
    files: Sequence[Output],
    inputs: Iterable[str | Path | None],
    *,
    overwrite: bool,
    error: type[TSMError] = UsageError,
) -> None:
    """The one rule for the files a command writes, checked before any work: each can be
    written, none is one of the command's ``inputs`` (the same file by any name), no two share
    a path, and a file that exists is replaced only with ``overwrite``. Special files are
    written through (``writes_through``), so they are exempt from the last two."""
    sources = [Path(p) for p in inputs if p is not None]
    seen: dict[Path, Output] = {}
    for output in files:
        check_writable_file(output.path, output.option, error)
        for source in sources:
            if _same_file(output.path, source):
                raise error(
                    f"{output.option} {output.path}: is an input of this command ({source}); "
                    "writing it would destroy that input, so choose another path"
                )
        if writes_through(output.path):
            continue
        key = Path(os.path.realpath(output.path))
        if key in seen:
            first = seen[key]
            raise error(
                f"{first.option} {first.path} and {output.option} {output.path}: the same file; "
                "give each output its own path"
            )
        seen[key] = output
        if not overwrite and output.path.exists():
            raise error(
                f"{output.option} {output.path}: already exists; pass --overwrite to replace "
                "it, or choose another path"
            )


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (links included; a missing one by its path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


@contextlib.contextmanager
def exclusive_lock(path: str | Path, busy: Callable[[str], TSMError]) -> Iterator[int]:
    """Hold the lock file ``path`` for the block, so that a second process that wants the same
    folder gets ``busy(holder_pid)`` at once instead of writing beside the first. The kernel
    releases the lock when its process dies (``kill -9`` included), so the lock file of a
    killed process is simply taken over; the file holds the holder's PID, for the message, and
    is removed when the block ends. Yields the lock's descriptor: a child process forked in the
    block should close it, or the lock outlives the holder while the child lives."""
    import fcntl

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise busy(holder) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:  # the holder removed it as we opened it
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield fd
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiting process then locks a new file
        os.close(fd)


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


class LineLog:
    """A text file written line by line as a command goes (``tsm stream --jsonl``), each line
    flushed, so a reader can follow it and a kill keeps every finished line. A full disk is one
    ``OutputError`` naming the file; the lines before it stay."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        through = writes_through(self.path)
        if not through:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with _no_space_as_error(self.path):
            self._handle = open(self.path, "a" if through else "w", encoding="utf-8")  # noqa: SIM115

    def write_line(self, text: str) -> None:
        try:
            self._handle.write(text + "\n")
            self._handle.flush()
        except OSError as exc:
            if exc.errno not in FULL_DISK:
                raise
            raise OutputError(
                f"{FULL_DISK[exc.errno]} the disk of {self.path} while writing it; the lines "
                "before this one are kept: free some space and run again"
            ) from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk already said so; the lines are out
            self._handle.close()

    def __enter__(self) -> LineLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _no_space_as_error(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``path`` becomes one ``OutputError`` line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL_DISK:
            raise
        folder = path.parent.resolve() if path.parent.exists() else path.parent
        raise OutputError(
            f"{FULL_DISK[exc.errno]} {folder} while writing {path.name}; free some "
            f"space and run again (the previous {path.name}, if any, is "
            "unchanged)"
        ) from exc


def sync_dir(folder: Path) -> None:
    """Make a rename durable where the OS allows (not on every filesystem)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
