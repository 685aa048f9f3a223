"""``tsm convert-online``: a checkpoint to a verified streaming model dir (``model.export``
into a ``model.model_dir``), with top-1 before and after conversion, an optional one-way
fine-tuning, latency, and with ``precision="int8"`` a calibrated int8 ONNX model beside the
fp32 one (``engine.int8_stream``), checked on real clips before anything is written.

The checkpoint is read once (``read_checkpoint``); the model, the offline accuracy and the
fine-tuning run (its init and its distillation teacher) all take that one ``CheckpointInfo``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tsmcli.data.lists import ListFile, read_list, read_list_file
from tsmcli.data.sampling import clip_frame_spacing
from tsmcli.engine.convert_finetune import Finetune, check_finetune, finetune_one_way
from tsmcli.engine.convert_measure import latency_ms, offline_accuracy, online_accuracy
from tsmcli.engine.int8 import DEFAULT_CALIB_CLIPS, DEFAULT_CHECK_CLIPS, Int8Checks
from tsmcli.engine.online import OnlineModel, with_classes
from tsmcli.errors import TSMError, UsageError
from tsmcli.model.checkpoint import CheckpointInfo, load_model, read_checkpoint
from tsmcli.model.export import DEFAULT_OPSET, Verified, export_and_verify, rebuild
from tsmcli.model.model_dir import (
    FINETUNE_DIR,
    INT8_FILE,
    ONNX_FILE,
    ModelDir,
    check_out_dir,
    publish,
    staged_model_dir,
    write_report,
)
from tsmcli.model.quantize import DEFAULT_INT8
from tsmcli.model.spec import ArchOverrides
from tsmcli.model.streaming import FrameModel, StreamingTSM
from tsmcli.recipe import DataConfig, Recipe
from tsmcli.zoo_cache import local_path

logger = logging.getLogger(__name__)

FUTURE_WARNING = (
    "this model was trained with the bidirectional shift (it saw the future "
    "frame); the online model shifts one way only, so expect lower accuracy "
    "unless it is fine-tuned one-way (--finetune-epochs N)"
)


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert_online`` wrote and measured (``report.json`` holds the same)."""

    out_dir: Path
    checkpoint: Path
    arch: str
    height: int
    width: int
    scale_size: int
    num_buffers: int
    buffer_shapes: list[tuple[int, ...]]
    cache_bytes: int
    max_abs_diff: dict[str, float]  # export (pytorch, torchscript, onnx) -> worst difference
    diffs: dict[str, float]  # every compared output ("onnx frame logits", ...) -> difference
    tolerances: dict[str, float]  # the bound each difference was checked against
    latency_ms: dict[str, float]  # streaming, backbone_2d (no shift), ratio
    converted_from_bidirectional: bool
    classes: list[str] | None
    opset: int
    accuracy: dict[str, Any] | None  # top-1 before / after (/ fine-tuned), when a list is given
    finetune_epochs: int = 0
    finetuned_checkpoint: Path | None = None  # out_dir/finetune/...: the one-way weights exported
    frame_stride: int = 1  # one frame in this many: the spacing the model was trained on
    frame_stride_from: str = "not recorded"
    # fp32 / int8 -> the ONNX file, its bytes, ms/frame in ONNX Runtime, what was checked
    precisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def report_fields(self) -> dict[str, Any]:
        """The fields as JSON values, for ``report.json`` (``model.model_dir.write_report``)."""
        fields = asdict(self)
        del fields["out_dir"]
        fields.update(
            checkpoint=str(self.checkpoint),
            finetuned_checkpoint=None
            if self.finetuned_checkpoint is None
            else str(self.finetuned_checkpoint),
            buffer_shapes=[list(shape) for shape in self.buffer_shapes],
        )
        return fields


@dataclass(frozen=True)
class _ValData:
    """The list accuracy is measured on, and how its videos are read."""

    list_file: str | Path
    root: str | Path
    source: str | None
    backend: str | None


@dataclass(frozen=True)
class _Int8:
    """``--precision int8``: the list to calibrate and check on, read once."""

    listed: ListFile
    root: Path
    calib_clips: int
    check_clips: int


