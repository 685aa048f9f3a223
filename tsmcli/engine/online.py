"""Streaming evaluation of an exported online model (``tsm eval --online``), and the online
model as ``tsm stream`` runs it (``engine.stream``).

An online model dir (written by ``tsm convert-online``; its layout and loading are
``model.model_dir``'s) is run here as ``load_model_dir`` gives it: rebuilt from the package's own
code with the weights read by ``weights_only=True`` (a model dir from elsewhere cannot run
code), or ``online.pt`` when asked with ``trust_torchscript=True`` (``--trust-torchscript``).
With ``precision="int8"`` the step is the dir's ``online.int8.onnx`` in ONNX Runtime, and with
``"bf16"`` the rebuilt model under bf16 autocast where the CPU has native bf16
(``engine.precision``). Either way the step is ``(frame, *buffers) -> (logits, *new_buffers)``. Frames are fed one at
a time, as a camera would give them, and the prediction is the running average of the
per-frame logits.

Frames: every frame of the video, in order (``stride=1``), by default. That is what a live
stream gives and what the streaming model is exact for; ``stride=k`` keeps every k-th frame
to bring the spacing of consecutive frames closer to the one the model saw in training
(segments spread over the whole clip). Each frame gets the single-view test transform:
short side resized to ``scale_size``, centre crop, ImageNet normalisation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli.choices import SOURCES
from tsmcli.data import transforms
from tsmcli.data.decode import FrameFolder, FrameSource, open_video
from tsmcli.data.layout import FRAME_TEMPLATE
from tsmcli.data.lists import read_classes, read_list_file
from tsmcli.engine.checks import EVAL_HINT
from tsmcli.engine.metrics import topk_accuracy
from tsmcli.engine.precision import Autocast, check_precision, require_bf16
from tsmcli.engine.reports import EvalResult, eval_result
from tsmcli.engine.views import Protocol
from tsmcli.errors import DataError, ExportError, UsageError
from tsmcli.model.model_dir import ModelDir, load_model_dir

logger = logging.getLogger(__name__)

SEEN_PERCENTS = (25, 50, 100)
DECODE_CHUNK = 16  # frames decoded at once: bounded memory for long videos


@dataclass(frozen=True)
class OnlineModel(ModelDir):
    """A model dir's streaming model ready to run, with its class names."""

    classes: list[str] | None = None

    def initial_buffers(self) -> list[Tensor]:
        """Zero buffers: the state at the start of every stream."""
        return [torch.zeros(shape) for shape in self.buffer_shapes]

    def prepare(self, frames: Tensor) -> Tensor:
        """uint8 ``(N, 3, h, w)`` frames to the model's normalised ``(N, 3, H, W)`` input."""
        if self.height == self.width:
            return transforms.normalize(
                transforms.eval_views(frames, input_size=self.height, scale_size=self.scale_size)[0]
            )  # (N, 3, H, W)
        from torchvision.transforms.v2 import functional as F

        resized = transforms.resize_short_side(frames, self.scale_size)
        return transforms.normalize(F.center_crop(resized, [self.height, self.width]))

    def label(self, index: int) -> str:
        if not self.classes:
            return str(index)
        if index >= len(self.classes):  # a report too old to record the outputs
            raise ExportError(
                f"{self.classes_file}: names {len(self.classes)} classes, but the model has "
                f"more outputs; restore the file written by tsm convert-online, or convert "
                "the checkpoint again"
            )
        return self.classes[index]

    def stride(self, given: int | None) -> int:
        """The frame stride to feed: ``given`` (``--stride``), else the model dir's own."""
        if given is None:
            return self.frame_stride
        if given < 1:
            raise UsageError(f"--stride must be at least 1, got {given}")
        return given


