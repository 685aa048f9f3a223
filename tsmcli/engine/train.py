"""``tsm train``: a recipe in, a run dir out (checkpoints, metrics, curves).

The run is exactly resumable. Every source of randomness is a function of the recipe's
seed and the position in training: the train order of epoch e is a permutation of
(seed, e), the augmentation of video i in epoch e comes from (seed, e, i), the learning rate
of step k from (e, k), and the remaining global RNG state (dropout) is stored in every
checkpoint. So 2 epochs in one go and 1 epoch + ``--resume`` give identical weights on the
CPU, and a Ctrl-C in the middle of an epoch saves a checkpoint that resumes at the next step.
A step is an optimizer step: with ``train.accumulate`` the Ctrl-C lets the step finish all its
batches, so a checkpoint never holds half an accumulated gradient.

Only rank 0 writes files, logs and shows a progress bar; every rank computes the same
decisions (stop on NaN, stop on Ctrl-C) from values all-reduced once a step.

The rooms: ``train_setup`` builds the run's parts (data, model, optimiser), ``train_loop``
runs its steps, ``state`` saves and restores it; this module is the run itself: its dir,
its epochs, its checkpoints and files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsmcli.engine import distributed
from tsmcli.engine.checks import check_recipe_checkpoints
from tsmcli.engine.distributed import DistContext
from tsmcli.engine.plots import plot_curves
from tsmcli.engine.state import (
    Interrupted,
    Progress,
    ResumeTarget,
    StopOnSignal,
    run_checkpoint,
)
from tsmcli.engine.state import resume as resume_run
from tsmcli.engine.train_loop import Loop
from tsmcli.engine.train_setup import (
    build_optimisation,
    build_run_model,
    configure_backends,
    prepare_data,
)
from tsmcli.errors import RecipeError, TrainingError, UsageError
from tsmcli.fileio import (
    atomic_link,
    atomic_write,
    check_writable_dir,
    exclusive_lock,
    remove_stale_temps,
)
from tsmcli.model.checkpoint import CheckpointInfo
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import Recipe

log = logging.getLogger(__name__)

# called on the main process with each epoch's metrics row, plus the plan: "epochs" and
# "steps_per_epoch"
EpochHook = Callable[[dict[str, Any]], None]

LAST, BEST = "last.pt", "best.pt"
RECIPE_FILE, METRICS_FILE, CURVES_FILE = "recipe.yaml", "metrics.jsonl", "curves.png"
RUN_FILES = (LAST, BEST, RECIPE_FILE, METRICS_FILE, CURVES_FILE)  # what a run writes
LOCK_FILE = ".tsm-train.lock"  # held while a run uses the dir


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


def train(
    recipe: Recipe,
    out_dir: Path | None = None,
    resume: bool = False,
    *,
    preloaded: Sequence[CheckpointInfo] = (),
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train ``recipe`` into ``out_dir`` (default ``train.out_dir/<recipe name>``).

    ``resume`` continues from ``last.pt`` there; without it a run dir that already holds a
    ``last.pt`` is refused rather than overwritten. ``preloaded`` are checkpoints the caller
    has read already: ``model.init_from`` or ``train.distill_from`` naming one of their paths
    takes it instead of reading the file again. ``on_epoch`` is told each epoch's metrics
    row once the epoch is recorded (and saved, when due), on the main process (``tsm demo``
    projects its total from the first). Under torchrun every process calls this.
    """
    check_arch(recipe)
    check_recipe_checkpoints(recipe, resume=resume)  # files or model zoo names, no network
    run_dir = _run_dir(recipe, out_dir)
    check_writable_dir(
        run_dir,
        "--out" if out_dir is not None else "train.out_dir",
        UsageError if out_dir is not None else RecipeError,
    )
    ctx = distributed.setup(recipe.train.device)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with _run_dir_lock(run_dir, ctx.is_main):
            run = _Run(recipe, run_dir, resume, ctx, preloaded)
            run.on_epoch = on_epoch
            with StopOnSignal(announce=ctx.is_main) as stop:
                return run.fit(stop)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path, is_main: bool) -> Iterator[None]:
    """Hold ``run_dir/.tsm-train.lock`` while the run uses the dir, so that a second run into
    it is refused at once instead of both writing there (``fileio.exclusive_lock``: a killed
    run's lock is taken over). The main process holds it for all of a torchrun job. A run dir
    this run created and left empty (it failed before writing anything) is removed."""
    if not is_main:
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)

    def busy(pid: str) -> TrainingError:
        return TrainingError(
            f"{run_dir}: another tsm train (PID {pid}) is using this run dir; wait for it to "
            "finish, or choose another run dir with --out"
        )

    try:
        with exclusive_lock(run_dir / LOCK_FILE, busy):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


