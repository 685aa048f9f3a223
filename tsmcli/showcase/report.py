"""The demo's numbers and ``report.md``: one row a model (accuracy, size, cost, the online
model's cache), the table ``tsm demo`` prints, and the report with its curves and matrices."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tsmcli.fileio import atomic_write
from tsmcli.showcase.clock import StepClock, machine


@dataclass(frozen=True)
class DemoRow:
    """One model of the report table."""

    name: str
    title: str
    top1: float
    top5: float
    params: int
    gflops: float  # multiply-adds per clip, in billions (the paper's convention)
    latency_ms: float  # per frame, batch 1, on this machine
    cache_bytes: int | None  # the online model's shift buffers
    streaming_top1: float | None = None
    file_bytes: int | None = None  # the ONNX file that deploys it (the online models)


def model_row(
    name: str,
    title: str,
    checkpoint: Path,
    result: dict[str, Any],
    cache_bytes: int | None,
    streaming_top1: float | None,
) -> DemoRow:
    """The row of the model at ``checkpoint``, evaluated as ``result`` says."""
    from tsmcli.model.checkpoint import load_model, read_checkpoint
    from tsmcli.recipe import Recipe

    info = read_checkpoint(checkpoint)
    model = load_model(info)
    size = Recipe.from_stored(info.recipe, str(checkpoint)).data.input_size
    params = sum(p.numel() for p in model.parameters())
    gflops, latency = measure_clip_cost(model, size)
    return DemoRow(
        name,
        title,
        result["top1"],
        result["top5"],
        params,
        gflops,
        latency,
        cache_bytes,
        streaming_top1,
    )


def int8_row(online: DemoRow, streamed: dict[str, Any], int8: dict[str, Any]) -> DemoRow:
    """The online model's int8 ONNX file, streamed in ONNX Runtime: its top-1 and top-5 are
    the streaming ones, its ms/frame one streaming step (``report.json``), its file's size."""
    return replace(
        online,
        name="tsm_online_int8",
        title="TSM online int8 (ONNX Runtime, streaming)",
        top1=streamed["top1"],
        top5=streamed["top5"],
        latency_ms=int8["ms_per_frame"],
        streaming_top1=None,
        file_bytes=int8["bytes"],
    )


def measure_clip_cost(model, size: int, reps: int = 5) -> tuple[float, float]:
    """(multiply-adds per clip in billions, median forward latency per frame in ms)."""
    import statistics

    import torch

    clip = torch.randn(1, model.num_segments, 3, size, size)  # (B, T, 3, H, W)
    with torch.no_grad():
        macs = multiply_adds(model, clip)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            model(clip)
            times.append(time.perf_counter() - start)
    return macs / 1e9, 1000 * statistics.median(times) / model.num_segments


