"""``tsm train``: a recipe in, a run dir out (checkpoints, metrics, curves).

The run is exactly resumable. Every source of randomness is a function of the recipe's
seed and the position in training: the train order of epoch e is a permutation of
(seed, e), the augmentation of video i in epoch e comes from (seed, e, i), the learning rate
of step k from (e, k), and the remaining global RNG state (dropout) is stored in every
checkpoint. So 2 epochs in one go and 1 epoch + ``--resume`` give identical weights on the
CPU, and a Ctrl-C in the middle of an epoch saves a checkpoint that resumes at the next step.

Only rank 0 writes files, logs and shows a progress bar; every rank computes the same
decisions (stop on NaN, stop on Ctrl-C) from values all-reduced once a step.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tsmcli.engine import distributed
from tsmcli.engine.checks import check_train_list, resolve_classes
from tsmcli.engine.distributed import DistContext, ShardedSampler
from tsmcli.engine.metrics import average_views, topk_correct
from tsmcli.engine.optim import LRSchedule, build_optimizer, fc_lr5_enabled, scaled_lr
from tsmcli.engine.plots import plot_curves
from tsmcli.engine.state import (
    Interrupted,
    StopOnSignal,
    check_resume_recipe,
    checkpoint_dict,
    restore_rng,
    seed_everything,
)
from tsmcli.errors import CheckpointError, RecipeError, TrainingError, UsageError
from tsmcli.fileio import atomic_link, atomic_write, check_writable_dir, remove_stale_temps
from tsmcli.model.checkpoint import CheckpointInfo
from tsmcli.recipe import Recipe

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
RECIPE_FILE, METRICS_FILE, CURVES_FILE = "recipe.yaml", "metrics.jsonl", "curves.png"
RUN_FILES = (LAST, BEST, RECIPE_FILE, METRICS_FILE, CURVES_FILE)  # what a run writes


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or resumed-and-finished) run left behind."""

    run_dir: Path
    epochs: int  # epochs completed
    best_top1: float | None  # None when nothing was validated (no data.val_list)
    last_top1: float | None
    best_checkpoint: Path | None
    last_checkpoint: Path
    history: list[dict[str, Any]]  # one metrics.jsonl row per epoch
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # trained, unwrapped


def train(recipe: Recipe, out_dir: Path | None = None, resume: bool = False, *,
          preloaded: Sequence[CheckpointInfo] = ()) -> TrainResult:
    """Train ``recipe`` into ``out_dir`` (default ``train.out_dir/<recipe name>``).

    ``resume`` continues from ``last.pt`` there; without it a run dir that already holds a
    ``last.pt`` is refused rather than overwritten. ``preloaded`` are checkpoints the caller
    has read already: ``model.init_from`` or ``train.distill_from`` naming one of their paths
    takes it instead of reading the file again. Under torchrun every process calls this.
    """
    _check_arch(recipe)
    run_dir = _run_dir(recipe, out_dir)
    check_writable_dir(run_dir, "--out" if out_dir is not None else "train.out_dir",
                       UsageError if out_dir is not None else RecipeError)
    ctx = distributed.setup(recipe.train.device)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        run = _Run(recipe, run_dir, resume, ctx, preloaded)
        with StopOnSignal(announce=ctx.is_main) as stop:
            return run.fit(stop)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)


def _check_arch(recipe: Recipe) -> None:
    """An unknown backbone is a recipe error naming ``model.arch`` (before any work)."""
    from tsmcli.model.backbones import get_backbone

    try:
        get_backbone(recipe.model.arch)
    except UsageError as exc:
        raise RecipeError(f"model.arch: {exc}") from None


def _run_dir(recipe: Recipe, out_dir: Path | None) -> Path:
    return (
        Path(out_dir).expanduser()
        if out_dir is not None
        else Path(recipe.train.out_dir).expanduser() / recipe.name
    )


