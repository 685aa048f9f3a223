"""The int8 clip model of ``tsm export --precision int8``: ``model.onnx`` quantized, calibrated
and checked on real clips made exactly as ``tsm eval`` makes them.

The clips of the calibration list go through eval's own dataset and loader
(``VideoClipDataset`` in test mode with eval's default views: the centre view, dense for a
model trained on dense samples; ``ClipBatch.model_input``: resize, crop, normalisation): the calibration inputs are those
clips, and the check scores the held-back ones with both ONNX files, views averaged as eval
averages them (``engine.int8.judge`` decides).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli.data.lists import ListFile
from tsmcli.engine.int8 import Int8Checks, judge, split_clips, subset
from tsmcli.engine.metrics import average_views
from tsmcli.engine.scoring import views_loader
from tsmcli.engine.views import EvalData, resolve_views
from tsmcli.model.quantize import DEFAULT_INT8, Int8Config, quantize_onnx
from tsmcli.model.runtime import OnnxClipModel
from tsmcli.view_request import ViewRequest

log = logging.getLogger(__name__)


def quantize_clip(
    fp32_onnx: Path,
    out: Path,
    *,
    num_classes: int,
    num_segments: int,
    listed: ListFile,
    root: Path,
    data: EvalData,
    source: str,
    calib_clips: int,
    check_clips: int,
    config: Int8Config = DEFAULT_INT8,
) -> Int8Checks:
    """Write ``out``, the int8 model of the clip model ``fp32_onnx``, calibrated on clips of
    ``listed`` (read as eval reads them: ``data``, ``source``) and checked on others
    (``engine.int8``); raises ``ExportError`` when a check fails."""
    split = split_clips(len(listed.entries), calib_clips, check_clips)
    clips = _EvalClips(listed, root, data, source, num_segments)
    log.info("calibrating int8 on %d clips of %s", len(split.calibration), listed.path)
    counted = [0]
    quantize_onnx(fp32_onnx, out, _calibration_feeds(clips, split.calibration, counted), config)
    models = [
        OnnxClipModel(path, num_classes=num_classes, num_segments=num_segments)
        for path in (fp32_onnx, out)
    ]
    log.info("checking int8 against fp32 on %d clips", len(split.check))
    scores: list[list[Tensor]] = [[], []]
    labels = []
    for batch in clips.batches(split.check):
        views = batch.model_input(torch.device("cpu"))  # (B, V, T, 3, S, S)
        b, v = views.shape[:2]
        for found, model in zip(scores, models, strict=True):
            logits = model(views.flatten(0, 1)).view(b, v, -1)  # (B, V, K)
            found.append(average_views(logits, clips.protocol.average))  # (B, K)
        labels.extend(split.check[int(i)] for i in batch.indices)
    return judge(
        torch.cat(scores[0]),
        torch.cat(scores[1]),
        torch.tensor([listed.entries[i].label for i in labels]),
        what=f"the int8 clip model ({out.name})",
        calibration=(len(split.calibration), counted[0]),
        held_back=split.held_back,
    )


class _EvalClips:
    """Clips of a list as ``tsm eval`` makes them: its dataset, one centre view each."""

    def __init__(self, listed: ListFile, root: Path, data: EvalData, source: str, segments: int):
        self.listed, self.root, self.data, self.source = listed, root, data, source
        self.segments = segments
        self.protocol = resolve_views(ViewRequest(), data.dense_training)  # eval's default

    def batches(self, indices: tuple[int, ...]) -> Iterator[Any]:
        """``ClipBatch``es of the entries at ``indices`` (batch positions index ``indices``)."""
        from tsmcli.data.dataset import VideoClipDataset

        dataset = VideoClipDataset(
            subset(self.listed, indices),
            self.root,
            clip=self.data.clip(self.segments),
            reading=self.data.reading(self.source),
            views=self.protocol,
        )
        yield from views_loader(dataset, 4, 0, torch.device("cpu"))


def _calibration_feeds(
    clips: _EvalClips, indices: tuple[int, ...], counted: list[int]
) -> Iterator[dict[str, Any]]:
    """Every view of each calibration clip, as the clip model's input."""
    for batch in clips.batches(indices):
        views = batch.model_input(torch.device("cpu"))  # (B, V, T, 3, S, S)
        for clip in views.flatten(0, 1):  # (T, 3, S, S)
            counted[0] += 1
            yield {"clip": clip[None].numpy()}
