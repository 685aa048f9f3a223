"""Run a trained model on videos: ``tsm predict`` and ``tsmcli.predict``.

The inputs are video files and frame folders, and folders searched for them
(``data.inputs``). Each is read, sampled and viewed exactly as ``tsm eval`` reads a listed
video: the same checkpoint loading (``evaluate.load_for_eval``), the same data settings and
test protocol (``views``), the same clip dataset in test mode (``data.windows``), the same
scoring and view averaging (``scoring.score_batches``). The model is the checkpoint's (bf16:
under autocast, where native), or the ONNX model of an exported clip model dir (``model_dir``,
fp32 or int8: ``evaluate.load_exported``). So for a video of a list, predict's
``scores`` equal eval's, given the same checkpoint, protocol and batch size. The one
difference: a list gives eval each video's frame count, predict asks the decoder (decord reads
it from the container; PyAV decodes the video once to count, as for a list without counts).

With ``window`` (seconds) and ``stride``, each video is cut into windows along its length
(``windows.plan_windows``: every frame in one, the last ending with the video) and each window
is scored as if it were a video of its own; the video's own scores are the mean of its
windows'. A video's frame rate comes from its decoder; frame folders record none, so theirs is
``fps`` (default ``DEFAULT_FPS``).

A missing or unreadable input is one ``error`` in the result and the others go on; the caller
decides what an all-failed run means (``tsm predict`` exits 1).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tsmcli.data.inputs import DEFAULT_FPS, FoundInput, find_inputs
from tsmcli.data.windows import WHOLE, InputClip, probe_timing, window_clips
from tsmcli.engine.distributed import resolve_device
from tsmcli.engine.evaluate import (
    Model,
    check_model_precision,
    checkpoint_file,
    load_exported,
    load_for_eval,
)
from tsmcli.engine.intervals import IntervalRule
from tsmcli.engine.plots import plot_timelines
from tsmcli.engine.precision import in_precision
from tsmcli.engine.predictions import (
    InputPrediction,
    PredictResult,
    WindowPrediction,
    class_names,
    timeline_panels,
    top_classes,
    with_intervals,
    write_csv,
    write_jsonl,
)
from tsmcli.engine.scoring import score_batches, views_loader
from tsmcli.engine.views import EvalData, Protocol, Views, resolve_views, view_request
from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import check_outputs, outputs
from tsmcli.model.clip_dir import ClipModelDir
from tsmcli.model.spec import ArchOverrides

log = logging.getLogger(__name__)

MAX_PLOT_VIDEOS = 12  # panels in one --plot picture


@dataclass(frozen=True)
class Timeline:
    """Windows of ``window`` seconds every ``stride`` seconds; ``fps`` for frame folders."""

    window: float
    stride: float
    fps: float


def predict(
    inputs: Sequence[str | Path],
    checkpoint: Model | None = None,
    *,
    model_dir: str | Path | None = None,
    precision: str = "fp32",
    views: Views = None,
    arch: ArchOverrides | None = None,
    classes: str | Path | None = None,
    label_order: str = "official",
    topk: int = 5,
    window: float | None = None,
    stride: float | None = None,
    fps: float | None = None,
    backend: str | None = None,
    batch_size: int = 4,
    workers: int | None = None,
    device: str | None = None,
    json_path: str | Path | None = None,
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    overwrite: bool = False,
    intervals: IntervalRule | None = None,
) -> PredictResult:
    """The ``topk`` best classes of each input (a video file, a frame folder, or a folder
    searched for them), with eval's test views (``views``, ``arch`` and ``backend`` as in
    ``evaluate``), by ``checkpoint`` or by the clip model dir of ``tsm export``
    (``model_dir``), in ``precision`` (fp32; bf16 for a checkpoint where native; int8 for an
    exported model dir). Long because it takes every option of the command as a keyword.

    ``classes``: a class list file or a shipped dataset's name (``kinetics400``, in
    ``label_order``), in place of the checkpoint's names. ``window``/``stride``: seconds, for a
    timeline of each video (``stride`` defaults to ``window``); ``fps`` is the frame rate of
    frame folders. ``json_path`` (JSON Lines), ``csv_path`` and ``plot_path`` (the timelines,
    with ``window``) are checked before any work (none may be an input, and an existing file
    is replaced only with ``overwrite``) and written at the end. ``intervals``: with
    ``window``, each video's actions with their start and end (``engine.intervals``).
    """
    timeline = _timeline(window, stride, fps, plot_path)
    if intervals is not None and timeline is None:
        raise UsageError("--intervals needs --window SECONDS (actions are found in a timeline)")
    if (checkpoint is None) == (model_dir is None):
        raise UsageError("give exactly one of --checkpoint CKPT or --model MODEL_DIR (tsm export)")
    if model_dir is not None:
        checkpoint = load_exported(model_dir, precision)
    check_model_precision(checkpoint, precision, device)
    files = outputs(json=json_path, csv=csv_path, plot=plot_path)
    named = [*inputs, checkpoint_file(checkpoint), classes]
    _check(inputs, topk, batch_size)
    check_outputs(files, named, overwrite=overwrite)
    request = view_request(views)
    exported = isinstance(checkpoint, ClipModelDir)  # ONNX Runtime runs it on the CPU
    torch_device = resolve_device("cpu" if exported else device, "--device")
    model, data, stored, path = load_for_eval(checkpoint, arch or ArchOverrides(), None, backend)
    model = model if exported else in_precision(model, precision, torch_device)
    names = class_names(classes, label_order, stored, int(model.num_classes), path)
    protocol = (
        request if isinstance(request, Protocol) else resolve_views(request, data.dense_training)
    )
    found = find_inputs(inputs, data.frame_template)
    check_outputs(files, [*named, *(item.path for item in found)], overwrite=overwrite)
    if plot_path is not None and len(found) > MAX_PLOT_VIDEOS:
        raise UsageError(
            f"--plot draws one panel per video, at most {MAX_PLOT_VIDEOS}; {len(found)} inputs "
            "were found: plot fewer videos (the --json and --csv timelines have no limit)"
        )
    plan = _plan(found, data, timeline)
    begin = time.perf_counter()
    scores = _score(model, plan.items, data, protocol, batch_size, workers, torch_device)
    elapsed = time.perf_counter() - begin
    predictions = _assemble(found, plan, scores, names, protocol, topk)
    result = PredictResult(
        predictions=predictions,
        checkpoint=str(path),
        protocol=protocol,
        views=scores.views,
        classes=names,
        topk=topk,
        window=timeline.window if timeline else None,
        stride=timeline.stride if timeline else None,
        videos_per_s=sum(p.ok for p in predictions) / elapsed if elapsed > 0 else float("inf"),
    )
    if intervals is not None:
        result = with_intervals(result, intervals)
    result.written.extend(_write(result, json_path, csv_path, plot_path))
    return result


def _check(inputs: Sequence[str | Path], topk: int, batch_size: int) -> None:
    """The options that need nothing read, before any work."""
    if topk < 1 or batch_size < 1:
        raise UsageError(f"--topk and --batch-size must be at least 1, got {topk}, {batch_size}")
    if not inputs:
        raise UsageError("give at least one video, frame folder or folder of them")


def _timeline(
    window: float | None, stride: float | None, fps: float | None, plot_path: str | Path | None
) -> Timeline | None:
    """The windows asked for, checked (None: whole videos)."""
    if window is None:
        if stride is not None or plot_path is not None:
            raise UsageError("--stride and --plot need --window SECONDS (a timeline of windows)")
        return None
    stride = window if stride is None else stride
    fps = DEFAULT_FPS if fps is None else fps
    for value, option, unit in (
        (window, "--window", "seconds"),
        (stride, "--stride", "seconds"),
        (fps, "--fps", "frames per second"),
    ):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} must be a positive, finite number of {unit}, got {value}")
    return Timeline(float(window), float(stride), float(fps))


@dataclass
class _Plan:
    """The clips to score: whole inputs or windows, the input each belongs to (its position
    among those found), the inputs that failed before any scoring, each windowed one's rate."""

    items: list[InputClip] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    rates: dict[int, float] = field(default_factory=dict)