class _Run:
    """One training run: set up once, then ``fit`` epoch by epoch."""

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool, ctx: DistContext,
                 preloaded: Sequence[CheckpointInfo] = ()):
        self.recipe = recipe
        self.preloaded = {info.path: info for info in preloaded}
        self.run_dir = run_dir
        self.ctx = ctx
        self.device = ctx.device
        self.cuda = ctx.device.type == "cuda"
        self._check_run_dir(resume)
        if ctx.is_main:  # a kill during a save leaves its temp file (a checkpoint's size)
            for stale in remove_stale_temps(run_dir, RUN_FILES):
                log.info("removed %s, left by an interrupted save", stale)
        self._configure_backends()
        self._prepare_data()
        self._build_model(load_init_weights=not resume)  # resuming: the weights come from last.pt
        self._build_optimizer()
        self.start_epoch, self.start_iteration = 0, 0
        self.partial: dict[str, float] = {}
        self.best_top1: float | None = None
        self.history: list[dict[str, Any]] = []
        if resume:
            self._resume()
        self.tensorboard = self._open_tensorboard()
        self._write_run_files(resume)

    # ------------------------------------------------------------------ set-up

    def _check_run_dir(self, resume: bool) -> None:
        last = self.run_dir / LAST
        if resume and not last.is_file():
            raise TrainingError(
                f"{last}: nothing to resume (no last.pt in the run dir); "
                "drop --resume to start a new run, or pass the right --out"
            )
        if not resume and last.exists():
            raise TrainingError(
                f"{self.run_dir}: holds a run already (last.pt); pass --resume to "
                "continue it or choose another run dir with --out"
            )

    def _configure_backends(self) -> None:
        t = self.recipe.train
        if t.deterministic:
            if self.cuda:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if self.cuda:
            torch.backends.cudnn.benchmark = not t.deterministic
        elif self.ctx.is_main:
            for key, value, off in (
                ("train.amp", t.amp, "none"),
                ("train.channels_last", t.channels_last, False),
                ("train.sync_bn", t.sync_bn, False),
            ):
                if value != off:
                    log.info("%s=%s applies to CUDA only; ignored on the CPU", key, value)
        self.amp_dtype = (
            {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.amp) if self.cuda else None
        )

    def _prepare_data(self) -> None:
        """Read and check the lists (labels in range, every video present) before any training."""
        from tsmcli.data.dataset import VideoClipDataset

        d, m = self.recipe.data, self.recipe.model
        root = Path(d.root).expanduser()
        train_list = Path(d.train_list).expanduser()
        val_list = Path(d.val_list).expanduser() if d.val_list else None
        self.classes, self.num_classes = resolve_classes(train_list, m.num_classes)
        for list_file in [train_list] + ([val_list] if val_list else []):
            check_train_list(list_file, self.num_classes, root, d.source, d.frame_template)
        flip_pairs: list[tuple[int, int]] = []
        if d.flip == "swap":
            from tsmcli.data.adapters import load_manifest

            manifest = load_manifest(d.dataset)
            # matched by class name, so a list built in another label order swaps the right labels
            flip_pairs = (
                manifest.flip_pairs_for(self.classes) if self.classes else list(manifest.flip_pairs)
            )
        common = dict(
            num_segments=m.num_segments,
            source=d.source,
            backend=d.backend,
            template=d.frame_template,
            input_size=d.input_size,
            scale_size=d.scale_size,
            dense=d.sampling == "dense",
            skip_bad=d.skip_bad,
            seed=self.recipe.train.seed,
        )
        self.train_set = VideoClipDataset(
            train_list,
            root,
            mode="train",
            scales=d.scales,
            flip=d.flip,
            flip_pairs=flip_pairs,
            **common,
        )
        self.val_set = VideoClipDataset(val_list, root, mode="val", **common) if val_list else None
        t = self.recipe.train
        self.train_sampler = ShardedSampler(
            len(self.train_set),
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            shuffle=True,
            seed=t.seed,
            pad=True,
        )
        self.val_sampler = (
            ShardedSampler(
                len(self.val_set),
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
                shuffle=False,
                pad=False,
            )
            if self.val_set
            else None
        )
        # loaders live for the whole run (persistent workers); set_epoch reaches the workers
        # through the dataset's shared-memory epoch counter
        self.train_loader = self._loader(self.train_set, self.train_sampler, drop_last=True)
        self.val_loader = (
            self._loader(self.val_set, self.val_sampler, drop_last=False) if self.val_set else None
        )
        self.global_batch = t.batch_size * self.ctx.world_size
        self.iters_per_epoch = len(self.train_sampler) // t.batch_size  # full batches only
        if self.iters_per_epoch == 0:
            raise TrainingError(
                f"{train_list}: {len(self.train_set)} videos make no full batch of "
                f"{t.batch_size} x {self.ctx.world_size} process(es); lower train.batch_size"
            )

    def _build_model(self, load_init_weights: bool) -> None:
        from tsmcli.model.tsn import build_model

        m, t = self.recipe.model, self.recipe.train
        seed_everything(t.seed)  # the same initial weights on every rank and every run
        model = build_model(**m.architecture(self.num_classes),
                            pretrained=m.pretrained if load_init_weights else None)
        if m.init_from and load_init_weights:
            from tsmcli.model.checkpoint import load_weights_for_finetune

            load_weights_for_finetune(model, self._checkpoint_source(m.init_from))
        if t.sync_bn and self.ctx.distributed and self.cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if t.channels_last and self.cuda:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the unwrapped model: what checkpoints store
        self.net: nn.Module = model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None
            )
        if self.ctx.rank:
            torch.manual_seed(t.seed + self.ctx.rank)  # different dropout masks on each rank
        self.teacher = self._load_teacher()

    def _load_teacher(self) -> nn.Module | None:
        """``train.distill_from`` in eval mode, frozen, on this device, read at the recipe's
        segment count (a shift works at any clip length)."""
        t = self.recipe.train
        if not t.distill_from:
            return None
        from tsmcli.model.checkpoint import load_model

        teacher = load_model(self._checkpoint_source(t.distill_from),
                             num_segments=self.recipe.model.num_segments)
        if teacher.num_classes != self.num_classes:
            raise CheckpointError(
                f"{t.distill_from}: the teacher (train.distill_from) has {teacher.num_classes} "
                f"classes, the data {self.num_classes}; distil from a model of this dataset")
        teacher.requires_grad_(False)
        log.info("distilling from %s (weight %g, temperature %g)", t.distill_from,
                 t.distill_weight, t.distill_temperature)
        return teacher.to(self.device).eval()

    def _build_optimizer(self) -> None:
        o, t = self.recipe.optim, self.recipe.train
        self.base_lr = scaled_lr(o.lr, o.reference_batch_size, self.global_batch)
        self.fc_lr5 = fc_lr5_enabled(self.recipe)
        self.optimizer = build_optimizer(self.model, o, self.base_lr, self.fc_lr5)
        self.schedule = LRSchedule.from_config(o, self.base_lr, t.epochs, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and t.amp == "fp16")
        if self.ctx.is_main:
            log.info(
                "lr %.4g (%.4g for batch %d, global batch %d), fc lr x5: %s, %d steps an epoch",
                self.base_lr,
                o.lr,
                o.reference_batch_size,
                self.global_batch,
                "on" if self.fc_lr5 else "off",
                self.iters_per_epoch,
            )

    def _resume(self) -> None:
        from tsmcli.engine.state import check_resumable
        from tsmcli.model.weights import load_checkpoint, load_state_dict_strict

        path = self.run_dir / LAST
        state = load_checkpoint(path)
        check_resumable(state, path)
        changed = check_resume_recipe(
            state.get("recipe") or {}, self.recipe, path, self.run_dir / RECIPE_FILE
        )
        if changed and self.ctx.is_main:
            log.warning("resuming with changed recipe keys: %s", ", ".join(changed))
        saved_classes = int(state["model_config"].get("num_classes", self.num_classes))
        if saved_classes != self.num_classes:
            source = ("model.num_classes" if self.recipe.model.num_classes else
                      str(Path(self.recipe.data.train_list).expanduser().parent / "classes.txt"))
            raise TrainingError(
                f"{path}: was trained with {saved_classes} classes, but {source} now gives "
                f"{self.num_classes}; restore it to resume, or start a new run with --out")
        load_state_dict_strict(self.model, state["state_dict"], str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: its optimizer state does not fit this model ({exc}); the file is "
                "damaged or from another run: start a new run with --out") from None
        self.start_epoch = int(state["epoch"])
        self.start_iteration = int(state.get("iteration", 0))
        self.partial = dict(state.get("partial") or {})
        if (
            self.start_iteration
            and int(state.get("global_batch", self.global_batch)) != self.global_batch
        ):
            log.warning(
                "the global batch changed since the interruption; epoch %d starts over",
                self.start_epoch + 1,
            )
            self.start_iteration, self.partial = 0, {}
        self.best_top1 = state.get("best_top1")
        self.history = list(state.get("history") or [])
        restore_rng(state.get("rng") or [], self.ctx, self.cuda)
        if self.ctx.is_main:
            where = f", step {self.start_iteration}" if self.start_iteration else ""
            log.info("resuming %s after epoch %d%s", self.run_dir, self.start_epoch, where)

    def _open_tensorboard(self):
        if not self.ctx.is_main or importlib.util.find_spec("tensorboard") is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _write_run_files(self, resume: bool) -> None:
        """recipe.yaml says what last.pt was trained with: a new run writes it now (there is
        no last.pt to contradict), a resumed one with its next checkpoint (a resume that
        fails before then leaves both as they were)."""
        if not self.ctx.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write(self.run_dir / RECIPE_FILE, self.recipe.to_yaml())
        self._write_metrics()

    def _write_metrics(self) -> None:
        """metrics.jsonl, rewritten whole: it always matches the checkpoint's history (an epoch
        logged after the last save is dropped on resume, as its weights were)."""
        atomic_write(
            self.run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in self.history)
        )

    def _save(self, state: dict[str, Any]) -> None:
        """last.pt, then the recipe it was trained with beside it (rank 0)."""
        from tsmcli.model.weights import save_checkpoint

        save_checkpoint(state, self.run_dir / LAST)
        atomic_write(self.run_dir / RECIPE_FILE, self.recipe.to_yaml())

    # ------------------------------------------------------------------ the loop

    def fit(self, stop: StopOnSignal) -> TrainResult:
        from tsmcli.data.dataset import loader_errors

        try:
            with loader_errors("train.workers"):  # a dead worker may be reported anywhere
                self._epochs(stop)
        except Interrupted:
            raise KeyboardInterrupt from None
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        distributed.barrier(self.ctx)
        last_top1 = next(
            (row["top1"] for row in reversed(self.history) if row["top1"] is not None), None
        )
        best = self.run_dir / BEST
        return TrainResult(
            run_dir=self.run_dir,
            epochs=len(self.history),
            best_top1=self.best_top1,
            last_top1=last_top1,
            best_checkpoint=best if self.best_top1 is not None else None,
            last_checkpoint=self.run_dir / LAST,
            history=list(self.history),
            model=self.model,
        )

    def _epochs(self, stop: StopOnSignal) -> None:
        t = self.recipe.train
        for epoch in range(self.start_epoch, t.epochs):
            row = self._train_epoch(epoch, self.start_iteration, stop)
            self.start_iteration, self.partial = 0, {}
            if self.val_set is not None and (
                (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs
            ):
                row.update(self._validate())
            else:
                row.update(top1=None, top5=None, val_videos=0)
            self._end_epoch(epoch, row)
            if epoch + 1 < t.epochs and self._everywhere(stop.requested):
                if self.ctx.is_main:  # Ctrl-C during validation: last.pt is this epoch's
                    log.warning("stopped after epoch %d; continue with --resume", epoch + 1)
                raise Interrupted

    def _train_epoch(self, epoch: int, start: int, stop: StopOnSignal) -> dict[str, Any]:
        from tqdm import tqdm

        t = self.recipe.train
        self.net.train()
        self.train_set.set_epoch(epoch)
        self.train_sampler.set_epoch(epoch, start=start * t.batch_size)
        show_bar = self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(
            total=self.iters_per_epoch,
            initial=start,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            unit="step",
            disable=not show_bar,
            dynamic_ncols=True,
        )
        acc = {
            "loss_sum": 0.0,
            "clips": 0.0,
            "seconds": 0.0,
            "wait": 0.0,
            "skipped": 0.0,
            **self.partial,
        }
        batches = iter(self.train_loader)
        lr = self.schedule.lr_at(epoch, start)
        try:
            for iteration in range(start, self.iters_per_epoch):
                step_start = time.perf_counter()
                batch = next(batches)
                waited = time.perf_counter() - step_start
                lr = self.schedule.apply(self.optimizer, epoch, iteration)
                loss_sum, count, skipped, stop_all = self._step(
                    batch, stop.requested, epoch, iteration
                )
                acc["loss_sum"] += loss_sum
                acc["clips"] += count
                acc["skipped"] += skipped
                acc["wait"] += waited
                acc["seconds"] += time.perf_counter() - step_start
                rate = acc["clips"] / max(acc["seconds"], 1e-9)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{acc['loss_sum'] / max(acc['clips'], 1):.4f}",
                    lr=f"{lr:.3g}",
                    clips_s=f"{rate:.1f}",
                    refresh=False,
                )
                if not show_bar and self.ctx.is_main and (iteration + 1) % t.log_every == 0:
                    log.info(
                        "epoch %d step %d/%d: loss %.4f, lr %.3g, %.1f clips/s",
                        epoch + 1,
                        iteration + 1,
                        self.iters_per_epoch,
                        acc["loss_sum"] / max(acc["clips"], 1),
                        lr,
                        rate,
                    )
                if stop_all:
                    self._save_interrupted(epoch, iteration + 1, acc)
                    raise Interrupted
        finally:
            bar.close()
        return {
            "epoch": epoch + 1,
            "loss": acc["loss_sum"] / max(acc["clips"], 1),
            "lr": lr,
            "clips_per_s": acc["clips"] / max(acc["seconds"], 1e-9),
            "data_wait_share": acc["wait"] / max(acc["seconds"], 1e-9),
            "seconds": acc["seconds"],
            "skipped": int(acc["skipped"]),
        }

    def _step(
        self, batch, stop_requested: bool, epoch: int, iteration: int
    ) -> tuple[float, int, int, bool]:
        """One SGD step on one batch. Returns, summed over ranks: the loss times the clips, the
        clips, the unreadable videos dropped (``data.skip_bad``), and whether to stop."""
        labels = batch.labels.to(self.device, non_blocking=True)  # (B,)
        count = torch.tensor(float(labels.numel()), device=self.device)
        if self.recipe.data.skip_bad and self.ctx.distributed:
            # every rank must take part in the gradient all-reduce: skip the step everywhere
            # if any rank lost its whole batch to bad videos
            smallest = count.clone()
            torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
            empty = bool(smallest.item() == 0)
        else:
            empty = labels.numel() == 0
        flags = torch.tensor([float(len(batch.skipped)), float(stop_requested)], device=self.device)
        if empty:
            _, _, skipped, stop_all = distributed.all_reduce_sum(
                torch.cat([torch.zeros(2, device=self.device), flags]), self.ctx
            ).tolist()
            return 0.0, 0, int(skipped), bool(stop_all)
        clips = batch.model_input(self.device)  # (B, T, 3, S, S)
        taught = None
        with self._autocast():
            logits = self.net(clips)  # (B, K)
            if self.teacher is not None:
                with torch.no_grad():
                    taught = self.teacher(clips).float()  # (B, K)
        t = self.recipe.train
        loss = _loss(logits.float(), labels, taught, t.distill_weight, t.distill_temperature)
        totals = distributed.all_reduce_sum(
            torch.cat([torch.stack([loss.detach() * count, count]), flags]), self.ctx
        )
        loss_sum, total, skipped, stop_all = totals.tolist()
        if not math.isfinite(loss_sum):
            last = self.run_dir / LAST
            kept = (
                f"the last good checkpoint is {last}"
                if last.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"non-finite loss ({loss_sum / max(total, 1)}) at epoch {epoch + 1} step "
                f"{iteration + 1}; training stopped and {kept}; lower optim.lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum, int(total), int(skipped), bool(stop_all)

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        """Top-1/top-5 over the val list, each video counted once across ranks."""
        assert self.val_loader is not None
        self.model.eval()  # the unwrapped model: no collective calls while ranks hold different counts
        counts = torch.zeros(3, dtype=torch.float64)  # top-1 hits, top-5 hits, videos
        for batch in self.val_loader:
            if batch.labels.numel() == 0:
                continue
            clips = batch.model_input(self.device)  # (B, V, T, 3, S, S)
            b, v = clips.shape[:2]
            with self._autocast():
                logits = self.model(clips.flatten(0, 1))  # (B*V, K)
            scores = average_views(logits.float().view(b, v, -1))  # (B, K)
            hits = topk_correct(scores, batch.labels, (1, 5))
            counts += torch.tensor([hits[1], hits[5], b], dtype=torch.float64)
        counts = distributed.all_reduce_sum(counts.to(self.device), self.ctx).cpu()
        videos = int(counts[2])
        top1, top5 = (
            (100.0 * float(counts[0]) / videos, 100.0 * float(counts[1]) / videos)
            if videos
            else (0.0, 0.0)
        )
        return {"top1": top1, "top5": top5, "val_videos": videos}

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        is_best = row["top1"] is not None and (
            self.best_top1 is None or row["top1"] > self.best_top1
        )
        if is_best:
            self.best_top1 = row["top1"]
        self.history.append(row)
        state = self._checkpoint(epoch + 1, 0, {})  # collective (gathers every rank's RNG)
        if self.ctx.is_main:
            self._save(state)
            self._write_metrics()
            if is_best:
                atomic_link(self.run_dir / LAST, self.run_dir / BEST)
            plot_curves(self.history, self.run_dir / CURVES_FILE)
            if self.tensorboard is not None:
                for key in ("loss", "lr", "top1", "top5", "clips_per_s", "data_wait_share"):
                    if row.get(key) is not None:
                        self.tensorboard.add_scalar(key, row[key], epoch + 1)
            top = (
                f", top-1 {row['top1']:.2f}%, top-5 {row['top5']:.2f}%"
                if row["top1"] is not None
                else ""
            )
            log.info(
                "epoch %d/%d: loss %.4f%s, %.1f clips/s, data wait %.0f%%, %.0f s",
                epoch + 1,
                self.recipe.train.epochs,
                row["loss"],
                top,
                row["clips_per_s"],
                100 * row["data_wait_share"],
                row["seconds"],
            )

    def _save_interrupted(self, epoch: int, iteration: int, acc: dict[str, float]) -> None:
        state = self._checkpoint(epoch, iteration, acc)
        if self.ctx.is_main:
            self._save(state)
            log.warning(
                "saved %s at epoch %d step %d/%d; continue with --resume",
                self.run_dir / LAST,
                epoch + 1,
                iteration,
                self.iters_per_epoch,
            )

    def _checkpoint(self, epoch: int, iteration: int, partial: dict[str, float]) -> dict[str, Any]:
        """This run's checkpoint dict (``checkpoint_dict``); every rank must call it.

        ``epoch`` is the number of finished epochs; ``iteration`` the steps already taken in
        the next one (0 at an epoch boundary).
        """
        return checkpoint_dict(
            model=self.model,
            recipe=self.recipe,
            classes=self.classes,
            optimizer=self.optimizer,
            scaler=self.scaler,
            epoch=epoch,
            iteration=iteration,
            partial=partial,
            global_batch=self.global_batch,
            best_top1=self.best_top1,
            history=self.history,
            ctx=self.ctx,
            cuda=self.cuda,
        )

    # ------------------------------------------------------------------ helpers

    def _checkpoint_source(self, path: str) -> str | CheckpointInfo:
        """The checkpoint at ``path``, as the caller read it when it did (``preloaded``)."""
        return self.preloaded.get(Path(path), path)

    def _everywhere(self, flag: bool) -> bool:
        """True if ``flag`` is set on any rank (every rank gets the same answer)."""
        total = distributed.all_reduce_sum(
            torch.tensor([float(flag)], device=self.device), self.ctx
        )
        return bool(total.item() > 0)

    def _loader(self, dataset, sampler: ShardedSampler, drop_last: bool) -> DataLoader:
        from tsmcli.data.dataset import collate_clips

        t = self.recipe.train
        # a private generator: starting an epoch never draws from the global RNG (dropout's)
        generator = torch.Generator().manual_seed(t.seed)
        return DataLoader(
            dataset,
            batch_size=t.batch_size,
            sampler=sampler,
            num_workers=t.workers,
            collate_fn=collate_clips,
            pin_memory=self.cuda,
            drop_last=drop_last,
            generator=generator,
            worker_init_fn=_init_worker,
            persistent_workers=t.workers > 0,
            prefetch_factor=4 if t.workers else None,
        )

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)


def _loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None,
          weight: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of (B, K) logits against (B,) labels; with ``teacher`` logits (B, K),
    ``(1 - weight) * CE + weight * T^2 * KL(teacher_T || student_T)``, both softened by the
    temperature T (Hinton et al.; T^2 keeps the gradient scale as T changes)."""
    hard = F.cross_entropy(logits, labels)
    if teacher is None or weight == 0:
        return hard
    student_t = F.log_softmax(logits / temperature, dim=1)
    teacher_t = F.log_softmax(teacher / temperature, dim=1)
    soft = F.kl_div(student_t, teacher_t, log_target=True, reduction="batchmean")
    return (1 - weight) * hard + weight * temperature**2 * soft


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; many intra-op threads per worker only contend
    # Ctrl-C is the training process's to handle (finish the step, save); a worker that died
    # of it would only break the batch being loaded
    signal.signal(signal.SIGINT, signal.SIG_IGN)
