"""``tsm extract``, ``tsm build-list``, ``tsm synth``: videos to frames, lists and data."""

from __future__ import annotations

from pathlib import Path

import click

from tsmcli import choices
from tsmcli.data.layout import FRAME_TEMPLATE


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--short-side",
    default=256,
    show_default=True,
    help="Resize so the short side is N >= 2 (0 keeps the size).",
)
@click.option(
    "--fps", type=float, default=None, help="Frames per second to keep (default: every frame)."
)
@click.option("--quality", default=90, show_default=True, help="JPEG quality (1-100).")
@click.option("--workers", type=int, default=None, help="Processes (default: the core count).")
@click.option(
    "--overwrite", is_flag=True, help="Extract again even where a finished folder exists."
)
@click.option("--strict", is_flag=True, help="Exit 1 if any video fails.")
@click.option(
    "--flow",
    is_flag=True,
    help="Write the optical flow between consecutive frames instead of the frames: "
    "flow_x_00001.jpg, flow_y_00001.jpg, ... (the official TSM layout), for flow models.",
)
@click.option(
    "--method",
    type=click.Choice(choices.FLOW_METHODS),
    default="dis",
    show_default=True,
    help="--flow: OpenCV's DIS (fast), TV-L1 (the TSN tool chain's; ~100x slower) or Farneback.",
)
@click.option(
    "--bound",
    type=float,
    default=20.0,
    show_default=True,
    help="--flow: pixels a frame mapped onto 0-255 (-bound..bound; beyond is clipped).",
)
def extract(
    src, dst, short_side, fps, quality, workers, overwrite, strict, flow, method, bound
) -> None:
    """Decode every video under SRC into a folder of JPEG frames under DST (with --flow, of
    optical flow images).

    Videos that cannot be decoded (or whose worker process dies) are listed in
    DST/failures.csv and the run goes on; exit 1 when every video failed. One run at a time
    per DST (DST/.tsm-extract.lock).
    """
    from tsmcli.data.extract import extract as run_extract
    from tsmcli.errors import DataError

    result = run_extract(
        src,
        dst,
        short_side=short_side,
        fps=fps,
        quality=quality,
        workers=workers,
        overwrite=overwrite,
        strict=strict,
        flow=flow,
        method=method,
        bound=bound,
    )
    failures = f" (see {result.failures_csv})" if result.failed else ""
    what = "flow frame" if flow else "frame"
    click.echo(
        f"extracted {_count(result.done, 'video')} ({_count(result.frames, what)}) in "
        f"{result.seconds:.1f} s, {result.skipped:,} skipped, {result.failed:,} failed{failures}"
    )
    if result.failed and not result.done and not result.skipped:
        raise DataError(
            f"every video failed ({result.failed:,} of {result.failed:,}); "
            f"see {result.failures_csv}"
        )


