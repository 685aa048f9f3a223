"""The local cache of model zoo checkpoints: downloads a user can trust, into ``$TSM_HOME``.

Downloads land in ``$TSM_HOME/checkpoints/`` (default ``~/.cache/tsmcli``). Bytes go to
``<file>.part``, which a later attempt resumes with an HTTP Range request, only from the
same URL and with If-Range and the ETag or Last-Modified saved in ``<file>.part.json`` when
the part began: a changed file, or a server that cannot resume, restarts it from zero. A
server that sends nothing, or a full disk, ends the download at once; a file or folder in
the way of the cache is found before it starts. The finished file is checked against the
publisher's SHA-256 (the full digest, or the 8-digit prefix in mmaction2 file names) before
it is renamed into place: a file under its final name always passed the check. Where no
hash is published, the digest of the first download is recorded in ``sha256.json`` beside
the files, with a warning, and every later use is checked against it. A cached file needs
no network.

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

from tsmcli.errors import CheckpointError, OutputError, UsageError
from tsmcli.fileio import FULL_DISK, atomic_write, check_writable_dir, sync_dir
from tsmcli.zoo import ZooEntry, first_line, get_entry, shipped_entries, suggest

logger = logging.getLogger(__name__)

HOME_ENV = "TSM_HOME"
DEFAULT_HOME = Path("~/.cache/tsmcli")
CACHE_SUBDIR = "checkpoints"
RECORDED_HASHES = "sha256.json"  # file name -> SHA-256 of files published without a hash
CHUNK_BYTES = 1 << 20
_EMPTY_TRIES = 2  # tries in a row that receive no byte of the body before a URL is given up

_BAR = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
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
        _record_first_hash(entry, digest, path.parent)
    elif not digest.startswith(expected):
        raise CheckpointError(
            f"{path}: SHA-256 {digest} does not match the {kind} {expected}; the file changed "
            "or is corrupt: delete it and run again to download it afresh"
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
            f"{path}: unreadable ({first_line(exc)}); delete it (the hashes are recorded "
            "again on next use)"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a mapping of file name to SHA-256; delete it")
    return {str(key): str(value) for key, value in data.items()}


def _record_first_hash(entry: ZooEntry, digest: str, folder: Path) -> None:
    with _exclusive(folder / RECORDED_HASHES):  # read-modify-write: one process at a time
        hashes = _recorded_hashes(folder)
        hashes[entry.file] = digest
        atomic_write(folder / RECORDED_HASHES, json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    logger.warning(
        "%s: the publisher gives no hash for %s; its SHA-256 %s is recorded in %s "
        "and checked on every later use",
        entry.name,
        entry.file,
        digest,
        folder / RECORDED_HASHES,
    )


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """One process at a time on ``dest`` (e.g. every rank of a torchrun job downloading the
    same file), through an advisory lock on ``<dest>.lock``. The holder deletes the lock file
    before it lets go, so none is left behind; a waiter that then gets the lock of the deleted
    file sees that the path no longer names it and locks the path's new file instead."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the hash check still guards the result
        yield
        return
    lock = dest.with_name(dest.name + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:  # deleted by the holder it waited for: lock the new one
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held, so that no two processes hold it at once
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# downloads


class _Interrupted(Exception):
    """The body stopped early (connection lost, timeout): worth resuming."""


class _Empty(_Interrupted):
    """The body stopped before its first byte."""


class _Failed(Exception):
    """This URL will not give the file (HTTP error, host unreachable): try the next one."""


def download(
    entry: ZooEntry, home: str | Path | None = None, *, retries: int = 3, timeout: float = 30.0
) -> Path:
    """The cached file of ``entry``, downloaded first when it is missing. ``retries`` is the
    number of resumes after a lost connection, per URL; ``timeout`` the seconds without a
    byte after which a connection counts as lost."""
    dest = cache_path(entry, home)
    if dest.is_file():
        return verify_cached(entry, home)
    _check_cache_dir(entry, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        if dest.is_file():  # another process finished it while we waited
            return verify_cached(entry, home)
        part = _part(dest)
        try:
            _fetch_any(entry, dest, part, retries=retries, timeout=timeout)
        except OSError as exc:
            if exc.errno not in FULL_DISK:
                raise
            raise OutputError(
                f"{FULL_DISK[exc.errno]} {dest.parent} while downloading {entry.file}; free some "
                f"space and run again{_kept(part, ' ({})')}"
            ) from None
        digest = sha256_file(part)
        if entry.sha256 is not None and not digest.startswith(entry.sha256):
            _discard(part)
            raise CheckpointError(
                f"{entry.name}: the download of {entry.file} has SHA-256 {digest}, not the "
                f"published {entry.sha256}; it was deleted: run again, and if it repeats the "
                "file on the server is not the published one"
            )
        os.replace(part, dest)  # verified: into place, durably
        sync_dir(dest.parent)
        _sidecar(part).unlink(missing_ok=True)
        if entry.sha256 is None:
            _record_first_hash(entry, digest, dest.parent)
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


def _fetch_any(entry: ZooEntry, dest: Path, part: Path, *, retries: int, timeout: float) -> None:
    """Fill ``part`` from the first of ``entry``'s URLs that gives the whole file."""
    failures = []
    for url in entry.urls:
        try:
            _fetch(url, part, retries=retries, timeout=timeout, label=entry.file)
            return
        except _Failed as exc:
            failures.append(f"{url}: {exc}")
    kept = _kept(part, "; {}")
    raise CheckpointError(
        f"{entry.name}: cannot download {entry.file} ({'; '.join(failures)}){kept}; "
        f"without network, put the file at {dest} (from {entry.urls[0]}) and run again"
    )


def _check_cache_dir(entry: ZooEntry, dest: Path) -> None:
    """Fail before any download, in one line, where the cache cannot hold ``dest``: a file
    where a folder of its path must be (``$TSM_HOME`` itself, say), or a folder where the
    download writes a file. Nothing is created."""
    check_writable_dir(dest.parent, f"the model zoo cache (${HOME_ENV})")
    part = _part(dest)
    for path in (dest, part, _sidecar(part), dest.with_name(dest.name + ".lock")):
        if path.is_dir():
            raise UsageError(
                f"the model zoo cache {path}: is a folder, not a file (the download of "
                f"{entry.file} writes it); move it away and run again"
            )


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _sidecar(part: Path) -> Path:
    """Where the URL and validators (ETag, Last-Modified) of ``part``'s bytes are kept."""
    return part.with_name(part.name + ".json")


def _read_sidecar(part: Path) -> dict[str, str]:
    try:
        data = json.loads(_sidecar(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _discard(part: Path) -> None:
    for path in (part, _sidecar(part)):
        path.unlink(missing_ok=True)


def _kept(part: Path, form: str) -> str:
    """What an error says of the bytes received (in ``form``): kept when a later run can
    resume them, else deleted (they could only be downloaded again) and nothing is said."""
    have = part.stat().st_size if part.is_file() else 0
    if have and _resume_headers(_read_sidecar(part).get("url", ""), part)[0]:
        kept = f"the {have} bytes received are kept in {part} and the next try resumes"
        return form.format(kept)
    _discard(part)
    return ""


def _fetch(url: str, part: Path, *, retries: int, timeout: float, label: str) -> None:
    """Fill ``part`` with the body of ``url``, resuming after each lost connection. Retries
    are for transfers that move: a server that sends nothing ``_EMPTY_TRIES`` times in a
    row is given up."""
    empty = 0
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout=timeout, label=label)
            return
        except _Interrupted as exc:
            empty = empty + 1 if isinstance(exc, _Empty) else 0
            if empty and (empty == _EMPTY_TRIES or attempt == retries):
                times = "" if empty == 1 else f", {empty} tries in a row"
                raise _Failed(f"the server sent nothing after its headers ({exc}){times}") from None
            have = part.stat().st_size if part.is_file() else 0
            if attempt == retries:
                raise _Failed(f"connection lost after {have} bytes ({exc})") from None
            logger.info("%s: connection lost (%s); resuming at byte %d", label, exc, have)


def _fetch_once(url: str, part: Path, *, timeout: float, label: str) -> None:
    start, resume = _resume_headers(url, part)
    headers = {"User-Agent": "tsmcli", "Accept-Encoding": "identity", **resume}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the part is not a prefix of this file: start over
            _discard(part)
            raise _Interrupted("the server refused the resume range") from None
        raise _Failed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Failed(first_line(getattr(exc, "reason", exc))) from None
    with response:
        if start and response.status == 206:
            total = _check_resumed(response, part, start)
        else:  # the whole body: nothing to resume, a changed file, or a server without Range
            if start:
                logger.info("%s: the server sends the whole file; starting again", label)
            start, total = 0, _start_part(response, url, part)
        received = _copy_body(response, part, (start, total), label=label, timeout=timeout)
    if total is not None and start + received < total:
        raise (_Interrupted if received else _Empty)(f"{start + received} of {total} bytes")


def _resume_headers(url: str, part: Path) -> tuple[int, dict[str, str]]:
    """Where ``part`` resumes, and the Range and If-Range headers that ask for it; (0, {})
    to start over. Bytes are resumed only from the URL they came from, and only with the
    validator the server gave then: it answers the whole file if that file has changed
    since, so a part never ends up half one file and half another."""
    size = part.stat().st_size if part.is_file() else 0
    saved = _read_sidecar(part)
    validator = saved.get("etag") or saved.get("last_modified")
    if not size or saved.get("url") != url or not validator:
        return 0, {}
    return size, {"Range": f"bytes={size}-", "If-Range": validator}


def _start_part(response: Any, url: str, part: Path) -> int | None:
    """Empty ``part`` and save what proves its bytes' origin; returns the body's length."""
    part.write_bytes(b"")
    etag = response.headers.get("ETag", "")
    saved = {"url": url, "last_modified": response.headers.get("Last-Modified", "")}
    saved["etag"] = "" if etag.startswith("W/") else etag  # If-Range takes strong ones only
    atomic_write(_sidecar(part), json.dumps(saved, indent=1) + "\n")
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _check_resumed(response: Any, part: Path, start: int) -> int | None:
    """The total length a resumed (206) body belongs to, once its range starts at ``start``
    and its validators are those saved with ``part`` (a server that ignores If-Range but
    honours Range would append another file's bytes); else start over."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    saved = _read_sidecar(part)
    key, header = ("etag", "ETag") if saved.get("etag") else ("last_modified", "Last-Modified")
    sent = response.headers.get(header)
    if match is None or int(match.group(1)) != start or sent not in (None, saved.get(key)):
        _discard(part)
        raise _Interrupted("the server answered another range or another version of the file")
    return None if match.group(3) == "*" else int(match.group(3))


def _copy_body(
    response: Any, part: Path, span: tuple[int, int | None], *, label: str, timeout: float
) -> int:
    """Append the body to ``part``; returns the bytes received. A failed read is a lost
    connection (what arrived is kept for the next resume); a failed write is raised as it
    is (a full disk is no reason to download again)."""
    received, (start, total) = 0, span
    bar = tqdm(total=total, initial=start, desc=label, disable=not sys.stderr.isatty(), **_BAR)
    try:
        with open(part, "ab") as handle:
            try:
                while chunk := _read_chunk(response, received, timeout):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        bar.close()
    return received


def _read_chunk(response: Any, received: int, timeout: float) -> bytes:
    try:
        return response.read1(CHUNK_BYTES)  # what has arrived: a stall loses none of it
    except (OSError, http.client.HTTPException) as exc:  # reset, timeout, short body
        reason = f"no data for {timeout:g} s" if isinstance(exc, TimeoutError) else exc
        raise (_Interrupted if received else _Empty)(first_line(reason)) from None
