"""What a training run saves and restores, and how it stops cleanly.

The checkpoint dict holds tensors and builtins only, so ``weights_only=True`` loads it; with
the weights and optimiser it stores every rank's global RNG state (dropout's), which is what
the seed and the position in training do not already determine. ``StopOnSignal`` turns a
Ctrl-C into "finish this step, save a resumable checkpoint, stop".
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsmcli.data.lists import CLASSES_FILE
from tsmcli.engine.distributed import DistContext
from tsmcli.errors import CheckpointError, TrainingError
from tsmcli.model.checkpoint import checkpoint_dict
from tsmcli.model.tsn import TSN
from tsmcli.model.weights import FORMAT
from tsmcli.recipe import Recipe

log = logging.getLogger(__name__)

# model keys that may change on resume (they only say where the first weights came from)
_RESUMABLE_MODEL_CHANGES = {"pretrained", "init_from"}


# ---------------------------------------------------------------------- checkpoints


def run_checkpoint(
    *,
    model: TSN,
    recipe: Recipe,
    classes: Sequence[str] | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    iteration: int,
    partial: dict[str, float],
    global_batch: int,
    best_top1: float | None,
    history: list[dict[str, Any]],
    ctx: DistContext,
    cuda: bool,
) -> dict[str, Any]:
    """A run's checkpoint: ``model.checkpoint.checkpoint_dict`` (the one header) plus the
    training state. Tensors and builtins only, so ``weights_only=True`` loads it.

    ``epoch`` is the number of finished epochs; ``iteration`` the steps already taken in
    the next one (0 at an epoch boundary). Collective: every rank must call it, as it
    gathers every rank's RNG state.
    """
    rng = _gather(_rng_state(cuda), ctx)
    return checkpoint_dict(
        model,
        recipe=recipe.to_dict(),
        classes=list(classes) if classes else None,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict(),
        epoch=epoch,
        iteration=iteration,
        partial=dict(partial),
        global_batch=global_batch,
        world_size=ctx.world_size,
        rng=rng,
        best_top1=best_top1,
        history=list(history),
    )


@dataclass
class Progress:
    """Where a run stands: finished epochs, steps taken in the next one and their partial
    sums (0 and {} at an epoch boundary), the best top-1 so far, one history row an epoch."""

    epoch: int = 0
    iteration: int = 0
    partial: dict[str, float] = field(default_factory=dict)
    best_top1: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ResumeTarget:
    """What a resumed run restores into, and what the checkpoint must agree with."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    num_classes: int
    global_batch: int
    ctx: DistContext
    classes: Sequence[str] | None = None  # classes.txt beside the train list, as read now


def resume(path: Path, recipe: Recipe, target: ResumeTarget, recipe_file: Path) -> Progress:
    """Restore a run from its ``last.pt`` at ``path``: weights, optimiser and scaler, every
    rank's global RNG, and where it stood. A file that is not this run's training checkpoint
    (another class count, another model, no optimiser state) is one line."""
    from tsmcli.model.weights import load_checkpoint, load_state_dict_strict

    state = load_checkpoint(path)
    check_resumable(state, path)
    changed = check_resume_recipe(state.get("recipe") or {}, recipe, path, recipe_file)
    if changed and target.ctx.is_main:
        log.warning("resuming with changed recipe keys: %s", ", ".join(changed))
    _check_resumed_classes(state, path, recipe, target.num_classes, target.classes)
    load_state_dict_strict(target.model, state["state_dict"], str(path))
    try:
        target.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            target.scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: its optimizer state does not fit this model ({exc}); the file is "
            "damaged or from another run: start a new run with --out"
        ) from None
    progress = _progress(state, target.global_batch)
    restore_rng(state.get("rng") or [], target.ctx, target.ctx.device.type == "cuda")
    return progress


def _check_resumed_classes(
    state: dict[str, Any],
    path: Path,
    recipe: Recipe,
    num_classes: int,
    classes: Sequence[str] | None,
) -> None:
    """The classes now are those the weights were trained on: as many, in the same order
    (each output is a class's; the same names in another order would relabel them)."""
    listed = Path(recipe.data.train_list).expanduser().parent / CLASSES_FILE
    saved = int(state["model_config"].get("num_classes", num_classes))
    if saved != num_classes:
        source = "model.num_classes" if recipe.model.num_classes else str(listed)
        raise TrainingError(
            f"{path}: was trained with {saved} classes, but {source} now gives "
            f"{num_classes}; restore it to resume, or start a new run with --out"
        )
    trained = state.get("classes")
    if not trained or not classes or list(trained) == list(classes):
        return
    if sorted(trained) == sorted(classes):
        raise TrainingError(
            f"{path}: was trained with the classes in another order than {listed} now lists "
            "them, so each output would be trained as another class; restore it to resume, or "
            "start a new run with --out"
        )
    log.warning(
        "%s names other classes than %s was trained with; its names are stored from now on",
        listed,
        path,
    )


