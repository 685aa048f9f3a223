"""Evaluate a checkpoint on a TSN list: ``tsm eval`` and ``tsmcli.evaluate``.

Each video is cut into V views (temporal clips x spatial crops); every view is a T-frame clip
scored by the model, and the V score vectors of a video are averaged *before* top-k, as in the
official TSM test. The model and its data settings (segments, input size, decoder) come from
the recipe stored in our checkpoints; official TSM and mmaction2 checkpoints carry no recipe,
so their architecture is given by keyword (``arch``, ``num_segments``, ``shift``, ...) and
never guessed from the file name.

Test protocols (presets; any explicit option overrides one field of the preset). The crop
sizes are those of a 224 recipe (``data.input_size`` 224, ``data.scale_size`` 256); other
recipes scale the same way. Each accuracy is the published top-1 of one official TSM
ResNet-50 8-frame checkpoint (named as in the model zoo, ``tsmcli/zoo.yaml``, which gives
the source of every number): a number belongs to a checkpoint and a protocol together.

=========  =====  =====  ======================================  ============================
protocol   clips  crops  views of a video                        published top-1 (checkpoint)
=========  =====  =====  ======================================  ============================
single     1      1      segment centres; short side 256,        K400 71.2, 72.8 with
                         centre 224                              crops=10 (tsm-k400-r50-8f:
                                                                 uniform, 50 epochs)
kinetics   10     3      dense (T frames, stride 64/T, 10        K400 74.1
                         starts); short side 256, three          (tsm-k400-r50-8f-dense:
                         256x256 crops (full res)                dense, 100 epochs)
sthv2      1 x2   3      segment centres + starts (twice-        SSv2 61.2
                         sample); short side 256, three          (tsm-sthv2-r50-8f)
                         256x256 crops (full res)
=========  =====  =====  ======================================  ============================

Views: single 1, kinetics 30, sthv2 6. Without ``protocol`` the preset is ``single``, made
dense when the checkpoint's recipe trained with dense sampling.

Distributed (``torchrun ... -m tsmcli eval``): rank r scores videos r, r + W, r + 2W, ...
of the list (no padding), the scores are gathered with their list indices, and every rank
computes the metrics over each video exactly once, so the numbers equal a single process's.
Only rank 0 writes files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli import errors
from tsmcli.data.lists import CLASSES_FILE, ListEntry, classes_for_list, read_list
from tsmcli.engine import distributed
from tsmcli.engine.metrics import (
    AVERAGE_MODES,
    AverageMode,
    average_views,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    rank_classes,
    topk_accuracy,
)
from tsmcli.errors import CheckpointError, DataError, TSMError, UsageError
from tsmcli.fileio import atomic_write, atomic_write_with, check_writable_dir, check_writable_file
from tsmcli.model.checkpoint import (
    REQUIRED_FOR_IMPORT,
    checkpoint_format,
    load_checkpoint,
    load_model,
)

log = logging.getLogger(__name__)

TOP_K = 5
HEATMAP_MAX_CLASSES = 60  # above this a heat map is unreadable: list the top confusions instead
TOP_CONFUSIONS = 50
TEST_CROPS = (1, 3, 10)
_CLI_OPTION = {"arch": "--arch", "num_segments": "--segments", "shift": "--shift"}
JSON_KEYS = ("top1", "top5", "mean_class_accuracy", "num_videos", "views", "checkpoint", "protocol")


@dataclass(frozen=True)
class Protocol:
    """How each video is viewed and how its view scores are combined.

    ``clips`` counts temporal clips before twice-sampling, which doubles them (the official
    Something-Something test: centres and starts of the segments).
    """

    name: str
    clips: int = 1
    crops: int = 1
    full_res: bool = False
    twice_sample: bool = False
    dense: bool = False
    average: AverageMode = "score"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "single": Protocol("single", clips=1, crops=1),
    "kinetics": Protocol("kinetics", clips=10, crops=3, full_res=True, dense=True),
    "sthv2": Protocol("sthv2", clips=1, crops=3, full_res=True, twice_sample=True),
}


def resolve_protocol(name: str | None = None, *, clips: int | None = None,
                     crops: int | None = None, full_res: bool | None = None,
                     twice_sample: bool | None = None, dense: bool | None = None,
                     average: str | None = None) -> Protocol:
    """A preset (``single`` by default) with the explicitly given fields replaced.

    The name records what changed (``single (clips=2)``), so a JSON report never claims a
    preset that was not run.
    """
    base_name = name or "single"
    if base_name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {base_name!r}; choose one of {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[base_name]
    given = {"clips": clips, "crops": crops, "full_res": full_res, "twice_sample": twice_sample,
             "dense": dense, "average": average}
    changes = {k: v for k, v in given.items() if v is not None and v != getattr(base, k)}
    if changes.get("clips", 1) < 1:
        raise UsageError(f"--clips must be at least 1, got {changes['clips']}")
    if changes.get("crops", 1) not in TEST_CROPS:
        raise UsageError(f"--crops must be one of {', '.join(map(str, TEST_CROPS))}, got {changes['crops']}")
    if changes.get("average", "score") not in AVERAGE_MODES:
        raise UsageError(f"--average must be one of {', '.join(AVERAGE_MODES)}, got {changes['average']!r}")
    if not changes:
        return base
    label = ", ".join(f"{k}={v}" for k, v in changes.items())
    return replace(base, name=f"{base.name} ({label})", **changes)


@dataclass(frozen=True)
class ClassAccuracy:
    """One row of per_class.csv; ``accuracy`` is None for a class absent from the list."""

    label: int
    name: str
    support: int
    correct: int
    accuracy: float | None


@dataclass(frozen=True)
class VideoPrediction:
    """One row of predictions.csv: the best classes of a video, best first, with scores."""

    video: str
    label: int
    top_labels: tuple[int, ...]
    top_scores: tuple[float, ...]


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent; ``scores`` are the view-averaged scores in list order."""

    top1: float
    top5: float
    mean_class_accuracy: float
    num_videos: int
    views: int
    videos_per_s: float
    protocol: Protocol
    checkpoint: str
    classes: list[str]
    per_class: list[ClassAccuracy] = field(repr=False)
    confusion: Tensor = field(repr=False)  # (K, K) rows true, columns predicted
    predictions: list[VideoPrediction] = field(repr=False)
    scores: Tensor = field(repr=False)  # (N, K)
    labels: Tensor = field(repr=False)  # (N,)

    def summary(self) -> dict[str, Any]:
        """The JSON report (``--json``): numbers and what produced them."""
        return {"top1": self.top1, "top5": self.top5,
                "mean_class_accuracy": self.mean_class_accuracy, "num_videos": self.num_videos,
                "views": self.views, "checkpoint": self.checkpoint,
                "protocol": self.protocol.to_dict()}


