"""What a training run is built from, once, before its first step: the backends, the data
(checked lists, datasets, samplers, loaders), the model (and a distillation teacher), the
optimiser and its schedule. ``engine.train`` runs the epochs over these.

The order of the steps is part of the run's reproducibility: the global RNG is seeded just
before the model is built, so the same recipe gives the same initial weights on every rank
and in every run (``engine.train`` calls these in a fixed order).
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tsmcli.data.lists import CLASSES_FILE, ListFile, read_list_file
from tsmcli.engine.balance import inverse_frequency_weights
from tsmcli.engine.checks import check_train_list, resolve_classes
from tsmcli.engine.distributed import DistContext, ShardedSampler
from tsmcli.engine.optim import LRSchedule, build_optimizer, fc_lr5_enabled, scaled_lr
from tsmcli.engine.run_checks import run_findings, step_batch, stop_or_log
from tsmcli.engine.state import seed_everything
from tsmcli.errors import CheckpointError, RecipeError, TrainingError, UsageError
from tsmcli.model.checkpoint import CheckpointInfo
from tsmcli.recipe import Recipe, TrainConfig

log = logging.getLogger(__name__)

# a checkpoint named by the recipe (model.init_from, train.distill_from): the path as
# written, or the CheckpointInfo the caller read already
CheckpointSource = Callable[[str], "str | CheckpointInfo"]


def configure_backends(t: TrainConfig, ctx: DistContext) -> torch.dtype | None:
    """Deterministic kernels and cuDNN autotuning as the recipe asks; the autocast dtype
    (None: full precision). ``train.sync_bn`` is logged as ignored on the CPU; ``train.amp``
    there is bf16 where it is native, else refused (``cpu_amp``)."""
    cuda = ctx.device.type == "cuda"
    if cuda:
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.amp)
    else:  # before any setting is changed: it may refuse
        amp = cpu_amp(t.amp, ctx.device)
    if t.deterministic:
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if cuda:
        torch.backends.cudnn.benchmark = not t.deterministic
    elif t.sync_bn and ctx.is_main:
        log.info("train.sync_bn=true applies to CUDA only; ignored on the CPU")
    return amp


def cpu_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The CPU autocast dtype of ``train.amp``: bf16 where the CPU has it natively
    (``precision.native_bf16``). bf16 elsewhere, and fp16 on any CPU, would be emulated
    through fp32 and train slower than fp32 itself: a ``RecipeError`` saying so."""
    from tsmcli.engine.precision import cpu_isa, native_bf16

    if amp == "none":
        return None
    if amp == "bf16" and native_bf16(device):
        return torch.bfloat16
    if amp == "bf16":
        raise RecipeError(
            f"train.amp: bf16 on this CPU ({cpu_isa()}), which has no native bf16 (no "
            "avx512_bf16/amx_bf16), would be emulated and train slower than fp32; set "
            "train.amp=none"
        )
    raise RecipeError(
        "train.amp: fp16 on the CPU would be emulated and train slower than fp32 (fp16 is "
        "for CUDA); set train.amp=none, or bf16 on a CPU with native bf16"
    )


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class TrainData:
    """The run's data: class names and count, datasets, samplers and their loaders."""

    classes: list[str] | None
    num_classes: int
    train_set: Any  # VideoClipDataset
    val_set: Any | None
    train_sampler: ShardedSampler
    val_sampler: ShardedSampler | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    global_batch: int
    iters_per_epoch: int  # optimizer steps: whole groups of train.accumulate full batches
    epochs: int  # the epochs the run makes (planned_epochs)
    class_weights: torch.Tensor | None = None  # (K,) on the device: train.class_weights auto


