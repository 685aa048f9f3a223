"""Frames per second of ``tsm extract`` with 1 and 2 worker processes, against the floor of
decoding alone (decord, sequential), measured side by side in this process.

Writes synthetic H.264 videos to a temporary folder, prints a markdown table and writes it to
bench/results/extract.md. Run: .venv/bin/python bench/extract.py [--videos 20 --frames 64]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
from common import interleaved_medians, write_section

from tsmcli.data.decode import DecordVideo
from tsmcli.data.extract import extract


def write_videos(folder: Path, count: int, num_frames: int, width: int, height: int) -> list[Path]:
    """H.264 (libx264 defaults: crf 23, long GOP, B-frames) of a textured scene panning and a
    block crossing it, with sensor-like noise, so the bitrate is that of a real clip."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    paths = []
    for index in range(count):
        path = folder / f"video_{index:03d}.mp4"
        phase = rng.uniform(0, 2 * np.pi, 3)
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for k in range(num_frames):
                pan = xs + 2 * k
                image = np.stack(
                    [127 + 80 * np.sin(pan / (17 + 5 * c) + ys / 23 + phase[c]) for c in range(3)],
                    -1,
                )
                left = (5 * k) % width
                image[height // 3 : height // 2, left : left + 40] = (230, 40, 40)
                image += rng.normal(0, 6, image.shape)
                frame = av.VideoFrame.from_ndarray(
                    np.clip(image, 0, 255).astype(np.uint8), format="rgb24"
                )
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        paths.append(path)
    return paths


def decode_only(paths: list[Path]) -> int:
    """Decode every video sequentially to RGB in this process; returns the frame count."""
    frames = 0
    for path in paths:
        for batch in DecordVideo(path).iter_frames(batch_size=16):  # (n, 3, H, W)
            frames += len(batch)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3, help="timed rounds (median reported)")
    args = parser.parse_args()
    total = args.videos * args.frames
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        paths = write_videos(root / "videos", args.videos, args.frames, args.width, args.height)
        runs = itertools.count()

        def run_extract(workers: int) -> None:
            result = extract(
                root / "videos",
                root / f"frames_{next(runs)}",
                short_side=args.short_side,
                workers=workers,
            )
            assert result.failed == 0 and result.frames == total

        # The warm-up round also pays for the imports the run makes once before forking its
        # workers (torchvision, decord, av), which would dominate a run this small.
        seconds = interleaved_medians(
            {
                "decode only (decord, sequential, 1 process)": lambda: decode_only(paths),
                "tsm extract --workers 1": lambda: run_extract(1),
                "tsm extract --workers 2": lambda: run_extract(2),
            },
            reps=args.reps,
        )

    floor = total / next(iter(seconds.values()))
    rows = [
        f"| {name} | {total / s:,.0f} | {total / s / floor:.2f} |" for name, s in seconds.items()
    ]
    body = "\n".join(
        [
            f"{args.videos} H.264 videos x {args.frames} frames at {args.width}x{args.height} -> JPEG "
            f"(quality 90, short side {args.short_side}); median of {args.reps} interleaved rounds "
            f"after a warm-up round. Load average before the run: {load:.1f} on "
            f"{os.cpu_count()} cores (other work on the machine slows the 2-worker row most).",
            "",
            "| run | frames/s | vs decode only |",
            "|---|---:|---:|",
            *rows,
        ]
    )
    path = write_section("extract", "tsm extract", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
