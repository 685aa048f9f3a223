"""The local cache of model zoo checkpoints: downloads a user can trust, into ``$TSM_HOME``.

Downloads land in ``$TSM_HOME/checkpoints/`` (default ``~/.cache/tsmcli``). Bytes go to
``<file>.part``, which a later attempt resumes with an HTTP Range request (a server that
ignores Range sends the whole file again, and the part restarts from zero); the finished
file is checked against the publisher's SHA-256 (the full digest, or the 8-digit prefix in
mmaction2 file names) before it is renamed into place, so a file under its final name is
always one that passed the check. Where no hash is published, the digest of the first
download is recorded in ``sha256.json`` beside the files, with a warning, and every later
use is checked against it. A cached file needs no network.

At the bottom of the package with the registry (``zoo``): it imports the standard library,
tqdm, ``errors``, ``fileio`` and ``zoo`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tsmcli.errors import CheckpointError, UsageError
from tsmcli.fileio import atomic_write
from tsmcli.zoo import ZooEntry, first_line, get_entry, shipped_entries, suggest

logger = logging.getLogger(__name__)

HOME_ENV = "TSM_HOME"
DEFAULT_HOME = Path("~/.cache/tsmcli")
CACHE_SUBDIR = "checkpoints"
RECORDED_HASHES = "sha256.json"  # file name -> SHA-256 of files published without a hash
CHUNK_BYTES = 1 << 20

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def zoo_home() -> Path:
    """``$TSM_HOME``, or ``~/.cache/tsmcli``."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def cache_path(entry: ZooEntry, home: str | Path | None = None) -> Path:
    """Where ``entry``'s file lives once downloaded (or where to put it by hand)."""
    return _cache_dir(home) / entry.file


def is_cached(entry: ZooEntry, home: str | Path | None = None) -> bool:
    return cache_path(entry, home).is_file()


def _cache_dir(home: str | Path | None) -> Path:
    return (Path(home).expanduser() if home is not None else zoo_home()) / CACHE_SUBDIR


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_cached(entry: ZooEntry, home: str | Path | None = None) -> Path:
    """Check the cached file against the published hash, or the one recorded on first use
    (recording it now, with a warning, when there is neither). A mismatch is one line that
    names both digests; the file is left for the user to inspect or delete."""
    path = cache_path(entry, home)
    digest = sha256_file(path)
    expected, kind = entry.sha256, "published"
    if expected is None:
        expected, kind = _recorded_hashes(path.parent).get(entry.file), "recorded on first use"
    if expected is None:
        _warn_unpublished(entry, digest, path.parent)
        _record_hash(path.parent, entry.file, digest)
    elif not digest.startswith(expected):
        raise CheckpointError(
            f"{path}: SHA-256 {digest} does not match the {kind} {expected}; "
            "the file changed or is corrupt: delete it and run again to "
            "download it afresh"
        )
    return path


