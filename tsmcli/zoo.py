"""The model zoo registry: the published TSM checkpoints by name.

The registry is data shipped with the package (``tsmcli/zoo.yaml``), read strictly into
frozen ``ZooEntry`` objects: each names its file, URLs, publisher's hash, architecture,
class list and the published top-1 with the test protocol behind it and its source. Besides
the video models (``kind: video``) it lists the ImageNet backbones the recipes start from
(``kind: backbone``, for ``model.pretrained``), which have no class list and no video result.
Getting the files (verified, resumable downloads into ``$TSM_HOME``) is ``zoo_cache``'s; the
strict reads of each value are ``zoo_check``'s.

This module sits at the bottom of the package: it imports the standard library, yaml,
``errors``, ``resources``, ``choices`` and ``zoo_check`` only, so it cannot ask the model which
backbones exist: ``arch`` is read as text and checked against ``model.backbones``' registry by
the tests (every shipped entry) and by ``load_model`` when a model is built from an entry. The
other names it accepts are ``choices``' (shifts, label orders, samplings, test protocols).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, fields
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

from tsmcli import choices
from tsmcli.errors import DataError, UsageError
from tsmcli.resources import datasets_dir, labels_dir, zoo_registry_path
from tsmcli.view_request import ViewRequest
from tsmcli.zoo_check import Checker, first_line, suggest

FORMAT_VERSION = 1

# The registry's own vocabulary; the rest is choices'. There is no list of backbone names here:
# an arch is checked against model.backbones' own registry where that is importable
# (tests/test_zoo.py, and load_model when a model is built).
PUBLISHERS = ("official", "mmaction2", "torchvision")
KINDS = ("video", "backbone")  # a video model, or an ImageNet backbone for model.pretrained
BACKBONE_DATASET = "imagenet"  # what every backbone entry is trained on (no video manifest)

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
_HEX = re.compile(r"[0-9a-f]+")
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: 10x faster


# ---------------------------------------------------------------------------------------------
# entries


@dataclass(frozen=True)
class ZooResult:
    """A published accuracy (percent), the protocol it was measured with, and where it is."""

    protocol: ViewRequest
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
    labels: str | None  # None for a backbone, as label_order and sampling
    label_order: str | None
    input_size: int
    sampling: str | None
    epochs: int | None
    recipe: str | None
    recipe_overrides: tuple[str, ...]
    results: tuple[ZooResult, ...]
    note: str
    kind: str = "video"  # or "backbone": an ImageNet network without a video head
    modality: str = "rgb"  # or "flow": stacked x/y optical flow a segment
    new_length: int | None = None  # flow images a segment (None: the modality's default)

    @property
    def is_backbone(self) -> bool:
        return self.kind == "backbone"

    @property
    def published(self) -> ZooResult | None:
        """The headline result (the first listed), or None when no number is published."""
        return self.results[0] if self.results else None

    def model_options(self) -> dict[str, Any]:
        """``load_model`` keywords for this file (``num_segments`` only when published)."""
        options: dict[str, Any] = {
            "arch": self.arch,
            "shift": self.shift,
            "shift_div": self.shift_div,
            "shift_place": self.shift_place,
            "modality": self.modality,
        }
        if self.segments is not None:
            options["num_segments"] = self.segments
        if self.new_length is not None:
            options["new_length"] = self.new_length
        return options

    def class_names(self) -> list[str] | None:
        """The class names in the order of the checkpoint's outputs (None for a backbone)."""
        if self.labels is None:
            return None
        names = _read_labels(labels_dir() / self.labels)
        return sorted(names) if self.label_order == "sorted" else names


# ---------------------------------------------------------------------------------------------
# the registry


def list_entries() -> list[ZooEntry]:
    """Every entry of the shipped registry, in file order."""
    return list(shipped_entries().values())


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name is one line with the closest names."""
    entries = shipped_entries()
    entry = entries.get(name)
    if entry is None:
        raise UsageError(f"unknown model zoo name {name!r}; {suggest(name, list(entries))}")
    return entry


@lru_cache(maxsize=1)
def shipped_entries() -> dict[str, ZooEntry]:
    return load_registry(zoo_registry_path())


def load_registry(path: str | Path) -> dict[str, ZooEntry]:
    """Read and check a registry file: name -> entry, in file order. Every problem is a
    one-line ``DataError`` naming the entry and key."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(
            f"{path}: cannot read the model zoo registry ({first_line(exc)}); reinstall tsmcli"
        ) from None
    check = Checker(path)
    top = check.mapping(raw, "", required=("format_version", "entries"))
    if top["format_version"] != FORMAT_VERSION:
        check.fail(
            "format_version",
            f"is {top['format_version']!r}, this tsmcli reads {FORMAT_VERSION}; upgrade tsmcli",
        )
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