def _plan(found: Sequence[FoundInput], data: EvalData, timeline: Timeline | None) -> _Plan:
    """What to score. Windows need each video's frame count and rate: read here, once."""
    plan = _Plan()
    for position, item in enumerate(found):
        if item.error is not None:
            plan.errors[position] = item.error
            continue
        path = str(item.path)
        if timeline is None:
            plan.items.append(InputClip(path, WHOLE, 0, item.source))
            plan.owner.append(position)
            continue
        try:
            timing = probe_timing(item, data.backend, data.frame_template, timeline.fps)
        except DataError as exc:
            plan.errors[position] = str(exc)
            continue
        plan.rates[position] = timing.fps
        if timeline.window * timing.fps < 1:
            log.warning(
                "%s: --window %g s is shorter than one frame at %g fps; each window is one "
                "frame, and the times reported are the frames'",
                item.path,
                timeline.window,
                timing.fps,
            )
        for clip in window_clips(item, timing, timeline.window, timeline.stride):
            plan.items.append(clip)
            plan.owner.append(position)
    return plan


@dataclass
class _Scores:
    values: Tensor  # (N, K) per item; rows of failed items are not filled
    errors: dict[int, str]  # item index -> why it could not be loaded
    views: int | None = None  # views per item (None: nothing scored)