def prepare_data(recipe: Recipe, ctx: DistContext, run_dir: Path | None = None) -> TrainData:
    """Read and check the lists (labels in range, every video present) and run the fast
    checks of ``tsm doctor`` (``run_checks``: the first error stops the run, the warnings are
    logged) before any training, then build the datasets and their loaders. ``run_dir``:
    where the checkpoints go (default ``train.out_dir/<name>``), for the disk space check."""
    d, t = recipe.data, recipe.train
    root = Path(d.root).expanduser()
    train_list = read_list_file(Path(d.train_list).expanduser())
    classes, num_classes = resolve_classes(train_list, recipe.model.num_classes)
    pairs = flip_pairs(recipe, classes, train_list.path)
    check_train_list(train_list, num_classes, root, d.source, d.frame_template)
    val_list = read_list_file(Path(d.val_list).expanduser()) if d.val_list else None
    if val_list is not None:
        check_train_list(val_list, num_classes, root, d.source, d.frame_template)
    run_dir = run_dir or Path(t.out_dir).expanduser() / recipe.name
    _preflight(recipe, ctx, run_dir, train_list, val_list, classes, num_classes)
    train_set, val_set = _datasets(recipe, root, train_list, val_list, pairs)
    labels = [entry.label for entry in train_list.entries]
    train_sampler = ShardedSampler(
        len(train_set),
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle=True,
        seed=t.seed,
        pad=True,
        labels=labels if d.sampler == "balanced" else None,
    )
    val_sampler = (
        ShardedSampler(
            len(val_set), rank=ctx.rank, world_size=ctx.world_size, shuffle=False, pad=False
        )
        if val_set
        else None
    )
    # loaders live for the whole run (persistent workers); set_epoch reaches the workers
    # through the dataset's shared-memory epoch counter
    cuda = ctx.device.type == "cuda"
    # an optimizer step takes train.accumulate full batches; those left over at the end of
    # an epoch, fewer than that, are not trained on (as a last incomplete batch is not)
    iters_per_epoch = len(train_sampler) // (t.batch_size * t.accumulate)
    if iters_per_epoch == 0:
        accumulated = f" x {t.accumulate} accumulated" if t.accumulate > 1 else ""
        lower = "train.batch_size or train.accumulate" if t.accumulate > 1 else "train.batch_size"
        raise TrainingError(
            f"{train_list.path}: {len(train_set)} videos make no full batch of "
            f"{t.batch_size} x {ctx.world_size} process(es){accumulated}; lower {lower}"
        )
    return TrainData(
        classes=classes,
        num_classes=num_classes,
        train_set=train_set,
        val_set=val_set,
        train_sampler=train_sampler,
        val_sampler=val_sampler,
        train_loader=make_loader(train_set, train_sampler, t, cuda, drop_last=True),
        val_loader=make_loader(val_set, val_sampler, t, cuda, drop_last=False) if val_set else None,
        global_batch=step_batch(t, ctx.world_size),
        iters_per_epoch=iters_per_epoch,
        epochs=planned_epochs(t, iters_per_epoch),
        class_weights=_class_weights(t, labels, num_classes, ctx),
    )