@dataclass(frozen=True)
class _Job:
    """One conversion: the checkpoint (read once), its model, what to do with it."""

    info: CheckpointInfo
    recipe: Recipe | None
    model: nn.Module
    out_dir: Path
    size: tuple[int, int, int]  # height, width, scale_size
    classes: list[str] | None
    val: _ValData | None
    finetune: Finetune
    arch: ArchOverrides
    verify_frames: int
    opset: int
    seed: int
    latency_reps: int
    stride: tuple[int, str]  # the frame stride to record, and where it came from
    int8: _Int8 | None = None


def convert_online(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    val_list: str | Path | None = None,
    root: str | Path | None = None,
    source: str | None = None,
    backend: str | None = None,
    finetune_epochs: int = 0,
    finetune_lr_scale: float = 0.1,
    distill_weight: float = 0.5,
    distill_temperature: float = 4.0,
    verify_frames: int = 6,
    latency_reps: int = 20,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    seed: int = 0,
    stride: int | None = None,
    arch: ArchOverrides | None = None,
    precision: str = "fp32",
    calib_list: str | Path | None = None,
    calib_clips: int = DEFAULT_CALIB_CLIPS,
    check_clips: int = DEFAULT_CHECK_CLIPS,
) -> ConvertResult:
    """Build the streaming model of a checkpoint, verify its exports, write them to ``out_dir``.

    ``height``/``width`` default to the recipe's input size (224 without a recipe). A
    bidirectional model is converted to one-way (same weights; a warning is logged). With
    ``val_list`` and ``root``, top-1 is measured before (offline, as trained) and after
    (streaming, frame by frame); ``finetune_epochs`` first fine-tunes the one-way model on the
    recipe's training data, at ``finetune_lr_scale`` times the recipe's learning rate, with
    ``distill_weight`` of its loss from the checkpoint's own outputs (the model as trained,
    which saw both directions) softened at ``distill_temperature`` (0: labels only).
    ``stride``: feed one frame in that many when streaming (recorded in the model dir for
    ``tsm stream`` and ``tsm eval --online``; None: the spacing of the frames the checkpoint
    was trained on, from its recipe and training list, else 1). ``arch`` gives or changes the
    model's architecture, as in ``evaluate`` (``ArchOverrides(arch=..., num_segments=...,
    shift=...)``): an official TSM or mmaction2 checkpoint does not record it, unless it is
    given by its model zoo name (``checkpoint`` may be one), which brings its class names too.
    ``precision="int8"`` also writes ``online.int8.onnx``, calibrated on ``calib_clips`` clips
    of ``calib_list`` (under ``root``, read with ``source``/``backend``) and checked against
    ``online.onnx`` on up to ``check_clips`` others (``engine.int8``). Long because it takes
    every option of the command as a keyword.
    """
    out_dir = Path(out_dir)
    _check_options(val_list, calib_list, root, precision, verify_frames)
    check_out_dir(out_dir, overwrite, [local_path(checkpoint), val_list, calib_list, root])
    int8 = None
    if precision == "int8":
        int8 = _Int8(
            read_list_file(calib_list, classes=False), Path(root), calib_clips, check_clips
        )
    arch = arch or ArchOverrides()
    info = read_checkpoint(checkpoint, arch)  # a zoo name: its file, fetched if needed
    checkpoint = info.path
    recipe = Recipe.from_stored(info.recipe, str(checkpoint))
    finetune = Finetune(finetune_epochs, finetune_lr_scale, distill_weight, distill_temperature)
    check_finetune(finetune, recipe, checkpoint, out_dir, overwrite)
    classes = _classes(info, val_list or calib_list)
    model = load_model(info, arch=arch)
    val = None if val_list is None else _ValData(val_list, root, source, backend)
    size = _input_size(recipe, height, width)
    frame_stride = _frame_stride(recipe, int(model.num_segments), stride)
    return _write(
        _Job(
            info,
            recipe,
            model,
            out_dir,
            size,
            classes,
            val,
            finetune,
            arch,
            verify_frames,
            opset,
            seed,
            latency_reps,
            frame_stride,
            int8,
        )
    )


