"""The verified export of a one-way model into an online model dir (layout: ``model_dir``):
``online_weights.pt``, ``online.pt`` (TorchScript) and ``online.onnx``. The convert-online
workflow around this (fine-tuning, accuracy, latency) is ``engine.convert``.

Nothing is written until every export has been checked (``export_and_verify``): the PyTorch
streaming model, the one rebuilt from the saved weights, the saved-and-reloaded TorchScript
file and the ONNX file run in onnxruntime are each fed a random clip frame by frame and
compared with the offline one-way model on the whole clip (per-frame logits, their average
against the clip logits; for PyTorch also per-frame features, for the files also the buffers
after the last frame). A difference above the tolerance is an ``ExportError`` naming the
worst output; the files are staged in a temp dir beside the model dir and moved into place
only at the end (``model_dir.publish``).

The ONNX file is exported from the streaming model with each in-place splice of the buffer
(``streaming.swap_in`` / ``restore``) written as a slice and a concatenation instead
(``spliced_for_onnx``): the same values, but the exporter otherwise turns each in-place write
into a ScatterND between four transposes, which ONNX Runtime runs slower and its int8
quantizer cannot fuse; as Slice/Concat the graph is plain convolutions and copies.

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

import copy
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from tsmcli.errors import ExportError
from tsmcli.model.checkpoint import checkpoint_dict
from tsmcli.model.model_dir import (
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    io_names,
    load_streaming_model,
)
from tsmcli.model.runtime import OnnxClipModel, OnnxStep
from tsmcli.model.streaming import StepFn, StreamingTSM, run_stream, swap_in
from tsmcli.model.tsn import TSN
from tsmcli.model.weights import save_checkpoint

TOLERANCE = 1e-4
DEFAULT_OPSET = 18
CLIP_TOLERANCE = 1e-4  # the clip model's logits, relative to their largest magnitude


def rebuild(model: TSN, **changes: Any) -> TSN:
    """The same TSN with some keys of its spec changed (``shift``, ``num_segments``) and the
    same weights: none of those keys changes a parameter. Returned in eval mode."""
    other = TSN(replace(model.spec, **changes))
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


def export_and_verify(
    streaming: StreamingTSM,
    one_way: nn.Module,
    staged: Path,
    *,
    height: int,
    width: int,
    frames: int,
    opset: int,
    seed: int,
    classes: Sequence[str] | None,
) -> Verified:
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
        weights = save_checkpoint(checkpoint_dict(one_way, classes=classes), staged / WEIGHTS_FILE)
        reloaded = load_streaming_model(weights)
        comparison.compare("weights", reloaded)
        traced = _export_torchscript(streaming, frame, buffers, staged / TORCHSCRIPT_FILE)
        comparison.compare("torchscript", traced)
        export_onnx(spliced_for_onnx(streaming), frame, buffers, staged / ONNX_FILE, opset)
        comparison.compare("onnx", OnnxStep(staged / ONNX_FILE, streaming.num_buffers))
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
            raise ExportError(
                f"{name}: running the exported model failed "
                f"({type(exc).__name__}: {str(exc).strip()[:200]})"
            ) from exc
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
            raise ExportError(
                f"{worst} differ from the reference by {diff:.3g} (tolerance "
                f"{limit:.3g}): the export is wrong and nothing was written; "
                "please report it with the checkpoint's architecture"
            )


def _max_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference; NaN or a shape mismatch counts as infinitely wrong."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a.float() - b.float()).abs().max()
    return float(diff) if torch.isfinite(diff) else float("inf")


def _export_torchscript(
    streaming: StreamingTSM, frame: Tensor, buffers: list[Tensor], path: Path
) -> torch.jit.ScriptModule:
    """Trace, save, and load back: what is verified is the file a user will load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(streaming, (frame, *buffers), check_trace=False)
        torch.jit.save(traced, str(path))
        return torch.jit.load(str(path)).eval()


def export_clip_and_verify(
    model: TSN, path: Path, *, sizes: Sequence[int], opset: int, seed: int
) -> dict[str, dict[str, float]]:
    """Export the offline ``model`` as an ONNX clip model at ``path``: input ``clip``
    ``(1, T, 3, H, W)`` (H and W free: eval's crops are the input size, or the scale size for
    full-resolution views), output ``logits`` ``(1, K)``. It is run in ONNX Runtime on a random
    clip of each side in ``sizes`` and its logits compared with PyTorch's: a difference above
    ``CLIP_TOLERANCE`` of their largest magnitude is an ``ExportError``. Returns the checks."""
    from torch.export import Dim

    generator = torch.Generator().manual_seed(seed)
    segments = int(model.num_segments)
    channels = int(getattr(model.spec, "input_channels", 3))  # 3 for RGB
    clip = torch.randn(1, segments, channels, sizes[0], sizes[0], generator=generator)
    free = {3: Dim("height", min=16, max=4096), 4: Dim("width", min=16, max=4096)}
    export_module(model, (clip,), path, opset, inputs=["clip"], outputs=["logits"], dynamic=(free,))
    exported = OnnxClipModel(path, num_classes=model.num_classes, num_segments=segments)
    checks = {}
    for side in dict.fromkeys(sizes):
        clip = torch.randn(
            1, segments, channels, side, side, generator=generator
        )  # (1, T, C, S, S)
        with torch.no_grad():
            want = model(clip)  # (1, K)
        scale = max(float(want.abs().max()), 1e-12)
        checks[f"clip logits at {side}x{side}"] = {
            "max_rel_diff": _max_diff(exported(clip), want) / scale,
            "tolerance": CLIP_TOLERANCE,
        }
    name, worst = max(checks.items(), key=lambda item: item[1]["max_rel_diff"])
    if not worst["max_rel_diff"] <= CLIP_TOLERANCE:
        raise ExportError(
            f"{path.name}: {name} differ from PyTorch's by {worst['max_rel_diff']:.3g} of their "
            f"magnitude (tolerance {CLIP_TOLERANCE:g}): the export is wrong and nothing was "
            "written; please report it with the checkpoint's architecture"
        )
    return checks


