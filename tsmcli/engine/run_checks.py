"""The checks of a training run before its first step: the recipe against its lists and the
machine it runs on. Counting and reading headers only, no video decoded, so ``tsm train``
runs them all at start (logging the warnings, stopping on the first error) and ``tsm doctor``
reports them beside its own.

- the learning rate: the recipe's is for ``optim.reference_batch_size``; the run trains at
  it scaled linearly to the global batch, accumulated batches included (a note), and a large
  step up without warmup is a warning;
- batch norm: starting from trained weights, a batch of fewer than ``BN_MIN_BATCH`` clips a
  process makes noisy statistics unless ``model.partial_bn`` keeps the trained ones;
- mirroring: ``data.flip: on`` keeps the label of a mirrored clip, wrong where the dataset
  pairs left and right classes or the class names say a side;
- segments against the shortest video of the list, loader workers against the cores, the
  decoder the recipe names, the disk space at the run dir for its checkpoints.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tsmcli.data.lists import CLASSES_FILE, ListFile
from tsmcli.engine.checks import list_findings
from tsmcli.engine.findings import Finding
from tsmcli.errors import OutputError, RecipeError, TSMError
from tsmcli.recipe import Recipe, TrainConfig

log = logging.getLogger(__name__)

# Fewer clips than this a process and batch norm's statistics get noisy (Wu and He, Group
# Normalization, 2018: ImageNet error climbs from a batch of 8 down)
BN_MIN_BATCH = 8
# Scaling the lr up more than this with no warmup tends to diverge in the first steps (Goyal
# et al., 2017, warm up over 5 epochs for large batches)
WARMUP_SCALE = 8
# words in a class name that say which side (a mirror swaps them)
SIDES = frozenset(
    {"left", "right", "leftward", "rightward", "clockwise", "counterclockwise", "anticlockwise"}
)
SHOWN_PER_CHECK = 3  # findings of one check tsm train logs; tsm doctor lists them all
DECODERS = {"decord": ("decord", "decord2"), "pyav": ("av", "av")}  # module, package


def run_findings(
    recipe: Recipe,
    train: ListFile,
    val: ListFile | None,
    classes: Sequence[str] | None,
    num_classes: int,
    *,
    processes: int,
    nodes: int,
    run_dir: Path,
) -> list[Finding]:
    """Every fast check of a run whose lists passed the rules: the lists' findings
    (``checks.list_findings``) and the recipe's against them and this machine. ``processes``
    per node times ``nodes`` make the global batch."""
    d, t = recipe.data, recipe.train
    remedied = d.sampler == "balanced" or t.class_weights == "auto"
    found = list_findings(train, val, num_classes, classes, remedied=remedied)
    found += segments(train, recipe.model.num_segments)
    found += learning_rate(recipe, processes * nodes)
    found += batch_norm(recipe, processes * nodes)
    found += mirroring(recipe, classes, train.path)
    found += remedies(recipe)
    found += workers(t.workers, processes)
    found += decoder(d.source, d.backend)
    found += disk_space(recipe, num_classes, run_dir)
    return found


def stop_or_log(found: Sequence[Finding], is_main: bool) -> None:
    """``tsm train``'s use of the findings: stop with the first error; log the warnings (the
    first few of each check) on the main process."""
    errors = [f for f in found if f.severity == "error"]
    if errors:
        raise errors[0].error()
    if not is_main:
        return
    shown: dict[str, int] = {}
    for finding in found:
        if finding.severity != "warning":
            continue
        shown[finding.check] = shown.get(finding.check, 0) + 1
        if shown[finding.check] <= SHOWN_PER_CHECK:
            log.warning("%s", finding.line)
    for check, count in shown.items():
        if count > SHOWN_PER_CHECK:
            log.warning(
                "... and %d more %s warnings (tsm doctor lists them all)",
                count - SHOWN_PER_CHECK,
                check,
            )


def segments(listed: ListFile, num_segments: int) -> list[Finding]:
    """Videos with fewer frames (as the list gives them) than a clip has segments."""
    short = [i for i, e in enumerate(listed.entries) if e.num_frames < num_segments]
    if not short:
        return []
    shortest = min(short, key=lambda i: listed.entries[i].num_frames)
    entry = listed.entries[shortest]
    return [
        Finding(
            "warning",
            "recipe.segments",
            f"{listed.path}: {len(short)} of {len(listed.entries)} videos have fewer frames "
            f"than model.num_segments ({num_segments}); the shortest is {entry.path} "
            f"({entry.num_frames} frames, line {listed.line(shortest)})",
            f"their clips repeat frames: lower model.num_segments to {entry.num_frames}, or "
            "leave the short videos out",
            str(listed.path),
        )
    ]


def learning_rate(recipe: Recipe, processes: int) -> list[Finding]:
    """The lr the run trains at (a note), and a warning where it is scaled up a lot with no
    warmup."""
    from tsmcli.engine.optim import scaled_lr

    o, t = recipe.optim, recipe.train
    global_batch = step_batch(t, processes)
    lr = scaled_lr(o.lr, o.reference_batch_size, global_batch)
    accumulated = f" x {t.accumulate} accumulated (train.accumulate)" if t.accumulate > 1 else ""
    found = [
        Finding(
            "note",
            "recipe.lr",
            f"optim.lr {o.lr:g} is for a global batch of {o.reference_batch_size} "
            f"(optim.reference_batch_size); this run's is {t.batch_size} a process x "
            f"{processes} process(es){accumulated} = {global_batch}, so it trains at lr "
            f"{lr:.4g} (scaled linearly)",
            "to train at another lr, change optim.lr (given for the reference batch)",
        )
    ]
    if global_batch >= WARMUP_SCALE * o.reference_batch_size and o.warmup_epochs == 0:
        found.append(
            Finding(
                "warning",
                "recipe.warmup",
                f"the lr is scaled up {global_batch / o.reference_batch_size:g}x (global batch "
                f"{global_batch} for optim.reference_batch_size {o.reference_batch_size}) "
                "with optim.warmup_epochs 0, which tends to diverge in the first steps",
                "set optim.warmup_epochs=5 (Goyal et al.)",
            )
        )
    return found


def step_batch(t: TrainConfig, processes: int) -> int:
    """The global batch: the clips of one optimizer step, ``train.batch_size`` a process x
    the processes x ``train.accumulate``; the lr is scaled to it."""
    return t.batch_size * processes * t.accumulate


def batch_norm(recipe: Recipe, processes: int) -> list[Finding]:
    """Batch norm over too few clips while fine-tuning trained weights without partial BN.
    Each process normalises over its own batch (all of them with ``train.sync_bn``)."""
    m, t = recipe.model, recipe.train
    clips = t.batch_size * (processes if t.sync_bn else 1)
    if clips >= BN_MIN_BATCH or m.partial_bn or not (m.pretrained or m.init_from):
        return []
    return [
        Finding(
            "warning",
            "recipe.batch_norm",
            f"train.batch_size {t.batch_size}: batch norm normalises over {clips} clips, too few "
            f"for steady statistics (under {BN_MIN_BATCH}), and model.partial_bn is off while "
            "the model starts from trained weights",
            "set model.partial_bn=true (keeps the trained statistics, as the official "
            "fine-tuning does), or raise train.batch_size (train.sync_bn=true across GPUs)",
        )
    ]


def sided(name: str) -> bool:
    """Whether a class name says a side (``Swiping Left``, ``moving_right``, ``TurnLeft``)."""
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower()
    return any(word in SIDES for word in re.findall(r"[a-z]+", words))


def mirroring(recipe: Recipe, classes: Sequence[str] | None, train_list: Path) -> list[Finding]:
    """``data.flip: on`` where a mirror turns one class into another: the dataset's manifest
    pairs left/right classes, or the class names say a side."""
    d = recipe.data
    if d.flip != "on":
        return []
    pairs = _manifest_pairs(d.dataset, classes)
    named = [c for c in classes or () if sided(c)]
    if not pairs and not named:
        return []
    if pairs:
        a, b = pairs[0]
        reason = f"dataset {d.dataset}'s manifest pairs mirror-image classes ({a} and {b})"
        fix = "set data.flip=swap (mirror and swap the pair's labels) or data.flip=off"
    else:
        shown = ", ".join(repr(c) for c in named[:SHOWN_PER_CHECK])
        reason = f"classes in {train_list.parent / CLASSES_FILE} name a side ({shown})"
        fix = "set data.flip=off (or swap, with a data.dataset manifest that pairs them)"
    return [
        Finding(
            "error",
            "recipe.flip",
            f"data.flip: on mirrors training clips and keeps their labels, but {reason}: a "
            "mirrored clip of one would be trained as the other",
            fix,
            str(train_list.parent / CLASSES_FILE) if not pairs else None,
            RecipeError,
        )
    ]


def _manifest_pairs(dataset: str | None, classes: Sequence[str] | None) -> list[tuple[str, str]]:
    """The names of the left/right pairs of the dataset's manifest among ``classes``."""
    if dataset is None:
        return []
    from tsmcli.data.manifest import load_manifest

    try:
        manifest = load_manifest(dataset)
    except TSMError:  # an unknown name: data.flip on does not read the manifest
        return []
    if not manifest.flip_pairs:
        return []
    if classes:
        return [(classes[a], classes[b]) for a, b in manifest.flip_pairs_for(list(classes))]
    official = manifest.classes("official")
    return [(official[a], official[b]) for a, b in manifest.flip_pairs]


