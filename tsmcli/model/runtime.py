"""ONNX Runtime: the one place tsmcli opens an ONNX file to run it.

An ONNX file is data to ONNX Runtime (a graph of standard operators and its weights): loading
and running one executes no Python, so a model dir from elsewhere can be run as safely as
``online_weights.pt`` is rebuilt. Two shapes of model are run here: the streaming step of an
online model dir (``OnnxStep``: one frame and the shift buffers in, logits and the new
buffers out) and the clip model of ``tsm export`` (``OnnxClipModel``: one clip
``(1, T, 3, H, W)`` in, logits out), which is an ``nn.Module`` so that evaluation and
prediction call it where they call the PyTorch model.

Sessions run on the CPU execution provider, with ``threads`` intra-op threads (None: ONNX
Runtime's default, one per core) and one inter-op thread (the graphs are sequential).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tsmcli.errors import ExportError

# ONNX Runtime's graph optimisation levels, by the names the bench and the API use
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def open_session(
    path: str | Path,
    *,
    threads: int | None = None,
    optimization: str = "all",
    spinning: bool = True,
    remedy: str = "",
) -> Any:
    """An ONNX Runtime session of ``path`` on the CPU. ``spinning=False`` makes its idle
    threads sleep at once instead of spinning for the next run (a benchmark interleaving
    several models keeps them from stealing the CPU from each other). A file ONNX Runtime
    cannot load is one ``ExportError`` line naming it, ending with ``remedy`` (what to run to
    make it again)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: missing{'; ' + remedy if remedy else ''}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own kinds for bad files
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise ExportError(
            f"{path}: not a model ONNX Runtime can run ({first}){'; ' + remedy if remedy else ''}"
        ) from exc


def stream_io_names(num_buffers: int) -> tuple[list[str], list[str]]:
    """A streaming model's ONNX input and output names, buffers in the order the shifted
    blocks run."""
    buffers = [f"buffer_{i}" for i in range(num_buffers)]
    return ["frame", *buffers], ["logits", *(f"new_{name}" for name in buffers)]


class OnnxStep:
    """A streaming ONNX file as a step: ``(frame (1, 3, H, W), *buffers) -> [logits (1, K),
    *new_buffers]``, tensors in and out, like the PyTorch streaming model."""

    def __init__(
        self,
        path: str | Path,
        num_buffers: int,
        *,
        threads: int | None = None,
        optimization: str = "all",
        remedy: str = "",
    ):
        self.path = Path(path)
        self.session = open_session(path, threads=threads, optimization=optimization, remedy=remedy)
        self.inputs, outputs = stream_io_names(num_buffers)
        found_in = [i.name for i in self.session.get_inputs()]
        found_out = [o.name for o in self.session.get_outputs()]
        if found_in != self.inputs or found_out != outputs:
            raise ExportError(
                f"{path}: inputs {found_in[:3]}... and outputs {found_out[:3]}... are not "
                f"frame, buffer_i / logits, new_buffer_i for {num_buffers} buffers"
                f"{'; ' + remedy if remedy else ''}"
            )

    def __call__(self, frame: Tensor, *buffers: Tensor) -> list[Tensor]:
        feed = {
            name: t.detach().float().cpu().numpy()
            for name, t in zip(self.inputs, (frame, *buffers), strict=True)
        }
        return [torch.from_numpy(out) for out in self.session.run(None, feed)]

    def run_feed(self, feed: dict[str, Any]) -> list[Any]:
        """One step on numpy arrays by input name (calibration and checks)."""
        return self.session.run(None, feed)


class OnnxClipModel(nn.Module):
    """A clip ONNX file (``clip`` ``(1, T, 3, H, W)`` in, ``logits`` ``(1, K)`` out; H and W
    free) as a module of ``(N, T, 3, H, W)`` clips: one session call a clip, the batch-1
    graph as deployed. ``num_classes`` and ``num_segments`` are the model's, as on ``TSN``."""

    def __init__(
        self,
        path: str | Path,
        *,
        num_classes: int,
        num_segments: int,
        threads: int | None = None,
        remedy: str = "",
    ):
        super().__init__()
        self.path = Path(path)
        self.session = open_session(path, threads=threads, remedy=remedy)
        self.num_classes, self.num_segments = int(num_classes), int(num_segments)
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)
        if len(inputs) != 1 or len(self.input_shape) != 5 or self.input_shape[1] != num_segments:
            raise ExportError(
                f"{path}: takes {[(i.name, i.shape) for i in inputs]}, not one clip of "
                f"{num_segments} frames (1, T, 3, H, W){'; ' + remedy if remedy else ''}"
            )

    def forward(self, clips: Tensor) -> Tensor:
        """``(N, T, 3, H, W)`` -> ``(N, K)`` logits, on the clips' device."""
        rows = clips.detach().float().cpu().numpy()
        out = [
            self.session.run(None, {self.input_name: rows[i : i + 1]})[0] for i in range(len(rows))
        ]
        return torch.from_numpy(_stack(out)).to(clips.device)


def _stack(arrays: Sequence[Any]) -> Any:
    import numpy as np

    return np.concatenate(arrays, axis=0)
