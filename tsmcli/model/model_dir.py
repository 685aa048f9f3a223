"""The online model dir: its layout, writing it safely, and loading it back with nothing
from it executed. ``export`` fills it; ``engine.convert`` drives the conversion.

A model dir holds ``online_weights.pt`` (a plain checkpoint of the one-way model: what
``tsm stream`` and ``tsm eval --online`` rebuild and run, so nothing from the dir executes),
the deployment exports ``online.pt`` (TorchScript, which runs code when loaded: only with
``trust_torchscript``), ``online.onnx`` and, converted with ``--precision int8``,
``online.int8.onnx`` (run by ONNX Runtime, ``model.runtime``: data, not code), ``report.json`` (input size, test scale, buffer
shapes, what was verified and measured), ``classes.txt`` when the class names are known, and
``finetune/`` when the model was fine-tuned one-way. A conversion is staged in a temp dir
beside the model dir and published at the end; into an existing dir, only the names in
``OUTPUTS`` are replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tsmcli.errors import ExportError, UsageError
from tsmcli.fileio import atomic_write, check_writable_dir
from tsmcli.model.checkpoint import load_model
from tsmcli.model.runtime import OnnxStep, stream_io_names
from tsmcli.model.streaming import StepFn, StreamingTSM

# what a model dir holds; --overwrite replaces these names and no others (report.json last)
WEIGHTS_FILE = "online_weights.pt"  # what tsm stream / eval --online run (rebuilt, no code)
TORCHSCRIPT_FILE = "online.pt"  # deployment artifact; runs code when loaded
ONNX_FILE = "online.onnx"
INT8_FILE = "online.int8.onnx"  # --precision int8: calibrated and checked against online.onnx
CLASSES_FILE = "classes.txt"
FINETUNE_DIR = "finetune"
REPORT_FILE = "report.json"
OUTPUTS = (
    FINETUNE_DIR,
    WEIGHTS_FILE,
    TORCHSCRIPT_FILE,
    ONNX_FILE,
    INT8_FILE,
    CLASSES_FILE,
    REPORT_FILE,
)
INT8_REMEDY = "make it with tsm convert-online --precision int8 --calib-list LIST --root ROOT"
REPORT_FORMAT, REPORT_VERSION = "tsmcli-online", 1


def io_names(num_buffers: int) -> tuple[list[str], list[str]]:
    """ONNX input and output names of the buffers, in the order the shifted blocks run."""
    inputs, outputs = stream_io_names(num_buffers)
    return inputs[1:], outputs[1:]


# ---------------------------------------------------------------------------------------------
# writing


def check_out_dir(out_dir: Path, overwrite: bool, inputs: Sequence[str | Path | None]) -> None:
    """Refuse a model dir that would lose something: a file, the current folder (or one above
    it), a non-empty folder without ``--overwrite``, or, with it, a folder that holds one of
    ``inputs`` (``--overwrite`` replaces the files the command writes, which could be inputs:
    classes.txt beside a val list, a checkpoint named online.pt)."""
    check_writable_dir(out_dir, "--out")
    target, here = out_dir.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise UsageError(
            f"--out {out_dir}: is the current folder or holds it; give the model "
            "dir a folder of its own, e.g. --out online/"
        )
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise UsageError(
            f"{out_dir}: already exists and is not empty; choose another --out or pass --overwrite"
        )
    for given in inputs:
        if given is not None and target in (Path(given).resolve(), *Path(given).resolve().parents):
            raise UsageError(
                f"--out {out_dir}: holds {given}, an input of this command; "
                "--overwrite replaces files in the model dir, so give it a folder "
                "of its own, e.g. --out online/"
            )


@contextlib.contextmanager
def staged_model_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh folder in a temp dir beside ``out_dir`` to write the model dir into, before
    ``publish`` moves it into place; the temp dir is removed on the way out, whatever
    happened."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        staged = work / "model"
        staged.mkdir()
        yield staged
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_report(
    staged: Path,
    fields: Mapping[str, Any],
    *,
    num_buffers: int,
    model_config: Mapping[str, Any],
    classes: Sequence[str] | None,
) -> None:
    """report.json and classes.txt (plain writes: the staged dir is published as a whole).
    ``fields`` are what the conversion measured (JSON values), among them what
    ``read_report`` reads back: ``height``, ``width``, ``scale_size``, ``buffer_shapes``."""
    buffer_names, new_buffer_names = io_names(num_buffers)
    report = dict(fields)
    report.update(
        format=REPORT_FORMAT,
        format_version=REPORT_VERSION,
        inputs=["frame", *buffer_names],
        outputs=["logits", *new_buffer_names],
        model_config=dict(model_config),
        torch=torch.__version__,
    )
    atomic_write(staged / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    if classes:
        atomic_write(staged / CLASSES_FILE, "".join(f"{name}\n" for name in classes))


def publish(staged: Path, out_dir: Path, outputs: Sequence[str] = OUTPUTS) -> None:
    """Move the staged model into place. A new ``out_dir`` is the staged dir renamed. In an
    existing one (empty, or ``--overwrite``) only the names this command writes (``outputs``:
    the online model dir's, or ``model.clip_dir.OUTPUTS``) are replaced, and those this conversion did not produce (classes.txt, finetune/) are
    removed (into the temp dir, deleted with it); any other file there is left alone.
    report.json goes last."""
    if not out_dir.exists():
        os.rename(staged, out_dir)
        return
    previous = staged.parent / "previous"
    previous.mkdir()
    for name in outputs:
        new, target = staged / name, out_dir / name
        if new.is_file() and target.is_file() and not target.is_symlink():
            os.replace(new, target)
            continue
        if target.exists() or target.is_symlink():
            os.rename(target, previous / name)
        if new.exists():
            os.rename(new, target)


# ---------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class ModelDir:
    """A model dir loaded to run: the step and what its input must look like."""

    step: StepFn  # (frame (1, 3, H, W), *buffers) -> (logits (1, K), *new_buffers)
    height: int
    width: int
    scale_size: int  # short side of the frame before the centre crop
    buffer_shapes: list[tuple[int, ...]]
    classes_file: Path | None = None  # classes.txt, when the dir has one
    source: str = "the online model"  # the file the step came from (named when a step fails)
    num_classes: int | None = None  # outputs, from the recorded config (None: not recorded)
    # one frame in frame_stride: the spacing of the frames the model was trained on
    frame_stride: int = 1
    frame_stride_from: str = "not recorded"


def load_streaming_model(path: str | Path) -> StreamingTSM:
    """The streaming model of a model dir's ``online_weights.pt``, rebuilt from this package's
    code (``load_model``: the recorded spec, weights read with ``weights_only=True``):
    nothing in the file can run. It computes what ``online.pt`` computes."""
    return StreamingTSM(load_model(path)).eval()


def load_model_dir(
    model_dir: str | Path,
    *,
    trust_torchscript: bool = False,
    precision: str = "fp32",
    threads: int | None = None,
) -> ModelDir:
    """The streaming model of a model dir, with the input size recorded in ``report.json``.

    By default it is rebuilt from ``online_weights.pt`` (no code from the dir runs).
    ``trust_torchscript=True`` loads ``online.pt`` instead: only for a dir you trust, since
    loading and running TorchScript runs whatever code it holds. ``precision="int8"`` runs
    ``online.int8.onnx`` in ONNX Runtime (``threads`` intra-op threads; None: one a core).
    """
    model_dir = Path(model_dir)
    report_path = model_dir / REPORT_FILE
    if not report_path.is_file():
        raise ExportError(
            f"{report_path}: missing; {model_dir} is not an online model dir "
            "(make one with tsm convert-online)"
        )
    report = read_report(report_path)
    if precision == "int8":
        path = model_dir / INT8_FILE
        step = _load_int8(path, report_path, report, threads)
    elif trust_torchscript:
        path = model_dir / TORCHSCRIPT_FILE
        step: StepFn = load_torchscript(path)
    else:
        path = model_dir / WEIGHTS_FILE
        step = _load_weights(path, model_dir, report_path, report)
    classes = model_dir / CLASSES_FILE
    return ModelDir(
        step,
        report.height,
        report.width,
        report.scale_size,
        report.buffer_shapes,
        classes if classes.is_file() else None,
        str(path),
        report.num_classes,
        report.frame_stride,
        report.frame_stride_from,
    )


def _load_weights(path: Path, model_dir: Path, report_path: Path, report: Report) -> StreamingTSM:
    """online_weights.pt rebuilt, checked against the buffer shapes of the report."""
    if not path.is_file():
        raise ExportError(
            f"{path}: missing (a model dir from an older tsmcli holds only TorchScript, "
            "which can run code); run tsm convert-online again, or pass "
            f"--trust-torchscript if you trust {model_dir / TORCHSCRIPT_FILE}"
        )
    step = load_streaming_model(path)
    if step.buffer_shapes(report.height, report.width) != report.buffer_shapes:
        raise ExportError(
            f"{report_path}: its buffer_shapes do not match {path} at "
            f"{report.height}x{report.width}; the report was edited or belongs to another "
            "model: convert again with tsm convert-online"
        )
    return step


def _load_int8(path: Path, report_path: Path, report: Report, threads: int | None) -> OnnxStep:
    """online.int8.onnx in ONNX Runtime, checked against the buffer shapes of the report."""
    if not path.is_file():
        raise ExportError(f"{path}: missing, the model dir holds no int8 model; {INT8_REMEDY}")
    step = OnnxStep(path, len(report.buffer_shapes), threads=threads, remedy=INT8_REMEDY)
    shapes = [tuple(i.shape) for i in step.session.get_inputs()[1:]]
    if shapes != report.buffer_shapes:
        raise ExportError(
            f"{report_path}: its buffer_shapes do not match {path}; the report was edited or "
            f"belongs to another model: {INT8_REMEDY}"
        )
    return step


@dataclass(frozen=True)
class Report:
    """What ``report.json`` says that running the model needs, checked."""

    height: int
    width: int
    scale_size: int
    buffer_shapes: list[tuple[int, ...]]
    num_classes: int | None  # None: a report without the model's config
    frame_stride: int  # 1 in a report from before the stride was recorded
    frame_stride_from: str


def read_report(path: Path) -> Report:
    """The fields of report.json that running the model needs, each checked."""

    def fail(what: str) -> ExportError:
        return ExportError(f"{path}: {what}; convert the checkpoint again with tsm convert-online")

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(report, dict):
        raise fail(f"holds a {type(report).__name__}, not the report object")

    def size(key: str, least: int, fields: dict = report) -> int:
        value = fields.get(key)
        if not _is_int(value) or value < least:
            raise fail(f"{key} must be an integer of at least {least}, got {value!r}")
        return value

    height, width = size("height", 16), size("width", 16)
    scale_size = size("scale_size", max(height, width))
    shapes = report.get("buffer_shapes")
    if not isinstance(shapes, list) or not all(
        isinstance(shape, list) and shape and all(_is_int(d) and d > 0 for d in shape)
        for shape in shapes
    ):
        raise fail("buffer_shapes must be a list of shapes (lists of positive integers)")
    config = report.get("model_config")
    num_classes = None
    if isinstance(config, dict) and "num_classes" in config:
        num_classes = size("num_classes", 1, config)
    stride = size("frame_stride", 1) if "frame_stride" in report else 1
    stride_from = report.get("frame_stride_from", "not recorded")
    return Report(
        height,
        width,
        scale_size,
        [tuple(shape) for shape in shapes],
        num_classes,
        stride,
        stride_from if isinstance(stride_from, str) else "not recorded",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_torchscript(path: Path) -> StepFn:
    """``online.pt`` loaded: this runs whatever code the file holds."""
    if not path.is_file():
        raise ExportError(f"{path}: missing; convert the checkpoint again with tsm convert-online")
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, still the format
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError, OSError) as exc:
            text = str(exc).strip()
            first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
            raise ExportError(
                f"{path}: not a readable TorchScript file ({first}); convert the "
                "checkpoint again with tsm convert-online"
            ) from exc
