"""``tsm stream`` and ``tsmcli.stream``: an online model on a live source, frame by frame.

The source is a frame folder (its frames in order, read from disk), or, through
``data.live``: a video file, a URL PyAV can open (http(s), rtsp, rtmp, udp, ...) or a camera.
A live source (a camera, an rtsp/rtmp/udp/... URL, or any source with ``realtime=True``) runs
in real time: when the model is slower than the source, ``data.live`` drops the older waiting
frame (counted in ``StreamResult.dropped``) rather than queueing; a file or an http(s) URL
gives every frame. The online model (``engine.online.load_online_model``: rebuilt from its
weights, or ``online.pt`` with ``trust_torchscript``) takes each frame with its shift buffers;
after each frame the running average of the logits gives the top-k (``StreamStep``).

The model runs on every core but one (``threads``): the reader thread decodes on the core left
over. With every core given to torch's intra-op threads the two fight over the CPU, and a
25 fps source dropped most of its frames on a 2-core machine where one thread keeps them all
(BENCHMARKS.md, "Using a model").

Every scored frame goes to ``on_step`` and, with ``jsonl``, is one JSON line of that file,
flushed as it is written, so a run that ends early keeps what it scored. A source that stops
mid-stream (a server closing the connection, a camera unplugged) ends the run without an
exception: ``StreamResult.ending`` is ``"failed"`` and ``reason`` says why. Ctrl-C ends it as
``"interrupted"``, with the same result.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsmcli.data.decode import FrameFolder
from tsmcli.data.layout import FRAME_TEMPLATE
from tsmcli.data.live import DEFAULT_TIMEOUT, URL, open_source
from tsmcli.engine.online import DECODE_CHUNK, OnlineModel, load_online_model, step_frame
from tsmcli.engine.predictions import ClassScore
from tsmcli.errors import UsageError
from tsmcli.fileio import LineLog, check_outputs, outputs

Frames = Iterator[tuple[int, float | None, Tensor]]  # (index, time in seconds, uint8 (3, H, W))


@dataclass(frozen=True)
class StreamStep:
    """One scored frame: the running top-k after it."""

    index: int  # the frame's 0-based index in the source; dropped frames leave gaps
    time: float | None  # its presentation time in seconds (None: a frame folder has none)
    top: tuple[ClassScore, ...]  # softmax of the running mean of logits, best first
    latency_ms: float  # from the decoded frame to its scores: resize, normalise, model step

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.top)

    @property
    def scores(self) -> tuple[float, ...]:
        return tuple(c.probability for c in self.top)

    def to_dict(self) -> dict[str, Any]:
        """Its line of the ``--jsonl`` file."""
        return {
            "index": self.index,
            "time": self.time,
            "top": [c.to_dict() for c in self.top],
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True)
class StreamResult:
    """How a stream went: what was scored, what the source did, how it ended."""

    source: str  # as messages name it (a URL's password hidden)
    live: bool  # frames were dropped rather than queued when the model fell behind
    frames: int  # frames scored
    decoded: int  # frames the source gave
    dropped: int  # frames the source dropped because the model was busy
    ending: str  # finished, failed (the source stopped mid-stream), interrupted (Ctrl-C)
    reason: str  # one line: why it ended
    last: StreamStep | None  # the running top-k after the last frame scored
    latency_ms: float | None  # median per scored frame
    stride: int = 1  # one frame in ``stride`` of those the source gave was scored
    stride_from: str = "given"  # where that stride came from
    jsonl: Path | None = None
    steps: list[StreamStep] = field(default_factory=list, repr=False)  # kept with keep_steps

    @property
    def failed(self) -> bool:
        return self.ending == "failed"


def stream(
    source: str | Path | None,
    model_dir: str | Path,
    topk: int = 5,
    *,
    camera: int | str | None = None,
    stride: int | None = None,
    realtime: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    jsonl: str | Path | None = None,
    on_step: Callable[[StreamStep], None] | None = None,
    keep_steps: bool = False,
    trust_torchscript: bool = False,
    opener: Callable[..., Any] | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    precision: str = "fp32",
) -> StreamResult:
    """Run the online model of ``model_dir`` on ``source`` (a frame folder, a video file or a
    URL) or on ``camera`` (an index or a device name), until the source ends.

    ``stride=k`` scores one frame in k (of those the source delivers; None: the model dir's
    own stride, the spacing of the frames it was trained on). ``realtime``, ``timeout``
    and ``opener`` are ``data.live.open_source``'s (None: cameras and rtsp/... URLs live, files
    and http(s) not). ``on_step`` is called after each scored frame; ``jsonl`` gets one JSON
    line per scored frame; ``keep_steps`` keeps every step in the result (a camera's stream
    can be long: off by default). ``threads``: torch's intra-op threads while it runs (None:
    ``default_threads()``; torch's setting is restored after; ONNX Runtime's for int8).
    ``overwrite``: replace an existing ``jsonl`` file. ``precision``: ``fp32``, ``bf16`` (the
    rebuilt model under autocast, where the CPU has native bf16) or ``int8`` (the dir's
    ``online.int8.onnx`` in ONNX Runtime). An unreadable model dir, source or camera raises before any
    frame; a source that stops mid-stream does not raise (see ``StreamResult.ending``).
    """
    if topk < 1:
        raise UsageError(f"--topk must be at least 1, got {topk}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    check_outputs(outputs(jsonl=jsonl), _inputs(source, model_dir), overwrite=overwrite)
    model = load_online_model(
        model_dir,
        trust_torchscript=trust_torchscript,
        precision=precision,
        threads=threads or default_threads(),
    )
    run = _Run(model, topk, stride, on_step, keep_steps)
    folder = (
        camera is None
        and source is not None
        and not URL.match(str(source))
        and Path(source).is_dir()
    )
    with ExitStack() as stack:
        stack.enter_context(intra_op_threads(threads or default_threads()))
        if folder:
            frames = FrameFolder(Path(source), None, FRAME_TEMPLATE)
            name, live = str(source), None
        else:
            live = stack.enter_context(
                open_source(
                    source, camera=camera, realtime=realtime, timeout=timeout, opener=opener
                )
            )
            name = live.name
        run.events = _open_events(jsonl, stack)
        try:
            run.feed(_folder_frames(frames, run.stride) if live is None else _live_frames(live))
        except KeyboardInterrupt:
            run.interrupted = True
    return run.result(name, live, jsonl)


def default_threads() -> int:
    """Every core this process may use but one (which the reader thread decodes on), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block, and back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(source: str | Path | None, model_dir: str | Path) -> list[Path]:
    """What a stream reads: a local source, and every file of the model dir."""
    found = [] if source is None or URL.match(str(source)) else [Path(source)]
    with contextlib.suppress(OSError):
        found.extend(p for p in Path(model_dir).iterdir() if p.is_file())
    return found


