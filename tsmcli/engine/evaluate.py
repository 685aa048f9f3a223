"""Evaluate a checkpoint on a TSN list: ``tsm eval`` and ``tsmcli.evaluate``.

Each video is cut into V views (temporal clips x spatial crops, ``views.Protocol``); every
view is a T-frame clip scored by the model, and the V score vectors of a video are averaged
*before* top-k, as in the official TSM test. The model and its data settings (segments, input
size, decoder) come from the recipe stored in our checkpoints; official TSM and mmaction2
checkpoints carry no recipe, so their architecture is given (``arch=ArchOverrides(arch=...,
num_segments=..., shift=...)``) or comes with a model zoo name (``tsm-k400-r50-8f``), and is
never guessed from the file name. The checkpoint is
read once (``model.checkpoint.read_checkpoint``); a caller that has read it passes the
``CheckpointInfo`` instead of the path.

``run_eval`` is the one entry of ``tsm eval``: a checkpoint goes to ``evaluate``, an exported
online model dir to ``engine.online.evaluate_online``, and the clip model dir of ``tsm export``
(``model.clip_dir``) to ``evaluate`` too: its ONNX model in ONNX Runtime takes the place of
the PyTorch model in the same loader, views and scoring, so the two give the same scores.
``precision``: ``bf16`` runs the PyTorch model under autocast (native bf16 only), ``int8`` an
exported int8 model (``engine.precision``).

Distributed (``torchrun ... -m tsmcli eval``): rank r scores videos r, r + W, r + 2W, ...
of the list (no padding), the scores are gathered with their list indices, and every rank
computes the metrics over each video exactly once, so the numbers equal a single process's.
Only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli import errors
from tsmcli.data.lists import CLASSES_FILE, ListEntry, ListFile, read_list_file
from tsmcli.engine import distributed, online
from tsmcli.engine.checks import EVAL_HINT, check_present, eval_class_names
from tsmcli.engine.metrics import AverageMode
from tsmcli.engine.precision import check_precision, in_precision
from tsmcli.engine.reports import EvalResult, eval_result, report_outputs, write_reports
from tsmcli.engine.scoring import score_batches, views_loader
from tsmcli.engine.views import EvalData, Protocol, Views, resolve_views, view_request
from tsmcli.errors import CheckpointError, TSMError, UsageError
from tsmcli.fileio import atomic_write, check_outputs, check_writable_dir, outputs
from tsmcli.model.checkpoint import CheckpointInfo, as_info, load_model, missing_architecture
from tsmcli.model.clip_dir import ClipModelDir, load_clip_dir
from tsmcli.model.spec import ArchOverrides
from tsmcli.recipe import Recipe
from tsmcli.view_request import ViewRequest
from tsmcli.zoo_cache import local_path

log = logging.getLogger(__name__)

_CLI_OPTION = {"arch": "--arch", "num_segments": "--segments", "shift": "--shift"}


@dataclass(frozen=True)
class EvalOptions:
    """``evaluate``'s keywords: how a checkpoint is evaluated and what is written.

    ``views`` is a preset name, a ``ViewRequest`` (a preset and the fields to change; None:
    the checkpoint's default) or a ``Protocol`` to run as it is. ``arch`` gives or changes the
    model's architecture. ``source``/``backend`` replace the recipe's. ``batch_size`` counts
    videos (each with all its views). ``workers`` are DataLoader processes (default: up to
    4). ``device`` is ``auto`` (None), ``cpu`` or ``cuda``. ``out_dir`` (reports) and
    ``json_path`` (the summary) are checked before any work and replace earlier files only
    with ``overwrite``. ``precision``: ``fp32``, ``bf16`` (the PyTorch model under autocast,
    where bf16 is native) or ``int8`` (an exported model dir's int8 ONNX model).
    """

    views: Views = None
    arch: ArchOverrides | None = None
    source: str | None = None
    backend: str | None = None
    batch_size: int = 4
    workers: int | None = None
    device: str | None = None
    out_dir: str | Path | None = None
    json_path: str | Path | None = None
    overwrite: bool = False
    precision: str = "fp32"


Model = str | Path | CheckpointInfo | ClipModelDir  # what evaluate and predict take


def run_eval(
    list_file: str | Path,
    root: str | Path,
    *,
    checkpoint: str | Path | CheckpointInfo | None = None,
    online_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
    trust_torchscript: bool = False,
    stride: int | None = None,
    **options: Any,
) -> EvalResult | online.OnlineEvalResult:
    """``tsm eval``: exactly one of a checkpoint or the clip model dir of ``tsm export``
    (``evaluate``, with ``options``: the fields of ``EvalOptions``), or an exported online
    model dir (``evaluate_online``: ``stride``, ``trust_torchscript`` and, of ``options``,
    ``source``, ``backend``, ``precision`` and the outputs apply; the view and model options
    are not used)."""
    opts = EvalOptions(**options)
    check_precision(opts.precision)
    if sum(given is not None for given in (checkpoint, online_dir, model_dir)) != 1:
        raise UsageError(
            "give exactly one of --checkpoint CKPT, --model MODEL_DIR (tsm export) or "
            "--online MODEL_DIR (tsm convert-online)"
        )
    for option, given in (("--trust-torchscript", trust_torchscript), ("--stride", stride)):
        if online_dir is None and given not in (None, False):
            raise UsageError(f"{option} applies to --online only; drop it")
    if model_dir is not None:
        checkpoint = load_exported(model_dir, opts.precision)
    if online_dir is None:
        return evaluate(checkpoint, list_file, root, **options)
    model_files = [p for p in Path(online_dir).glob("*") if p.is_file()]
    check_eval_outputs(opts.out_dir, opts.json_path, list_file, model_files, opts.overwrite)
    result = online.evaluate_online(
        online_dir,
        list_file,
        root,
        source=opts.source,
        backend=opts.backend,
        stride=stride,
        trust_torchscript=trust_torchscript,
        precision=opts.precision,
    )
    if opts.out_dir is not None or opts.json_path is not None:
        _write(result, opts.out_dir, opts.json_path)
    return result


def load_exported(model_dir: str | Path, precision: str) -> ClipModelDir:
    """The clip model dir of ``tsm export`` in ``precision`` (fp32 or int8: its ONNX files);
    bf16 is the PyTorch checkpoint's, a ``UsageError`` here."""
    if check_precision(precision) == "bf16":
        raise UsageError(
            "--precision bf16 runs a PyTorch checkpoint (--checkpoint); an exported model dir "
            "holds ONNX models in fp32 and int8"
        )
    return load_clip_dir(model_dir, precision)


def evaluate(
    checkpoint: Model, list_file: str | Path, root: str | Path, **options: Any
) -> EvalResult:
    """Top-1 / top-5 / mean class accuracy of ``checkpoint`` (a checkpoint, or an exported
    ``ClipModelDir``: ``load_exported``) on the videos of ``list_file``; ``options`` are the
    fields of ``EvalOptions`` (views, arch, device, outputs, precision, ...). Under torchrun the
    list is sharded over the ranks; every rank returns the same result.
    """
    opts = EvalOptions(**options)
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {opts.batch_size}")
    check_model_precision(checkpoint, opts.precision, opts.device)
    request = view_request(opts.views)
    check_eval_outputs(
        opts.out_dir, opts.json_path, list_file, [checkpoint_file(checkpoint)], opts.overwrite
    )
    exported = isinstance(checkpoint, ClipModelDir)  # ONNX Runtime runs it on the CPU
    ctx = distributed.setup("cpu" if exported else opts.device, option="--device")
    try:
        return _evaluate(ctx, checkpoint, Path(list_file), Path(root), request, opts)
    finally:
        distributed.teardown(ctx)


def _evaluate(
    ctx: distributed.DistContext,
    checkpoint: str | Path | CheckpointInfo,
    list_file: Path,
    root: Path,
    request: ViewRequest | Protocol,
    opts: EvalOptions,
) -> EvalResult:
    listed = read_list_file(list_file)
    entries = listed.entries
    arch = opts.arch or ArchOverrides()
    model, data, stored_classes, path = load_for_eval(checkpoint, arch, opts.source, opts.backend)
    if not isinstance(checkpoint, ClipModelDir):  # an exported model runs in its own precision
        model = in_precision(model, opts.precision, ctx.device)
    num_classes = int(model.num_classes)
    classes = eval_class_names(listed, num_classes, stored_classes, path)
    listed.check_labels(num_classes, owner=str(path), hint=EVAL_HINT, error=CheckpointError)
    source = data.source or detect_source(entries, root)
    check_present(listed, root, source, data.frame_template, options=("--root", "--source"))
    protocol = (
        request if isinstance(request, Protocol) else resolve_views(request, data.dense_training)
    )
    segments, batch_size = int(model.num_segments), opts.batch_size
    loader, sampler = _loader(
        listed, root, segments, data, source, protocol, batch_size, opts.workers, ctx
    )
    model = model.to(ctx.device).eval()

    begin = time.perf_counter()
    shard = _score_shard(model, loader, len(sampler), protocol.average, ctx)
    _, scores, views = _gather(shard, ctx, len(entries))
    elapsed = time.perf_counter() - begin

    result = eval_result(
        entries,
        scores,
        views,
        protocol,
        path,
        classes,
        videos_per_s=len(entries) / elapsed if elapsed > 0 else float("inf"),
    )
    if ctx.is_main:
        _write(result, opts.out_dir, opts.json_path)
    return result


def checkpoint_file(checkpoint: Model) -> Path:
    """The file a checkpoint argument stands for, before it is read (a model zoo name: its
    cache path), for the checks that an output is not an input."""
    if isinstance(checkpoint, CheckpointInfo | ClipModelDir):
        return checkpoint.path
    return local_path(checkpoint)


def check_model_precision(checkpoint: Model, precision: str, device: str | None) -> None:
    """Before any work: int8 is an exported model's, and an exported model runs on the CPU."""
    check_precision(precision)
    exported = isinstance(checkpoint, ClipModelDir)
    if precision == "int8" and not exported:
        in_precision(None, precision, torch.device("cpu"))  # its one-line UsageError
    if exported and device == "cuda":
        raise UsageError("--device cuda: an exported model runs in ONNX Runtime on the CPU")


def load_for_eval(
    checkpoint: Model,
    arch: ArchOverrides,
    source: str | None,
    backend: str | None,
) -> tuple[torch.nn.Module, EvalData, Sequence[str] | None, Path]:
    """The model, how its videos are read, its stored class names and the file's path. The
    file is read once, here, and only the model is kept. An exported ``ClipModelDir`` brings
    its ONNX model and the recipe stored at export, read as a checkpoint's."""
    if isinstance(checkpoint, ClipModelDir):
        if arch.given():
            raise UsageError(
                "--arch, --segments and --shift apply to checkpoints; an exported model dir "
                "records its architecture"
            )
        recipe = Recipe.from_stored(checkpoint.recipe, str(checkpoint.path))
        data = EvalData.from_recipe(recipe, source=source, backend=backend)
        sizes = {"input_size": checkpoint.input_size, "scale_size": checkpoint.scale_size}
        return checkpoint.model, replace(data, **sizes), checkpoint.classes, checkpoint.path
    info = as_info(checkpoint, arch)  # an arch a zoo name contradicts: before any download
    missing = missing_architecture(info, arch)
    if missing:
        raise CheckpointError(
            f"{info.path}: an {info.format} TSM checkpoint does not record its architecture; "
            f"give {', '.join(_CLI_OPTION.get(k, k) for k in missing)} (e.g. --arch resnet50 "
            "--segments 8 --shift bidirectional; in Python arch=ArchOverrides(arch='resnet50', "
            "num_segments=8, shift='bidirectional'))"
        )
    recipe = Recipe.from_stored(info.recipe, str(info.path))
    data = EvalData.from_recipe(recipe, source=source, backend=backend)
    model = load_model(info, arch=arch)
    return model, data, info.classes, info.path


def detect_source(entries: Sequence[ListEntry], root: Path) -> str:
    """frames when the first listed path is a folder, else videos (checkpoints without a recipe)."""
    return "frames" if (root / entries[0].path).is_dir() else "videos"


def _loader(
    listed: ListFile,
    root: Path,
    num_segments: int,
    data: EvalData,
    source: str,
    protocol: Protocol,
    batch_size: int,
    workers: int | None,
    ctx: distributed.DistContext,
) -> tuple[Any, distributed.ShardedSampler]:
    """The test-mode loader of this rank's share of the list, and its sampler."""
    from tsmcli.data.dataset import VideoClipDataset

    dataset = VideoClipDataset(
        listed,
        root,
        clip=data.clip(num_segments),
        reading=data.reading(source),
        views=protocol,
    )
    sampler = distributed.ShardedSampler(
        len(dataset), rank=ctx.rank, world_size=ctx.world_size, shuffle=False, pad=False
    )
    return views_loader(dataset, batch_size, workers, ctx.device, sampler=sampler), sampler


def check_eval_outputs(
    out_dir: str | Path | None,
    json_path: str | Path | None,
    list_file: str | Path,
    models: Sequence[Path],
    overwrite: bool,
) -> None:
    """The outputs of ``tsm eval`` (``fileio.check_outputs``), before any work: the reports of
    ``--out`` and the ``--json`` summary, none of them an input (the model's files, the list,
    its classes.txt) or an earlier evaluation's file unless ``overwrite``."""
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
    files = outputs(json=json_path) + report_outputs(out_dir)
    inputs = [*models, list_file, Path(list_file).parent / CLASSES_FILE]
    check_outputs(files, inputs, overwrite=overwrite)


def _write(metrics: EvalResult, out_dir: str | Path | None, json_path: str | Path | None) -> None:
    """The reports and the JSON summary that were asked for (rank 0)."""
    if out_dir is not None:
        write_reports(metrics, out_dir)
    if json_path is not None:
        text = json.dumps(metrics.summary(), indent=2, allow_nan=False)
        atomic_write(Path(json_path), text + "\n")
    log.info(
        "top-1 %.2f  top-5 %.2f  mean class %.2f  (%d videos, %d views)",
        metrics.top1,
        metrics.top5,
        metrics.mean_class_accuracy,
        metrics.num_videos,
        metrics.views,
    )


@dataclass
class _Shard:
    indices: Tensor  # (n,) list positions scored by this rank
    scores: Tensor  # (n, K) view-averaged
    views: int | None
    error: tuple[str, str] | None = None  # (exception class name, message)


def _score_shard(
    model: torch.nn.Module, loader, total: int, average: AverageMode, ctx: distributed.DistContext
) -> _Shard:
    """Score this rank's videos. Under torchrun an error is caught and passed on through the
    gather, so every rank raises it instead of the others waiting forever in the collective."""
    from tqdm import tqdm

    from tsmcli.data.dataset import loader_errors

    indices, scores, views = [], [], None
    bar = tqdm(total=total, desc="eval", unit="video", disable=True if not ctx.is_main else None)
    try:
        with torch.inference_mode(), bar, loader_errors("--workers"):
            for batch_indices, batch_scores, batch_views in score_batches(
                model, loader, average, ctx.device
            ):
                views = batch_views
                scores.append(batch_scores)
                indices.append(batch_indices)
                bar.update(len(batch_indices))
    except Exception as exc:
        if not ctx.distributed:
            raise
        return _Shard(
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, 0),
            None,
            (type(exc).__name__, str(exc)),
        )
    if not scores:
        return _Shard(
            torch.zeros(0, dtype=torch.long), torch.zeros(0, int(model.num_classes)), None
        )
    return _Shard(torch.cat(indices), torch.cat(scores), views)


def _gather(
    shard: _Shard, ctx: distributed.DistContext, num_videos: int
) -> tuple[Tensor, Tensor, int]:
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
        raise RuntimeError(
            f"scored {indices.numel()} videos for a list of {num_videos}; "
            "each video must be scored exactly once"
        )
    views = max(p.views for p in parts if p.views is not None)
    return indices[order], scores[order], views
