"""``tsm predict`` (a checkpoint on videos, frame folders and long videos) and ``tsm stream``
(an online model on a file, a frame folder, a URL or a camera)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tsmcli import choices
from tsmcli.commands import overwrite_option, print_rows
from tsmcli.commands.evaluate import model_options, precision_option, view_and_arch, view_options
from tsmcli.data.inputs import DEFAULT_FPS
from tsmcli.data.layout import FRAME_TEMPLATE, VIDEO_EXTENSIONS

_FOUND = (
    f"An INPUT is a video file, a frame folder (one holding {FRAME_TEMPLATE.format(1)}, ...) "
    f"or a folder searched for them ({', '.join(VIDEO_EXTENSIONS)} files and frame folders, "
    "in name order)."
)


@click.command(epilog=_FOUND)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--checkpoint",
    default=None,
    type=click.Path(path_type=Path),
    help="Checkpoint to predict with: a file (ours, official TSM or mmaction2), or a model zoo name (tsm zoo list), which also gives the architecture and class names.",
)
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Predict with the ONNX model of a model dir from tsm export instead (ONNX Runtime, CPU).",
)
@click.option(
    "--classes",
    default=None,
    help="Class names: a file (one a line) or a shipped dataset's list (e.g. kinetics400). Default: the checkpoint's, else class numbers.",
)
@click.option(
    "--label-order",
    type=click.Choice(choices.LABEL_ORDERS),
    default="official",
    show_default=True,
    help="Order of a shipped dataset's --classes (sorted: official SSv1/Jester checkpoints).",
)
@click.option(
    "--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per input."
)
@click.option(
    "--window",
    type=float,
    default=None,
    help="Score long videos window by window: seconds per window (a timeline).",
)
@click.option(
    "--stride", type=float, default=None, help="Seconds between window starts (default: --window)."
)
@click.option(
    "--fps",
    type=float,
    default=None,
    help=f"Frame rate of frame folders, which record none (default: {DEFAULT_FPS:g}); videos "
    "give theirs.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write one JSON object per input, one a line (JSON Lines).",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write one row per input (per window with --window).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="With --window: draw the top classes' probabilities over time (PNG).",
)
@click.option(
    "--intervals",
    is_flag=True,
    help="With --window: merge the windows into labelled actions with start and end times.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="--intervals: a window whose best class is under this probability names no action.",
)
@click.option(
    "--nms-iou",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="--intervals: a window overlapping a more probable kept one at a temporal IoU over "
    "this is dropped (non-maximum suppression).",
)
@click.option(
    "--min-duration",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="--intervals: seconds; shorter actions are dropped.",
)
@click.option(
    "--merge-gap",
    type=click.FloatRange(min=0),
    default=None,
    help="--intervals: seconds between kept windows of one class that still join into one "
    "action  [default: the window's length]",
)
@overwrite_option
@view_options
@model_options
def predict(**options: Any) -> None:
    """The top-k classes of each INPUT, with exactly the sampling, crops and view averaging of
    tsm eval (--protocol, --clips, --crops, --average)."""
    from tsmcli.engine.intervals import IntervalRule
    from tsmcli.engine.predict import predict as run_predict
    from tsmcli.errors import DataError

    views, arch = view_and_arch(options)
    inputs = options.pop("inputs")
    rule = IntervalRule(
        threshold=options.pop("threshold"),
        min_duration=options.pop("min_duration"),
        merge_gap=options.pop("merge_gap"),
        nms_iou=options.pop("nms_iou"),
    )
    intervals = rule if options.pop("intervals") else None
    result = run_predict(inputs, views=views, arch=arch, intervals=intervals, **options)
    _print_table(result)
    click.echo()
    print_rows(_summary_rows(result))
    if result.failed == len(result.predictions):
        raise DataError(f"every input failed ({result.failed} of {result.failed}); see above")


def _print_table(result) -> None:
    """One line per input (its best classes, or its error), and one per window under it."""
    width = max(len(str(p.path)) for p in result.predictions)
    click.echo(f"{'input':<{width}}  top-{min(result.topk, len(result.classes))}")
    for p in result.predictions:
        text = _classes(p.top) if p.ok else f"error: {p.error}"
        if p.windows is not None and p.ok:
            text += f"  ({len(p.windows)} windows)"
        click.echo(f"{str(p.path):<{width}}  {text}")
        for w in p.windows or ():
            span = f"{w.start:.2f}-{w.end:.2f} s"
            click.echo(f"{'':<{width}}  {span:>15}  {_classes(w.top)}")
        if p.intervals is not None:
            click.echo(f"{'':<{width}}  actions ({len(p.intervals)}):")
        for i in p.intervals or ():
            span = f"{i.start:.2f}-{i.end:.2f} s"
            click.echo(f"{'':<{width}}  {span:>15}  {i.name} {i.score:.3f}")


def _classes(top) -> str:
    return "  ".join(f"{c.name} {c.probability:.3f}" for c in top)


def _summary_rows(result) -> list[tuple[str, str]]:
    failed = f" ({result.failed} failed)" if result.failed else ""
    rows = [
        ("checkpoint", result.checkpoint),
        ("protocol", result.protocol.name),
        ("views", "-" if result.views is None else str(result.views)),
        ("inputs", f"{len(result.predictions)}{failed}"),
        ("videos/s", f"{result.videos_per_s:.1f}"),
    ]
    if result.window is not None:
        rows.append(("windows", f"{result.window:g} s every {result.stride:g} s"))
    return rows + [("wrote", str(path)) for path in result.written]


@click.command()
@click.argument("source", required=False, type=str)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Online model dir from tsm convert-online.",
)
@click.option(
    "--camera",
    default=None,
    help="Stream camera N (or a device name) instead of SOURCE: v4l2, avfoundation, dshow.",
)
@click.option(
    "--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per frame."
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="Score one frame in N (default: the model dir's stride, the spacing of the frames it "
    "was trained on).",
)
@click.option(
    "--realtime/--no-realtime",
    default=None,
    help="Drop frames the model is too slow for (default: cameras and rtsp/rtmp/udp URLs; "
    "--realtime plays a file or http URL at its frame rate).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a camera or URL may take to open or go without data.",
)
@click.option(
    "--jsonl",
    type=click.Path(path_type=Path),
    default=None,
    help="Write one JSON line per scored frame (index, time, top-k, latency), as it goes.",
)
@overwrite_option
@click.option(
    "--trust-torchscript",
    is_flag=True,
    help="Run the dir's online.pt (TorchScript, which can run code) instead of the model rebuilt from online_weights.pt.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch threads for the model (default: every core but one, which decodes the source).",
)
@precision_option
def stream(source, camera, **options: Any) -> None:
    """Run an online model frame by frame on SOURCE (a video file, a frame folder or a URL:
    http(s), rtsp, ...) or a camera, printing the running top-k after each frame.

    At the end, stderr says how many frames were scored and dropped and why the stream
    ended. Exit 0 at the end of the source, 1 when it stopped mid-stream (what was scored is
    kept), 130 on Ctrl-C.
    """
    from tsmcli.engine.stream import stream as run_stream
    from tsmcli.errors import DataError, UsageError

    if source is None and camera is None:
        raise UsageError("give a SOURCE (a file, frame folder or URL) or --camera N")
    if source is not None and camera is not None:
        raise UsageError(f"give a SOURCE or --camera N, not both (got {source} and {camera})")
    if camera is not None and camera.isdigit():
        camera = int(camera)
    result = run_stream(source, camera=camera, on_step=_print_step, **options)
    jsonl = f"; {result.jsonl} holds every frame scored" if result.jsonl else ""
    click.echo(
        f"{result.source}: {result.frames} frames scored {_stride(result)}, {result.dropped} "
        f"dropped ({result.decoded} decoded); {result.reason}{jsonl}",
        err=True,
    )
    if result.failed:
        kept = f"in {result.jsonl}" if result.jsonl else "printed above"
        raise DataError(
            f"{result.source}: {result.reason}; the {result.frames} frames scored before are {kept}"
        )
    if result.ending == "interrupted":
        click.get_current_context().exit(130)


def _stride(result) -> str:
    """Which frames were scored: the stride, and whether it was the model dir's."""
    return f"at stride {result.stride}" + (
        "" if result.stride_from == "given" else " (the model's)"
    )


def _print_step(step) -> None:
    best = "  ".join(
        f"{label} {score:.3f}" for label, score in zip(step.labels, step.scores, strict=True)
    )
    click.echo(f"frame {step.index:5d}  {step.latency_ms:7.2f} ms  {best}")