def multiply_adds(model, inputs) -> int:
    """The multiply-adds of ``model(inputs)`` as the TSM paper and the usual counters count
    them: each convolution's kernel times its output positions (taps that read padding
    included), and each linear layer's weight. A count of the network, not of the kernels
    that ran: a convolution computed as a matrix product (``OneOutputConv2d``) counts as a
    convolution still."""
    from torch import nn

    total = 0

    def conv(module, _, output) -> None:
        nonlocal total
        kernel = module.weight[0].numel()  # (in / groups) * kh * kw
        total += kernel * output.numel()  # output: (N, out, H, W)

    def linear(module, _, output) -> None:
        nonlocal total
        total += module.in_features * output.numel()

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def format_table(rows: Sequence[DemoRow]) -> str:
    """The demo's table in Markdown (also what ``tsm demo`` prints)."""
    lines = [
        "| model | top-1 | top-5 | params | GFLOPs/clip | ms/frame | online cache | file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cache = f"{row.cache_bytes / 1024:.1f} KiB" if row.cache_bytes is not None else "-"
        file = f"{row.file_bytes / 1024:,.0f} KiB" if row.file_bytes is not None else "-"
        top1 = f"{row.top1:.1f}"
        if row.streaming_top1 is not None:
            top1 += f" (streaming {row.streaming_top1:.1f})"
        lines.append(
            f"| {row.title} | {top1} | {row.top5:.1f} | {row.params / 1e6:.2f} M | "
            f"{row.gflops:.3f} | {row.latency_ms:.2f} | {cache} | {file} |"
        )
    return "\n".join(lines)


def _streaming_lines(out: Path) -> list[str]:
    """How early the streaming model is right: top-1 of the running average part-way in."""
    summary = out / "eval" / "streaming.json"
    if not summary.exists():
        return []
    at = json.loads(summary.read_text())["top1_at"]
    seen = ", ".join(f"{percent}% of each video: {top1:.1f}" for percent, top1 in at.items())
    return [f"Streaming online TSM, top-1 after {seen}.", ""]


def _deploy_lines(converted: dict[str, Any]) -> list[str]:
    """One streaming step of the online model in each runtime, and the int8 model's checks
    (or why it was refused)."""
    latency, precisions = converted.get("latency_ms", {}), converted.get("precisions", {})
    steps = [f"PyTorch {latency['streaming']:.2f} ms"] if "streaming" in latency else []
    steps += [f"ONNX Runtime {p} {found['ms_per_frame']:.2f} ms" for p, found in precisions.items()]
    lines = [f"Online model, one streaming step, batch 1, one thread: {', '.join(steps)}."]
    if "int8" in precisions:
        checks = precisions["int8"]["checks"]
        lines.append(
            f"The int8 model was calibrated on {checks['calibration_clips']} training videos and "
            f"checked on {checks['clips']} others before it was written: its top-1 agrees with "
            f"fp32's on {checks['agreement']:.1f}% of them."
        )
    if "int8_refused" in converted:
        lines.append(f"No int8 model: {converted['int8_refused']}")
    return [*lines, ""]


def _time_lines(clock: StepClock) -> list[str]:
    """The time of the work, step by step, and of this run when it reused earlier steps."""
    done = clock.done
    steps = ", ".join(f"{n} {done[n]:.0f} s" for n in clock.steps if n in done)
    seconds = sum(done.values()) if clock.reused else clock.elapsed()
    total = f"{seconds / 60:.1f} min on {machine()}"
    lines = [f"Whole run: {total}" + (f": {steps}." if steps else ".")]
    if clock.reused:
        lines.append(
            f"This run took {clock.elapsed() / 60:.1f} min: it reused {', '.join(clock.reused)} "
            "from an earlier run in this folder, whose times are given above."
        )
    return lines


def write_report(
    out: Path, rows: Sequence[DemoRow], clock: StepClock, converted: dict[str, Any]
) -> Path:
    """``out/report.md``: the table, the machine and the time of each step (that of the run
    that did it: a re-run that reuses a step keeps its time), training curves and confusion
    matrices."""
    parts = [
        "# tsmcli demo report",
        "",
        "Three models trained with the `demo` recipe on the synthetic dataset (`tsm synth`), "
        "whose classes come in pairs that are the time reverse of each other. TSN and the "
        "offline TSM are trained from scratch; the online TSM is fine-tuned from the offline "
        "TSM with the one-way shift, as one deploys TSM online, learning from the offline "
        "model's outputs as well as from the labels. "
        "A 2D model that averages over frames (TSN) cannot tell a clip from its reverse; "
        "the temporal shift can. Accuracy on the validation list, one centre view; the "
        "online model is also run frame by frame as exported (streaming), and so is its int8 "
        "ONNX model, whose ms/frame is one streaming step in ONNX Runtime (the others' are a "
        "PyTorch clip forward over its frames); file is the ONNX file that deploys a model. "
        "GFLOPs count multiply-adds per clip, as the TSM paper does.",
        "",
        format_table(rows),
        "",
        *_streaming_lines(out),
        *_deploy_lines(converted),
        *_time_lines(clock),
        "",
        "## Training curves",
        "",
    ]
    trained = [row for row in rows if (out / "runs" / row.name).is_dir()]  # int8: no run of its own
    parts += [f"### {row.title}\n\n![curves](runs/{row.name}/curves.png)\n" for row in trained]
    parts += ["## Confusion matrices", ""]
    parts += [
        f"### {row.title}\n\n![confusion](eval/{row.name}/confusion.png)\n" for row in trained
    ]
    path = out / "report.md"
    atomic_write(path, "\n".join(parts))
    return path
