"""Flow frames per second of each ``tsm extract --flow`` method (OpenCV's TV-L1, DIS,
Farneback) on one core, at the short side the recipes use (256) and at the demo's 32 px, and
``tsm extract`` end to end (decode, resize, flow, quantise, two JPEGs a frame) against RGB
frames, measured side by side in this process.

Writes a synthetic H.264 video (the panning textured scene with a moving block of
bench/extract.py), prints a markdown table and writes it to bench/results/flow.md.
Run: .venv/bin/python bench/flow.py [--pairs 24 --tvl1-pairs 6]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import torch
from common import interleaved_medians, load_average, load_line, write_section
from extract import write_videos

from tsmcli.choices import FLOW_METHODS
from tsmcli.data.decode import DecordVideo
from tsmcli.data.extract import extract
from tsmcli.data.extract_job import _resize
from tsmcli.data.flow import flow_function, to_gray


def gray_frames(path: Path, short_side: int, count: int) -> list:
    """The first ``count`` frames of ``path`` resized as extraction resizes them, in gray."""
    frames = next(DecordVideo(path).iter_frames(batch_size=count))  # (n, 3, H, W)
    return to_gray(_resize(frames, short_side) if short_side else frames)


def flow_seconds(frames: list, methods: dict[str, int], reps: int) -> dict[str, float]:
    """Median seconds a flow frame of each method (one OpenCV thread, as in extraction)."""
    calls = {}
    for method, pairs in methods.items():
        flow = flow_function(method)

        def run(flow=flow, pairs=pairs) -> None:
            for k in range(pairs):
                flow(frames[k], frames[k + 1])

        calls[method] = run
    seconds = interleaved_medians(calls, reps=reps)
    return {method: seconds[method] / pairs for method, pairs in methods.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24, help="flow frames timed (DIS, Farneback)")
    parser.add_argument("--tvl1-pairs", type=int, default=6, help="flow frames timed (TV-L1)")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--videos", type=int, default=4, help="videos of the end-to-end rows")
    parser.add_argument("--frames", type=int, default=33)
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = load_average()
    pairs = {"dis": args.pairs, "tvl1": args.tvl1_pairs, "farneback": args.pairs}
    assert tuple(pairs) == FLOW_METHODS

    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        paths = write_videos(root / "videos", args.videos, args.frames, 320, 240)
        count = max(pairs.values()) + 1
        per_frame = {
            size: flow_seconds(gray_frames(paths[0], size, count), pairs, args.reps)
            for size in (256, 32)
        }
        runs = itertools.count()

        def run_extract(**flow) -> None:
            out = root / f"out_{next(runs)}"
            result = extract(root / "videos", out, short_side=256, workers=2, **flow)
            assert result.failed == 0

        end_to_end = interleaved_medians(
            {
                "tsm extract (RGB frames)": lambda: run_extract(),
                "tsm extract --flow --method dis": lambda: run_extract(flow=True, method="dis"),
                "tsm extract --flow --method farneback": lambda: run_extract(
                    flow=True, method="farneback"
                ),
            },
            reps=args.reps,
        )
    after = load_average()

    flow_frames = args.videos * (args.frames - 1)
    rows = [
        f"| {method} | {1 / per_frame[256][method]:,.1f} | "
        f"{per_frame[256][method] / per_frame[256]['dis']:.0f}x | "
        f"{1 / per_frame[32][method]:,.0f} |"
        for method in FLOW_METHODS
    ]
    rgb = end_to_end["tsm extract (RGB frames)"]
    e2e = [
        f"| {name} | {(args.videos * args.frames if 'flow' not in name else flow_frames) / s:,.1f}"
        f" | {s / rgb:.1f}x |"
        for name, s in end_to_end.items()
    ]
    clip_minutes = 250 * per_frame[256]["tvl1"] / 60  # a 10 s Kinetics clip at 25 fps
    body = "\n".join(
        [
            "Flow frames per second on one core (one OpenCV thread, as each extraction worker "
            f"runs), from gray frames already decoded and resized: a 320x240 H.264 clip (a "
            f"panning texture and a moving block) at short side 256 (341x256) and at 32 px, the "
            f"demo's size; median of {args.reps} interleaved rounds of {args.tvl1_pairs} (TV-L1) "
            f"or {args.pairs} flow frames after a warm-up round.",
            "",
            "| method | flow frames/s at 341x256 | time vs DIS | flow frames/s at 32x32 |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"`tsm extract` end to end, 2 workers, {args.videos} videos x {args.frames} frames, "
            "short side 256 (decode, resize, flow and two JPEGs a flow frame); frames/s counts "
            "what is written (flow frames for --flow, one fewer a video):",
            "",
            "| run | frames/s | time vs RGB |",
            "|---|---:|---:|",
            *e2e,
            "",
            f"At 341x256 TV-L1, the TSN tool chain's method, takes {per_frame[256]['tvl1']:.2f} s "
            f"a flow frame on one core: {clip_minutes:.1f} min for a 10 s Kinetics clip at 25 "
            "fps. DIS is the default for that reason; TV-L1 is the choice that matches "
            "dense_flow's output (and what the official flow model was most likely trained on).",
            "",
            load_line(before, after),
        ]
    )
    path = write_section("flow", "tsm extract --flow: optical flow methods", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