_OPTIONAL_KEYS = ("kind", "modality", "new_length")  # video, rgb and its default when left out
_ENTRY_KEYS = tuple(f.name for f in fields(ZooEntry) if f.name not in _OPTIONAL_KEYS)
_PROTOCOL_KEYS = ("preset", "clips", "crops", "full_res", "twice_sample", "dense", "average")


def _parse_entry(check: Checker, raw: Any, where: str) -> ZooEntry:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']})"  # every message names the entry
    raw = check.mapping(raw, where, required=_ENTRY_KEYS, optional=_OPTIONAL_KEYS)
    name = check.text(raw["name"], f"{where}.name")
    if not _NAME.fullmatch(name):
        check.fail(f"{where}.name", f"{name!r} must be lower case letters, digits, '-' and '.'")
    file = check.text(raw["file"], f"{where}.file")
    kind = check.choice(raw.get("kind", "video"), f"{where}.kind", KINDS)
    task = (_video_task if kind == "video" else _backbone_task)(check, raw, where)
    recipe = raw["recipe"]
    overrides = _recipe_overrides(check, raw["recipe_overrides"], where, recipe)
    return ZooEntry(
        name=name,
        publisher=check.choice(raw["publisher"], f"{where}.publisher", PUBLISHERS),
        description=check.text(raw["description"], f"{where}.description"),
        file=file,
        urls=tuple(_urls(check, raw["urls"], where, file)),
        sha256=_sha256(check, raw["sha256"], where, file),
        arch=check.text(raw["arch"], f"{where}.arch"),
        segments=check.integer(raw["segments"], f"{where}.segments", minimum=1, optional=True),
        shift=check.choice(raw["shift"], f"{where}.shift", choices.SHIFT_MODES),
        shift_div=check.integer(
            raw["shift_div"], f"{where}.shift_div", minimum=choices.MIN_SHIFT_DIV
        ),
        shift_place=check.choice(raw["shift_place"], f"{where}.shift_place", choices.SHIFT_PLACES),
        input_size=check.integer(raw["input_size"], f"{where}.input_size", minimum=16),
        epochs=check.integer(raw["epochs"], f"{where}.epochs", minimum=1, optional=True),
        recipe=None if recipe is None else check.text(recipe, f"{where}.recipe"),
        recipe_overrides=tuple(overrides),
        note=check.text(raw["note"], f"{where}.note"),
        kind=kind,
        **_modality(check, raw, where, kind),
        **task,
    )


def _modality(check: Checker, raw: dict[str, Any], where: str, kind: str) -> dict[str, Any]:
    """What a segment of the model's input is: rgb (a backbone's always), or flow with
    ``new_length`` x/y images (null: the official 5)."""
    modality = check.choice(raw.get("modality", "rgb"), f"{where}.modality", choices.MODALITIES)
    new_length = check.integer(
        raw.get("new_length"), f"{where}.new_length", minimum=1, optional=True
    )
    if kind == "backbone" and modality != "rgb":
        check.fail(f"{where}.modality", "must be rgb for a backbone (an ImageNet classifier)")
    if modality == "rgb" and new_length not in (None, 1):
        check.fail(f"{where}.new_length", "must be 1 or null with modality rgb")
    return {"modality": modality, "new_length": new_length}


