"""The model zoo: the published TSM checkpoints by name, and downloads a user can trust.

The registry is data shipped with the package (``tsmcli/zoo.yaml``), read strictly into
frozen ``ZooEntry`` objects: each names its file, URLs, publisher's hash, architecture,
class list and the published top-1 with the test protocol behind it and its source.

Downloads land in ``$TSM_HOME/checkpoints/`` (default ``~/.cache/tsmcli``). Bytes go to
``<file>.part``, which a later attempt resumes with an HTTP Range request (a server that
ignores Range sends the whole file again, and the part restarts from zero); the finished
file is checked against the publisher's SHA-256 (the full digest, or the 8-digit prefix in
mmaction2 file names) before it is renamed into place, so a file under its final name is
always one that passed the check. Where no hash is published, the digest of the first
download is recorded in ``sha256.json`` beside the files, with a warning, and every later
use is checked against it. A cached file needs no network.

This module sits at the bottom of the package: it imports the standard library, yaml, tqdm,
``errors``, ``resources`` and ``fileio`` only. The names it accepts for ``arch``, ``shift`` and
test protocols are constants here; the tests hold them equal to the model's and the evaluator's.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from tsmcli.errors import CheckpointError, DataError, UsageError
from tsmcli.fileio import atomic_write
from tsmcli.resources import datasets_dir, labels_dir, zoo_registry_path

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
HOME_ENV = "TSM_HOME"
DEFAULT_HOME = Path("~/.cache/tsmcli")
CACHE_SUBDIR = "checkpoints"
RECORDED_HASHES = "sha256.json"  # file name -> SHA-256 of files published without a hash
CHUNK_BYTES = 1 << 20

# The vocabulary of the registry. ARCHS mirrors model.backbones.list_backbones(), the protocol
# names engine.evaluate.PROTOCOLS / TEST_CROPS / AVERAGE_MODES (held equal by tests/test_zoo.py).
PUBLISHERS = ("official", "mmaction2")
ARCHS = ("mobilenet_v2", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50")
SHIFTS = ("none", "bidirectional", "unidirectional")
SHIFT_PLACES = ("blockres", "block")
LABEL_ORDERS = ("official", "sorted")
SAMPLINGS = ("segments", "dense")
PROTOCOL_PRESETS = ("single", "kinetics", "sthv2")
TEST_CROPS = (1, 3, 10)
AVERAGE_MODES = ("score", "prob")

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
_HEX = re.compile(r"[0-9a-f]+")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: 10x faster


# ---------------------------------------------------------------------------------------------
# entries


@dataclass(frozen=True)
class ZooProtocol:
    """A ``tsm eval`` protocol: a preset and the fields that differ from it (None: as preset)."""

    preset: str
    clips: int | None = None
    crops: int | None = None
    full_res: bool | None = None
    twice_sample: bool | None = None
    dense: bool | None = None
    average: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields that differ from the preset, as ``resolve_protocol`` keywords."""
        return {key: value for key, value in self._fields() if value is not None}

    def cli_args(self) -> str:
        """The ``tsm eval`` options that select this protocol."""
        args = ["--protocol", self.preset]
        for key, value in self.overrides().items():
            option = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(option if value else option.replace("--", "--no-", 1))
            else:
                args += [option, str(value)]
        return " ".join(args)

    def __str__(self) -> str:
        extra = [key if value is True else f"{key}={value}"
                 for key, value in self.overrides().items()]
        return " ".join([self.preset, *extra])

    def _fields(self) -> list[tuple[str, Any]]:
        return [("clips", self.clips), ("crops", self.crops), ("full_res", self.full_res),
                ("twice_sample", self.twice_sample), ("dense", self.dense),
                ("average", self.average)]


@dataclass(frozen=True)
class ZooResult:
    """A published accuracy (percent), the protocol it was measured with, and where it is."""

    protocol: ZooProtocol
    top1: float
    source: str
    top5: float | None = None


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint (see the header of ``tsmcli/zoo.yaml`` for each field)."""

    name: str
    publisher: str
    description: str
    file: str
    urls: tuple[str, ...]
    sha256: str | None  # 64 hex digits, an 8-digit published prefix, or None
    arch: str
    segments: int | None
    shift: str
    shift_div: int
    shift_place: str
    dataset: str
    labels: str
    label_order: str
    input_size: int
    sampling: str
    epochs: int | None
    recipe: str | None
    recipe_overrides: tuple[str, ...]
    results: tuple[ZooResult, ...]
    note: str

    @property
    def published(self) -> ZooResult | None:
        """The headline result (the first listed), or None when no number is published."""
        return self.results[0] if self.results else None

    def model_options(self) -> dict[str, Any]:
        """``load_model`` keywords for this file (``num_segments`` only when published)."""
        options: dict[str, Any] = {"arch": self.arch, "shift": self.shift,
                                   "shift_div": self.shift_div, "shift_place": self.shift_place}
        if self.segments is not None:
            options["num_segments"] = self.segments
        return options

    def class_names(self) -> list[str]:
        """The class names in the order of the checkpoint's outputs."""
        names = _read_labels(labels_dir() / self.labels)
        return sorted(names) if self.label_order == "sorted" else names