def _open_events(jsonl: str | Path | None, stack: ExitStack) -> LineLog | None:
    """The ``--jsonl`` file, opened once the source is: written line by line, flushed."""
    return None if jsonl is None else stack.enter_context(LineLog(jsonl))


def _folder_frames(folder: FrameFolder, stride: int) -> Frames:
    indices = list(range(0, folder.num_frames, stride))
    for start in range(0, len(indices), DECODE_CHUNK):
        chunk = indices[start : start + DECODE_CHUNK]
        yield from ((i, None, image) for i, image in zip(chunk, folder.get(chunk), strict=True))


def _live_frames(source) -> Frames:
    for frame in source:
        yield frame.index, frame.time, frame.image


class _Run:
    """The running average of one stream, and what it scored."""

    def __init__(self, model: OnlineModel, topk, stride: int | None, on_step, keep_steps):
        self.model, self.topk = model, topk
        self.stride = model.stride(stride)  # the model dir's own when not given
        self.stride_from = "given" if stride is not None else model.frame_stride_from
        self.on_step, self.keep_steps = on_step, keep_steps
        self.events: LineLog | None = None
        self.steps: list[StreamStep] = []
        self.latencies: list[float] = []
        self.last: StreamStep | None = None
        self.interrupted = False

    def feed(self, frames: Frames) -> None:
        """Score ``frames``, one in ``stride`` (by index: a live source's drops leave gaps)."""
        model, buffers = self.model, self.model.initial_buffers()
        total: Tensor | None = None
        count = wanted = 0  # frames scored; the next index to score
        with torch.no_grad():
            for index, seconds, image in frames:
                if index < wanted:
                    continue
                wanted = index + self.stride
                begin = time.perf_counter()
                logits, buffers = step_frame(model, model.prepare(image[None]), buffers)  # (1, K)
                total = logits if total is None else total + logits
                count += 1
                probs = (total[0] / count).softmax(dim=0)  # (K,)
                latency = time.perf_counter() - begin
                self._record(StreamStep(index, seconds, self._top(probs), 1000.0 * latency))

    def _top(self, probs: Tensor) -> tuple[ClassScore, ...]:
        order = torch.sort(probs, descending=True, stable=True).indices[: self.topk]
        return tuple(ClassScore(int(i), self.model.label(int(i)), float(probs[i])) for i in order)

    def _record(self, step: StreamStep) -> None:
        self.latencies.append(step.latency_ms)
        self.last = step
        if self.keep_steps:
            self.steps.append(step)
        if self.events is not None:
            self.events.write_line(json.dumps(step.to_dict(), allow_nan=False))
        if self.on_step is not None:
            self.on_step(step)

    def result(self, name: str, live, jsonl: str | Path | None) -> StreamResult:
        """The result, from the live source's summary (None: a frame folder, read whole)."""
        count = len(self.latencies)
        if live is None:
            decoded, dropped, is_live = count, 0, False
            ending, reason = "finished", "read every frame of the folder"
        else:
            summary = live.summary
            decoded, dropped, is_live = summary.decoded, summary.dropped, summary.live
            ending, reason = summary.ending, summary.reason
        if self.interrupted:
            ending, reason = "interrupted", f"stopped by Ctrl-C after {count} frames scored"
        return StreamResult(
            source=name,
            live=is_live,
            frames=count,
            decoded=decoded,
            dropped=dropped,
            ending=ending,
            reason=reason,
            last=self.last,
            latency_ms=statistics.median(self.latencies) if self.latencies else None,
            stride=self.stride,
            stride_from=self.stride_from,
            jsonl=Path(jsonl) if jsonl is not None else None,
            steps=self.steps,
        )