def load_online_model(
    model_dir: str | Path,
    *,
    trust_torchscript: bool = False,
    precision: str = "fp32",
    threads: int | None = None,
) -> OnlineModel:
    """The streaming model of a model dir (``model.model_dir.load_model_dir``: rebuilt from its
    weights, or ``online.pt`` with ``trust_torchscript``; ``online.int8.onnx`` for
    ``precision="int8"``, on ``threads`` ONNX Runtime threads; bf16: the rebuilt model under
    autocast), with its class names, which must be one per output."""
    check_precision(precision)
    if precision == "int8" and trust_torchscript:
        raise UsageError(
            "--trust-torchscript runs online.pt, in fp32; drop it for --precision int8"
        )
    if precision == "bf16":
        require_bf16(torch.device("cpu"))  # the streaming model runs on the CPU
    kind = "int8" if precision == "int8" else "fp32"
    loaded = load_model_dir(
        model_dir, trust_torchscript=trust_torchscript, precision=kind, threads=threads
    )
    if precision == "bf16":
        loaded = dataclasses.replace(loaded, step=Autocast(loaded.step, torch.device("cpu")))
    classes = None
    if loaded.classes_file is not None:
        classes = read_classes(loaded.classes_file)
        if loaded.num_classes is not None and len(classes) != loaded.num_classes:
            raise ExportError(
                f"{loaded.classes_file}: names {len(classes)} classes, but the model has "
                f"{loaded.num_classes} outputs; restore the file written by tsm convert-online, "
                "or convert the checkpoint again"
            )
    return with_classes(loaded, classes)


def with_classes(loaded: ModelDir, classes: Sequence[str] | None) -> OnlineModel:
    """``loaded`` as an ``OnlineModel`` with these class names."""
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(ModelDir)}
    return OnlineModel(**fields, classes=list(classes) if classes is not None else None)


@dataclass(frozen=True, kw_only=True)
class OnlineEvalResult(EvalResult):
    """The running average after each whole video, scored as ``tsm eval`` scores a checkpoint
    (accuracies in percent, per class, confusions: ``scores`` are the running averages), with
    top-1 part-way in and the per-frame latency."""

    num_frames: int  # frames fed to the model, all videos together
    top1_at: dict[int, float]  # percent of the video seen -> top-1 at that point
    latency_ms: float  # median model time per frame (decoding excluded)
    stride: int  # one frame in ``stride`` was fed
    stride_from: str  # where that stride came from
    precision: str = "fp32"

    def summary(self) -> dict[str, Any]:
        """The JSON report (``tsm eval --online ... --json``)."""
        summary = super().summary()
        summary["model"] = summary.pop("checkpoint")
        summary.pop("views")
        summary.update(
            top1_at={str(p): v for p, v in self.top1_at.items()},
            num_frames=self.num_frames,
            latency_ms=self.latency_ms,
            stride=self.stride,
            stride_from=self.stride_from,
            precision=self.precision,
        )
        return summary