def _check_options(
    val_list: str | Path | None,
    calib_list: str | Path | None,
    root: str | Path | None,
    precision: str,
    verify_frames: int,
) -> None:
    """--root goes with --val-list or --calib-list; --calib-list with --precision int8."""
    from tsmcli.choices import EXPORT_PRECISIONS

    if verify_frames < 2:
        raise UsageError(
            f"verify_frames must be at least 2 to check the buffers, got {verify_frames}"
        )
    if precision not in EXPORT_PRECISIONS:
        raise UsageError(
            f"--precision {precision}: convert-online writes {' or '.join(EXPORT_PRECISIONS)} "
            "(bf16 is a way to run the PyTorch model: tsm stream --precision bf16)"
        )
    if (precision == "int8") != (calib_list is not None):
        raise UsageError(
            "--precision int8 needs --calib-list LIST (clips to calibrate and check it on), "
            "and --calib-list needs --precision int8"
        )
    if (val_list is None and calib_list is None) != (root is None):
        raise UsageError(
            "--val-list and --calib-list name clips under --root: give --root together with "
            "one of them (and not without)"
        )


def _write(job: _Job) -> ConvertResult:
    """Convert into a staged model dir, then publish it whole."""
    with staged_model_dir(job.out_dir) as staged:
        result = _convert(job, staged)
        write_report(
            staged,
            result.report_fields(),
            num_buffers=result.num_buffers,
            model_config=job.model.config(),
            classes=job.classes,
        )
        publish(staged, job.out_dir)
    logger.info(
        "wrote %s (%d buffers, %d cache bytes)", job.out_dir, result.num_buffers, result.cache_bytes
    )
    return result


def _convert(job: _Job, staged: Path) -> ConvertResult:
    """The steps: accuracy as trained, (fine-tune one-way,) export and verify, (int8,)
    latency, accuracy of what was exported."""
    height, width, _ = job.size
    from_bidirectional = job.model.config().get("shift") == "bidirectional"
    if from_bidirectional:
        logger.warning("%s: %s", job.info.path, FUTURE_WARNING)
    one_way = rebuild(job.model, shift="unidirectional") if from_bidirectional else job.model
    accuracy = None if job.val is None else {"before": _offline_accuracy(job)}
    finetuned = None
    if job.finetune.epochs > 0:
        if job.val is not None:  # what conversion alone gives, to show what is recovered
            accuracy["after"] = _online_accuracy(StreamingTSM(one_way).eval(), job)
        one_way, best = _finetune(job, staged / FINETUNE_DIR)
        finetuned = job.out_dir / best.relative_to(staged)
    streaming = StreamingTSM(one_way).eval()
    verified = export_and_verify(
        streaming,
        one_way,
        staged,
        height=height,
        width=width,
        frames=job.verify_frames,
        opset=job.opset,
        seed=job.seed,
        classes=job.classes,
    )
    int8 = None if job.int8 is None else _quantize(job, streaming, staged)
    files = {"fp32": staged / ONNX_FILE, **({"int8": staged / INT8_FILE} if int8 else {})}
    plain = FrameModel(one_way).eval()
    latency = latency_ms(streaming, plain, height, width, job.latency_reps, files)
    if job.val is not None:  # the model tsm eval --online and tsm stream will run
        key = "after_finetune" if job.finetune.epochs > 0 else "after"
        accuracy[key] = _online_accuracy(verified.reloaded, job)
    return ConvertResult(
        out_dir=job.out_dir,
        checkpoint=job.info.path,
        arch=str(job.model.config().get("arch")),
        height=height,
        width=width,
        scale_size=job.size[2],
        num_buffers=streaming.num_buffers,
        buffer_shapes=streaming.buffer_shapes(height, width),
        cache_bytes=streaming.cache_bytes(height, width),
        max_abs_diff=verified.worst_per_export(),
        diffs=verified.diffs,
        tolerances=verified.tolerances,
        latency_ms=latency,
        converted_from_bidirectional=from_bidirectional,
        classes=job.classes,
        opset=job.opset,
        accuracy=accuracy,
        finetune_epochs=job.finetune.epochs,
        finetuned_checkpoint=finetuned,
        frame_stride=job.stride[0],
        frame_stride_from=job.stride[1],
        precisions=_precisions(files, latency, verified, int8),
    )