def _recorded_hashes(folder: Path) -> dict[str, str]:
    path = folder / RECORDED_HASHES
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: unreadable ({first_line(exc)}); delete it (the "
            "hashes are recorded again on next use)"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a mapping of file name to SHA-256; delete it")
    return {str(key): str(value) for key, value in data.items()}


def _record_hash(folder: Path, file: str, digest: str) -> None:
    with _exclusive(folder / RECORDED_HASHES):  # read-modify-write: one process at a time
        hashes = _recorded_hashes(folder)
        hashes[file] = digest
        atomic_write(folder / RECORDED_HASHES, json.dumps(hashes, indent=1, sort_keys=True) + "\n")


def _warn_unpublished(entry: ZooEntry, digest: str, folder: Path) -> None:
    logger.warning(
        "%s: the publisher gives no hash for %s; its SHA-256 %s is recorded in %s "
        "and checked on every later use",
        entry.name,
        entry.file,
        digest,
        folder / RECORDED_HASHES,
    )


def _promote(part: Path, dest: Path) -> None:
    """Rename the verified ``.part`` into place and make the rename durable."""
    os.replace(part, dest)
    with contextlib.suppress(OSError):
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """One process at a time on ``dest`` (e.g. every rank of a torchrun job downloading the
    same file), through an advisory lock on ``<dest>.lock``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the hash check still guards the result
        yield
        return
    with open(dest.with_name(dest.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# downloads


class _Interrupted(Exception):
    """The body stopped early (connection lost, timeout): worth resuming."""


class _Failed(Exception):
    """This URL will not give the file (HTTP error, host unreachable): try the next one."""


def download(
    entry: ZooEntry, home: str | Path | None = None, *, retries: int = 3, timeout: float = 30.0
) -> Path:
    """The cached file of ``entry``, downloaded first when it is missing. ``retries`` is the
    number of resumes after a lost connection, per URL."""
    dest = cache_path(entry, home)
    if dest.is_file():
        return verify_cached(entry, home)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        if dest.is_file():  # another process finished it while we waited
            return verify_cached(entry, home)
        part = dest.with_name(dest.name + ".part")
        failures = []
        for url in entry.urls:
            try:
                _fetch(url, part, retries=retries, timeout=timeout, label=entry.file)
                break
            except _Failed as exc:
                failures.append(f"{url}: {exc}")
        else:
            kept = part.stat().st_size if part.is_file() else 0
            resume = (
                f"; the {kept} bytes received are kept in {part} and the next try resumes"
                if kept
                else ""
            )
            raise CheckpointError(
                f"{entry.name}: cannot download {entry.file} ({'; '.join(failures)}){resume}; "
                f"without network, put the file at {dest} (from {entry.urls[0]}) and run again"
            )
        digest = sha256_file(part)
        if entry.sha256 is not None and not digest.startswith(entry.sha256):
            part.unlink()
            raise CheckpointError(
                f"{entry.name}: the download of {entry.file} has SHA-256 {digest}, not the "
                f"published {entry.sha256}; it was deleted: run again, and if it repeats the "
                "file on the server is not the published one"
            )
        _promote(part, dest)
        if entry.sha256 is None:
            _warn_unpublished(entry, digest, dest.parent)
            _record_hash(dest.parent, entry.file, digest)
    logger.info("%s: downloaded %s", entry.name, dest)
    return dest


def download_checkpoint(name: str, home: str | Path | None = None) -> Path:
    """The local file of the model zoo checkpoint ``name``, downloaded and verified if needed."""
    return download(get_entry(name), home)


def resolve_checkpoint(
    name_or_path: str | Path, home: str | Path | None = None
) -> tuple[Path, ZooEntry | None]:
    """A checkpoint argument as a local file: an existing path as it is (entry None), a model
    zoo name as its cached file (downloaded when missing). Anything else is one line: a
    missing path says so, an unknown name lists the closest names (see ``locate``)."""
    path, entry = locate(name_or_path, home)
    return (path, None) if entry is None else (download(entry, home), entry)


def locate(
    name_or_path: str | Path, home: str | Path | None = None
) -> tuple[Path, ZooEntry | None]:
    """Where a checkpoint argument lies, without any download: an existing file (entry None),
    or a model zoo name's cache path (which may not exist yet) and its entry. The text
    decides, whatever its type: a file that exists wins over a name; a missing path (with a
    folder or a checkpoint suffix) is a ``CheckpointError``; any other word is a name, and an
    unknown one is a ``UsageError`` listing the closest names."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path, None
    entries = shipped_entries()
    if text in entries:
        return cache_path(entries[text], home), entries[text]
    if path.exists():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; give the file")
    if "/" in text or os.sep in text or path.suffix in (".pth", ".pt", ".tar", ".ckpt"):
        raise CheckpointError(
            f"{path}: no such checkpoint file; check the path, or give a "
            "model zoo name (tsm zoo list)"
        )
    raise UsageError(
        f"{text!r} is neither a checkpoint file nor a model zoo name; "
        f"{suggest(text, list(entries))}"
    )


def local_path(name_or_path: str | Path, home: str | Path | None = None) -> Path:
    """The file a checkpoint argument stands for, for checks made before reading it (an
    output folder must not hold it): a model zoo name's cache path, else the path as
    written. Nothing is checked or downloaded."""
    text = str(name_or_path)
    entry = shipped_entries().get(text)
    if entry is not None and not Path(text).expanduser().is_file():
        return cache_path(entry, home)
    return Path(text).expanduser()


def _fetch(url: str, part: Path, *, retries: int, timeout: float, label: str) -> None:
    """Fill ``part`` with the body of ``url``, resuming after each lost connection."""
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout=timeout, label=label)
            return
        except _Interrupted as exc:
            have = part.stat().st_size if part.is_file() else 0
            if attempt == retries:
                raise _Failed(f"connection lost after {have} bytes ({exc})") from None
            logger.info("%s: connection lost (%s); resuming at byte %d", label, exc, have)


def _fetch_once(url: str, part: Path, *, timeout: float, label: str) -> None:
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "tsmcli", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the part is not a prefix of this file: start over
            part.unlink()
            raise _Interrupted("the server refused the resume range") from None
        raise _Failed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Failed(first_line(getattr(exc, "reason", exc))) from None
    with response:
        total = None
        if start and response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != start:
                part.unlink()
                raise _Interrupted("the server answered another range")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:  # the whole body: nothing to resume, or a server that ignores Range
            if start:
                logger.info("%s: the server does not resume; starting again", label)
            start, mode = 0, "wb"
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
        received = _copy_body(response, part, mode, start=start, total=total, label=label)
    if total is not None and start + received < total:
        raise _Interrupted(f"{start + received} of {total} bytes")


def _copy_body(
    response: Any, part: Path, mode: str, *, start: int, total: int | None, label: str
) -> int:
    received = 0
    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not sys.stderr.isatty(),
    )
    try:
        with open(part, mode) as handle:
            try:
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # reset, timeout, short body
                raise _Interrupted(first_line(exc) or type(exc).__name__) from None
            finally:  # what arrived is kept for the next resume
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        bar.close()
    return received
