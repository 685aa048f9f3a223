"""Streaming evaluation of an exported online model, and ``tsm stream``.

An online model dir (written by ``tsm convert-online``) holds ``online_weights.pt`` (the
one-way model's config and weights), ``report.json`` (input size, test scale, buffer shapes),
when known ``classes.txt``, and the deployment exports ``online.pt`` (TorchScript) and
``online.onnx``. The model run here is rebuilt from the package's own code with the weights
read by ``weights_only=True``: a model dir from elsewhere cannot run code. ``online.pt`` can
(a scripted module may write files), so it is loaded only when asked with
``trust_torchscript=True`` (``--trust-torchscript``). Either way the step is
``(frame, *buffers) -> (logits, *new_buffers)``. Frames are fed one at a time, as a camera
would give them, and the prediction is the running average of the per-frame logits.

Frames: every frame of the video, in order (``stride=1``), by default. That is what a live
stream gives and what the streaming model is exact for; ``stride=k`` keeps every k-th frame
to bring the spacing of consecutive frames closer to the one the model saw in training
(segments spread over the whole clip). Each frame gets the single-view test transform:
short side resized to ``scale_size``, centre crop, ImageNet normalisation.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tsmcli.data import transforms
from tsmcli.data.decode import FrameFolder, FrameSource, open_video
from tsmcli.data.lists import ListEntry, read_classes, read_list
from tsmcli.engine.metrics import mean_class_accuracy, predict, topk_accuracy
from tsmcli.errors import DataError, ExportError, UsageError
from tsmcli.model.export import (
    CLASSES_FILE,
    REPORT_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    load_streaming_model,
)
from tsmcli.model.streaming import StepFn

logger = logging.getLogger(__name__)

SEEN_PERCENTS = (25, 50, 100)
DECODE_CHUNK = 16  # frames decoded at once: bounded memory for long videos


@dataclass
class OnlineModel:
    """A streaming model ready to run: the step function and what its input must look like."""

    step: StepFn  # (frame (1, 3, H, W), *buffers) -> (logits (1, K), *new_buffers)
    height: int
    width: int
    scale_size: int  # short side of the frame before the centre crop
    buffer_shapes: list[tuple[int, ...]]
    classes: list[str] | None = None
    source: str = "the online model"  # named when a step fails

    def initial_buffers(self) -> list[Tensor]:
        """Zero buffers: the state at the start of every stream."""
        return [torch.zeros(shape) for shape in self.buffer_shapes]

    def prepare(self, frames: Tensor) -> Tensor:
        """uint8 ``(N, 3, h, w)`` frames to the model's normalised ``(N, 3, H, W)`` input."""
        if self.height == self.width:
            return transforms.normalize(transforms.eval_views(
                frames, input_size=self.height, scale_size=self.scale_size)[0])  # (N, 3, H, W)
        from torchvision.transforms.v2 import functional as F

        resized = transforms.resize_short_side(frames, self.scale_size)
        return transforms.normalize(F.center_crop(resized, [self.height, self.width]))

    def label(self, index: int) -> str:
        return self.classes[index] if self.classes and index < len(self.classes) else str(index)


def load_online_model(model_dir: str | Path, *, trust_torchscript: bool = False) -> OnlineModel:
    """The streaming model of a model dir, with the input size recorded in ``report.json``.

    By default it is rebuilt from ``online_weights.pt`` (no code from the dir runs).
    ``trust_torchscript=True`` loads ``online.pt`` instead: only for a dir you trust, since
    loading and running TorchScript runs whatever code it holds.
    """
    model_dir = Path(model_dir)
    report_path = model_dir / REPORT_FILE
    if not report_path.is_file():
        raise ExportError(f"{report_path}: missing; {model_dir} is not an online model dir "
                          "(make one with tsm convert-online)")
    height, width, scale_size, shapes = _read_report(report_path)
    if trust_torchscript:
        path = model_dir / TORCHSCRIPT_FILE
        step, source = _load_torchscript(path), str(path)
    else:
        path = model_dir / WEIGHTS_FILE
        if not path.is_file():
            raise ExportError(
                f"{path}: missing (a model dir from an older tsmcli holds only TorchScript, "
                "which can run code); run tsm convert-online again, or pass "
                f"--trust-torchscript if you trust {model_dir / TORCHSCRIPT_FILE}")
        step = load_streaming_model(path)
        expected = step.buffer_shapes(height, width)
        if expected != shapes:
            raise ExportError(
                f"{report_path}: its buffer_shapes do not match {path} at {height}x{width}; "
                "the report was edited or belongs to another model: convert again with tsm "
                "convert-online")
        source = str(path)
    classes_path = model_dir / CLASSES_FILE
    classes = read_classes(classes_path) if classes_path.is_file() else None
    return OnlineModel(step, height, width, scale_size, shapes, classes, source)