def _video_task(check: Checker, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A video model's dataset, class list and order, sampling and published results."""
    dataset = check.choice(raw["dataset"], f"{where}.dataset", _datasets())
    labels = check.text(raw["labels"], f"{where}.labels")
    label_order = check.choice(raw["label_order"], f"{where}.label_order", choices.LABEL_ORDERS)
    _check_labels(check, where, dataset, labels, label_order)
    results = raw["results"]
    if not isinstance(results, list):
        check.fail(f"{where}.results", "must be a list (empty when no number is published)")
    return {
        "dataset": dataset,
        "labels": labels,
        "label_order": label_order,
        "sampling": check.choice(raw["sampling"], f"{where}.sampling", choices.SAMPLINGS),
        "results": tuple(
            _parse_result(check, item, f"{where}.results[{i}]") for i, item in enumerate(results)
        ),
    }


def _backbone_task(check: Checker, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """An ImageNet backbone has no video task: no class list, clip, shift, recipe or result."""
    if raw["dataset"] != BACKBONE_DATASET:
        check.fail(
            f"{where}.dataset",
            f"must be {BACKBONE_DATASET} for a backbone (an ImageNet classifier's weights)",
        )
    for key, empty in (
        ("labels", None),
        ("label_order", None),
        ("sampling", None),
        ("segments", None),
        ("shift", "none"),
        ("recipe", None),
        ("results", []),
    ):
        if raw[key] != empty:
            shown = "null" if empty is None else repr(empty)
            check.fail(f"{where}.{key}", f"must be {shown} for a backbone (no video task)")
    nothing = {"labels": None, "label_order": None, "sampling": None, "results": ()}
    return {"dataset": BACKBONE_DATASET, **nothing}


def _urls(check: Checker, raw: Any, where: str, file: str) -> list[str]:
    """http(s) URLs, at least one, each ending with the entry's file name."""
    urls = check.strings(raw, f"{where}.urls")
    if not urls:
        check.fail(f"{where}.urls", "must list at least one URL")
    for i, url in enumerate(urls):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            check.fail(f"{where}.urls[{i}]", f"{url!r} is not an http(s) URL")
        if urllib.parse.unquote(parts.path.rsplit("/", 1)[-1]) != file:
            check.fail(f"{where}.urls[{i}]", f"does not end with the file name {file!r}")
    return urls


def _sha256(check: Checker, digest: Any, where: str, file: str) -> str | None:
    """None, 64 hex digits, or the 8-digit prefix that the file name carries."""
    if digest is None:
        return None
    digest = check.text(digest, f"{where}.sha256")
    if not (_HEX.fullmatch(digest) and len(digest) in (8, 64)):
        check.fail(f"{where}.sha256", f"{digest!r} must be 64 or 8 lower-case hex digits")
    if len(digest) == 8 and f"-{digest}." not in file:
        check.fail(f"{where}.sha256", f"the prefix {digest!r} is not the one in {file!r}")
    return digest


def _recipe_overrides(check: Checker, raw: Any, where: str, recipe: Any) -> list[str]:
    """``key=value`` items, only with a recipe."""
    overrides = check.strings(raw, f"{where}.recipe_overrides")
    if recipe is None and overrides:
        check.fail(f"{where}.recipe_overrides", "needs a recipe")
    for i, item in enumerate(overrides):
        if "=" not in item:
            check.fail(f"{where}.recipe_overrides[{i}]", f"{item!r} is not key=value")
    return overrides


def _parse_result(check: Checker, raw: Any, where: str) -> ZooResult:
    raw = check.mapping(raw, where, required=("protocol", "top1", "source"), optional=("top5",))
    proto = check.mapping(
        raw["protocol"], f"{where}.protocol", required=("preset",), optional=_PROTOCOL_KEYS[1:]
    )
    at = f"{where}.protocol"
    crops = check.integer(proto.get("crops"), f"{at}.crops", minimum=1, optional=True)
    if crops is not None and crops not in choices.TEST_CROPS:
        check.fail(f"{at}.crops", f"must be one of {', '.join(map(str, choices.TEST_CROPS))}")
    protocol = ViewRequest(
        preset=check.choice(proto["preset"], f"{at}.preset", choices.PROTOCOLS),
        clips=check.integer(proto.get("clips"), f"{at}.clips", minimum=1, optional=True),
        crops=crops,
        full_res=check.flag(proto.get("full_res"), f"{at}.full_res"),
        twice_sample=check.flag(proto.get("twice_sample"), f"{at}.twice_sample"),
        dense=check.flag(proto.get("dense"), f"{at}.dense"),
        average=None
        if proto.get("average") is None
        else check.choice(proto["average"], f"{at}.average", choices.AVERAGE_MODES),
    )
    return ZooResult(
        protocol=protocol,
        top1=check.percent(raw["top1"], f"{where}.top1"),
        source=check.text(raw["source"], f"{where}.source"),
        top5=None if raw.get("top5") is None else check.percent(raw["top5"], f"{where}.top5"),
    )


def _datasets() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in datasets_dir().glob("*.yaml")))


def _check_labels(check: Checker, where: str, dataset: str, labels: str, order: str) -> None:
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
        check.fail(
            f"{where}.labels",
            f"{labels} has {count} classes, {dataset} has {manifest.get('num_classes')}",
        )
    if order not in (manifest.get("label_orders") or ()):
        check.fail(
            f"{where}.label_order",
            f"{order!r} is not offered for {dataset} "
            f"({', '.join(manifest.get('label_orders') or ())})",
        )


@cache
def _manifest(dataset: str) -> dict[str, Any]:
    raw = yaml.load(
        (datasets_dir() / f"{dataset}.yaml").read_text(encoding="utf-8"), Loader=_SAFE_LOADER
    )
    return raw if isinstance(raw, dict) else {}


def _read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