def _preflight(
    recipe: Recipe,
    ctx: DistContext,
    run_dir: Path,
    train_list: ListFile,
    val_list: ListFile | None,
    classes: list[str] | None,
    num_classes: int,
) -> None:
    """``tsm doctor``'s fast checks (``run_checks.run_findings``) for this run on this
    machine: the first error stops it, the warnings are logged."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    found = run_findings(
        recipe,
        train_list,
        val_list,
        classes,
        num_classes,
        processes=per_node,
        nodes=max(1, ctx.world_size // per_node),
        run_dir=run_dir,
    )
    stop_or_log(found, ctx.is_main)


def _class_weights(
    t: TrainConfig, labels: list[int], num_classes: int, ctx: DistContext
) -> torch.Tensor | None:
    """``train.class_weights: auto``: ``balance.inverse_frequency_weights`` of the train list,
    on the device; None for plain cross-entropy."""
    if t.class_weights != "auto":
        return None
    weights = inverse_frequency_weights(labels, num_classes)
    if ctx.is_main:
        log.info(
            "class weights (inverse frequency, mean 1 over the list): %.3g to %.3g",
            weights.min(),
            weights.max(),
        )
    return torch.tensor(weights, dtype=torch.float32, device=ctx.device)


def planned_epochs(config: TrainConfig, iters_per_epoch: int) -> int:
    """The epochs a run makes: ``train.epochs``, or with ``train.steps`` the fewest whole
    epochs of ``iters_per_epoch`` steps that hold that many steps."""
    if config.steps:
        return math.ceil(config.steps / iters_per_epoch)
    return config.epochs


def _datasets(
    recipe: Recipe,
    root: Path,
    train_list: ListFile,
    val_list: ListFile | None,
    flip_pairs: list[tuple[int, int]],
) -> tuple[Any, Any | None]:
    """The train dataset (augmented) and the val dataset, if any: the one place where the
    recipe's data settings become the datasets'. Validation takes the view a test of the
    checkpoint takes by default (segment centres, or dense with dense sampling; one centre
    crop)."""
    from tsmcli.data.dataset import VideoClipDataset
    from tsmcli.data.settings import Augmentation, ClipSize, Reading
    from tsmcli.engine.views import resolve_views
    from tsmcli.view_request import ViewRequest

    d = recipe.data
    clip = ClipSize(recipe.model.num_segments, d.input_size, d.scale_size)
    reading = Reading(
        source=d.source,
        backend=d.backend,
        frame_template=d.frame_template,
        frame_cache_mb=d.frame_cache_mb,
        skip_bad=d.skip_bad,
        modality=recipe.model.modality,  # flow: stacks of new_length x/y images a segment
        new_length=recipe.model.new_length,
    )
    augment = Augmentation(
        sampling=d.sampling,
        scales=d.scales,
        flip=d.flip,
        flip_pairs=flip_pairs,
        colour_jitter=d.colour_jitter,
        seed=recipe.train.seed,
    )
    train_set = VideoClipDataset(train_list, root, clip=clip, reading=reading, augment=augment)
    if val_list is None:
        return train_set, None
    views = resolve_views(ViewRequest(), dense_training=d.sampling == "dense")
    return train_set, VideoClipDataset(val_list, root, clip=clip, reading=reading, views=views)


def flip_pairs(
    recipe: Recipe, classes: list[str] | None, train_list: Path
) -> list[tuple[int, int]]:
    """The left/right label pairs swapped with a flip (``data.flip: swap``), else none. A
    dataset without such pairs among the list's classes is a recipe error: swapping nothing
    would be a plain flip under another name."""
    d = recipe.data
    if d.flip != "swap":
        return []
    from tsmcli.data.manifest import load_manifest

    try:
        manifest = load_manifest(d.dataset)
    except UsageError as exc:  # an unknown name: the recipe's key, not the command line
        raise RecipeError(f"data.dataset: {exc}") from None
    # matched by class name, so a list built in another label order swaps the right labels
    pairs = manifest.flip_pairs_for(classes) if classes else list(manifest.flip_pairs)
    if not pairs:
        reason = (
            f"none of dataset {d.dataset}'s pairs is among the classes of "
            f"{train_list.parent / CLASSES_FILE}"
            if manifest.flip_pairs
            else f"dataset {d.dataset} has none (its manifest's flip_pairs is empty)"
        )
        raise RecipeError(
            f"data.flip: swap needs left/right label pairs, and {reason}; set data.flip to on "
            "(mirror, labels kept) or off, or data.dataset to a dataset manifest with flip pairs"
        )
    return pairs


def make_loader(
    dataset: Any, sampler: ShardedSampler, t: TrainConfig, cuda: bool, drop_last: bool
) -> DataLoader:
    """A loader with a private generator (starting an epoch never draws from the global RNG,
    dropout's) and, with workers, persistent ones."""
    from tsmcli.data.dataset import collate_clips
    from tsmcli.data.decode import preload_decoder
    from tsmcli.data.process_pool import worker_context

    if t.workers:
        preload_decoder(dataset)
    generator = torch.Generator().manual_seed(t.seed)
    return DataLoader(
        dataset,
        batch_size=t.batch_size,
        sampler=sampler,
        num_workers=t.workers,
        collate_fn=collate_clips,
        pin_memory=cuda,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_init_worker,
        persistent_workers=t.workers > 0,
        prefetch_factor=4 if t.workers else None,
        multiprocessing_context=worker_context() if t.workers else None,
    )


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; many intra-op threads per worker only contend
    # Ctrl-C is the training process's to handle (finish the step, save); a worker that died
    # of it would only break the batch being loaded
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------
# model and optimiser


@dataclass
class RunModel:
    """The model as checkpoints store it, as the steps run it, and the teacher."""

    model: nn.Module  # unwrapped: what checkpoints store
    net: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    teacher: nn.Module | None  # train.distill_from, frozen


def build_run_model(
    recipe: Recipe,
    num_classes: int,
    ctx: DistContext,
    *,
    load_init_weights: bool,
    source: CheckpointSource,
) -> RunModel:
    """The model, seeded the same on every rank and in every run; ``load_init_weights``
    loads ``model.pretrained`` / ``model.init_from`` (not when resuming: the weights come
    from last.pt)."""
    from tsmcli.model.tsn import TSN, load_pretrained_backbone

    m, t = recipe.model, recipe.train
    cuda = ctx.device.type == "cuda"
    seed_everything(t.seed)  # the same initial weights on every rank and every run
    model = TSN(m.spec(num_classes))
    if m.pretrained is not None and load_init_weights:
        load_pretrained_backbone(model, m.pretrained)
    if m.init_from and load_init_weights:
        from tsmcli.model.checkpoint import load_weights_for_finetune

        load_weights_for_finetune(model, source(m.init_from))
    if t.sync_bn and ctx.distributed and cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[ctx.device.index] if cuda else None)
    if t.compile:  # the steps run compiled; checkpoints keep saving the plain model's weights
        net = torch.compile(net)
    if ctx.rank:
        torch.manual_seed(t.seed + ctx.rank)  # different dropout masks on each rank
    return RunModel(model, net, _load_teacher(recipe, num_classes, ctx, source))