@dataclass(frozen=True)
class _DataSettings:
    source: str | None
    backend: str
    template: str
    input_size: int
    scale_size: int
    dense_training: bool


def evaluate(checkpoint: str | Path, list_file: str | Path, root: str | Path, *,
             protocol: str | None = None, clips: int | None = None, crops: int | None = None,
             full_res: bool | None = None, twice_sample: bool | None = None,
             dense: bool | None = None, average: AverageMode = "score", batch_size: int = 4,
             workers: int | None = None, source: str | None = None, backend: str | None = None,
             arch: str | None = None, num_segments: int | None = None, shift: str | None = None,
             shift_div: int | None = None, shift_place: str | None = None,
             out_dir: str | Path | None = None, json_path: str | Path | None = None,
             device: str | None = None) -> EvalResult:
    """Top-1 / top-5 / mean class accuracy of ``checkpoint`` on the videos of ``list_file``.

    ``batch_size`` counts videos (each with all its views). ``workers`` are DataLoader
    processes (default: up to 4). ``device`` is ``auto`` (None), ``cpu`` or ``cuda``. Under
    torchrun the list is sharded over the ranks; every rank returns the same result.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if device not in (None, "auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")
    resolve_protocol(protocol, clips=clips, crops=crops, full_res=full_res,
                     twice_sample=twice_sample, dense=dense, average=average)  # fail fast
    if out_dir is not None:  # found now, not after the whole evaluation
        check_writable_dir(out_dir, "--out")
    if json_path is not None:
        check_writable_file(json_path, "--json")
    ctx = distributed.setup(device or "auto")
    try:
        return _evaluate(
            ctx, Path(checkpoint), Path(list_file), Path(root), protocol=protocol,
            view_options={"clips": clips, "crops": crops, "full_res": full_res,
                          "twice_sample": twice_sample, "dense": dense, "average": average},
            batch_size=batch_size, workers=workers, source=source, backend=backend,
            arch_overrides={"arch": arch, "num_segments": num_segments, "shift": shift,
                            "shift_div": shift_div, "shift_place": shift_place},
            out_dir=out_dir, json_path=json_path)
    finally:
        distributed.teardown(ctx)


def _evaluate(ctx: distributed.DistContext, checkpoint: Path, list_file: Path, root: Path, *,
              protocol: str | None, view_options: dict[str, Any], batch_size: int,
              workers: int | None, source: str | None, backend: str | None,
              arch_overrides: dict[str, Any], out_dir: str | Path | None,
              json_path: str | Path | None) -> EvalResult:
    entries = read_list(list_file)
    if not entries:
        raise DataError(f"{list_file}: the list is empty; nothing to evaluate")
    model, settings, checkpoint_classes = _load(checkpoint, arch_overrides)
    num_classes = int(model.num_classes)
    classes = _class_names(checkpoint, list_file, num_classes, checkpoint_classes)
    _check_labels(entries, list_file, checkpoint, num_classes)
    source = source or settings.source or _detect_source(entries, root)
    backend = backend or settings.backend
    _check_present(entries, list_file, root, source, settings.template)
    if protocol is None and view_options["dense"] is None and settings.dense_training:
        view_options = {**view_options, "dense": True}
    chosen = resolve_protocol(protocol, **view_options)

    from torch.utils.data import DataLoader

    from tsmcli.data.dataset import VideoClipDataset, collate_clips

    dataset = VideoClipDataset(
        list_file, root, num_segments=int(model.num_segments), mode="test",
        source=source, backend=backend,
        template=settings.template, input_size=settings.input_size,
        scale_size=settings.scale_size, clips=chosen.clips, crops=chosen.crops,
        full_res=chosen.full_res, twice_sample=chosen.twice_sample, dense=chosen.dense,
        skip_bad=False, seed=0)
    sampler = distributed.ShardedSampler(len(dataset), rank=ctx.rank, world_size=ctx.world_size,
                                         shuffle=False, pad=False)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_clips, pin_memory=ctx.device.type == "cuda")
    model = model.to(ctx.device).eval()

    begin = time.perf_counter()
    shard = _score_shard(model, loader, len(sampler), chosen.average, ctx)
    indices, scores, views = _gather(shard, ctx, len(entries))
    elapsed = time.perf_counter() - begin

    result = _result(entries, scores, views, chosen, checkpoint, classes,
                     videos_per_s=len(entries) / elapsed if elapsed > 0 else float("inf"))
    if ctx.is_main:
        if out_dir is not None:
            write_reports(result, out_dir)
        if json_path is not None:
            atomic_write(Path(json_path), json.dumps(result.summary(), indent=2) + "\n")
        log.info("top-1 %.2f  top-5 %.2f  mean class %.2f  (%d videos, %d views)", result.top1,
                 result.top5, result.mean_class_accuracy, result.num_videos, result.views)
    return result


def _load(checkpoint: Path, arch_overrides: dict[str, Any]) -> tuple[torch.nn.Module, _DataSettings, list[str] | None]:
    """The model, the data settings it was trained with, and its class names if stored."""
    overrides = {k: v for k, v in arch_overrides.items() if v is not None}
    raw = load_checkpoint(checkpoint)
    fmt = checkpoint_format(raw)
    ours = fmt == "tsmcli"
    missing = [key for key in REQUIRED_FOR_IMPORT if key not in overrides]
    if fmt in ("official", "mmaction2") and missing:
        raise CheckpointError(
            f"{checkpoint}: an {fmt} TSM checkpoint does not record its architecture; give "
            f"{', '.join(_CLI_OPTION.get(k, k) for k in missing)} (e.g. --arch resnet50 "
            "--segments 8 --shift bidirectional; in Python arch=, num_segments=, shift=)")
    recipe = raw.get("recipe") if ours else None
    data = recipe.get("data", {}) if isinstance(recipe, dict) else {}
    settings = _DataSettings(
        source=data.get("source"), backend=data.get("backend", "decord"),
        template=data.get("frame_template", "img_{:05d}.jpg"),
        input_size=int(data.get("input_size", 224)), scale_size=int(data.get("scale_size", 256)),
        dense_training=data.get("sampling") == "dense")
    classes = raw.get("classes") if ours else None
    del raw  # load_model reads the file itself; do not hold two copies of the weights
    model = load_model(checkpoint, **overrides)
    return model, settings, list(classes) if classes else None


def _class_names(checkpoint: Path, list_file: Path, num_classes: int,
                 checkpoint_classes: list[str] | None) -> list[str]:
    """Class names for the reports; classes.txt beside the list must match the model."""
    list_classes = classes_for_list(list_file)
    if list_classes is not None and len(list_classes) != num_classes:
        raise CheckpointError(
            f"{checkpoint}: the model has {num_classes} classes but {list_file.parent / CLASSES_FILE} "
            f"lists {len(list_classes)}; evaluate on a list of the dataset the model was trained on")
    if list_classes is not None and checkpoint_classes is not None and list_classes != checkpoint_classes:
        log.warning("%s: class names differ from those stored in %s; reporting the list's names",
                    list_file.parent / CLASSES_FILE, checkpoint)
    for names in (list_classes, checkpoint_classes):
        if names is not None and len(names) == num_classes:
            return list(names)
    return [str(i) for i in range(num_classes)]


def _line_number(list_file: Path, entry_index: int) -> int:
    """1-based line of the ``entry_index``-th entry (read_list skips blank lines)."""
    lines = list_file.read_text(encoding="utf-8").splitlines()
    filled = [n for n, line in enumerate(lines, start=1) if line.split()]
    return filled[entry_index]


def _check_labels(entries: Sequence[ListEntry], list_file: Path, checkpoint: Path,
                  num_classes: int) -> None:
    for i, entry in enumerate(entries):
        if entry.label >= num_classes:
            raise CheckpointError(
                f"{list_file}:{_line_number(list_file, i)}: label {entry.label} but {checkpoint} "
                f"has {num_classes} classes (0..{num_classes - 1}); evaluate on a list of the "
                "dataset the model was trained on")


def _detect_source(entries: Sequence[ListEntry], root: Path) -> str:
    """frames when the first listed path is a folder, else videos (checkpoints without a recipe)."""
    return "frames" if (root / entries[0].path).is_dir() else "videos"


def _check_present(entries: Sequence[ListEntry], list_file: Path, root: Path, source: str,
                   template: str) -> None:
    """Fail before any decoding (and on every rank alike) when listed data is missing."""
    from tsmcli.data.dataset import find_missing

    missing = find_missing(entries, root, source, template)
    if missing:
        index = next(i for i, e in enumerate(entries) if e.path == missing[0])
        what = "frame folder (or its first/last frame)" if source == "frames" else "video"
        more = f"; {len(missing)} of {len(entries)} listed are missing" if len(missing) > 1 else ""
        raise DataError(f"{root / missing[0]}: no such {what}, listed at "
                        f"{list_file}:{_line_number(list_file, index)}{more}; check --root and "
                        "--source, or rebuild the list with tsm build-list")


@dataclass
class _Shard:
    indices: Tensor  # (n,) list positions scored by this rank
    scores: Tensor  # (n, K) view-averaged
    views: int | None
    error: tuple[str, str] | None = None  # (exception class name, message)


def _score_shard(model: torch.nn.Module, loader, total: int, average: AverageMode,
                 ctx: distributed.DistContext) -> _Shard:
    """Score this rank's videos. Under torchrun an error is caught and passed on through the
    gather, so every rank raises it instead of the others waiting forever in the collective."""
    from tqdm import tqdm

    from tsmcli.data.dataset import loader_errors

    indices, scores, views = [], [], None
    bar = tqdm(total=total, desc="eval", unit="video", disable=True if not ctx.is_main else None)
    try:
        with torch.inference_mode(), bar, loader_errors("--workers"):
            for batch in loader:
                clips = batch.model_input(ctx.device)  # (B, V, T, 3, S, S)
                b, v = clips.shape[:2]
                logits = model(clips.flatten(0, 1))  # (B*V, K)
                scores.append(average_views(logits.float().cpu().view(b, v, -1), average))  # (B, K)
                indices.append(torch.as_tensor(batch.indices, dtype=torch.long))
                views = v
                bar.update(b)
    except Exception as exc:
        if not ctx.distributed:
            raise
        return _Shard(torch.zeros(0, dtype=torch.long), torch.zeros(0, 0), None,
                      (type(exc).__name__, str(exc)))
    if not scores:
        return _Shard(torch.zeros(0, dtype=torch.long), torch.zeros(0, int(model.num_classes)), None)
    return _Shard(torch.cat(indices), torch.cat(scores), views)


def _gather(shard: _Shard, ctx: distributed.DistContext, num_videos: int) -> tuple[Tensor, Tensor, int]:
    """All ranks' scores in list order, each video exactly once."""
    parts = [shard]
    if ctx.distributed:
        import torch.distributed as dist

        parts = [None] * ctx.world_size
        dist.all_gather_object(parts, shard)
    for rank, part in enumerate(parts):
        if part.error is not None:
            name, message = part.error
            kind = getattr(errors, name, None)
            if isinstance(kind, type) and issubclass(kind, TSMError):
                raise kind(message)
            raise RuntimeError(f"rank {rank}: {name}: {message}")
    indices = torch.cat([p.indices for p in parts])
    scores = torch.cat([p.scores for p in parts if p.scores.numel()])
    order = torch.argsort(indices)
    if not torch.equal(indices[order], torch.arange(num_videos)):
        raise RuntimeError(f"scored {indices.numel()} videos for a list of {num_videos}; "
                           "each video must be scored exactly once")
    views = max(p.views for p in parts if p.views is not None)
    return indices[order], scores[order], views