def remedies(recipe: Recipe) -> list[Finding]:
    """Both imbalance remedies at once favour the rare classes twice."""
    if recipe.data.sampler != "balanced" or recipe.train.class_weights != "auto":
        return []
    return [
        Finding(
            "warning",
            "recipe.remedies",
            "data.sampler is balanced and train.class_weights auto: the small classes are "
            "favoured twice, once in the draws and once in the loss",
            "keep one of the two",
        )
    ]


def available_cores() -> int:
    """The cores this process may run on (its affinity; the count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def workers(count: int, processes: int) -> list[Finding]:
    """More loader workers (and trainers) on a node than it has cores: they only contend."""
    cores = available_cores()
    needed = processes * (count + 1)
    if needed <= cores:
        return []
    return [
        Finding(
            "warning",
            "recipe.workers",
            f"train.workers {count}: {processes} training process(es) with {count} loader "
            f"workers each make {needed} processes on {cores} cores",
            f"lower train.workers to {max(0, cores // processes - 1)} (processes beyond the "
            "cores only take turns)",
        )
    ]


def decoder(source: str, backend: str) -> list[Finding]:
    """The video decoder ``data.backend`` names imports (videos only: frames are JPEGs)."""
    if source != "videos":
        return []
    module, package = DECODERS[backend]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        other = next(b for b in DECODERS if b != backend)
        return [
            Finding(
                "error",
                "recipe.decoder",
                f"data.backend {backend}: the {module} package does not import ({exc})",
                f"install it (pip install {package}) or set data.backend={other}",
                kind=RecipeError,
            )
        ]
    return []


def disk_space(recipe: Recipe, num_classes: int, run_dir: Path) -> list[Finding]:
    """Room at the run dir for a checkpoint save: the model's weights and buffers in float32
    and the optimiser's state (SGD momentum: one more copy; AdamW: two), twice, as a save
    writes the new file beside the old one before it replaces it (best.pt is a link)."""
    numel = model_numel(recipe, num_classes)
    o = recipe.optim
    copies = 1 + (2 if o.optimizer == "adamw" else int(o.momentum > 0))
    checkpoint = 4 * numel * copies
    where = next(p for p in [run_dir, *run_dir.parents] if p.exists())
    free = shutil.disk_usage(where).free
    if free < 2 * checkpoint:
        return [
            Finding(
                "error",
                "recipe.disk",
                f"{run_dir}: {_size(free)} free on its disk, and saving a checkpoint of this "
                f"model ({numel / 1e6:.1f} M weights with the optimiser's state, about "
                f"{_size(checkpoint)}) needs {_size(2 * checkpoint)}",
                "free some space, or set train.out_dir (or --out) to a disk with room",
                str(run_dir),
                OutputError,
            )
        ]
    return [
        Finding(
            "note",
            "recipe.disk",
            f"{run_dir}: checkpoints of about {_size(checkpoint)} ({numel / 1e6:.1f} M weights "
            f"with the optimiser's state); {_size(free)} free on its disk",
            "nothing to do: a save needs twice that",
            str(run_dir),
        )
    ]


def model_numel(recipe: Recipe, num_classes: int) -> int:
    """Weights and buffers of the recipe's model, counted on the meta device (no memory)."""
    import torch

    from tsmcli.model.tsn import TSN

    with torch.device("meta"):
        model = TSN(recipe.model.spec(num_classes))
    return sum(t.numel() for t in model.state_dict().values())


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
