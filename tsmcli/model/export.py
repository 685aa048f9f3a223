"""The online model dir: its layout, the verified export of a one-way model into it, and
loading it back safely. The convert-online workflow around this (fine-tuning, accuracy,
latency) is ``engine.convert``.

A model dir holds ``online_weights.pt`` (a plain checkpoint of the one-way model: what
``tsm stream`` and ``tsm eval --online`` rebuild and run, so nothing from the dir executes),
the deployment exports ``online.pt`` (TorchScript) and ``online.onnx``, ``report.json``
(input size, test scale, buffer shapes, what was verified and measured), ``classes.txt``
when the class names are known, and ``finetune/`` when the model was fine-tuned one-way.

Nothing is written until every export has been checked (``export_and_verify``): the PyTorch
streaming model, the one rebuilt from the saved weights, the saved-and-reloaded TorchScript
file and the ONNX file run in onnxruntime are each fed a random clip frame by frame and
compared with the offline one-way model on the whole clip (per-frame logits, their average
against the clip logits; for PyTorch also per-frame features, for the files also the buffers
after the last frame). A difference above the tolerance is an ``ExportError`` naming the
worst output; the files are staged in a temp dir beside the model dir and moved into place
only at the end (into an existing dir, only the names in ``OUTPUTS``).

Exporters (torch 2.14): ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export,
translated by onnxscript), the default and maintained path; the TorchScript-based exporter
(``dynamo=False``) is deprecated and due for removal. The dynamo exporter implements opset 18
and up: asking for 17 makes it down-convert, which fails on this graph and silently leaves 18,
so the default is 18 and the opset actually written is checked. ``online.pt`` is a
``torch.jit.trace`` (deprecated in torch 2.x but still what libtorch and PyTorch Mobile
load); tracing is exact here because the streaming graph has no data-dependent control flow,
and shapes are static (one frame size per export).
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
from torch import Tensor, nn

from tsmcli.errors import ExportError, UsageError
from tsmcli.fileio import atomic_write, check_writable_dir
from tsmcli.model.checkpoint import checkpoint_dict, load_model
from tsmcli.model.streaming import StepFn, StreamingTSM, run_stream
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint

TOLERANCE = 1e-4
DEFAULT_OPSET = 18
# what a model dir holds; --overwrite replaces these names and no others (report.json last)
WEIGHTS_FILE = "online_weights.pt"  # what tsm stream / eval --online run (rebuilt, no code)
TORCHSCRIPT_FILE = "online.pt"  # deployment artifact; runs code when loaded
ONNX_FILE = "online.onnx"
CLASSES_FILE = "classes.txt"
FINETUNE_DIR = "finetune"
REPORT_FILE = "report.json"
OUTPUTS = (FINETUNE_DIR, WEIGHTS_FILE, TORCHSCRIPT_FILE, ONNX_FILE, CLASSES_FILE, REPORT_FILE)
REPORT_FORMAT, REPORT_VERSION = "tsmcli-online", 1


def rebuild(model: nn.Module, **changes: Any) -> nn.Module:
    """The same TSN with some ``config()`` keys changed (``shift``, ``num_segments``) and the
    same weights: none of those keys changes a parameter. Returned in eval mode."""
    other = build_model(**{**model.config(), "pretrained": None, **changes})
    other.load_state_dict(model.state_dict())
    return other.eval()


# ---------------------------------------------------------------------------------------------
# export and verification


@dataclass(frozen=True)
class Verified:
    """What ``export_and_verify`` checked, and the streaming model rebuilt from the weights
    file (what ``tsm eval --online`` and ``tsm stream`` will run)."""

    checks: dict[str, tuple[float, float]]  # output -> (max abs difference, tolerance)
    reloaded: StreamingTSM

    @property
    def diffs(self) -> dict[str, float]:
        return {name: diff for name, (diff, _) in self.checks.items()}

    @property
    def tolerances(self) -> dict[str, float]:
        return {name: limit for name, (_, limit) in self.checks.items()}

    def worst_per_export(self) -> dict[str, float]:
        """export (pytorch, weights, torchscript, onnx) -> its worst difference."""
        worst: dict[str, float] = {}
        for name, value in self.diffs.items():
            export = name.split()[0]
            worst[export] = max(worst.get(export, 0.0), value)
        return worst


def export_and_verify(streaming: StreamingTSM, one_way: nn.Module, staged: Path, *,
                      height: int, width: int, frames: int, opset: int, seed: int,
                      classes: Sequence[str] | None) -> Verified:
    """Write online_weights.pt, online.pt and online.onnx into ``staged`` and compare each,
    read back from its file, with the offline model on a random clip of ``frames`` frames.

    Logits must match to ``TOLERANCE``; features and buffers, activations of any scale, to
    ``TOLERANCE`` times their largest magnitude (when above 1): float32 rounding grows with
    the values. Buffers of an export are compared with the PyTorch streaming model's, whose
    outputs match the offline model. Raises ``ExportError`` naming the worst output.
    """
    generator = torch.Generator().manual_seed(seed)
    clip = torch.randn(1, frames, 3, height, width, generator=generator)  # (1, T, 3, H, W)
    offline = rebuild(one_way, num_segments=frames)  # its own shift: one-way, or none
    comparison = _Comparison(offline, clip, streaming.initial_buffers(height, width))
    frame, buffers = clip[0, :1], comparison.buffers
    with torch.no_grad():
        comparison.against_pytorch(streaming)
        weights = save_checkpoint(checkpoint_dict(one_way, classes=classes),
                                  staged / WEIGHTS_FILE)
        reloaded = load_streaming_model(weights)
        comparison.compare("weights", reloaded)
        traced = _export_torchscript(streaming, frame, buffers, staged / TORCHSCRIPT_FILE)
        comparison.compare("torchscript", traced)
        _export_onnx(streaming, frame, buffers, staged / ONNX_FILE, opset)
        comparison.compare("onnx", _onnx_step(staged / ONNX_FILE, streaming.num_buffers))
    comparison.raise_worst()
    return Verified(comparison.checks, reloaded)


class _Comparison:
    """The offline model's outputs on one clip, and each export's differences from them."""

    def __init__(self, offline: nn.Module, clip: Tensor, buffers: list[Tensor]):
        self.clip, self.buffers = clip, buffers
        self.checks: dict[str, tuple[float, float]] = {}
        with torch.no_grad():
            self.reference = offline.frame_logits(clip)[0]  # (T, K)
            self.reference_clip = offline(clip)[0]  # (K,)
            self.reference_features = offline.features(clip)[0]  # (T, D)
        self.final_state = torch.zeros(0)  # the PyTorch streaming model's, once compared

    def check(self, name: str, got: Tensor, want: Tensor, scaled: bool = False) -> None:
        scale = max(1.0, float(want.abs().max())) if scaled and want.numel() else 1.0
        self.checks[name] = (_max_diff(got, want), TOLERANCE * scale)

    def compare(self, name: str, step: StepFn) -> Tensor:
        """Run ``step`` over the clip; check its logits (and, for a file, its last buffers)."""
        try:
            logits, last = run_stream(step, self.clip[0], self.buffers)  # (T, K), after frame T
        except Exception as exc:  # noqa: BLE001 - any failure to run is a failed export
            raise ExportError(f"{name}: running the exported model failed "
                              f"({type(exc).__name__}: {str(exc).strip()[:200]})") from exc
        self.check(f"{name} frame logits", logits, self.reference)
        self.check(f"{name} clip logits", logits.mean(0), self.reference_clip)
        state = torch.cat([b.flatten() for b in last]) if last else torch.zeros(0)
        if name != "pytorch":
            self.check(f"{name} buffers", state, self.final_state, scaled=True)
        return state

    def against_pytorch(self, streaming: StreamingTSM) -> None:
        """The PyTorch streaming model: logits and per-frame features; its buffers become
        the reference of the exports'."""
        self.final_state = self.compare("pytorch", streaming)
        features = run_stream(streaming.forward_features, self.clip[0], self.buffers).outputs
        self.check("pytorch features", features, self.reference_features, scaled=True)

    def raise_worst(self) -> None:
        worst = max(self.checks, key=lambda name: self.checks[name][0] / self.checks[name][1])
        diff, limit = self.checks[worst]
        if not diff <= limit:
            raise ExportError(f"{worst} differ from the reference by {diff:.3g} (tolerance "
                              f"{limit:.3g}): the export is wrong and nothing was written; "
                              "please report it with the checkpoint's architecture")