def _result(entries: Sequence[ListEntry], scores: Tensor, views: int, protocol: Protocol,
            checkpoint: Path, classes: list[str], videos_per_s: float) -> EvalResult:
    num_classes = scores.shape[1]
    labels = torch.tensor([e.label for e in entries], dtype=torch.long)
    accuracy = topk_accuracy(scores, labels, (1, TOP_K))
    ranked = rank_classes(scores)[:, :TOP_K]  # (N, k)
    preds = ranked[:, 0]
    confusion = confusion_matrix(preds, labels, num_classes)
    support, correct, per_class = per_class_accuracy(confusion)
    rows = [ClassAccuracy(k, classes[k], int(support[k]), int(correct[k]),
                          None if support[k] == 0 else float(per_class[k]))
            for k in range(num_classes)]
    top_scores = scores.gather(1, ranked)
    predictions = [VideoPrediction(e.path, e.label, tuple(ranked[i].tolist()),
                                   tuple(top_scores[i].tolist())) for i, e in enumerate(entries)]
    return EvalResult(
        top1=accuracy[1], top5=accuracy[TOP_K],
        mean_class_accuracy=mean_class_accuracy(preds, labels, num_classes),
        num_videos=len(entries), views=views, videos_per_s=videos_per_s, protocol=protocol,
        checkpoint=str(checkpoint), classes=classes, per_class=rows, confusion=confusion,
        predictions=predictions, scores=scores, labels=labels)