def _score(
    model: torch.nn.Module,
    items: Sequence[InputClip],
    data: EvalData,
    protocol: Protocol,
    batch_size: int,
    workers: int | None,
    device: torch.device,
) -> _Scores:
    """Every item's view-averaged scores, by eval's loader and scoring; items that fail to
    load are collected with their error, not raised."""
    from tqdm import tqdm

    from tsmcli.data.dataset import loader_errors
    from tsmcli.data.inputs import VIDEOS
    from tsmcli.data.windows import InputClipDataset, collate_with_errors

    scores = _Scores(torch.zeros(len(items), int(model.num_classes)), {})
    if not items:
        return scores
    dataset = InputClipDataset(
        items,
        clip=data.clip(int(model.num_segments)),
        views=protocol,
        reading=data.reading(VIDEOS),
    )
    loader = views_loader(dataset, batch_size, workers, device, collate_fn=collate_with_errors)
    model = model.to(device).eval()
    bar = tqdm(total=len(items), desc="predict", unit="clip", disable=None)

    def batches():
        for batch, failed in loader:
            scores.errors.update(failed)
            bar.update(len(batch.indices) + len(failed))
            yield batch

    with torch.inference_mode(), bar, loader_errors("--workers"):
        for indices, values, views in score_batches(model, batches(), protocol.average, device):
            scores.values[indices] = values
            scores.views = views
    return scores


def _assemble(
    found: Sequence[FoundInput],
    plan: _Plan,
    scores: _Scores,
    names: list[str],
    protocol: Protocol,
    topk: int,
) -> list[InputPrediction]:
    """One ``InputPrediction`` per input found, in order. An input fails with its own error or
    that of its first clip that failed; a windowed one keeps the windows that were scored."""
    errors = dict(plan.errors)
    for i in sorted(scores.errors):
        errors.setdefault(plan.owner[i], scores.errors[i])
    windows: dict[int, list[WindowPrediction]] = {}
    whole: dict[int, Tensor] = {}
    for i, item in enumerate(plan.items):
        if i in scores.errors:
            continue
        position, values = plan.owner[i], scores.values[i]
        if item.num_frames == WHOLE:
            whole[position] = values
            continue
        top = top_classes(values, names, topk, protocol.average)
        span = (item.begin, item.end)  # when its frames are shown, variable rates included
        windows.setdefault(position, []).append(WindowPrediction(*span, top, values))
    predictions = []
    for position, item in enumerate(found):
        clips = windows.get(position, [])
        video = torch.stack([w.scores for w in clips]).mean(0) if clips else whole.get(position)
        error = errors.get(position)
        ok = error is None and video is not None
        predictions.append(
            InputPrediction(
                path=item.path,
                source=item.source,
                top=top_classes(video, names, topk, protocol.average) if ok else (),
                error=error,
                scores=video if ok else None,
                windows=tuple(clips) if position in plan.rates else None,
                fps=plan.rates.get(position),
            )
        )
    return predictions


def _write(
    result: PredictResult,
    json_path: str | Path | None,
    csv_path: str | Path | None,
    plot_path: str | Path | None,
) -> list[Path]:
    written = []
    if json_path is not None:
        written.append(write_jsonl(result, json_path))
    if csv_path is not None:
        written.append(write_csv(result, csv_path))
    if plot_path is not None:
        written.append(plot_timelines(timeline_panels(result), plot_path))
    log.debug("wrote %s", ", ".join(map(str, written)) or "nothing")
    return written
