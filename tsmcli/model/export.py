"""``tsm convert-online``: a checkpoint to a verified streaming model (weights, TorchScript, ONNX).

A model dir holds ``online_weights.pt`` (a plain checkpoint of the one-way model: what
``tsm stream`` and ``tsm eval --online`` rebuild and run, so nothing from the dir executes),
and the deployment exports ``online.pt`` and ``online.onnx``. Nothing is written until every
one has been checked: the PyTorch streaming model, the one rebuilt from the saved weights, the
saved-and-reloaded TorchScript file and the ONNX file run in onnxruntime are each fed a random
clip frame by frame and compared with the offline one-way model on the whole clip (per-frame
logits, their average against the clip logits; for PyTorch also per-frame features, for the
files also the buffers after the last frame). A difference above the tolerance is an
``ExportError`` naming the worst output; the files are staged in a temp dir beside
``out_dir`` and moved into place only at the end (into an existing dir, only the names in
``OUTPUTS``).

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

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tsmcli.errors import ExportError, UsageError
from tsmcli.fileio import atomic_write, check_writable_dir
from tsmcli.model.streaming import FrameModel, StepFn, StreamingTSM, run_stream

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4
DEFAULT_SIZE = 224
DEFAULT_OPSET = 18
# what a model dir holds; --overwrite replaces these names and no others (report.json last)
WEIGHTS_FILE = "online_weights.pt"  # what tsm stream / eval --online run (rebuilt, no code)
TORCHSCRIPT_FILE = "online.pt"  # deployment artifact; runs code when loaded
ONNX_FILE = "online.onnx"
CLASSES_FILE = "classes.txt"
FINETUNE_DIR = "finetune"
REPORT_FILE = "report.json"
OUTPUTS = (FINETUNE_DIR, WEIGHTS_FILE, TORCHSCRIPT_FILE, ONNX_FILE, CLASSES_FILE, REPORT_FILE)
FUTURE_WARNING = ("this model was trained with the bidirectional shift (it saw the future "
                  "frame); the online model shifts one way only, so expect lower accuracy "
                  "unless it is fine-tuned one-way (--finetune-epochs N)")


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


def convert_online(checkpoint: str | Path, out_dir: str | Path, *,
                   height: int | None = None, width: int | None = None,
                   val_list: str | Path | None = None, root: str | Path | None = None,
                   source: str | None = None, backend: str | None = None,
                   finetune_epochs: int = 0, finetune_lr_scale: float = 0.1,
                   distill_weight: float = 0.5, distill_temperature: float = 4.0,
                   verify_frames: int = 6, latency_reps: int = 20,
                   opset: int = DEFAULT_OPSET, overwrite: bool = False, seed: int = 0,
                   **arch_overrides: Any) -> ConvertResult:
    """Build the streaming model of a checkpoint, verify its exports, write them to ``out_dir``.

    ``height``/``width`` default to the recipe's input size (224 without a recipe). A
    bidirectional model is converted to one-way (same weights; a warning is logged). With
    ``val_list`` and ``root``, top-1 is measured before (offline, as trained) and after
    (streaming, frame by frame); ``finetune_epochs`` first fine-tunes the one-way model on the
    recipe's training data, at ``finetune_lr_scale`` times the recipe's learning rate, with
    ``distill_weight`` of its loss from the checkpoint's own outputs (the model as trained,
    which saw both directions) softened at ``distill_temperature`` (0: labels only).
    ``arch_overrides`` (``arch``, ``num_segments``, ``shift``, ...) go to ``load_model``: an
    official TSM or mmaction2 checkpoint does not record its architecture.
    """
    from tsmcli.model.checkpoint import load_checkpoint, load_model

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if (val_list is None) != (root is None):
        raise UsageError("give --val-list and --root together (or neither)")
    if verify_frames < 2:
        raise UsageError(f"verify_frames must be at least 2 to check the buffers, got {verify_frames}")
    _check_out_dir(out_dir, overwrite, [checkpoint, val_list, root])
    raw = load_checkpoint(checkpoint)
    recipe = raw.get("recipe") if isinstance(raw, dict) else None
    if finetune_epochs > 0 and not recipe:
        raise UsageError(f"{checkpoint}: --finetune-epochs needs the training recipe, which only "
                         "tsmcli checkpoints carry; fine-tune with tsm train --set "
                         "model.shift=unidirectional --set model.init_from=CKPT instead")
    if finetune_epochs > 0:  # the fine-tuning run reads the recipe's data too
        data = recipe.get("data") or {}
        _check_out_dir(out_dir, overwrite, [data.get(key) for key in
                                            ("root", "train_list", "val_list")])
    classes = _classes(raw, val_list)
    del raw  # load_model reads the file itself; do not hold two copies of the weights
    model = load_model(checkpoint, **arch_overrides)
    config = model.config()
    from_bidirectional = config.get("shift") == "bidirectional"
    if from_bidirectional:
        logger.warning("%s: %s", checkpoint, FUTURE_WARNING)
    one_way = rebuild(model, shift="unidirectional") if from_bidirectional else model
    height, width, scale_size = _input_size(recipe, height, width)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        staged = work / "model"
        staged.mkdir()
        accuracy: dict[str, Any] | None = None
        finetuned_checkpoint: Path | None = None
        if val_list is not None:
            accuracy = {"before": _offline_accuracy(checkpoint, val_list, root, source, backend,
                                                    arch_overrides)}
        if finetune_epochs > 0:
            if val_list is not None:  # what conversion alone gives, to show what is recovered
                plain = StreamingTSM(one_way).eval()
                accuracy["after"] = _online_accuracy(
                    plain, height, width, scale_size, plain.buffer_shapes(height, width), classes,
                    val_list, root, source, backend)
            one_way, finetuned = _finetune(checkpoint, recipe, finetune_epochs,
                                           finetune_lr_scale, distill_weight,
                                           distill_temperature, staged / FINETUNE_DIR)
            finetuned_checkpoint = out_dir / finetuned.relative_to(staged)
        streaming = StreamingTSM(one_way).eval()
        checks, reloaded = _export_and_verify(streaming, one_way, staged, height, width,
                                              verify_frames, opset, seed, classes)
        diffs = {name: diff for name, (diff, _) in checks.items()}
        shapes = streaming.buffer_shapes(height, width)
        latency = _latency_ms(streaming, FrameModel(one_way).eval(), height, width, latency_reps)
        if val_list is not None:  # the model tsm eval --online and tsm stream will run
            key = "after_finetune" if finetune_epochs > 0 else "after"
            accuracy[key] = _online_accuracy(reloaded, height, width, scale_size, shapes,
                                             classes, val_list, root, source, backend)
        result = ConvertResult(
            out_dir=out_dir, checkpoint=checkpoint, arch=str(config.get("arch")),
            height=height, width=width, scale_size=scale_size, num_buffers=streaming.num_buffers,
            buffer_shapes=shapes, cache_bytes=streaming.cache_bytes(height, width),
            max_abs_diff=_worst_per_export(diffs), diffs=diffs,
            tolerances={name: limit for name, (_, limit) in checks.items()}, latency_ms=latency,
            converted_from_bidirectional=from_bidirectional, classes=classes, opset=opset,
            accuracy=accuracy, finetune_epochs=finetune_epochs,
            finetuned_checkpoint=finetuned_checkpoint)
        _write_report(staged, result, config)
        _publish(staged, out_dir, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("wrote %s (%d buffers, %d cache bytes)", out_dir, result.num_buffers,
                result.cache_bytes)
    return result


def load_streaming_model(path: str | Path) -> StreamingTSM:
    """The streaming model of a model dir's ``online_weights.pt``, rebuilt from this package's
    code (``build_model`` from the recorded config, weights read with ``weights_only=True``):
    nothing in the file can run. It computes what ``online.pt`` computes."""
    from tsmcli.model.checkpoint import load_model

    return StreamingTSM(load_model(path)).eval()


def _check_out_dir(out_dir: Path, overwrite: bool, inputs: list[str | Path | None]) -> None:
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


def rebuild(model: nn.Module, **changes: Any) -> nn.Module:
    """The same TSN with some ``config()`` keys changed (``shift``, ``num_segments``) and the
    same weights: none of those keys changes a parameter. Returned in eval mode."""
    from tsmcli.model.tsn import build_model

    config = {**model.config(), "pretrained": None, **changes}
    other = build_model(**config)
    other.load_state_dict(model.state_dict())
    return other.eval()


def _input_size(recipe: dict | None, height: int | None,
                width: int | None) -> tuple[int, int, int]:
    """(height, width, scale_size): the recipe's input size unless given; the test scale
    keeps the recipe's scale_size / input_size ratio (256 / 224 without a recipe)."""
    data = (recipe or {}).get("data") or {}
    input_size = int(data.get("input_size") or DEFAULT_SIZE)
    ratio = int(data.get("scale_size") or 256) / (input_size if data else DEFAULT_SIZE)
    height = int(height or input_size)
    width = int(width or input_size)
    if height < 16 or width < 16:
        raise UsageError(f"input size {height}x{width} is too small; use at least 16x16")
    return height, width, max(height, width, round(min(height, width) * ratio))


