"""The exported clip model dir of ``tsm export``: its layout, its report, and loading it to run.

A clip model dir holds ``model.onnx`` (the offline model, bidirectional TSM or TSN: one clip
``(1, T, 3, H, W)`` in, ``logits`` ``(1, K)`` out), with ``--precision int8`` also
``model.int8.onnx``, ``classes.txt`` when the class names are known, and ``report.json``: what
running it needs (``num_segments``, ``input_size``, ``scale_size``, mean and std, the stored
recipe whose data settings eval reads videos with) and what the export verified and measured.
Nothing in it is code: the ONNX files are graphs ONNX Runtime runs (``model.runtime``). It is
staged and published as the online model dir is (``model.model_dir``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsmcli.errors import ExportError
from tsmcli.fileio import atomic_write
from tsmcli.model.runtime import OnnxClipModel

CLIP_FILE = "model.onnx"
CLIP_INT8_FILE = "model.int8.onnx"
CLASSES_FILE = "classes.txt"
REPORT_FILE = "report.json"
OUTPUTS = (CLIP_FILE, CLIP_INT8_FILE, CLASSES_FILE, REPORT_FILE)  # report.json last
FILES = {"fp32": CLIP_FILE, "int8": CLIP_INT8_FILE}
REPORT_FORMAT, REPORT_VERSION = "tsmcli-clip", 1
REMEDY = "export the checkpoint again with tsm export"
# the normalisation every tsmcli model takes (data.transforms): recorded for other runtimes
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClipModelDir:
    """A clip model dir loaded to run: the model and how its clips are made."""

    model: OnnxClipModel  # an nn.Module of (N, T, 3, H, W) clips, like TSN
    precision: str
    path: Path  # the ONNX file
    num_classes: int
    num_segments: int
    input_size: int
    scale_size: int
    recipe: dict[str, Any] | None  # the checkpoint's stored recipe (None: it had none)
    classes: list[str] | None


def write_clip_report(
    staged: Path, fields: Mapping[str, Any], classes: Sequence[str] | None
) -> None:
    """report.json (``fields``, JSON values, with the format and the normalisation) and
    classes.txt, into the staged dir (plain writes: the dir is published whole)."""
    report = {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, **fields}
    report.update(mean=list(MEAN), std=list(STD), inputs=["clip"], outputs=["logits"])
    atomic_write(staged / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    if classes:
        atomic_write(staged / CLASSES_FILE, "".join(f"{name}\n" for name in classes))


def is_clip_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a report of ``tsm export`` (not an online model dir's)."""
    report = Path(path) / REPORT_FILE
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_clip_dir(
    model_dir: str | Path, precision: str = "fp32", *, threads: int | None = None
) -> ClipModelDir:
    """The clip model of ``model_dir`` in ``precision`` (``fp32``: model.onnx, ``int8``:
    model.int8.onnx) on ONNX Runtime, with what ``report.json`` says; a missing or damaged
    file is one ``ExportError`` line."""
    model_dir = Path(model_dir)
    report = _read_report(model_dir / REPORT_FILE)
    if precision not in FILES:
        raise ExportError(
            f"{model_dir}: an exported clip model runs in {' or '.join(FILES)}, not {precision}"
        )
    path = model_dir / FILES[precision]
    if not path.is_file():
        how = "--precision int8 --calib-list LIST --root ROOT" if precision == "int8" else ""
        raise ExportError(f"{path}: missing; {REMEDY} {how}".rstrip())
    model = OnnxClipModel(
        path,
        num_classes=report["num_classes"],
        num_segments=report["num_segments"],
        threads=threads,
        remedy=REMEDY,
    )
    classes_file = model_dir / CLASSES_FILE
    classes = None
    if classes_file.is_file():
        classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if len(classes) != report["num_classes"]:
            raise ExportError(
                f"{classes_file}: names {len(classes)} classes, but the model has "
                f"{report['num_classes']} outputs; {REMEDY}"
            )
    return ClipModelDir(
        model,
        precision,
        path,
        report["num_classes"],
        report["num_segments"],
        report["input_size"],
        report["scale_size"],
        report.get("recipe") if isinstance(report.get("recipe"), dict) else None,
        classes,
    )


def _read_report(path: Path) -> dict[str, Any]:
    """report.json of a clip model dir, with the sizes running it needs checked."""

    def fail(what: str) -> ExportError:
        return ExportError(f"{path}: {what}; {REMEDY}")

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"missing, {path.parent} is not a model dir of tsm export") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise fail(f"not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise fail(f"not a report of tsm export (format {REPORT_FORMAT!r})")
    for key, least in (("num_classes", 1), ("num_segments", 1), ("input_size", 16)):
        value = report.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise fail(f"{key} must be an integer of at least {least}, got {value!r}")
    scale = report.get("scale_size")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < report["input_size"]:
        raise fail(f"scale_size must be an integer of at least input_size, got {scale!r}")
    return report