def _read_report(path: Path) -> tuple[int, int, int, list[tuple[int, ...]]]:
    """(height, width, scale_size, buffer_shapes) from report.json, checked."""

    def fail(what: str) -> ExportError:
        return ExportError(f"{path}: {what}; convert the checkpoint again with tsm "
                           "convert-online")

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"not valid JSON ({str(exc).splitlines()[0]})") from None

    def size(key: str, least: int) -> int:
        value = report.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise fail(f"{key} must be an integer of at least {least}, got {value!r}")
        return value

    if not isinstance(report, dict):
        raise fail(f"holds a {type(report).__name__}, not the report object")
    height, width = size("height", 16), size("width", 16)
    scale_size = size("scale_size", max(height, width))
    shapes = report.get("buffer_shapes")
    if not isinstance(shapes, list) or not all(
            isinstance(shape, list) and shape and all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
            for shape in shapes):
        raise fail("buffer_shapes must be a list of shapes (lists of positive integers)")
    return height, width, scale_size, [tuple(shape) for shape in shapes]


def _load_torchscript(path: Path) -> StepFn:
    if not path.is_file():
        raise ExportError(f"{path}: missing; convert the checkpoint again with tsm "
                          "convert-online")
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, still the format
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError, OSError) as exc:
            text = str(exc).strip()
            first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
            raise ExportError(f"{path}: not a readable TorchScript file ({first}); convert the "
                              "checkpoint again with tsm convert-online") from exc


@dataclass(frozen=True)
class OnlineEvalResult:
    """Video-level accuracy of the running average, in percent, and per-frame latency."""

    num_videos: int
    num_frames: int  # frames fed to the model, all videos together
    top1: float  # after the whole video
    top5: float
    mean_class_accuracy: float
    top1_at: dict[int, float]  # percent of the video seen -> top-1 at that point
    latency_ms: float  # median model time per frame (decoding excluded)
    scores: Tensor = field(repr=False)  # (N, K) running average after the whole video
    labels: Tensor = field(repr=False)  # (N,)


@dataclass(frozen=True)
class StreamStep:
    """One frame of ``tsm stream``: the running top-k after this frame."""

    index: int  # 0-based frame index in the video
    labels: tuple[str, ...]
    scores: tuple[float, ...]  # softmax of the running average of logits
    latency_ms: float


def evaluate_online(model_dir: str | Path, list_file: str | Path, root: str | Path, *,
                    source: str | None = None, backend: str | None = None,
                    frame_template: str = "img_{:05d}.jpg", stride: int = 1,
                    max_videos: int | None = None,
                    trust_torchscript: bool = False) -> OnlineEvalResult:
    """Evaluate an exported online model frame by frame on a TSN list (``tsm eval --online``).

    ``source`` is ``frames`` or ``videos`` (None: a folder is frames, a file is a video);
    ``backend`` the video decoder (decord by default); ``trust_torchscript`` runs
    ``online.pt`` instead of the model rebuilt from its weights (``load_online_model``).
    """
    model = load_online_model(model_dir, trust_torchscript=trust_torchscript)
    return evaluate_stream(model, list_file, root, source=source,
                           backend=backend, frame_template=frame_template, stride=stride,
                           max_videos=max_videos)