# ---------------------------------------------------------------------------------------------
# the registry


def list_entries() -> list[ZooEntry]:
    """Every entry of the shipped registry, in file order."""
    return list(_shipped().values())


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name is one line with the closest names."""
    entries = _shipped()
    entry = entries.get(name)
    if entry is None:
        raise UsageError(f"unknown model zoo name {name!r}; {_suggest(name, list(entries))}")
    return entry


@lru_cache(maxsize=1)
def _shipped() -> dict[str, ZooEntry]:
    return load_registry(zoo_registry_path())


def load_registry(path: str | Path) -> dict[str, ZooEntry]:
    """Read and check a registry file: name -> entry, in file order. Every problem is a
    one-line ``DataError`` naming the entry and key."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read the model zoo registry ({_first_line(exc)}); "
                        "reinstall tsmcli") from None
    check = _Checker(path)
    top = check.mapping(raw, "", required=("format_version", "entries"))
    if top["format_version"] != FORMAT_VERSION:
        check.fail("format_version", f"is {top['format_version']!r}, this tsmcli reads "
                   f"{FORMAT_VERSION}; upgrade tsmcli")
    items = top["entries"]
    if not isinstance(items, list) or not items:
        check.fail("entries", "must be a non-empty list of entries")
    entries: dict[str, ZooEntry] = {}
    for index, item in enumerate(items):
        entry = _parse_entry(check, item, f"entries[{index}]")
        if entry.name in entries:
            check.fail(f"entries[{index}].name", f"{entry.name!r} is used twice")
        entries[entry.name] = entry
    return entries


_ENTRY_KEYS = ("name", "publisher", "description", "file", "urls", "sha256", "arch", "segments",
               "shift", "shift_div", "shift_place", "dataset", "labels", "label_order",
               "input_size", "sampling", "epochs", "recipe", "recipe_overrides", "results",
               "note")
_PROTOCOL_KEYS = ("preset", "clips", "crops", "full_res", "twice_sample", "dense", "average")


def _parse_entry(check: _Checker, raw: Any, where: str) -> ZooEntry:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']})"  # every message names the entry
    raw = check.mapping(raw, where, required=_ENTRY_KEYS)
    name = check.text(raw["name"], f"{where}.name")
    if not _NAME.fullmatch(name):
        check.fail(f"{where}.name", f"{name!r} must be lower case letters, digits, '-' and '.'")
    file = check.text(raw["file"], f"{where}.file")
    urls = check.strings(raw["urls"], f"{where}.urls")
    if not urls:
        check.fail(f"{where}.urls", "must list at least one URL")
    for i, url in enumerate(urls):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            check.fail(f"{where}.urls[{i}]", f"{url!r} is not an http(s) URL")
        if urllib.parse.unquote(parts.path.rsplit("/", 1)[-1]) != file:
            check.fail(f"{where}.urls[{i}]", f"does not end with the file name {file!r}")
    digest = raw["sha256"]
    if digest is not None:
        digest = check.text(digest, f"{where}.sha256")
        if not (_HEX.fullmatch(digest) and len(digest) in (8, 64)):
            check.fail(f"{where}.sha256", f"{digest!r} must be 64 or 8 lower-case hex digits")
        if len(digest) == 8 and f"-{digest}." not in file:
            check.fail(f"{where}.sha256", f"the prefix {digest!r} is not the one in {file!r}")
    dataset = check.choice(raw["dataset"], f"{where}.dataset", _datasets())
    labels = check.text(raw["labels"], f"{where}.labels")
    label_order = check.choice(raw["label_order"], f"{where}.label_order", LABEL_ORDERS)
    _check_labels(check, where, dataset, labels, label_order)
    results = raw["results"]
    if not isinstance(results, list):
        check.fail(f"{where}.results", "must be a list (empty when no number is published)")
    recipe = raw["recipe"]
    overrides = check.strings(raw["recipe_overrides"], f"{where}.recipe_overrides")
    if recipe is None and overrides:
        check.fail(f"{where}.recipe_overrides", "needs a recipe")
    for i, item in enumerate(overrides):
        if "=" not in item:
            check.fail(f"{where}.recipe_overrides[{i}]", f"{item!r} is not key=value")
    return ZooEntry(
        name=name,
        publisher=check.choice(raw["publisher"], f"{where}.publisher", PUBLISHERS),
        description=check.text(raw["description"], f"{where}.description"),
        file=file,
        urls=tuple(urls),
        sha256=digest,
        arch=check.choice(raw["arch"], f"{where}.arch", ARCHS),
        segments=check.integer(raw["segments"], f"{where}.segments", minimum=1, optional=True),
        shift=check.choice(raw["shift"], f"{where}.shift", SHIFTS),
        shift_div=check.integer(raw["shift_div"], f"{where}.shift_div", minimum=2),
        shift_place=check.choice(raw["shift_place"], f"{where}.shift_place", SHIFT_PLACES),
        dataset=dataset,
        labels=labels,
        label_order=label_order,
        input_size=check.integer(raw["input_size"], f"{where}.input_size", minimum=16),
        sampling=check.choice(raw["sampling"], f"{where}.sampling", SAMPLINGS),
        epochs=check.integer(raw["epochs"], f"{where}.epochs", minimum=1, optional=True),
        recipe=None if recipe is None else check.text(recipe, f"{where}.recipe"),
        recipe_overrides=tuple(overrides),
        results=tuple(_parse_result(check, item, f"{where}.results[{i}]")
                      for i, item in enumerate(results)),
        note=check.text(raw["note"], f"{where}.note"),
    )