def _progress(state: dict[str, Any], global_batch: int) -> Progress:
    """Where the saved run stood. A step count inside an epoch is kept only for the same
    global batch (the sampler's order depends on it): otherwise the epoch starts over."""
    progress = Progress(
        epoch=int(state["epoch"]),
        iteration=int(state.get("iteration", 0)),
        partial=dict(state.get("partial") or {}),
        best_top1=state.get("best_top1"),
        history=list(state.get("history") or []),
    )
    if progress.iteration and int(state.get("global_batch", global_batch)) != global_batch:
        log.warning(
            "the global batch changed since the interruption; epoch %d starts over",
            progress.epoch + 1,
        )
        progress.iteration, progress.partial = 0, {}
    return progress


def check_resume_recipe(
    saved: dict[str, Any], recipe: Recipe, path: Path, recipe_file: Path
) -> list[str]:
    """The recipe keys that changed since the checkpoint at ``path`` was saved. A changed
    model key is refused (the saved weights would not fit), except those that only say where
    the first weights came from."""
    changed = _changed_keys(saved, recipe.to_dict())
    fixed = [
        k
        for k in changed
        if k.startswith("model.") and k.split(".", 1)[1] not in _RESUMABLE_MODEL_CHANGES
    ]
    if fixed:
        raise TrainingError(
            f"{path}: was trained with different {', '.join(fixed)}; resume with the "
            f"recipe in {recipe_file} (or start a new run with --out)"
        )
    return changed


def check_resumable(state: dict[str, Any], path: Path) -> None:
    """Refuse, in one line, a readable file that is not one of our training checkpoints (a
    state dict, an exported model, a checkpoint without its optimiser state)."""
    kinds = {"state_dict": dict, "optimizer": dict, "model_config": dict, "epoch": int}
    missing = [key for key, kind in kinds.items() if not isinstance(state.get(key), kind)]
    if state.get("format") != FORMAT or missing:
        what = (
            f"it has no {', '.join(missing)}"
            if state.get("format") == FORMAT
            else "it is not a tsmcli checkpoint"
        )
        raise TrainingError(
            f"{path}: not a training checkpoint ({what}), so it cannot be resumed; start a "
            "new run with --out (model.init_from=FILE fine-tunes from a model's weights)"
        )


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


# ---------------------------------------------------------------------- RNG state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def restore_rng(saved: list[dict[str, Any]], ctx: DistContext, cuda: bool) -> None:
    """Set this rank's global RNGs from a checkpoint's per-rank states (rank 0's when the
    number of processes changed; nothing when the checkpoint holds none)."""
    if saved:
        _set_rng_state(saved[ctx.rank] if len(saved) == ctx.world_size else saved[0], cuda)


def _rng_state(cuda: bool) -> dict[str, Any]:
    """Global RNG states as tensors and builtins (numpy's key array becomes an int64 tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if cuda else None,
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }


def _set_rng_state(state: dict[str, Any], cuda: bool) -> None:
    torch.set_rng_state(state["torch"])
    if cuda and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _gather(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` from every rank, in rank order (a list of one when alone)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


# ---------------------------------------------------------------------- stopping


class Interrupted(Exception):
    """Raised inside the loop after a Ctrl-C, once the resumable checkpoint is saved."""


class StopOnSignal:
    """First Ctrl-C (or SIGTERM): finish the current step, save, stop. Second: stop now.

    A repeat within ``grace_s`` counts as the same request: torchrun forwards the terminal's
    SIGINT to workers that already got it, and that echo must not turn a clean stop into an
    abort. Only installable from the main thread; elsewhere a Ctrl-C interrupts wherever it
    lands and the last end-of-epoch checkpoint is what remains.
    """

    signals = (signal.SIGINT, signal.SIGTERM)
    grace_s = 2.0

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.announce = announce
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first > self.grace_s:
                raise KeyboardInterrupt
            return
        self.requested, self._first = True, time.monotonic()
        if self.announce:
            log.warning(
                "interrupted: finishing this step and saving a resumable checkpoint "
                "(press Ctrl-C again to stop at once)"
            )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
