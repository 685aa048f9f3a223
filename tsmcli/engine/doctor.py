"""``tsm doctor``: what is wrong with a dataset and a recipe, found before a run rather than
during it, each finding with its fix. It reads; it writes nothing into the data.

With a recipe it checks the recipe's lists under ``data.root`` and the recipe against them and
this machine; with bare lists (``lists=``) the lists alone, read with the recipe's data keys
(the defaults, or what ``--set`` gives). In order:

1. the rules ``tsm train`` and ``tsm eval`` enforce, called as they call them (a list that
   reads, labels in range, ``classes.txt`` of the model's size, data present; with a
   checkpoint, its class count and order): each error they raise becomes a finding;
2. ``run_checks.run_findings``, the fast checks ``tsm train`` also runs at start: duplicates,
   train/val overlap, class sizes, classes without a val video, and the recipe's lr, batch
   norm, mirroring, segments, workers, decoder and disk space;
3. unless ``decode=False``, every clip opened and decoded (``data_checks``).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsmcli.choices import SEVERITIES
from tsmcli.data.layout import check_source, is_video
from tsmcli.data.lists import CLASSES_FILE, ListFile, find_missing, read_list_file
from tsmcli.engine import run_checks
from tsmcli.engine.checks import (
    EVAL_HINT,
    check_present,
    check_recipe_checkpoints,
    check_train_labels,
    class_balance,
    duplicate_entries,
    eval_class_names,
    names_differ,
    resolve_classes,
    train_val_overlap,
)
from tsmcli.engine.data_checks import Clip, Look, inspect_all, summary
from tsmcli.engine.findings import Finding
from tsmcli.errors import CheckpointError, TSMError, UsageError
from tsmcli.fileio import atomic_write, check_outputs, outputs
from tsmcli.recipe import Recipe

SHOWN = 10  # findings of one check the table prints; --json holds them all


@dataclass(frozen=True)
class DoctorResult:
    """Every finding, worst first, and what was looked at."""

    findings: tuple[Finding, ...]
    lists: tuple[Path, ...]
    entries: int  # lines of the lists
    decoded: int  # videos or frame folders opened and decoded (0: not asked)
    seconds: float

    def counts(self) -> dict[str, int]:
        """Findings per severity."""
        counted = Counter(f.severity for f in self.findings)
        return {severity: counted.get(severity, 0) for severity in SEVERITIES}

    def exit_code(self, strict: bool = False) -> int:
        """1 with an error (``strict``: or a warning), else 0."""
        counts = self.counts()
        return int(bool(counts["error"] or (strict and counts["warning"])))

    def to_dict(self) -> dict[str, Any]:
        """What ``--json`` writes."""
        return {
            "lists": [str(p) for p in self.lists],
            "entries": self.entries,
            "decoded": self.decoded,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }

    def table(self, shown: int = SHOWN) -> str:
        """The findings grouped by severity, then check: each check's count, then its
        findings, one line each (the first ``shown``), then the totals."""
        by_check: dict[tuple[str, str], list[Finding]] = {}
        for finding in self.findings:
            by_check.setdefault((finding.severity, finding.check), []).append(finding)
        width = max((len(check) for _, check in by_check), default=0)
        rows = []
        for (severity, check), found in by_check.items():
            rows.append(f"{severity:<8}{check:<{width}}  {len(found)}")
            rows += [f"        {f.line}" for f in found[:shown]]
            if len(found) > shown:
                rows.append(f"        ... and {len(found) - shown} more (--json lists them all)")
        counts = self.counts()
        totals = ", ".join(f"{n} {s}{'' if n == 1 else 's'}" for s, n in counts.items())
        decoded = f", {self.decoded} decoded" if self.decoded else ""
        lists = f"{len(self.lists)} list{'' if len(self.lists) == 1 else 's'}"
        rows.append(f"{totals} ({lists}, {self.entries} lines{decoded})")
        return "\n".join(rows)


def doctor(
    recipe: Recipe | None = None,
    *,
    lists: Sequence[str | Path] = (),
    root: str | Path | None = None,
    source: str | None = None,
    checkpoint: str | Path | None = None,
    decode: bool = True,
    full: bool = False,
    workers: int | None = None,
    processes: int = 1,
    nodes: int = 1,
    json_path: str | Path | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
) -> DoctorResult:
    """Check ``recipe``'s lists and the recipe, or the bare ``lists`` under ``root`` (read with
    ``recipe``'s data keys, the defaults without one); see the module's docstring. ``source``
    (bare lists): videos or frames, else told by the paths. ``checkpoint``: a file or model zoo
    name whose class count and order the lists must match (never downloaded). ``decode``:
    open and decode every clip, ``full``: every frame of it, in ``workers`` threads (default:
    the cores). ``processes`` per node and ``nodes``: the torchrun job the recipe is for.
    ``json_path``: every finding written there as JSON, the one file doctor writes (checked
    before any work: never one of the lists, the checkpoint or the other ``inputs``, such as
    the recipe file; an existing one replaced only with ``overwrite``)."""
    begin = time.perf_counter()
    bare = bool(lists)
    _check_arguments(recipe, bare, root, processes, nodes, workers)
    recipe = recipe or Recipe()
    d = recipe.data
    paths = [Path(p).expanduser() for p in lists or (d.train_list, d.val_list) if p]
    if json_path is not None:
        read_files = [*paths, *inputs, checkpoint if checkpoint else None]
        check_outputs(outputs(json=json_path), read_files, overwrite=overwrite)
    root = Path(root if bare else d.root).expanduser()
    found: list[Finding] = []
    read = [_read(p, found) for p in paths]
    present = [listed for listed in read if listed is not None]
    source = source or (_detect_source(present) if bare else d.source)
    check_source(source)
    options = ("--root", "--source") if bare else ("data.root", "data.source")
    for listed in present:
        args = (listed, root, source, d.frame_template)
        _rule("list.missing", found, check_present, *args, options=options, file=listed.path)
    if bare and present:
        found += _bare_rules(recipe, present, source)
    elif read and read[0] is not None:
        val = read[1] if len(read) > 1 else None
        found += _recipe_list_rules(recipe, read[0], val, processes, nodes)
    if checkpoint is not None and present:
        found += _checkpoint_rules(present, checkpoint)
    decoded = 0
    if decode and present:
        look = Look(
            source, d.backend, d.frame_template, recipe.model.num_segments, d.scale_size, full
        )
        decoded = _decode(present, root, look, workers, found)
    order = {severity: rank for rank, severity in enumerate(SEVERITIES)}
    result = DoctorResult(
        tuple(sorted(found, key=lambda f: order[f.severity])),  # stable: checks stay in order
        tuple(paths),
        sum(len(listed.entries) for listed in present),
        decoded,
        time.perf_counter() - begin,
    )
    if json_path is not None:
        atomic_write(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _decode(
    read: Sequence[ListFile], root: Path, look: Look, workers: int | None, found: list[Finding]
) -> int:
    """Step 3: every clip decoded; its findings and the summary's added to ``found``.
    Returns how many decoded."""
    clips = _clips(read, root, look.source, look.template)
    data_found, facts = inspect_all(clips, root, look, workers or run_checks.available_cores())
    found += data_found + summary(facts, look)
    return len(facts)


def _check_arguments(
    recipe: Recipe | None,
    bare: bool,
    root: str | Path | None,
    processes: int,
    nodes: int,
    workers: int | None,
) -> None:
    if bare and root is None:
        raise UsageError("--list needs --root, the folder its paths are relative to")
    if not bare and recipe is None:
        raise UsageError("give a recipe (--recipe) or lists (--list with --root)")
    if min(processes, nodes) < 1 or (workers is not None and workers < 1):
        raise UsageError("--gpus, --nodes and --workers must be at least 1")


def _read(path: Path, found: list[Finding]) -> ListFile | None:
    try:
        return read_list_file(path)
    except TSMError as exc:
        found.append(Finding.from_error("list.read", exc, path))
        return None


def _detect_source(read: Sequence[ListFile]) -> str:
    """Videos when every listed path is named like one, else frame folders."""
    entries = (e for listed in read for e in listed.entries)
    return "videos" if all(is_video(Path(e.path)) for e in entries) else "frames"


def _rule(check: str, found: list[Finding], rule, *args, file=None, **kwargs) -> Any:
    """Call a rule that raises; its error becomes a finding. Returns what it returns (None
    when it raised)."""
    try:
        return rule(*args, **kwargs)
    except TSMError as exc:
        found.append(Finding.from_error(check, exc, file))
        return None


def _bare_rules(recipe: Recipe, read: list[ListFile], source: str) -> list[Finding]:
    """Bare lists: labels against each list's ``classes.txt``, videos listed twice or in two
    of the lists, the class sizes of the first, segments and the decoder."""
    found: list[Finding] = []
    for k, listed in enumerate(read):
        _rule("list.labels", found, listed.check_classes, file=listed.path)
        found += duplicate_entries(listed)
        found += [f for other in read[:k] for f in train_val_overlap(other, listed)]
    first = read[0]
    found += class_balance(first, _bare_classes(read), first.classes, remedied=False)
    found += run_checks.segments(first, recipe.model.num_segments)
    found += run_checks.decoder(source, recipe.data.backend)
    return found


def _recipe_list_rules(
    recipe: Recipe, train: ListFile, val: ListFile | None, processes: int, nodes: int
) -> list[Finding]:
    """A recipe's lists: the classes and label rules of ``tsm train``, its rules on the
    recipe itself, then everything ``run_checks.run_findings`` finds."""
    found: list[Finding] = []
    resolved = _rule("list.classes", found, resolve_classes, train, recipe.model.num_classes)
    classes, num_classes = resolved or (train.classes, recipe.model.num_classes)
    found += _recipe_rules(recipe, train, classes)
    if not num_classes:
        return found
    for listed in (train, val):
        if listed is not None:
            _rule("list.labels", found, check_train_labels, listed, num_classes, file=listed.path)
    run_dir = Path(recipe.train.out_dir).expanduser() / recipe.name
    found += run_checks.run_findings(
        recipe, train, val, classes, num_classes, processes=processes, nodes=nodes, run_dir=run_dir
    )
    return found


def _bare_classes(read: Sequence[ListFile]) -> int:
    """A bare list's class count: its ``classes.txt``, else the labels it uses."""
    if read[0].classes:
        return len(read[0].classes)
    return 1 + max(e.label for listed in read for e in listed.entries)