def export_onnx(
    streaming: nn.Module, frame: Tensor, buffers: list[Tensor], path: Path, opset: int
) -> None:
    """The streaming model (``num_buffers`` buffers) to an ONNX file with the model dir's
    input and output names; the opset written is checked."""
    buffer_names, new_buffer_names = io_names(streaming.num_buffers)
    export_module(
        streaming,
        (frame, *buffers),
        path,
        opset,
        inputs=["frame", *buffer_names],
        outputs=["logits", *new_buffer_names],
    )


def export_module(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    opset: int,
    *,
    inputs: list[str],
    outputs: list[str],
    dynamic: tuple[dict[int, Any], ...] | None = None,
) -> None:
    """``module(*args)`` to an ONNX file at ``path`` (static shapes but the ``dynamic`` dims
    of each input, weights inside), through the dynamo exporter; ``ExportError`` when it
    fails or writes another opset."""
    import onnx

    try:
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(
            f"ONNX export failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})"
        ) from exc
    written = onnx.load(str(path))
    version = next(op.version for op in written.opset_import if op.domain in ("", "ai.onnx"))
    if version != opset:
        raise ExportError(
            f"the ONNX exporter wrote opset {version}, not {opset}; "
            f"use opset {DEFAULT_OPSET} or above"
        )


# ---------------------------------------------------------------------------------------------
# the streaming graph as ONNX gets it


def splice(x: Tensor, buffer: Tensor, fold_div: int) -> tuple[Tensor, Tensor]:
    """``swap_in`` without writing in place: ``(new buffer, spliced input)``, the first
    ``fold`` channels of ``x`` and ``x`` with those channels replaced by ``buffer``."""
    fold = x.shape[1] // fold_div
    kept = x.narrow(1, fold, x.shape[1] - fold)  # (1, C - fold, H, W)
    return x.narrow(1, 0, fold), torch.cat([buffer, kept], dim=1)  # (1, fold, H, W), (1, C, H, W)


class SplicedStreaming(nn.Module):
    """``StreamingTSM`` with each in-place ``swap_in -> layer -> restore`` rewritten as
    ``splice -> layer`` on the spliced copy: the same outputs and buffers, and a graph of
    Slice/Concat for the ONNX exporter. Shares the streaming model's modules."""

    def __init__(self, streaming: StreamingTSM):
        super().__init__()
        self.backbone = _spliced_backbone(streaming.backbone)
        self.dropout, self.new_fc = streaming.dropout, streaming.new_fc
        self.num_buffers = streaming.num_buffers

    def forward(self, frame: Tensor, *buffers: Tensor) -> tuple[Tensor, ...]:
        out = self.backbone(frame, *buffers)
        features, *new_buffers = tuple(out) if self.num_buffers else (out,)  # (1, D), ...
        return (self.new_fc(self.dropout(features)), *new_buffers)  # (1, K), ...


def spliced_for_onnx(streaming: StreamingTSM) -> SplicedStreaming:
    """The streaming model as the ONNX file holds it (``SplicedStreaming``), in eval mode."""
    return SplicedStreaming(streaming).eval()


def _spliced_backbone(backbone: fx.GraphModule) -> fx.GraphModule:
    """A copy of the streaming backbone's graph (sharing its modules) in which every
    ``swap_in(x, buffer)`` is ``splice(x, buffer)``, the shifted layer reads the spliced copy
    instead of ``x``, and its ``restore`` is gone: nothing writes into ``x`` any more."""
    graph = copy.deepcopy(backbone.graph)
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not swap_in:
            continue
        node.target = splice
        picks = {user.args[1]: user for user in node.users if user.target is operator.getitem}
        spliced = picks[1]  # was the head view written in place; now the spliced input
        for restore_node in list(spliced.users):
            layer = restore_node.args[0]  # the shifted layer, which read x after the write
            layer.args = (spliced, *layer.args[1:])
            restore_node.replace_all_uses_with(layer)
            graph.erase_node(restore_node)
    graph.lint()
    return fx.GraphModule(backbone, graph)