def _online(job: _Job, streaming: StreamingTSM) -> OnlineModel:
    """The streaming model as ``tsm eval --online`` runs the model dir being written."""
    height, width, scale_size = job.size
    loaded = ModelDir(
        streaming,
        height,
        width,
        scale_size,
        streaming.buffer_shapes(height, width),
        frame_stride=job.stride[0],
        frame_stride_from=job.stride[1],
    )
    return with_classes(loaded, job.classes)


def _quantize(job: _Job, streaming: StreamingTSM, staged: Path) -> Int8Checks:
    """online.int8.onnx beside online.onnx, calibrated and checked (``engine.int8_stream``)."""
    from tsmcli.engine.int8_stream import quantize_streaming

    int8, val = job.int8, job.val
    return quantize_streaming(
        staged / ONNX_FILE,
        staged / INT8_FILE,
        _online(job, streaming),
        int8.listed,
        int8.root,
        source=val.source if val else None,
        backend=val.backend if val else None,
        calib_clips=int8.calib_clips,
        check_clips=int8.check_clips,
    )


def _precisions(
    files: dict[str, Path], latency: dict[str, float], verified: Verified, int8: Int8Checks | None
) -> dict[str, dict[str, Any]]:
    """Per precision: the ONNX file, its size, its ms/frame in ONNX Runtime, its checks."""
    onnx_checks = {k: v for k, v in verified.checks.items() if k.startswith("onnx")}
    found = {}
    for name, path in files.items():
        checks: dict[str, Any] = (
            {k: {"diff": d, "tolerance": t} for k, (d, t) in onnx_checks.items()}
            if name == "fp32"
            else int8.to_dict()
        )
        found[name] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "ms_per_frame": latency[f"onnx_{name}"],
            "runtime": "onnxruntime",
            "checks": checks,
            **({"quantization": DEFAULT_INT8.to_dict()} if name == "int8" else {}),
        }
    return found


def _classes(info: CheckpointInfo, val_list: str | Path | None) -> list[str] | None:
    """The names stored in the checkpoint, else those of classes.txt beside the (val or
    calibration) list."""
    if info.classes:
        return list(info.classes)
    if val_list is not None:
        from tsmcli.data.lists import classes_for_list

        return classes_for_list(val_list)
    return None


def _frame_stride(recipe: Recipe | None, num_segments: int, given: int | None) -> tuple[int, str]:
    """One frame in how many a stream should feed (``data.sampling.clip_frame_spacing``), and
    where that number comes from."""
    if given is not None:
        if given < 1:
            raise UsageError(f"--stride must be at least 1, got {given}")
        return given, "given to tsm convert-online"
    if recipe is None:
        return 1, "not recorded: the checkpoint carries no training recipe"
    train_list = Path(recipe.data.train_list).expanduser()
    try:
        counts = [entry.num_frames for entry in read_list(train_list)]
    except (OSError, TSMError):
        counts = []
    if not counts and recipe.data.sampling != "dense":
        logger.warning("%s: not readable, so streaming feeds every frame", train_list)
        return 1, f"not recorded: the training list {train_list} was not readable"
    return clip_frame_spacing(recipe.data.sampling, counts, num_segments)


def _input_size(
    recipe: Recipe | None, height: int | None, width: int | None
) -> tuple[int, int, int]:
    """(height, width, scale_size): the recipe's input size unless given; the test scale
    keeps the recipe's scale_size / input_size ratio (the defaults' without a recipe)."""
    data = recipe.data if recipe is not None else DataConfig()
    ratio = data.scale_size / data.input_size
    height = int(height or data.input_size)
    width = int(width or data.input_size)
    if height < 16 or width < 16:
        raise UsageError(f"input size {height}x{width} is too small; use at least 16x16")
    return height, width, max(height, width, round(min(height, width) * ratio))


def _offline_accuracy(job: _Job) -> dict[str, Any]:
    val = job.val
    return offline_accuracy(
        job.info, val.list_file, val.root, source=val.source, backend=val.backend, arch=job.arch
    )


def _online_accuracy(streaming: StreamingTSM, job: _Job) -> dict[str, Any]:
    val = job.val
    online = _online(job, streaming)
    return online_accuracy(online, val.list_file, val.root, source=val.source, backend=val.backend)


def _finetune(job: _Job, run_dir: Path) -> tuple[nn.Module, Path]:
    return finetune_one_way(job.info, job.recipe, job.finetune, run_dir)