def _max_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference; NaN or a shape mismatch counts as infinitely wrong."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a.float() - b.float()).abs().max()
    return float(diff) if torch.isfinite(diff) else float("inf")


def io_names(num_buffers: int) -> tuple[list[str], list[str]]:
    """ONNX input and output names, buffers in the order the shifted blocks run."""
    return ([f"buffer_{i}" for i in range(num_buffers)],
            [f"new_buffer_{i}" for i in range(num_buffers)])


def _export_torchscript(streaming: StreamingTSM, frame: Tensor, buffers: list[Tensor],
                        path: Path) -> torch.jit.ScriptModule:
    """Trace, save, and load back: what is verified is the file a user will load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(streaming, (frame, *buffers), check_trace=False)
        torch.jit.save(traced, str(path))
        return torch.jit.load(str(path)).eval()


def _export_onnx(streaming: StreamingTSM, frame: Tensor, buffers: list[Tensor], path: Path,
                 opset: int) -> None:
    import onnx

    buffer_names, new_buffer_names = io_names(streaming.num_buffers)
    try:
        torch.onnx.export(streaming, (frame, *buffers), str(path), dynamo=True,
                          opset_version=opset, input_names=["frame", *buffer_names],
                          output_names=["logits", *new_buffer_names], external_data=False,
                          verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:200]})") from exc
    written = onnx.load(str(path))
    version = next(op.version for op in written.opset_import if op.domain in ("", "ai.onnx"))
    if version != opset:
        raise ExportError(f"the ONNX exporter wrote opset {version}, not {opset}; "
                          f"use opset {DEFAULT_OPSET} or above")


def _onnx_step(path: Path, num_buffers: int) -> StepFn:
    """The ONNX file in onnxruntime (CPU) as a streaming step; checks the I/O names."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    buffer_names, new_buffer_names = io_names(num_buffers)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != ["frame", *buffer_names] or outputs != ["logits", *new_buffer_names]:
        raise ExportError(f"{path.name}: inputs {inputs[:3]}... and outputs {outputs[:3]}... "
                          "are not named frame, buffer_i / logits, new_buffer_i")

    def step(frame: Tensor, *buffers: Tensor) -> list[Tensor]:
        feed = {name: t.numpy() for name, t in zip(inputs, (frame, *buffers), strict=True)}
        return [torch.from_numpy(out) for out in session.run(None, feed)]

    return step