def _classes(raw: Any, val_list: str | Path | None) -> list[str] | None:
    classes = raw.get("classes") if isinstance(raw, dict) else None
    if classes:
        return [str(name) for name in classes]
    if val_list is not None:
        from tsmcli.data.lists import classes_for_list

        return classes_for_list(val_list)
    return None


# ---------------------------------------------------------------------------------------------
# export and verification


def _export_and_verify(streaming: StreamingTSM, one_way: nn.Module, staged: Path,
                       height: int, width: int, frames: int, opset: int, seed: int,
                       classes: list[str] | None,
                       ) -> tuple[dict[str, tuple[float, float]], StreamingTSM]:
    """Write online_weights.pt, online.pt and online.onnx into ``staged`` and compare each,
    read back from its file, with the offline model.

    Logits must match to ``TOLERANCE``; features and buffers, activations of any scale, to
    ``TOLERANCE`` times their largest magnitude (when above 1): float32 rounding grows with
    the values. Buffers of an export are compared with the PyTorch streaming model's, whose
    outputs match the offline model. Returns ``{output: (max abs difference, tolerance)}``
    and the streaming model rebuilt from online_weights.pt; raises ``ExportError`` naming the
    worst output.
    """
    from tsmcli.model.checkpoint import checkpoint_dict, save_checkpoint

    generator = torch.Generator().manual_seed(seed)
    clip = torch.randn(1, frames, 3, height, width, generator=generator)  # (1, T, 3, H, W)
    offline = rebuild(one_way, num_segments=frames)  # its own shift: one-way, or none
    buffers = streaming.initial_buffers(height, width)
    checks: dict[str, tuple[float, float]] = {}

    def check(name: str, got: Tensor, want: Tensor, scaled: bool = False) -> None:
        scale = max(1.0, float(want.abs().max())) if scaled and want.numel() else 1.0
        checks[name] = (_max_diff(got, want), TOLERANCE * scale)

    with torch.no_grad():
        reference = offline.frame_logits(clip)[0]  # (T, K)
        reference_clip = offline(clip)[0]  # (K,)
        reference_features = offline.features(clip)[0]  # (T, D)

        def compare(name: str, step: StepFn) -> Tensor:
            try:
                logits, last = run_stream(step, clip[0], buffers)  # (T, K), state after frame T
            except Exception as exc:  # noqa: BLE001 - any failure to run is a failed export
                raise ExportError(f"{name}: running the exported model failed "
                                  f"({type(exc).__name__}: {str(exc).strip()[:200]})") from exc
            check(f"{name} frame logits", logits, reference)
            check(f"{name} clip logits", logits.mean(0), reference_clip)
            state = torch.cat([b.flatten() for b in last]) if last else torch.zeros(0)
            if name != "pytorch":
                check(f"{name} buffers", state, final_state, scaled=True)
            return state

        final_state = compare("pytorch", streaming)
        features = run_stream(streaming.forward_features, clip[0], buffers).outputs  # (T, D)
        check("pytorch features", features, reference_features, scaled=True)
        weights = save_checkpoint(checkpoint_dict(one_way, classes=classes),
                                  staged / WEIGHTS_FILE)
        reloaded = load_streaming_model(weights)
        compare("weights", reloaded)
        traced = _export_torchscript(streaming, clip[0, :1], buffers, staged / TORCHSCRIPT_FILE)
        compare("torchscript", traced)
        onnx_path = staged / ONNX_FILE
        _export_onnx(streaming, clip[0, :1], buffers, onnx_path, opset)
        compare("onnx", _onnx_step(onnx_path, streaming.num_buffers))
    worst = max(checks, key=lambda name: checks[name][0] / checks[name][1])
    diff, limit = checks[worst]
    if not diff <= limit:
        raise ExportError(f"{worst} differ from the reference by {diff:.3g} (tolerance "
                          f"{limit:.3g}): the export is wrong and nothing was written; please "
                          "report it with the checkpoint's architecture")
    return checks, reloaded


