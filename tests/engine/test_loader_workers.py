"""The loaders of training and of eval fork their workers with the garbage collector frozen, as
``tsm extract`` does: a worker never collects the garbage it was forked with (a decoder whose
destructor joins a thread that only the parent has)."""

from __future__ import annotations

import gc

import pytest
import torch

from tsmcli.data.batch import Sample
from tsmcli.engine.distributed import ShardedSampler
from tsmcli.engine.scoring import views_loader
from tsmcli.engine.train_setup import make_loader
from tsmcli.recipe import TrainConfig


class _CollectingDataset(torch.utils.data.Dataset):
    """Items that each run a full collection in the worker that loads them."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> Sample:
        gc.collect()
        return Sample(torch.zeros(1, 1, 3, 2, 2, dtype=torch.uint8), 0, index)


def _eval_loader(dataset):
    return views_loader(dataset, 1, 2, torch.device("cpu"))


def _train_loader(dataset):
    sampler = ShardedSampler(len(dataset), shuffle=False, pad=False)
    return make_loader(dataset, sampler, TrainConfig(batch_size=1, workers=2), False, False)


@pytest.mark.parametrize("loader", [_eval_loader, _train_loader], ids=["eval", "train"])
def test_loader_workers_never_collect_the_garbage_they_were_forked_with(
    decoder_garbage, deadline, loader
):
    with deadline(120):
        indices = [int(i) for batch in loader(_CollectingDataset()) for i in batch.indices]
    assert sorted(indices) == [0, 1, 2, 3]