def _load_teacher(
    recipe: Recipe, num_classes: int, ctx: DistContext, source: CheckpointSource
) -> nn.Module | None:
    """``train.distill_from`` in eval mode, frozen, on this device, read at the recipe's
    segment count (a shift works at any clip length)."""
    t = recipe.train
    if not t.distill_from:
        return None
    from tsmcli.model.checkpoint import load_model

    teacher = load_model(source(t.distill_from), num_segments=recipe.model.num_segments)
    if teacher.num_classes != num_classes:
        raise CheckpointError(
            f"{t.distill_from}: the teacher (train.distill_from) has {teacher.num_classes} "
            f"classes, the data {num_classes}; distil from a model of this dataset"
        )
    teacher.requires_grad_(False)
    log.info(
        "distilling from %s (weight %g, temperature %g)",
        t.distill_from,
        t.distill_weight,
        t.distill_temperature,
    )
    return teacher.to(ctx.device).eval()


@dataclass
class Optimisation:
    """The optimiser over the official parameter groups, its schedule and the AMP scaler."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler


def build_optimisation(
    recipe: Recipe, model: nn.Module, data: TrainData, ctx: DistContext
) -> Optimisation:
    """The learning rate scaled to the global batch (batches accumulated included), fc x5
    when fine-tuning, the schedule (over optimizer steps)."""
    o, t = recipe.optim, recipe.train
    base_lr = scaled_lr(o.lr, o.reference_batch_size, data.global_batch)
    fc_lr5 = fc_lr5_enabled(recipe)
    optimizer = build_optimizer(model, o, base_lr, fc_lr5)
    schedule = LRSchedule.from_config(o, base_lr, data.epochs, data.iters_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=ctx.device.type == "cuda" and t.amp == "fp16")
    if ctx.is_main:
        log.info(
            "lr %.4g (%.4g for batch %d, global batch %d = %s), fc lr x5: %s, "
            "%d epochs of %d steps",
            base_lr,
            o.lr,
            o.reference_batch_size,
            data.global_batch,
            global_batch_terms(t, ctx.world_size),
            "on" if fc_lr5 else "off",
            data.epochs,
            data.iters_per_epoch,
        )
    return Optimisation(optimizer, schedule, scaler)


def global_batch_terms(t: TrainConfig, processes: int) -> str:
    """What the global batch is made of: ``4 x 1 process x 2 accumulated``."""
    made = f"{t.batch_size} x {processes} process{'es' if processes != 1 else ''}"
    return made + (f" x {t.accumulate} accumulated" if t.accumulate > 1 else "")