def _count(number: int, noun: str) -> str:
    """``1 video``, ``2 videos``."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


@click.command("build-list")
@click.option(
    "--dataset", required=True, help="kinetics400, sthv1, sthv2, ucf101, hmdb51, jester or folder."
)
@click.option(
    "--root",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of frame folders or videos.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for train.txt, val.txt, classes.txt.",
)
@click.option(
    "--annotations",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of the dataset's annotation files.",
)
@click.option(
    "--source",
    type=click.Choice(choices.SOURCES),
    default=None,
    help="What ROOT holds (default: detected).",
)
@click.option(
    "--split", type=click.IntRange(1, 3), default=1, show_default=True, help="UCF101/HMDB51 split."
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.25,
    show_default=True,
    help="folder: share of each class kept for val.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="folder: seed of the train/val split."
)
@click.option(
    "--template",
    default=None,
    help=f"Frame file name template, e.g. '{FRAME_TEMPLATE}' (default: detected).",
)
@click.option(
    "--label-order",
    type=click.Choice(choices.LABEL_ORDERS),
    default="official",
    show_default=True,
    help="sthv1/jester: labels CSV order (mmaction2) or sorted (official TSM checkpoints).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads counting frames / opening videos (default: up to 8).",
)
@click.option(
    "--conflicting-labels",
    type=click.Choice(choices.CONFLICT_POLICIES),
    default="error",
    show_default=True,
    help="A clip annotated with two different labels: stop and name it (error), keep the label read "
    "first, train before val before test (first), or leave the clip out (drop).",
)
def build_list(
    dataset,
    root,
    out,
    annotations,
    source,
    split,
    val_fraction,
    seed,
    template,
    label_order,
    workers,
    conflicting_labels,
) -> None:
    """Write TSN list files (train.txt, val.txt, classes.txt) for a dataset.

    A clip listed twice in a split, or also in an earlier split (train, val, test), is written
    once; the rows left out are counted and listed in OUT/duplicates.txt.
    """
    from tsmcli.data.build_list import build_list as build

    result = build(
        dataset,
        root,
        out,
        annotations=annotations,
        source=source,
        split=split,
        val_fraction=val_fraction,
        seed=seed,
        template=template,
        label_order=label_order,
        workers=workers,
        conflicting_labels=conflicting_labels,
    )
    for name, path in result.lists.items():
        click.echo(f"{path.name}: {result.counts[name]} {result.source}")
    click.echo(f"{result.classes_file.name}: {result.num_classes} classes (written to {out})")
    if result.template is not None:
        click.echo(
            f"frame template: {result.template} (set data.frame_template to it in a recipe if it is not the default)"
        )
    for name, count in result.unlabeled.items():
        click.echo(f"{name}: {count} entries without labels, not written")
    click.echo(_protocol_line(result))
    if result.num_missing:
        click.echo(
            f"{result.num_missing} annotated clips missing or empty: see {result.missing_file}"
        )
    if result.num_duplicates or result.num_overlaps or result.num_conflicts:
        counts = [
            f"{result.num_duplicates} listed twice in a split",
            f"{result.num_overlaps} also in an earlier split (left out of the later one)",
        ]
        if result.num_conflicts:
            resolved = "kept the first label" if conflicting_labels == "first" else "left out"
            counts.append(f"{result.num_conflicts} with two labels ({resolved})")
        click.echo(f"repeated clips: {', '.join(counts)}: see {result.duplicates_file}")


def _protocol_line(result) -> str:
    """The protocol to test with, and the numbers published with it where there are some."""
    line = f"test protocol: tsm eval --protocol {result.test_protocol}"
    if not result.published:
        return line
    (name, top1), more = result.published[0], len(result.published) - 1
    others = f", and {more} more in tsm zoo list" if more else ""
    return (
        f"{line} (the views of {result.dataset}'s published numbers: {name} {top1:g} top-1{others})"
    )


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Generator seed: the videos are a pure function of it and the options below.",
)
@click.option("--per-class", type=int, default=None, help="Videos per class (default: 150).")
@click.option("--size", type=int, default=None, help="Frame side in pixels, even (default: 32).")
@click.option(
    "--frames",
    "num_frames",
    type=int,
    default=None,
    help="Frames per video, the clip length (default: 24).",
)
@click.option(
    "--fps", type=float, default=None, help="Frame rate written in the videos (default: 8)."
)
@click.option(
    "--speed",
    type=float,
    default=None,
    help="How far the main object moves, grows, turns or fades over a clip, relative to the "
    "default (1); up to 1.5.",
)
@click.option(
    "--num-classes",
    type=int,
    default=None,
    help="Write the first N classes, whole pairs in the order of --classes' list "
    "(2, 4, ..., 10; default 8).",
)
@click.option(
    "--classes",
    default=None,
    metavar="A,B,...",
    help="Classes to write, by name: moving_right,moving_left, moving_down,moving_up, "
    "growing,shrinking, appearing,fading, rotating_clockwise,rotating_counterclockwise "
    "(default: the first four pairs; the rotating pair, the hardest to learn, is extra).",
)
@click.option("--overwrite", is_flag=True, help="Replace class folders that exist in OUT.")
def synth(
    out, seed, per_class, size, num_frames, fps, speed, num_classes, classes, overwrite
) -> None:
    """Write the synthetic time-reversal dataset (real H.264 videos, folder layout).

    The classes come in pairs whose videos are each other played backwards, so only the
    order of the frames tells a pair apart.
    """
    from tsmcli.data.synth import first_classes
    from tsmcli.data.synth import synth as run_synth
    from tsmcli.errors import UsageError

    if num_classes is not None and classes is not None:
        raise UsageError("give --num-classes or --classes, not both")
    if num_classes is not None:
        classes = ",".join(first_classes(num_classes))
    given = {
        "per_class": per_class,
        "size": size,
        "num_frames": num_frames,
        "fps": fps,
        "speed": speed,
        "classes": None
        if classes is None
        else [c.strip() for c in classes.split(",") if c.strip()],
    }
    result = run_synth(
        out,
        seed=seed,
        overwrite=overwrite,
        **{key: value for key, value in given.items() if value is not None},
    )
    click.echo(
        f"wrote {len(result.paths):,} videos ({len(result.classes)} classes x "
        f"{result.num_frames} frames, {result.size}x{result.size}) to {result.out} "
        f"in {result.seconds:.1f} s"
    )