def _parse_result(check: _Checker, raw: Any, where: str) -> ZooResult:
    raw = check.mapping(raw, where, required=("protocol", "top1", "source"), optional=("top5",))
    proto = check.mapping(raw["protocol"], f"{where}.protocol", required=("preset",),
                          optional=_PROTOCOL_KEYS[1:])
    at = f"{where}.protocol"
    crops = check.integer(proto.get("crops"), f"{at}.crops", minimum=1, optional=True)
    if crops is not None and crops not in TEST_CROPS:
        check.fail(f"{at}.crops", f"must be one of {', '.join(map(str, TEST_CROPS))}")
    protocol = ZooProtocol(
        preset=check.choice(proto["preset"], f"{at}.preset", PROTOCOL_PRESETS),
        clips=check.integer(proto.get("clips"), f"{at}.clips", minimum=1, optional=True),
        crops=crops,
        full_res=check.flag(proto.get("full_res"), f"{at}.full_res"),
        twice_sample=check.flag(proto.get("twice_sample"), f"{at}.twice_sample"),
        dense=check.flag(proto.get("dense"), f"{at}.dense"),
        average=None if proto.get("average") is None
        else check.choice(proto["average"], f"{at}.average", AVERAGE_MODES),
    )
    return ZooResult(protocol=protocol,
                     top1=check.percent(raw["top1"], f"{where}.top1"),
                     source=check.text(raw["source"], f"{where}.source"),
                     top5=None if raw.get("top5") is None
                     else check.percent(raw["top5"], f"{where}.top5"))


def _datasets() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in datasets_dir().glob("*.yaml")))


def _check_labels(check: _Checker, where: str, dataset: str, labels: str, order: str) -> None:
    """The class list must be the dataset's own, hold its class count, and offer ``order``."""
    manifest = _manifest(dataset)
    listed = Path(str(manifest.get("labels") or "")).name
    if labels != listed:
        check.fail(f"{where}.labels", f"{labels!r} is not {dataset}'s class list ({listed!r})")
    path = labels_dir() / labels
    if not path.is_file():
        check.fail(f"{where}.labels", f"{path} is missing; reinstall tsmcli")
    count = len(_read_labels(path))
    if count != manifest.get("num_classes"):
        check.fail(f"{where}.labels", f"{labels} has {count} classes, {dataset} has "
                   f"{manifest.get('num_classes')}")
    if order not in (manifest.get("label_orders") or ()):
        check.fail(f"{where}.label_order", f"{order!r} is not offered for {dataset} "
                   f"({', '.join(manifest.get('label_orders') or ())})")


@cache
def _manifest(dataset: str) -> dict[str, Any]:
    raw = yaml.load((datasets_dir() / f"{dataset}.yaml").read_text(encoding="utf-8"),
                    Loader=_SAFE_LOADER)
    return raw if isinstance(raw, dict) else {}


