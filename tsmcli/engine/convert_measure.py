"""What ``tsm convert-online`` measures: per-frame latency of the streaming model, of the 2D
network without shift and of the ONNX files it writes (interleaved, so that drift in the
machine's speed hits all alike), and top-1 before and after conversion."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsmcli.model.checkpoint import CheckpointInfo
from tsmcli.model.runtime import OnnxStep
from tsmcli.model.spec import ArchOverrides
from tsmcli.model.streaming import StreamingTSM


def interleaved_ms(runs: Mapping[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median milliseconds of each run, in turn rep after rep (the order reversed every other
    rep, so that none always runs first); the first round warms up and is not counted."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    with torch.inference_mode():  # as deployed: no autograd bookkeeping
        for rep in range(max(1, reps) + 1):
            for name in names if rep % 2 else names[::-1]:
                start = time.perf_counter()
                runs[name]()
                if rep:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(ts) for name, ts in times.items()}


def latency_ms(
    streaming: StreamingTSM,
    plain: nn.Module,
    height: int,
    width: int,
    reps: int,
    onnx_files: Mapping[str, Path] | None = None,
) -> dict[str, float]:
    """Median per-frame time of the streaming model and of the same 2D network without shift
    (``ratio``: the cost of streaming), and of each ONNX file of ``onnx_files`` (name ->
    path, as ``onnx_<name>``) in ONNX Runtime on as many threads as torch uses."""
    frame = torch.randn(1, 3, height, width)
    buffers = streaming.initial_buffers(height, width)
    threads = torch.get_num_threads()
    runs: dict[str, Callable[[], object]] = {
        "streaming": lambda: streaming(frame, *buffers),
        "backbone_2d": lambda: plain(frame),
    }
    for name, path in (onnx_files or {}).items():
        step = OnnxStep(path, streaming.num_buffers, threads=threads)
        runs[f"onnx_{name}"] = lambda step=step: step(frame, *buffers)
    out = interleaved_ms(runs, reps)
    out["ratio"] = out["streaming"] / out["backbone_2d"]
    out["threads"] = threads
    return out


def offline_accuracy(
    info: CheckpointInfo,
    list_file: str | Path,
    root: str | Path,
    *,
    source: str | None,
    backend: str | None,
    arch: ArchOverrides,
) -> dict[str, Any]:
    """The checkpoint as trained (offline, its own shift), single centre-crop view."""
    from tsmcli.engine.evaluate import evaluate

    result = evaluate(
        info, list_file, root, views="single", source=source, backend=backend, workers=0, arch=arch
    )
    return {
        "top1": result.top1,
        "top5": result.top5,
        "num_videos": result.num_videos,
        "how": "offline, as trained, one centre-crop clip",
    }


def online_accuracy(
    online: Any,
    list_file: str | Path,
    root: str | Path,
    *,
    source: str | None,
    backend: str | None,
) -> dict[str, Any]:
    """The streaming model (an ``engine.online.OnlineModel``) fed one frame in its stride,
    running average of per-frame logits."""
    from tsmcli.engine.online import evaluate_online

    result = evaluate_online(online, list_file, root, source=source, backend=backend)
    return {
        "top1": result.top1,
        "top5": result.top5,
        "top1_at": result.top1_at,
        "num_videos": result.num_videos,
        "stride": result.stride,
        "how": f"streaming one-way, frame by frame, one frame in {result.stride}",
    }
