"""What ``tsm eval`` and ``tsm predict`` share to score test views: the loader of a clip
dataset's views, in order, and the scoring of its batches (the model on every view, the views
of an item averaged). The model is anything called on ``(N, T, 3, H, W)`` clips: the PyTorch
``TSN``, under autocast for bf16, or an exported ONNX model (``model.runtime.OnnxClipModel``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from tsmcli.engine.metrics import AverageMode, average_views
from tsmcli.errors import CheckpointError


def views_loader(
    dataset,
    batch_size: int,
    workers: int | None,
    device: torch.device,
    *,
    sampler=None,
    collate_fn=None,
):
    """The DataLoader of test views, in order. ``workers``: processes, by default up to 4 and
    one fewer than the batches (one batch has nothing to overlap with: starting a worker for
    it, as for ``tsm predict clip.mp4``, only costs)."""
    from torch.utils.data import DataLoader

    from tsmcli.data.batch import collate_clips
    from tsmcli.data.decode import preload_decoder
    from tsmcli.data.process_pool import worker_context

    if workers is None:
        batches = math.ceil(len(sampler if sampler is not None else dataset) / batch_size)
        workers = max(0, min(4, os.cpu_count() or 1, batches - 1))
    if workers:
        preload_decoder(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn or collate_clips,
        pin_memory=device.type == "cuda",
        multiprocessing_context=worker_context() if workers else None,
    )


def score_batches(
    model: torch.nn.Module, batches: Iterable, average: AverageMode, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """``(item indices (B,), view-averaged scores (B, K), views V)`` of each ``ClipBatch``
    of test views: the one scoring of eval and predict (call under ``inference_mode``). A
    batch whose items all failed to load is passed over."""
    for batch in batches:
        if not len(batch.indices):
            continue
        clips = batch.model_input(device)  # (B, V, T, 3, S, S)
        b, v = clips.shape[:2]
        logits = model(clips.flatten(0, 1))  # (B*V, K)
        scores = average_views(logits.float().cpu().view(b, v, -1), average)  # (B, K)
        if not torch.isfinite(scores).all():  # never a NaN turned into a ranking or a number
            raise CheckpointError(
                "the model's scores are NaN or infinite; its weights are damaged or come "
                "from a diverged run: use an earlier checkpoint"
            )
        yield torch.as_tensor(batch.indices, dtype=torch.long), scores, v
