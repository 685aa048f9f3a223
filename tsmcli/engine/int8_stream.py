"""The int8 streaming model of ``tsm convert-online --precision int8``: ``online.onnx``
quantized, calibrated and checked on real clips, streamed as ``tsm eval --online`` streams them.

Every frame goes through ``OnlineModel.prepare`` (the single-view test transform of the model
dir: what ``tsm eval --online`` and ``tsm stream`` feed), at the model dir's frame stride. The
calibration inputs are those frames *with the buffers the fp32 model holds at them*: each
calibration clip is streamed through ``online.onnx`` from zero buffers, and every step's
frame and buffers are one calibration input, so the buffer inputs get the ranges they have
when streaming, not those of zeros or noise.

The check streams each held-back clip through both files, frame by frame, each carrying its
own buffers (the int8 model's are int8 all along, as deployed): the running average after the
last frame is the clip's score (``engine.int8.judge``), and the per-frame logits are compared
with the fp32 model's (``engine.int8.LOGIT_TOLERANCE``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tsmcli.data.lists import ListFile
from tsmcli.engine.int8 import Int8Checks, judge, relative_rms, split_clips
from tsmcli.engine.online import DECODE_CHUNK, OnlineModel, open_frames
from tsmcli.model.quantize import DEFAULT_INT8, Int8Config, quantize_onnx
from tsmcli.model.runtime import OnnxStep

log = logging.getLogger(__name__)


def quantize_streaming(
    fp32_onnx: Path,
    out: Path,
    online: OnlineModel,
    listed: ListFile,
    root: Path,
    *,
    source: str | None = None,
    backend: str | None = None,
    calib_clips: int,
    check_clips: int,
    config: Int8Config = DEFAULT_INT8,
) -> Int8Checks:
    """Write ``out``, the int8 model of the streaming ``fp32_onnx``, calibrated on clips of
    ``listed`` and checked on others (``engine.int8``); raises ``ExportError`` when a check
    fails (``out`` is in the staged dir: nothing is published)."""
    split = split_clips(len(listed.entries), calib_clips, check_clips)
    clips = _Clips(online, listed, root, source, backend)
    fp32 = OnnxStep(fp32_onnx, len(online.buffer_shapes))
    log.info("calibrating int8 on %d clips of %s", len(split.calibration), listed.path)
    counted = [0]
    quantize_onnx(
        fp32_onnx, out, _calibration_feeds(fp32, clips, split.calibration, counted), config
    )
    int8 = OnnxStep(out, len(online.buffer_shapes))
    log.info("checking int8 against fp32 on %d clips", len(split.check))
    fp32_scores, int8_scores, diffs, refs = [], [], [], []
    for index in split.check:
        ref, got = _stream_both(fp32, int8, clips.frames(index), online)  # (F, K) each
        fp32_scores.append(ref.mean(0))
        int8_scores.append(got.mean(0))
        diffs.append(got - ref)
        refs.append(ref)
    labels = torch.tensor([listed.entries[i].label for i in split.check])
    return judge(
        torch.stack(fp32_scores),
        torch.stack(int8_scores),
        labels,
        what=f"the int8 streaming model ({out.name})",
        calibration=(len(split.calibration), counted[0]),
        held_back=split.held_back,
        logit_error=relative_rms(diffs, refs),
    )


class _Clips:
    """The prepared frames of a list's clips, as ``tsm eval --online`` feeds them."""

    def __init__(self, online: OnlineModel, listed: ListFile, root: Path, source, backend):
        self.online, self.listed, self.root = online, listed, Path(root)
        self.source, self.backend = source, backend

    def frames(self, index: int) -> Iterator[Tensor]:
        """Clip ``index``'s frames at the model's stride, prepared: ``(1, 3, H, W)`` each."""
        entry = self.listed.entries[index]
        video = open_frames(self.root / entry.path, entry.num_frames, self.source, self.backend)
        indices = list(range(0, video.num_frames, self.online.frame_stride))
        for start in range(0, len(indices), DECODE_CHUNK):
            prepared = self.online.prepare(video.get(indices[start : start + DECODE_CHUNK]))
            yield from (frame.unsqueeze(0) for frame in prepared)  # (1, 3, H, W)


def _calibration_feeds(
    fp32: OnnxStep, clips: _Clips, indices: tuple[int, ...], counted: list[int]
) -> Iterator[dict[str, Any]]:
    """Each calibration clip streamed through the fp32 model: every step's frame and the
    buffers it was given (``counted[0]``: how many were fed)."""
    for index in indices:
        buffers = [np.zeros(shape, np.float32) for shape in clips.online.buffer_shapes]
        for frame in clips.frames(index):
            feed = dict(zip(fp32.inputs, [frame.numpy(), *buffers], strict=True))
            counted[0] += 1
            yield feed
            buffers = fp32.run_feed(feed)[1:]


def _stream_both(
    fp32: OnnxStep, int8: OnnxStep, frames: Iterator[Tensor], online: OnlineModel
) -> tuple[Tensor, Tensor]:
    """Per-frame logits ``(F, K)`` of both models over one clip, each with its own buffers."""
    ref_buffers = got_buffers = online.initial_buffers()
    ref, got = [], []
    with torch.no_grad():
        for frame in frames:
            logits, *ref_buffers = fp32(frame, *ref_buffers)
            ref.append(logits)
            logits, *got_buffers = int8(frame, *got_buffers)
            got.append(logits)
    return torch.cat(ref), torch.cat(got)
