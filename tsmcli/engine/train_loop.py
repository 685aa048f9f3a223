"""The steps of a training run: an epoch of SGD steps, one step, validation, the loss.

A step is one optimizer step on ``train.accumulate`` batches (one, by default): each batch's
forward and backward in turn, its loss weighted by its share of the step's clips, so the
gradient is their mean, that of one batch as large as all of them (where batch norm takes
no statistics from the batch); clipping and the optimizer act once, on that gradient. Under
DistributedDataParallel only the last batch's backward all-reduces the gradients. Steps are
what the schedule, ``train.steps``, the progress bar and a checkpoint's position count, so a
checkpoint always lies between two steps and resumes exactly.

Every rank computes the same decisions (stop on NaN, stop on Ctrl-C) from values
all-reduced once a step; only rank 0 shows a progress bar and logs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tsmcli.engine import distributed
from tsmcli.engine.distributed import DistContext
from tsmcli.engine.metrics import average_views, topk_correct
from tsmcli.engine.state import Interrupted, StopOnSignal
from tsmcli.engine.train_setup import Optimisation, RunModel, TrainData
from tsmcli.errors import TrainingError
from tsmcli.recipe import Recipe

log = logging.getLogger(__name__)

# called with (epoch, steps taken, partial sums) when a Ctrl-C stops an epoch
SaveInterrupted = Callable[[int, int, dict[str, float]], None]


@dataclass
class Loop:
    """What the steps run on; ``last`` is the run's last.pt (named when a loss is NaN)."""

    recipe: Recipe
    ctx: DistContext
    data: TrainData
    parts: RunModel
    optim: Optimisation
    amp_dtype: torch.dtype | None
    last: Path

    def train_epoch(
        self,
        epoch: int,
        start: int,
        partial: dict[str, float],
        stop: StopOnSignal,
        save_interrupted: SaveInterrupted,
    ) -> dict[str, Any]:
        """Steps ``start`` .. the end of ``epoch``; returns its metrics.jsonl row (training
        part). A Ctrl-C saves through ``save_interrupted`` and raises ``Interrupted``."""
        from tqdm import tqdm

        t = self.recipe.train
        self.parts.net.train()
        self.data.train_set.set_epoch(epoch)
        self.data.train_sampler.set_epoch(epoch, start=start * t.batch_size * t.accumulate)
        show_bar = self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(
            total=self.data.iters_per_epoch,
            initial=start,
            desc=f"epoch {epoch + 1}/{self.data.epochs}",
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
            **partial,
        }
        batches = iter(self.data.train_loader)
        lr = self.optim.schedule.lr_at(epoch, start)
        try:
            for iteration in range(start, self.data.iters_per_epoch):
                lr, stop_all = self._timed_step(batches, acc, stop, epoch, iteration)
                self._progress(bar, acc, lr, show_bar, epoch, iteration)
                if stop_all:
                    save_interrupted(epoch, iteration + 1, acc)
                    raise Interrupted
        finally:
            bar.close()
        return _epoch_row(epoch, acc, lr)

    def _timed_step(
        self,
        batches: Iterator[Any],
        acc: dict[str, float],
        stop: StopOnSignal,
        epoch: int,
        iteration: int,
    ) -> tuple[float, bool]:
        """One step, with the time spent waiting for its batches; adds to ``acc``. The step's
        batches are read first (uint8 clips, small beside the activations), so that each
        one's loss is weighted by its share of the step's clips."""
        step_start = time.perf_counter()
        group = [next(batches) for _ in range(self.recipe.train.accumulate)]
        waited = time.perf_counter() - step_start
        lr = self.optim.schedule.apply(self.optim.optimizer, epoch, iteration)
        loss_sum, count, skipped, stop_all = self.step(group, stop.requested, epoch, iteration)
        acc["loss_sum"] += loss_sum
        acc["clips"] += count
        acc["skipped"] += skipped
        acc["wait"] += waited
        acc["seconds"] += time.perf_counter() - step_start
        return lr, stop_all

    def _progress(
        self, bar: Any, acc: dict[str, float], lr: float, show_bar: bool, epoch: int, iteration: int
    ) -> None:
        """The bar's postfix, or a log line every ``train.log_every`` steps without a bar."""
        rate = acc["clips"] / max(acc["seconds"], 1e-9)
        loss = acc["loss_sum"] / max(acc["clips"], 1)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", clips_s=f"{rate:.1f}", refresh=False)
        if not show_bar and self.ctx.is_main and (iteration + 1) % self.recipe.train.log_every == 0:
            log.info(
                "epoch %d step %d/%d: loss %.4f, lr %.3g, %.1f clips/s",
                epoch + 1,
                iteration + 1,
                self.data.iters_per_epoch,
                loss,
                lr,
                rate,
            )

    def step(
        self, group: list[Any], stop_requested: bool, epoch: int, iteration: int
    ) -> tuple[float, int, int, bool]:
        """One optimizer step on a ``group`` of ``train.accumulate`` batches. Returns, summed
        over ranks: the loss times the clips, the clips, the unreadable videos dropped
        (``data.skip_bad``), and whether to stop."""
        device = self.ctx.device
        counts = torch.tensor([float(b.labels.numel()) for b in group], device=device)  # (N,)
        dropped = float(sum(len(b.skipped) for b in group))
        flags = torch.tensor([dropped, float(stop_requested)], device=device)
        if self._empty(counts):
            _, _, skipped, stop_all = distributed.all_reduce_sum(
                torch.cat([torch.zeros(2, device=device), flags]), self.ctx
            ).tolist()
            return 0.0, 0, int(skipped), bool(stop_all)
        self.optim.optimizer.zero_grad(set_to_none=True)
        loss_sum = self._backward(group, counts)
        totals = distributed.all_reduce_sum(
            torch.cat([torch.stack([loss_sum, counts.sum()]), flags]), self.ctx
        )
        loss_sum, total, skipped, stop_all = totals.tolist()
        if not math.isfinite(loss_sum):
            self._non_finite(loss_sum / max(total, 1), epoch, iteration)
        self._update()
        return loss_sum, int(total), int(skipped), bool(stop_all)

    def _backward(self, group: list[Any], counts: torch.Tensor) -> torch.Tensor:
        """Forward and backward of each batch of the group holding clips, its loss weighted
        by its share of the group's clips (``counts``, (N,)), so the gradients add up to
        their mean over all of them. Under DistributedDataParallel only the last batch
        all-reduces them (``no_sync`` for the others). Returns the loss times the clips."""
        kept = [i for i, count in enumerate(counts.tolist()) if count]
        shares = counts / counts.sum()  # (N,)
        loss_sum = torch.zeros((), device=self.ctx.device)
        for i in kept:
            last = i == kept[-1]
            with contextlib.nullcontext() if last else self._no_sync():
                loss = self._loss_of(group[i])
                self.optim.scaler.scale(loss * shares[i]).backward()
            loss_sum += loss.detach() * counts[i]
        return loss_sum

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """DistributedDataParallel's ``no_sync`` (gradients kept local), else nothing."""
        no_sync = getattr(self.parts.net, "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def _loss_of(self, batch: Any) -> torch.Tensor:
        """The training loss of one batch (a mean over its clips)."""
        labels = batch.labels.to(self.ctx.device, non_blocking=True)  # (B,)
        clips = batch.model_input(self.ctx.device)  # (B, T, 3, S, S)
        taught = self._teach(clips)  # beside the student's forward when a core is spare
        with self.autocast():
            logits = self.parts.net(clips)  # (B, K)
        t = self.recipe.train
        return _loss(
            logits.float(),
            labels,
            taught(),
            t.distill_weight,
            t.distill_temperature,
            t.label_smoothing,
            self.data.class_weights,
        )

    def _empty(self, counts: torch.Tensor) -> bool:
        """Whether to skip the step: no clip in any of its batches. Every rank must run the
        same forwards and gradient all-reduce, so with ``data.skip_bad`` under torchrun the
        step is skipped everywhere if any rank lost a whole batch of it to bad videos."""
        if self.recipe.data.skip_bad and self.ctx.distributed:
            smallest = counts.min().reshape(1)
            torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
            return bool(smallest.item() == 0)
        return bool(counts.sum().item() == 0)

    def _non_finite(self, loss: float, epoch: int, iteration: int) -> None:
        kept = (
            f"the last good checkpoint is {self.last}"
            if self.last.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"non-finite loss ({loss}) at epoch {epoch + 1} step {iteration + 1}; training "
            f"stopped and {kept}; lower optim.lr or check the data"
        )

    def _update(self) -> None:
        """The optimiser step on the accumulated gradient: clipping, AMP unscaling."""
        optimizer, scaler = self.optim.optimizer, self.optim.scaler
        if self.recipe.optim.clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.parts.model.parameters(), self.recipe.optim.clip_grad)
        scaler.step(optimizer)
        scaler.update()

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Top-1/top-5 over the val list, each video counted once across ranks."""
        assert self.data.val_loader is not None
        model = self.parts.model
        model.eval()  # the unwrapped model: no collective calls while ranks hold different counts
        counts = torch.zeros(3, dtype=torch.float64)  # top-1 hits, top-5 hits, videos
        for batch in self.data.val_loader:
            if batch.labels.numel() == 0:
                continue
            clips = batch.model_input(self.ctx.device)  # (B, V, T, 3, S, S)
            b, v = clips.shape[:2]
            with self.autocast():
                logits = model(clips.flatten(0, 1))  # (B*V, K)
            scores = average_views(logits.float().view(b, v, -1))  # (B, K)
            hits = topk_correct(scores, batch.labels, (1, 5))
            counts += torch.tensor([hits[1], hits[5], b], dtype=torch.float64)
        counts = distributed.all_reduce_sum(counts.to(self.ctx.device), self.ctx).cpu()
        videos = int(counts[2])
        top1, top5 = (
            (100.0 * float(counts[0]) / videos, 100.0 * float(counts[1]) / videos)
            if videos
            else (0.0, 0.0)
        )
        return {"top1": top1, "top5": top5, "val_videos": videos}

    def _teach(self, clips: torch.Tensor) -> Callable[[], torch.Tensor | None]:
        """The teacher's (B, K) logits for ``clips`` (None without a teacher), to be fetched;
        computed beside the student's forward when a CPU core is spare (``teacher_logits``)."""
        teacher = self.parts.teacher
        if teacher is None:
            return lambda: None
        spare = clips.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)
        return teacher_logits(teacher, clips, self.autocast, beside=spare)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``train.amp``'s autocast on the run's device (CUDA, or a CPU with native bf16)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype)