def check_arch(recipe: Recipe) -> None:
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

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        resume: bool,
        ctx: DistContext,
        preloaded: Sequence[CheckpointInfo] = (),
    ):
        self.recipe, self.run_dir, self.ctx = recipe, run_dir, ctx
        self.preloaded = {info.path: info for info in preloaded}
        self.on_epoch: EpochHook | None = None
        self._check_run_dir(resume)
        if ctx.is_main:  # a kill during a save leaves its temp file (a checkpoint's size)
            for stale in remove_stale_temps(run_dir, RUN_FILES):
                log.info("removed %s, left by an interrupted save", stale)
        amp_dtype = configure_backends(recipe.train, ctx)
        self.data = prepare_data(recipe, ctx, run_dir)
        # resuming: the weights come from last.pt
        self.parts = build_run_model(
            recipe,
            self.data.num_classes,
            ctx,
            load_init_weights=not resume,
            source=self._checkpoint_source,
        )
        self.optim = build_optimisation(recipe, self.parts.model, self.data, ctx)
        self.loop = Loop(recipe, ctx, self.data, self.parts, self.optim, amp_dtype, run_dir / LAST)
        self.progress = self._resume() if resume else Progress()
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

    def _checkpoint_source(self, path: str) -> str | CheckpointInfo:
        """The checkpoint at ``path``, as the caller read it when it did (``preloaded``)."""
        return self.preloaded.get(Path(path), path)

    def _resume(self) -> Progress:
        target = ResumeTarget(
            self.parts.model,
            self.optim.optimizer,
            self.optim.scaler,
            self.data.num_classes,
            self.data.global_batch,
            self.ctx,
            self.data.classes,
        )
        progress = resume_run(self.run_dir / LAST, self.recipe, target, self.run_dir / RECIPE_FILE)
        if self.ctx.is_main:
            where = f", step {progress.iteration}" if progress.iteration else ""
            log.info("resuming %s after epoch %d%s", self.run_dir, progress.epoch, where)
        return progress

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
            self.run_dir / METRICS_FILE,
            "".join(json.dumps(row) + "\n" for row in self.progress.history),
        )

    def _save(self, state: dict[str, Any]) -> None:
        """last.pt, then the recipe it was trained with beside it (rank 0)."""
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
        history, best_top1 = self.progress.history, self.progress.best_top1
        last_top1 = next(
            (row["top1"] for row in reversed(history) if row["top1"] is not None), None
        )
        return TrainResult(
            run_dir=self.run_dir,
            epochs=len(history),
            best_top1=best_top1,
            last_top1=last_top1,
            best_checkpoint=self.run_dir / BEST if best_top1 is not None else None,
            last_checkpoint=self.run_dir / LAST,
            history=list(history),
            model=self.parts.model,
        )

    def _epochs(self, stop: StopOnSignal) -> None:
        t, progress, epochs = self.recipe.train, self.progress, self.data.epochs
        for epoch in range(progress.epoch, epochs):
            row = self.loop.train_epoch(
                epoch, progress.iteration, progress.partial, stop, self._save_interrupted
            )
            progress.iteration, progress.partial = 0, {}
            if self.data.val_set is not None and (
                (epoch + 1) % t.eval_every == 0 or epoch + 1 == epochs
            ):
                row.update(self.loop.validate())
            else:
                row.update(top1=None, top5=None, val_videos=0)
            saved = self._end_epoch(epoch, row)
            if self.on_epoch is not None and self.ctx.is_main:
                plan = {"epochs": epochs, "steps_per_epoch": self.data.iters_per_epoch}
                self.on_epoch({**row, **plan})
            if epoch + 1 < epochs and self._everywhere(stop.requested):
                if not saved:  # Ctrl-C during an epoch not due for a save: saved now
                    self._save_epoch(epoch, is_best=False)
                if self.ctx.is_main:  # Ctrl-C during validation: last.pt is this epoch's
                    log.warning("stopped after epoch %d; continue with --resume", epoch + 1)
                raise Interrupted

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> bool:
        """Record the epoch (metrics.jsonl, tensorboard, the log line); write last.pt, best.pt
        and the curves when due: every ``train.save_every`` epochs, at a new best top-1 and
        after the last epoch. Returns whether they were written. Every rank calls it (the
        checkpoint is collective)."""
        progress = self.progress
        is_best = row["top1"] is not None and (
            progress.best_top1 is None or row["top1"] > progress.best_top1
        )
        if is_best:
            progress.best_top1 = row["top1"]
        progress.history.append(row)
        done = epoch + 1
        due = is_best or done % self.recipe.train.save_every == 0 or done == self.data.epochs
        if due:
            self._save_epoch(epoch, is_best)
        if not self.ctx.is_main:
            return due
        self._write_metrics()  # ahead of last.pt between saves; a resume rewrites it to match
        if self.tensorboard is not None:
            for key in ("loss", "lr", "top1", "top5", "clips_per_s", "data_wait_share"):
                if row.get(key) is not None:
                    self.tensorboard.add_scalar(key, row[key], done)
        _log_epoch(epoch, self.data.epochs, row)
        return due

    def _save_epoch(self, epoch: int, is_best: bool) -> None:
        """last.pt after ``epoch`` (best.pt too when ``is_best``) and the curves; collective."""
        state = self._checkpoint(epoch + 1, 0, {})  # gathers every rank's RNG
        if not self.ctx.is_main:
            return
        self._save(state)
        if is_best:
            atomic_link(self.run_dir / LAST, self.run_dir / BEST)
        plot_curves(self.progress.history, self.run_dir / CURVES_FILE)

    def _save_interrupted(self, epoch: int, iteration: int, acc: dict[str, float]) -> None:
        state = self._checkpoint(epoch, iteration, acc)
        if self.ctx.is_main:
            self._save(state)
            log.warning(
                "saved %s at epoch %d step %d/%d; continue with --resume",
                self.run_dir / LAST,
                epoch + 1,
                iteration,
                self.data.iters_per_epoch,
            )

    def _checkpoint(self, epoch: int, iteration: int, partial: dict[str, float]) -> dict[str, Any]:
        """This run's checkpoint dict (``state.run_checkpoint``); every rank must call it.

        ``epoch`` is the number of finished epochs; ``iteration`` the steps already taken in
        the next one (0 at an epoch boundary).
        """
        return run_checkpoint(
            model=self.parts.model,
            recipe=self.recipe,
            classes=self.data.classes,
            optimizer=self.optim.optimizer,
            scaler=self.optim.scaler,
            epoch=epoch,
            iteration=iteration,
            partial=partial,
            global_batch=self.data.global_batch,
            best_top1=self.progress.best_top1,
            history=self.progress.history,
            ctx=self.ctx,
            cuda=self.ctx.device.type == "cuda",
        )

    def _everywhere(self, flag: bool) -> bool:
        """True if ``flag`` is set on any rank (every rank gets the same answer)."""
        total = distributed.all_reduce_sum(
            torch.tensor([float(flag)], device=self.ctx.device), self.ctx
        )
        return bool(total.item() > 0)


def _log_epoch(epoch: int, epochs: int, row: dict[str, Any]) -> None:
    top = f", top-1 {row['top1']:.2f}%, top-5 {row['top5']:.2f}%" if row["top1"] is not None else ""
    log.info(
        "epoch %d/%d: loss %.4f%s, %.1f clips/s, data wait %.0f%%, %.0f s",
        epoch + 1,
        epochs,
        row["loss"],
        top,
        row["clips_per_s"],
        100 * row["data_wait_share"],
        row["seconds"],
    )