def evaluate_online(
    model: str | Path | OnlineModel,
    list_file: str | Path,
    root: str | Path,
    *,
    source: str | None = None,
    backend: str | None = None,
    frame_template: str = FRAME_TEMPLATE,
    stride: int | None = None,
    max_videos: int | None = None,
    trust_torchscript: bool = False,
    precision: str = "fp32",
) -> OnlineEvalResult:
    """Evaluate an exported online model frame by frame on a TSN list (``tsm eval --online``).

    ``model`` is a model dir (``load_online_model``: ``trust_torchscript`` runs its
    ``online.pt`` instead of the model rebuilt from its weights) or a model already in memory
    (``convert_online`` measures the one it exports). ``source`` is ``frames`` or ``videos``
    (None: a folder is frames, a file is a video); ``backend`` the video decoder (decord by
    default); ``stride``: one frame in that many (None: the model's own, the spacing of the
    frames it was trained on). ``precision``: ``fp32``, ``bf16`` (native bf16 only) or
    ``int8`` (the dir's ``online.int8.onnx``), for a model dir.
    """
    if not isinstance(model, OnlineModel):
        model = load_online_model(model, trust_torchscript=trust_torchscript, precision=precision)
    step = model.stride(stride)
    if max_videos is not None and max_videos < 1:
        raise UsageError(f"max_videos must be at least 1, got {max_videos}")
    from tqdm import tqdm

    listed = read_list_file(list_file, classes=False).first(max_videos)
    entries = listed.entries
    root = Path(root)
    final, at_percent, latencies = [], {p: [] for p in SEEN_PERCENTS}, []
    begin = time.perf_counter()
    for entry in tqdm(entries, desc="online eval", unit="video", disable=None):
        video = open_frames(root / entry.path, entry.num_frames, source, backend, frame_template)
        indices = list(range(0, video.num_frames, step))
        # p% of the video seen: the running average after ceil(p% of the frames fed).
        marks = {p: max(1, math.ceil(p * len(indices) / 100)) for p in SEEN_PERCENTS}
        for count, mean_logits, latency in _running_average(model, video, indices):
            latencies.append(latency)
            for p, mark in marks.items():
                if count == mark:
                    at_percent[p].append(mean_logits)
        final.append(at_percent[100][-1])
        if len(final) == 1:  # the model's class count is known once it has run
            listed.check_labels(final[0].shape[1], owner=model.source, hint=EVAL_HINT)
    scores = torch.cat(final)  # (N, K)
    names = [model.label(k) for k in range(scores.shape[1])]
    protocol = Protocol("streaming" if step == 1 else f"streaming, one frame in {step}")
    elapsed = time.perf_counter() - begin
    metrics = eval_result(
        entries, scores, 1, protocol, Path(model.source), names, len(entries) / max(elapsed, 1e-9)
    )
    labels = metrics.labels
    top1_at = {p: topk_accuracy(torch.cat(at_percent[p]), labels, (1,))[1] for p in SEEN_PERCENTS}
    return OnlineEvalResult(
        **{f.name: getattr(metrics, f.name) for f in dataclasses.fields(EvalResult)},
        num_frames=len(latencies),
        top1_at=top1_at,
        latency_ms=statistics.median(latencies) * 1000.0,
        stride=step,
        stride_from="given" if stride is not None else model.frame_stride_from,
        precision=precision,
    )


def _running_average(
    model: OnlineModel, video: FrameSource, indices: Sequence[int]
) -> Iterator[tuple[int, Tensor, float]]:
    """Yield ``(frames seen, running mean of logits (1, K), seconds of model time)`` per frame."""
    buffers = model.initial_buffers()
    total: Tensor | None = None
    count = 0
    with torch.no_grad():
        for start in range(0, len(indices), DECODE_CHUNK):
            frames = model.prepare(video.get(indices[start : start + DECODE_CHUNK]))  # (n, 3, H, W)
            for frame in frames:
                begin = time.perf_counter()
                logits, buffers = step_frame(model, frame.unsqueeze(0), buffers)  # (1, K)
                latency = time.perf_counter() - begin
                total = logits if total is None else total + logits
                count += 1
                yield count, total / count, latency


def step_frame(
    model: OnlineModel, frame: Tensor, buffers: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """One prepared frame ``(1, 3, H, W)`` through the model: its logits ``(1, K)`` and the
    new buffers. A model that does not fit its report fails here, in one line."""
    try:
        logits, *buffers = model.step(frame, *buffers)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(
            f"{model.source}: failed on a {model.height}x{model.width} frame with "
            f"{len(buffers)} buffers ({type(exc).__name__}: {first[:200]}); "
            "convert the checkpoint again with tsm convert-online"
        ) from exc
    return logits, buffers


def open_frames(
    path: Path,
    num_frames: int | None,
    source: str | None,
    backend: str | None,
    frame_template: str = FRAME_TEMPLATE,
) -> FrameSource:
    """A frame folder or a video file; with ``source=None`` a folder is frames. The list's
    frame count, when there is one, spares PyAV a counting pass (as in the clip dataset)."""
    if source is not None and source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose frames or videos")
    if source == "frames" or (source is None and path.is_dir()):
        return FrameFolder(path, num_frames, template=frame_template)
    return open_video(path, backend or "decord", num_frames=num_frames)