def _max_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference; NaN or a shape mismatch counts as infinitely wrong."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a.float() - b.float()).abs().max()
    return float(diff) if torch.isfinite(diff) else float("inf")


def _worst_per_export(diffs: dict[str, float]) -> dict[str, float]:
    worst: dict[str, float] = {}
    for name, value in diffs.items():
        export = name.split()[0]
        worst[export] = max(worst.get(export, 0.0), value)
    return worst


def _names(num_buffers: int) -> tuple[list[str], list[str]]:
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

    buffer_names, new_buffer_names = _names(streaming.num_buffers)
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
    buffer_names, new_buffer_names = _names(num_buffers)
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
# measurements


def _latency_ms(streaming: StreamingTSM, plain: nn.Module, height: int, width: int,
                reps: int) -> dict[str, float]:
    """Median per-frame time of the streaming model and of the same 2D network without shift,
    interleaved so that drift in the machine's speed hits both alike."""
    frame = torch.randn(1, 3, height, width)
    buffers = streaming.initial_buffers(height, width)
    runs: dict[str, Callable[[], object]] = {
        "streaming": lambda: streaming(frame, *buffers),
        "backbone_2d": lambda: plain(frame),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    with torch.inference_mode():  # as deployed: no autograd bookkeeping
        for rep in range(max(1, reps) + 1):
            for name in names if rep % 2 else names[::-1]:  # neither always runs first
                start = time.perf_counter()
                runs[name]()
                if rep:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
    out = {name: 1000.0 * statistics.median(ts) for name, ts in times.items()}
    out["ratio"] = out["streaming"] / out["backbone_2d"]
    out["threads"] = torch.get_num_threads()
    return out


def _offline_accuracy(checkpoint: Path, val_list: str | Path, root: str | Path,
                      source: str | None, backend: str | None,
                      arch_overrides: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint as trained (offline, its own shift), single centre-crop view."""
    from tsmcli.engine.evaluate import evaluate

    result = evaluate(checkpoint, val_list, root, protocol="single", source=source,
                      backend=backend, workers=0, **arch_overrides)
    return {"top1": result.top1, "top5": result.top5, "num_videos": result.num_videos,
            "how": "offline, as trained, one centre-crop clip"}


def _online_accuracy(step: StepFn, height: int, width: int, scale_size: int,
                     shapes: list[tuple[int, ...]], classes: list[str] | None,
                     val_list: str | Path, root: str | Path, source: str | None,
                     backend: str | None) -> dict[str, Any]:
    """The streaming model fed every frame, running average of per-frame logits."""
    from tsmcli.engine.online import OnlineModel, evaluate_stream

    online = OnlineModel(step, height, width, scale_size, shapes, classes)
    result = evaluate_stream(online, val_list, root, source=source, backend=backend)
    return {"top1": result.top1, "top5": result.top5, "top1_at": result.top1_at,
            "num_videos": result.num_videos, "how": "streaming one-way, frame by frame"}


def _finetune(checkpoint: Path, recipe: dict[str, Any], epochs: int, lr_scale: float,
              distill_weight: float, distill_temperature: float,
              run_dir: Path) -> tuple[nn.Module, Path]:
    """Fine-tune one-way on the recipe's training data: the recipe the checkpoint was trained
    with, unidirectional shift, initialised from ``checkpoint``, ``epochs`` epochs at
    ``lr_scale`` times its learning rate (a converged model needs small steps), distilling
    from ``checkpoint`` as trained when ``distill_weight`` > 0."""
    from dataclasses import replace

    from tsmcli.engine.train import train
    from tsmcli.model.checkpoint import load_model
    from tsmcli.recipe import Recipe

    base = Recipe.from_dict(recipe, source=f"{checkpoint} (stored recipe)")
    derived = replace(
        base, name=f"{base.name}_online",
        model=replace(base.model, shift="unidirectional", init_from=str(checkpoint),
                      pretrained=None),
        optim=replace(base.optim, lr=base.optim.lr * lr_scale, warmup_epochs=0.0),
        train=replace(base.train, epochs=epochs, eval_every=epochs,
                      distill_from=str(checkpoint) if distill_weight > 0 else None,
                      distill_weight=distill_weight, distill_temperature=distill_temperature))
    logger.info("fine-tuning one-way for %d epochs into %s", epochs, run_dir)
    result = train(derived, out_dir=run_dir)
    best = result.best_checkpoint or result.last_checkpoint
    return load_model(best), best


# ---------------------------------------------------------------------------------------------
# writing


def _write_report(staged: Path, result: ConvertResult, config: dict[str, Any]) -> None:
    """report.json and classes.txt (plain writes: the staged dir is published as a whole)."""
    buffer_names, new_buffer_names = _names(result.num_buffers)
    report = asdict(result)
    del report["out_dir"]
    report.update(
        format="tsmcli-online", format_version=1, checkpoint=str(result.checkpoint),
        finetuned_checkpoint=None if result.finetuned_checkpoint is None
        else str(result.finetuned_checkpoint),
        buffer_shapes=[list(shape) for shape in result.buffer_shapes],
        inputs=["frame", *buffer_names], outputs=["logits", *new_buffer_names],
        model_config=config, torch=torch.__version__)
    atomic_write(staged / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    if result.classes:
        atomic_write(staged / CLASSES_FILE, "".join(f"{name}\n" for name in result.classes))


def _publish(staged: Path, out_dir: Path, work: Path) -> None:
    """Move the staged model into place. A new ``out_dir`` is the staged dir renamed. In an
    existing one (empty, or ``--overwrite``) only the names this command writes (``OUTPUTS``)
    are replaced, and those this conversion did not produce (classes.txt, finetune/) are
    removed; any other file there is left alone. report.json goes last."""
    if not out_dir.exists():
        os.rename(staged, out_dir)
        return
    previous = work / "previous"
    previous.mkdir()
    for name in OUTPUTS:
        new, target = staged / name, out_dir / name
        if new.is_file() and target.is_file() and not target.is_symlink():
            os.replace(new, target)
            continue
        if target.exists() or target.is_symlink():
            os.rename(target, previous / name)  # deleted with the work dir
        if new.exists():
            os.rename(new, target)