def _recipe_rules(recipe: Recipe, train: ListFile, classes: list[str] | None) -> list[Finding]:
    """The rules ``tsm train`` raises on about the recipe itself: the backbone, the
    checkpoints it names, and ``data.flip: swap``'s pairs."""
    from tsmcli.engine.train import check_arch
    from tsmcli.engine.train_setup import flip_pairs

    found: list[Finding] = []
    _rule("recipe.model", found, check_arch, recipe)
    _rule("recipe.checkpoints", found, check_recipe_checkpoints, recipe, resume=False)
    _rule("recipe.flip", found, flip_pairs, recipe, classes, train.path)
    return found


def _checkpoint_rules(read: Sequence[ListFile], checkpoint: str | Path) -> list[Finding]:
    """What ``tsm eval`` checks of a list against a checkpoint: ``classes.txt``'s count and
    order, and the labels' range. A model zoo name is checked against its entry, whose class
    list comes with the package: nothing is downloaded."""
    from tsmcli.model.checkpoint import read_checkpoint
    from tsmcli.zoo_cache import locate

    found: list[Finding] = []
    located = _rule("checkpoint.read", found, locate, checkpoint, file=checkpoint)
    if located is None:
        return found
    where, entry = located
    if entry is not None and not where.is_file():
        label, stored = f"{entry.name} ({where})", entry.class_names()
        count = len(stored) if stored else None
    else:
        info = _rule("checkpoint.read", found, read_checkpoint, checkpoint, file=checkpoint)
        if info is None:
            return found
        label, stored = info.label, list(info.classes) if info.classes else None
        count = (info.model_config or {}).get("num_classes") or (len(stored) if stored else None)
    if count is None:
        return found
    checked: set[Path] = set()  # a classes.txt beside two lists is checked once
    for listed in read:
        classes_file = listed.path.parent / CLASSES_FILE
        if classes_file not in checked:
            checked.add(classes_file)
            args = (listed, count, stored, label)
            if (
                _rule("checkpoint.classes", found, eval_class_names, *args, file=listed.path)
                is None
            ):
                continue
            if listed.classes and stored and listed.classes != stored:
                found.append(names_differ(classes_file, label))
        _rule(
            "checkpoint.labels",
            found,
            listed.check_labels,
            count,
            owner=label,
            hint=EVAL_HINT,
            error=CheckpointError,
            file=listed.path,
        )
    return found


def _clips(read: Sequence[ListFile], root: Path, source: str, template: str) -> list[Clip]:
    """Each listed video or frame folder once (the first listing names it), leaving out those
    ``check_present`` reported missing: a video that is not there or empty, a frame folder
    that is not there (one whose first or last frame is missing is looked into)."""
    seen: set[str] = set()
    clips = []
    for listed in read:
        if source == "videos":
            absent = set(find_missing(listed.entries, root, source, template))
        else:
            absent = {e.path for e in listed.entries if not os.path.lexists(root / e.path)}
        for index, entry in enumerate(listed.entries):
            key = os.path.normpath(entry.path)
            if key in seen or entry.path in absent:
                continue
            seen.add(key)
            clips.append(Clip(entry.path, entry.num_frames, f"{listed.path}:{listed.line(index)}"))
    return clips
