"""``tsm export``: a checkpoint's offline model (bidirectional TSM, or TSN) as an ONNX clip model
in a small model dir (``model.clip_dir``) that ``tsm eval --model`` and ``tsm predict --model``
run in ONNX Runtime, with the class names and the preprocessing beside it.

The checkpoint is read and its model built exactly as ``tsm eval`` does
(``evaluate.load_for_eval``), and the data settings eval would read its videos with are
recorded (the stored recipe), so the exported model sees the same clips. ``model.onnx`` is
verified against PyTorch before anything is written (``model.export.export_clip_and_verify``);
with ``precision="int8"``, ``model.int8.onnx`` is calibrated and checked on real clips of
``calib_list`` (``engine.int8_clip``). Everything is staged beside the model dir and published
whole at the end, or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tsmcli.choices import EXPORT_PRECISIONS
from tsmcli.data.lists import classes_for_list, read_list_file
from tsmcli.engine.convert_measure import interleaved_ms
from tsmcli.engine.evaluate import detect_source, load_for_eval
from tsmcli.engine.int8 import DEFAULT_CALIB_CLIPS, DEFAULT_CHECK_CLIPS
from tsmcli.errors import UsageError
from tsmcli.model.checkpoint import as_info
from tsmcli.model.clip_dir import FILES, OUTPUTS, write_clip_report
from tsmcli.model.export import DEFAULT_OPSET, export_clip_and_verify
from tsmcli.model.model_dir import check_out_dir, publish, staged_model_dir
from tsmcli.model.quantize import DEFAULT_INT8
from tsmcli.model.runtime import OnnxClipModel
from tsmcli.model.spec import ArchOverrides
from tsmcli.zoo_cache import local_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote and measured (``report.json`` holds the same)."""

    out_dir: Path
    checkpoint: Path
    arch: str
    num_classes: int
    num_segments: int
    input_size: int
    scale_size: int
    classes: list[str] | None
    opset: int
    # fp32 / int8 -> the ONNX file, its bytes, ms/clip in ONNX Runtime, what was checked
    precisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    eager_ms_per_clip: float = 0.0  # the PyTorch model, fp32, batch 1, same threads
    threads: int = 1

    def report_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["out_dir"]
        fields["checkpoint"] = str(self.checkpoint)
        return fields


@dataclass(frozen=True)
class _Calibration:
    listed: Any  # ListFile
    root: Path
    source: str | None
    calib_clips: int
    check_clips: int


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    precision: str = "fp32",
    calib_list: str | Path | None = None,
    root: str | Path | None = None,
    source: str | None = None,
    backend: str | None = None,
    calib_clips: int = DEFAULT_CALIB_CLIPS,
    check_clips: int = DEFAULT_CHECK_CLIPS,
    arch: ArchOverrides | None = None,
    opset: int = DEFAULT_OPSET,
    latency_reps: int = 5,
    overwrite: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Export ``checkpoint`` (a file or a model zoo name; ``arch`` as in ``evaluate``) into the
    model dir ``out_dir``: ``model.onnx``, and with ``precision="int8"`` ``model.int8.onnx``
    calibrated on ``calib_clips`` clips of ``calib_list`` (under ``root``, read with
    ``source``/``backend`` as eval reads them) and checked on up to ``check_clips`` others.
    ``overwrite`` replaces the files an export writes in an existing dir (never one that
    holds an input)."""
    out_dir = Path(out_dir)
    _check_options(precision, calib_list, root)
    check_out_dir(out_dir, overwrite, [local_path(checkpoint), calib_list, root])
    arch = arch or ArchOverrides()
    info = as_info(checkpoint, arch)
    model, data, classes, path = load_for_eval(info, arch, source, backend)
    model = model.eval()
    calibration = None
    if precision == "int8":
        listed = read_list_file(calib_list, classes=False)
        found = data.source or detect_source(listed.entries, Path(root))
        calibration = _Calibration(listed, Path(root), found, calib_clips, check_clips)
    names = list(classes) if classes else (classes_for_list(calib_list) if calib_list else None)
    with staged_model_dir(out_dir) as staged:
        result = _export(model, data, info, staged, out_dir, names, calibration, opset, seed)
        result = _measure(result, model, data, staged, latency_reps)
        write_clip_report(staged, {**result.report_fields(), "recipe": info.recipe}, names)
        publish(staged, out_dir, OUTPUTS)
    log.info("wrote %s (%s)", out_dir, ", ".join(result.precisions))
    return result


def _check_options(precision: str, calib_list, root) -> None:
    if precision not in EXPORT_PRECISIONS:
        raise UsageError(
            f"--precision {precision}: tsm export writes {' or '.join(EXPORT_PRECISIONS)} "
            "(bf16 is a way to run the PyTorch checkpoint: tsm eval --precision bf16)"
        )
    if (precision == "int8") != (calib_list is not None) or (calib_list is None) != (root is None):
        raise UsageError(
            "--precision int8 needs --calib-list LIST and --root ROOT (clips to calibrate and "
            "check it on), and they need --precision int8"
        )


def _export(model, data, info, staged, out_dir, names, calibration, opset, seed) -> ExportResult:
    """model.onnx (verified) and, with a calibration, model.int8.onnx (checked)."""
    sizes = [data.input_size, data.scale_size]  # eval's crops: centre, or full resolution
    fp32 = staged / FILES["fp32"]
    fp32_checks = export_clip_and_verify(model, fp32, sizes=sizes, opset=opset, seed=seed)
    precisions = {"fp32": {"file": fp32.name, "checks": fp32_checks}}
    if calibration is not None:
        from tsmcli.engine.int8_clip import quantize_clip

        checks = quantize_clip(
            fp32,
            staged / FILES["int8"],
            num_classes=int(model.num_classes),
            num_segments=int(model.num_segments),
            listed=calibration.listed,
            root=calibration.root,
            data=data,
            source=calibration.source,
            calib_clips=calibration.calib_clips,
            check_clips=calibration.check_clips,
        )
        precisions["int8"] = {
            "file": FILES["int8"],
            "checks": checks.to_dict(),
            "quantization": DEFAULT_INT8.to_dict(),
        }
    return ExportResult(
        out_dir=out_dir,
        checkpoint=info.path,
        arch=str(model.config().get("arch")),
        num_classes=int(model.num_classes),
        num_segments=int(model.num_segments),
        input_size=data.input_size,
        scale_size=data.scale_size,
        classes=names,
        opset=opset,
        precisions=precisions,
    )


def _measure(result: ExportResult, model, data, staged: Path, reps: int) -> ExportResult:
    """Each ONNX file's size and ms per clip (batch 1, the input size) in ONNX Runtime,
    interleaved with the PyTorch model's, on as many threads as torch uses."""
    threads = torch.get_num_threads()
    clip = torch.randn(1, result.num_segments, 3, data.input_size, data.input_size)
    runs = {"eager": lambda: model(clip)}
    for name in result.precisions:
        onnx = OnnxClipModel(
            staged / FILES[name],
            num_classes=result.num_classes,
            num_segments=result.num_segments,
            threads=threads,
        )
        runs[name] = lambda onnx=onnx: onnx(clip)
    times = interleaved_ms(runs, reps)
    precisions = {
        name: {
            **found,
            "bytes": (staged / found["file"]).stat().st_size,
            "ms_per_clip": times[name],
            "runtime": "onnxruntime",
        }
        for name, found in result.precisions.items()
    }
    return replace(result, precisions=precisions, eager_ms_per_clip=times["eager"], threads=threads)