# ---------------------------------------------------------------------------------------------
# reports


def write_reports(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """per_class.csv, confusion.csv, a heat map (or top_confusions.txt), predictions.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_write_csv(out / "per_class.csv", ["class", "name", "support", "correct", "accuracy"],
                          [[r.label, r.name, r.support, r.correct,
                            "" if r.accuracy is None else f"{r.accuracy:.4f}"] for r in result.per_class])]
    num_classes = len(result.classes)
    written.append(_write_csv(
        out / "confusion.csv", ["class", "name", *map(str, range(num_classes))],
        [[k, result.classes[k], *result.confusion[k].tolist()] for k in range(num_classes)]))
    if num_classes <= HEATMAP_MAX_CLASSES:
        written.append(_write_heatmap(out / "confusion.png", result.confusion, result.classes))
    else:
        written.append(_write_top_confusions(out / "top_confusions.txt", result.confusion, result.classes))
    k = len(result.predictions[0].top_labels) if result.predictions else 0
    header = ["video", "label", *(c for i in range(1, k + 1) for c in (f"pred_{i}", f"score_{i}"))]
    written.append(_write_csv(out / "predictions.csv", header, [
        [p.video, p.label, *(c for label, score in zip(p.top_labels, p.top_scores, strict=True)
                             for c in (label, f"{score:.6g}"))]
        for p in result.predictions]))
    return written


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())
    return path


def top_confusions(confusion: Tensor, limit: int = TOP_CONFUSIONS) -> list[tuple[int, int, int]]:
    """The most frequent mistakes as ``(true, predicted, count)``, most frequent first (ties:
    lower true class, then lower predicted class)."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    pairs = [(int(t), int(p), int(off[t, p])) for t, p in off.nonzero().tolist()]
    return sorted(pairs, key=lambda x: (-x[2], x[0], x[1]))[:limit]


def _write_top_confusions(path: Path, confusion: Tensor, classes: list[str]) -> Path:
    support = confusion.sum(dim=1)
    lines = [f"# {len(classes)} classes: too many for a readable heat map; the most frequent "
             "confusions (count, share of the true class)"]
    for true, pred, count in top_confusions(confusion):
        share = 100.0 * count / int(support[true])
        lines.append(f"{count}\t{share:.1f}%\t{classes[true]} -> {classes[pred]}")
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def _write_heatmap(path: Path, confusion: Tensor, classes: list[str]) -> Path:
    """Rows normalised to the true class (so rare classes are as visible as common ones)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(classes)
    support = confusion.sum(dim=1, keepdim=True).clamp(min=1)
    share = (100.0 * confusion.double() / support).numpy()  # (K, K)
    side = min(24.0, 3.0 + 0.3 * k)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class")
    fontsize = 8 if k <= 30 else 6
    names = [n if len(n) <= 24 else n[:23] + "…" for n in classes]
    ax.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
        for t in range(k):
            for p in range(k):
                if confusion[t, p]:
                    ax.text(p, t, str(int(confusion[t, p])), ha="center", va="center", fontsize=7,
                            color="white" if share[t, p] > 50 else "black")
    fig.tight_layout()
    return atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