def _read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class _Checker:
    """Strict, typed reads of registry values; every failure names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> None:
        raise DataError(f"{self.path}: {where or 'top level'}: {problem}")

    def mapping(self, raw: Any, where: str, *, required: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, f"must be a mapping of {', '.join(required + optional)}")
        known = required + optional
        for key in raw:
            if key not in known:
                self.fail(f"{where}.{key}".lstrip("."), f"unknown key; {_suggest(str(key), list(known))}")
        missing = [key for key in required if key not in raw]
        if missing:
            self.fail(where, f"missing {', '.join(missing)}")
        return raw

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, not {value!r}")
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(where, "must be a list of strings")
        return [self.text(item, f"{where}[{i}]") for i, item in enumerate(value)]

    def choice(self, value: Any, where: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.fail(where, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def integer(self, value: Any, where: str, *, minimum: int, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(where, f"must be an integer >= {minimum}{' or null' if optional else ''}, "
                      f"not {value!r}")
        return value

    def flag(self, value: Any, where: str) -> bool | None:
        if value is not None and not isinstance(value, bool):
            self.fail(where, f"must be true or false, not {value!r}")
        return value

    def percent(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            self.fail(where, f"must be a percentage (0-100), not {value!r}")
        return float(value)


# ---------------------------------------------------------------------------------------------
# the cache


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
        raise CheckpointError(f"{path}: SHA-256 {digest} does not match the {kind} {expected}; "
                              "the file changed or is corrupt: delete it and run again to "
                              "download it afresh")
    return path


def _recorded_hashes(folder: Path) -> dict[str, str]:
    path = folder / RECORDED_HASHES
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({_first_line(exc)}); delete it (the "
                              "hashes are recorded again on next use)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a mapping of file name to SHA-256; delete it")
    return {str(key): str(value) for key, value in data.items()}


def _record_hash(folder: Path, file: str, digest: str) -> None:
    with _exclusive(folder / RECORDED_HASHES):  # read-modify-write: one process at a time
        hashes = _recorded_hashes(folder)
        hashes[file] = digest
        atomic_write(folder / RECORDED_HASHES,
                     json.dumps(hashes, indent=1, sort_keys=True) + "\n")


def _warn_unpublished(entry: ZooEntry, digest: str, folder: Path) -> None:
    logger.warning("%s: the publisher gives no hash for %s; its SHA-256 %s is recorded in %s "
                   "and checked on every later use", entry.name, entry.file, digest,
                   folder / RECORDED_HASHES)


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


def download(entry: ZooEntry, home: str | Path | None = None, *, retries: int = 3,
             timeout: float = 30.0) -> Path:
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
            resume = f"; the {kept} bytes received are kept in {part} and the next try " \
                     "resumes" if kept else ""
            raise CheckpointError(
                f"{entry.name}: cannot download {entry.file} ({'; '.join(failures)}){resume}; "
                f"without network, put the file at {dest} (from {entry.urls[0]}) and run again")
        digest = sha256_file(part)
        if entry.sha256 is not None and not digest.startswith(entry.sha256):
            part.unlink()
            raise CheckpointError(
                f"{entry.name}: the download of {entry.file} has SHA-256 {digest}, not the "
                f"published {entry.sha256}; it was deleted: run again, and if it repeats the "
                "file on the server is not the published one")
        _promote(part, dest)
        if entry.sha256 is None:
            _warn_unpublished(entry, digest, dest.parent)
            _record_hash(dest.parent, entry.file, digest)
    logger.info("%s: downloaded %s", entry.name, dest)
    return dest


def download_checkpoint(name: str, home: str | Path | None = None) -> Path:
    """The local file of the model zoo checkpoint ``name``, downloaded and verified if needed."""
    return download(get_entry(name), home)


def resolve_checkpoint(name_or_path: str | Path,
                       home: str | Path | None = None) -> tuple[Path, ZooEntry | None]:
    """A checkpoint argument as a local file: an existing path as it is (entry None), a model
    zoo name as its cached file (downloaded when missing). Anything else is one line: a
    missing path says so, an unknown name lists the closest names."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path, None
    entries = _shipped()
    if text in entries:
        return download(entries[text], home), entries[text]
    if path.exists():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; give the file")
    if isinstance(name_or_path, Path) or "/" in text or os.sep in text \
            or path.suffix in (".pth", ".pt", ".tar", ".ckpt"):
        raise CheckpointError(f"{path}: no such checkpoint file; check the path, or give a "
                              "model zoo name (tsm zoo list)")
    raise UsageError(f"{text!r} is neither a checkpoint file nor a model zoo name; "
                     f"{_suggest(text, list(entries))}")


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
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the part is not a prefix of this file: start over
            part.unlink()
            raise _Interrupted("the server refused the resume range") from None
        raise _Failed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Failed(_first_line(getattr(exc, "reason", exc))) from None
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


def _copy_body(response: Any, part: Path, mode: str, *, start: int, total: int | None,
               label: str) -> int:
    received = 0
    bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               desc=label, disable=not sys.stderr.isatty())
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
                raise _Interrupted(_first_line(exc) or type(exc).__name__) from None
            finally:  # what arrived is kept for the next resume
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        bar.close()
    return received


# ---------------------------------------------------------------------------------------------
# helpers


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "see `tsm zoo list`" if len(known) > 8 else f"choose one of {', '.join(known)}"


def _first_line(value: Any) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else type(value).__name__