def teacher_logits(
    teacher: nn.Module,
    clips: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    beside: bool,
) -> Callable[[], torch.Tensor]:
    """Start the teacher's forward on ``clips``: with ``beside``, in a second thread, where it
    runs while the caller computes the student's forward; returns what fetches the logits.

    Each op still runs on one thread with the same kernels, so the logits are bit for bit
    those of running it after: on a CPU with a core spare (the demo fine-tunes on one thread
    of two cores) the step takes 0.77x the time (``bench/demo_step.py``). Grad mode, autocast
    and OpenMP's thread count are per thread, so the thread sets them itself.
    """
    threads = torch.get_num_threads()

    def forward() -> torch.Tensor:
        torch.set_num_threads(threads)  # OpenMP's count is per thread too
        with torch.no_grad(), autocast():
            return teacher(clips).float()

    if not beside:
        taught = forward()
        return lambda: taught
    return _spare_thread().submit(forward).result


@functools.cache
def _spare_thread() -> ThreadPoolExecutor:
    """One worker thread for work beside the training step (``teacher_logits``)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsm-teacher")


def _epoch_row(epoch: int, acc: dict[str, float], lr: float) -> dict[str, Any]:
    """The training part of an epoch's metrics.jsonl row."""
    return {
        "epoch": epoch + 1,
        "loss": acc["loss_sum"] / max(acc["clips"], 1),
        "lr": lr,
        "clips_per_s": acc["clips"] / max(acc["seconds"], 1e-9),
        "data_wait_share": acc["wait"] / max(acc["seconds"], 1e-9),
        "seconds": acc["seconds"],
        "skipped": int(acc["skipped"]),
    }


def _loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | None = None,
    weight: float = 0.0,
    temperature: float = 1.0,
    smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of (B, K) logits against (B,) labels (smoothed by ``smoothing``);
    with ``teacher`` logits (B, K), ``(1 - weight) * CE + weight * T^2 * KL(teacher_T ||
    student_T)``, both softened by the temperature T (Hinton et al.; T^2 keeps the gradient
    scale as T changes).

    ``class_weights`` (K,): each clip's cross-entropy times its label's weight, averaged over
    the B clips. Divided by B, not by the batch's sum of weights (PyTorch's weighted mean): a
    rare class's clip then counts its weight's worth even in a batch of its own class (and
    at batch 1, where the weighted mean would cancel every weight)."""
    if class_weights is None:
        hard = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    else:
        per_clip = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
        hard = (per_clip * class_weights[labels]).mean()  # (B,) -> ()
    if teacher is None or weight == 0:
        return hard
    student_t = F.log_softmax(logits / temperature, dim=1)
    teacher_t = F.log_softmax(teacher / temperature, dim=1)
    soft = F.kl_div(student_t, teacher_t, log_target=True, reduction="batchmean")
    return (1 - weight) * hard + weight * temperature**2 * soft