def evaluate_stream(model: OnlineModel, list_file: str | Path, root: str | Path, *,
                    source: str | None = None, backend: str | None = None,
                    frame_template: str = "img_{:05d}.jpg", stride: int = 1,
                    max_videos: int | None = None) -> OnlineEvalResult:
    """``evaluate_online`` for a model already in memory (``convert_online`` uses it)."""
    if stride < 1:
        raise UsageError(f"stride must be at least 1, got {stride}")
    from tqdm import tqdm

    entries = read_list(list_file)[:max_videos]
    if not entries:
        raise DataError(f"{list_file}: the list is empty; nothing to evaluate")
    root = Path(root)
    final, at_percent, labels, latencies = [], {p: [] for p in SEEN_PERCENTS}, [], []
    for entry in tqdm(entries, desc="online eval", unit="video", disable=None):
        video = _open(root / entry.path, entry.num_frames, source, backend, frame_template)
        indices = list(range(0, video.num_frames, stride))
        # p% of the video seen: the running average after ceil(p% of the frames fed).
        marks = {p: max(1, math.ceil(p * len(indices) / 100)) for p in SEEN_PERCENTS}
        for count, mean_logits, latency in _running_average(model, video, indices):
            latencies.append(latency)
            for p, mark in marks.items():
                if count == mark:
                    at_percent[p].append(mean_logits)
        final.append(at_percent[100][-1])
        labels.append(entry.label)
        if len(final) == 1:
            _check_labels(entries, final[0].shape[1], list_file)
    scores, label_tensor = torch.cat(final), torch.tensor(labels)  # (N, K), (N,)
    accuracy = topk_accuracy(scores, label_tensor, (1, 5))
    top1_at = {p: topk_accuracy(torch.cat(at_percent[p]), label_tensor, (1,))[1]
               for p in SEEN_PERCENTS}
    return OnlineEvalResult(
        num_videos=len(entries), num_frames=len(latencies), top1=accuracy[1], top5=accuracy[5],
        mean_class_accuracy=mean_class_accuracy(predict(scores), label_tensor, scores.shape[1]),
        top1_at=top1_at, latency_ms=statistics.median(latencies) * 1000.0,
        scores=scores, labels=label_tensor)


def stream(video: str | Path, model_dir: str | Path, topk: int = 5, *,
           backend: str | None = None, stride: int = 1,
           trust_torchscript: bool = False) -> Iterator[StreamStep]:
    """Run a video (file or frame folder) through an online model one frame at a time,
    yielding the running top-k after each frame (``tsm stream``; ``trust_torchscript`` as
    in ``load_online_model``)."""
    model = load_online_model(model_dir, trust_torchscript=trust_torchscript)
    source = _open(Path(video), None, None, backend, "img_{:05d}.jpg")
    indices = list(range(0, source.num_frames, max(1, stride)))
    for count, mean_logits, latency in _running_average(model, source, indices):
        probs = mean_logits[0].softmax(dim=0)  # (K,)
        k = min(topk, probs.numel())
        order = torch.sort(probs, descending=True, stable=True).indices[:k]
        yield StreamStep(index=indices[count - 1],
                         labels=tuple(model.label(int(i)) for i in order),
                         scores=tuple(float(probs[i]) for i in order),
                         latency_ms=latency * 1000.0)


def _running_average(model: OnlineModel, video: FrameSource,
                     indices: Sequence[int]) -> Iterator[tuple[int, Tensor, float]]:
    """Yield ``(frames seen, running mean of logits (1, K), seconds of model time)`` per frame."""
    buffers = model.initial_buffers()
    total: Tensor | None = None
    count = 0
    with torch.no_grad():
        for start in range(0, len(indices), DECODE_CHUNK):
            frames = model.prepare(video.get(indices[start:start + DECODE_CHUNK]))  # (n, 3, H, W)
            for frame in frames:
                begin = time.perf_counter()
                try:
                    logits, *buffers = model.step(frame.unsqueeze(0), *buffers)  # (1, K)
                except (RuntimeError, ValueError) as exc:  # a model that does not fit its report
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    raise ExportError(
                        f"{model.source}: failed on a {model.height}x{model.width} frame with "
                        f"{len(buffers)} buffers ({type(exc).__name__}: {first[:200]}); "
                        "convert the checkpoint again with tsm convert-online") from exc
                latency = time.perf_counter() - begin
                total = logits if total is None else total + logits
                count += 1
                yield count, total / count, latency


def _check_labels(entries: Sequence[ListEntry], num_classes: int, list_file: str | Path) -> None:
    for entry in entries:
        if entry.label >= num_classes:
            raise DataError(f"{list_file}: {entry.path} has label {entry.label} but the model has "
                            f"{num_classes} classes; evaluate on a list of the dataset it was "
                            "trained on")


def _open(path: Path, num_frames: int | None, source: str | None, backend: str | None,
          frame_template: str) -> FrameSource:
    """A frame folder or a video file; with ``source=None`` a folder is frames. The list's
    frame count, when there is one, spares PyAV a counting pass (as in the clip dataset)."""
    if source not in (None, "frames", "videos"):
        raise DataError(f"unknown source {source!r}; choose frames or videos")
    if source == "frames" or (source is None and path.is_dir()):
        return FrameFolder(path, num_frames, template=frame_template)
    return open_video(path, backend or "decord", num_frames=num_frames)