# ---------------------------------------------------------------------------------------------
# writing a model dir


def check_out_dir(out_dir: Path, overwrite: bool, inputs: Sequence[str | Path | None]) -> None:
    """Refuse a model dir that would lose something: a file, the current folder (or one above
    it), a non-empty folder without ``--overwrite``, or, with it, a folder that holds one of
    ``inputs`` (``--overwrite`` replaces the files the command writes, which could be inputs:
    classes.txt beside a val list, a checkpoint named online.pt)."""
    check_writable_dir(out_dir, "--out")
    target, here = out_dir.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise UsageError(f"--out {out_dir}: is the current folder or holds it; give the model "
                         "dir a folder of its own, e.g. --out online/")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise UsageError(f"{out_dir}: already exists and is not empty; choose another --out "
                         "or pass --overwrite")
    for given in inputs:
        if given is not None and target in (Path(given).resolve(), *Path(given).resolve().parents):
            raise UsageError(f"--out {out_dir}: holds {given}, an input of this command; "
                             "--overwrite replaces files in the model dir, so give it a folder "
                             "of its own, e.g. --out online/")


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


def write_report(staged: Path, fields: Mapping[str, Any], *, num_buffers: int,
                 model_config: Mapping[str, Any], classes: Sequence[str] | None) -> None:
    """report.json and classes.txt (plain writes: the staged dir is published as a whole).
    ``fields`` are what the conversion measured (JSON values), among them what
    ``read_report`` reads back: ``height``, ``width``, ``scale_size``, ``buffer_shapes``."""
    buffer_names, new_buffer_names = io_names(num_buffers)
    report = dict(fields)
    report.update(format=REPORT_FORMAT, format_version=REPORT_VERSION,
                  inputs=["frame", *buffer_names], outputs=["logits", *new_buffer_names],
                  model_config=dict(model_config), torch=torch.__version__)
    atomic_write(staged / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    if classes:
        atomic_write(staged / CLASSES_FILE, "".join(f"{name}\n" for name in classes))


def publish(staged: Path, out_dir: Path) -> None:
    """Move the staged model into place. A new ``out_dir`` is the staged dir renamed. In an
    existing one (empty, or ``--overwrite``) only the names this command writes (``OUTPUTS``)
    are replaced, and those this conversion did not produce (classes.txt, finetune/) are
    removed (into the temp dir, deleted with it); any other file there is left alone.
    report.json goes last."""
    if not out_dir.exists():
        os.rename(staged, out_dir)
        return
    previous = staged.parent / "previous"
    previous.mkdir()
    for name in OUTPUTS:
        new, target = staged / name, out_dir / name
        if new.is_file() and target.is_file() and not target.is_symlink():
            os.replace(new, target)
            continue
        if target.exists() or target.is_symlink():
            os.rename(target, previous / name)
        if new.exists():
            os.rename(new, target)


# ---------------------------------------------------------------------------------------------
# reading a model dir


@dataclass(frozen=True)
class ModelDir:
    """A model dir loaded to run: the step and what its input must look like."""

    step: StepFn  # (frame (1, 3, H, W), *buffers) -> (logits (1, K), *new_buffers)
    height: int
    width: int
    scale_size: int  # short side of the frame before the centre crop
    buffer_shapes: list[tuple[int, ...]]
    classes_file: Path | None  # classes.txt, when the dir has one
    source: str  # the file the step came from (named when a step fails)


def load_streaming_model(path: str | Path) -> StreamingTSM:
    """The streaming model of a model dir's ``online_weights.pt``, rebuilt from this package's
    code (``build_model`` from the recorded config, weights read with ``weights_only=True``):
    nothing in the file can run. It computes what ``online.pt`` computes."""
    return StreamingTSM(load_model(path)).eval()


def load_model_dir(model_dir: str | Path, *, trust_torchscript: bool = False) -> ModelDir:
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
    height, width, scale_size, shapes = read_report(report_path)
    if trust_torchscript:
        path = model_dir / TORCHSCRIPT_FILE
        step: StepFn = load_torchscript(path)
    else:
        path = model_dir / WEIGHTS_FILE
        step = _load_weights(path, model_dir, report_path, height, width, shapes)
    classes = model_dir / CLASSES_FILE
    return ModelDir(step, height, width, scale_size, shapes,
                    classes if classes.is_file() else None, str(path))


def _load_weights(path: Path, model_dir: Path, report_path: Path, height: int, width: int,
                  shapes: list[tuple[int, ...]]) -> StreamingTSM:
    """online_weights.pt rebuilt, checked against the buffer shapes of the report."""
    if not path.is_file():
        raise ExportError(
            f"{path}: missing (a model dir from an older tsmcli holds only TorchScript, "
            "which can run code); run tsm convert-online again, or pass "
            f"--trust-torchscript if you trust {model_dir / TORCHSCRIPT_FILE}")
    step = load_streaming_model(path)
    if step.buffer_shapes(height, width) != shapes:
        raise ExportError(
            f"{report_path}: its buffer_shapes do not match {path} at {height}x{width}; "
            "the report was edited or belongs to another model: convert again with tsm "
            "convert-online")
    return step


def read_report(path: Path) -> tuple[int, int, int, list[tuple[int, ...]]]:
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


def load_torchscript(path: Path) -> StepFn:
    """``online.pt`` loaded: this runs whatever code the file holds."""
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
