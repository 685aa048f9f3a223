"""torchrun set-up, rank helpers and the seeded sharded sampler.

Under ``torchrun`` the environment holds RANK, WORLD_SIZE and LOCAL_RANK; ``setup`` reads
them, picks the device (``cuda:LOCAL_RANK`` or the CPU) and starts the process group (NCCL
on CUDA, gloo on the CPU) unless one is running already. Without them it is a world of one
and nothing is initialised, so the same training code runs alone or in a group.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from tsmcli.choices import DEVICES
from tsmcli.engine.balance import balanced_order
from tsmcli.errors import RecipeError, TrainingError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the group, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_rank() -> int:
    """This process's rank from the torchrun environment (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(name: str | None, option: str = "--device") -> torch.device:
    """The one reading of a device choice (train, eval, predict): ``auto`` or None (CUDA when
    a GPU is visible), ``cpu`` or ``cuda``. ``option`` is how the user gave it: a command-line
    option (``--device``: a ``UsageError``, exit 2) or a recipe key (``train.device``: a
    ``RecipeError``); a wrong value, or ``cuda`` without a GPU, is an error naming it."""
    from_recipe = not option.startswith("-")
    error = RecipeError if from_recipe else UsageError
    if name not in (None, *DEVICES):
        raise error(f"{option} must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        if from_recipe:
            raise error(f"{option} is cuda but no GPU is visible; use --set {option}=auto or cpu")
        raise error(f"{option} cuda but no GPU is visible; use {option} auto or cpu")
    use_cuda = name == "cuda" or (name in (None, "auto") and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def setup(device: str | None = "auto", option: str = "train.device") -> DistContext:
    """Read the torchrun environment, choose the device, start the process group if needed.

    ``device`` is ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``, given as
    ``option`` (``resolve_device``); under torchrun, CUDA means this process's GPU.
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device, option).type == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                "visible; start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # Started once per process and ended at exit, not after each run: a second
        # init_process_group in the same torchrun process can meet the first one's leftovers
        # in the rendezvous store and hang, so a second train() reuses this group instead.
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": chosen} if use_cuda else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        atexit.register(_destroy_group)
        if rank == 0:
            log.info("distributed: %d processes, backend %s", world_size, backend)
    return DistContext(rank, world_size, local_rank, chosen)


def teardown(ctx: DistContext) -> None:
    """The end of a run. The process group stays up for the next run in this process and is
    ended at exit (see ``setup``), so there is nothing to undo here; kept so callers need not
    know that."""


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``values`` over all ranks (the tensor itself when alone)."""
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


class ShardedSampler(Sampler[int]):
    """Indices for this rank: a seeded per-epoch permutation split across ranks.

    With ``labels`` (``data.sampler: balanced``) an epoch is ``balance.balanced_order`` of
    (labels, seed, epoch) instead of a permutation: as many draws, every class alike; the
    ranks share it out as they share a permutation.

    Training (``shuffle=True, pad=True``): the permutation of (seed, epoch) is padded by
    wrapping around to a multiple of ``world_size`` so that every rank takes the same number
    of steps, and rank r takes every world_size-th index from r. Step s of a 2-process run
    with batch B therefore sees the same videos as step s of one process with batch 2B.
    Evaluation (``shuffle=False, pad=False``): list order, no padding, so each video is
    scored exactly once across ranks. ``start`` skips the first items of this rank's share
    (resuming in the middle of an epoch).
    """

    def __init__(
        self,
        num_items: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
        labels: Sequence[int] | None = None,
    ):
        if labels is not None and len(labels) != num_items:
            raise ValueError(f"{len(labels)} labels for {num_items} items")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def indices(self) -> np.ndarray:
        """This rank's whole share of the current epoch (before ``start`` is skipped)."""
        if self.shuffle and self.labels is not None:
            order = balanced_order(self.labels, self.seed, self.epoch)
        elif self.shuffle:
            order = epoch_permutation(self.num_items, self.seed, self.epoch)
        else:
            order = np.arange(self.num_items)
        if self.pad and self.num_items:
            total = -(-self.num_items // self.world_size) * self.world_size
            order = np.resize(order, total)  # repeats from the start to fill the last round
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(int(i) for i in self.indices()[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.indices()) - self.start)
