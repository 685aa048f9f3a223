"""Clip loading against bare decoding: what the Dataset adds on top of the decoder.

For 8-segment train sampling with the train transforms (multi-scale crop, flip, resize to 224,
normalise) it times, in one process with one thread (as in one DataLoader worker):

- decode: the floor, exactly the frames the dataset samples for the item decoded straight with
  the same library and calls, opening included (decord ``VideoReader`` + ``get_batch``; PyAV
  ``open`` + decoding forward to the last sampled frame, converting the sampled ones to RGB;
  ``read_file`` + ``decode_jpeg(mode=RGB)`` of each sampled JPEG), results left as they come;
- open+get: the same through tsmcli's frame source, as the dataset opens it (``open_video``
  with the list's frame count / ``FrameFolder``), frames returned as one tensor;
- load: ``collate_clips([VideoClipDataset.__getitem__(i)])``, everything a DataLoader worker
  does for the item: open, decode, sample, draw the crop box and flip, copy the crop into the
  batch; the clip leaves the worker as uint8;
- trainer: ``ClipBatch.model_input``, the resize, flip and normalise that the trainer runs on
  its device after the transfer (timed here on this CPU: what a CPU-only run adds to its step;
  on a GPU it is a few kernels per clip).

The data is written here: 320x240 H.264 videos of 64 frames (PyAV), and their frames as
JPEGs. Target (issue 3): load <= 1.2x decode.

    .venv/bin/python bench/loader.py [--videos 8] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg, read_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, write_section  # noqa: E402

from tsmcli.data.dataset import VideoClipDataset, collate_clips  # noqa: E402
from tsmcli.data.decode import FrameFolder, open_video  # noqa: E402
from tsmcli.data.lists import ListEntry, write_list  # noqa: E402
from tsmcli.data.sampling import sample_indices  # noqa: E402
from tsmcli.data.settings import Augmentation, ClipSize, Reading  # noqa: E402

WIDTH, HEIGHT, FRAMES, SEGMENTS, SEED = 320, 240, 64, 8, 0


def write_video(path: Path, seed: int) -> None:
    """A textured scene drifting right, with noise, so the encoder has real work to do."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (HEIGHT, WIDTH * 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture[::8, ::8], 8, axis=0), 8, axis=1)  # 8x8 blocks
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for k in range(FRAMES):
            image = texture[:, 2 * k : 2 * k + WIDTH].astype(np.int16)
            image += rng.integers(-6, 7, image.shape, dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(
                np.clip(image, 0, 255).astype(np.uint8), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def make_data(folder: Path, count: int) -> None:
    videos, frames = folder / "videos", folder / "frames"
    videos.mkdir()
    for i in range(count):
        write_video(videos / f"v{i}.mp4", seed=i)
        decoded = open_video(videos / f"v{i}.mp4", "pyav").get(range(FRAMES))  # (N, 3, H, W)
        (frames / f"v{i}").mkdir(parents=True)
        for k, frame in enumerate(decoded, start=1):
            (frames / f"v{i}" / f"img_{k:05d}.jpg").write_bytes(
                bytes(encode_jpeg(frame, quality=90).numpy())
            )
    write_list(videos / "train.txt", [ListEntry(f"v{i}.mp4", FRAMES, 0) for i in range(count)])
    write_list(frames / "train.txt", [ListEntry(f"v{i}", FRAMES, 0) for i in range(count)])


def decord_floor(path: Path, indices: list[int]) -> None:
    import decord

    decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1).get_batch(indices).asnumpy()


def pyav_floor(path: Path, indices: list[int]) -> None:
    wanted, last = set(indices), max(indices)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frame.to_ndarray(format="rgb24")
            if i >= last:
                break


def jpeg_floor(folder: Path, indices: list[int]) -> None:
    for i in indices:
        decode_jpeg(read_file(str(folder / f"img_{i + 1:05d}.jpg")), mode=ImageReadMode.RGB)


def time_item(
    dataset: VideoClipDataset, index: int, floor: Callable[[Path, list[int]], None], reps: int
) -> np.ndarray:
    """Interleaved medians (s) of decode, open+get, load and the trainer's share of one item."""
    entry = dataset.entries[index]
    path = dataset.root / entry.path
    # the distinct frames the dataset decodes for item `index` of epoch 0 (sampling comes first)
    rng = np.random.default_rng([SEED, 0, index])
    indices = np.unique(sample_indices(entry.num_frames, SEGMENTS, "train", rng)).tolist()

    def via_source() -> None:
        if dataset.reading.source == "frames":
            opened = FrameFolder(path, num_frames=entry.num_frames)
        else:
            opened = open_video(path, dataset.reading.backend, num_frames=entry.num_frames)
        opened.get(indices)

    batch = collate_clips([dataset[index]])

    medians = interleaved_medians(
        {
            "decode": lambda: floor(path, indices),
            "source": via_source,
            "load": lambda: collate_clips([dataset[index]]),
            "trainer": lambda: batch.model_input("cpu"),
        },
        reps=reps,
    )
    return np.array([medians[k] for k in ("decode", "source", "load", "trainer")])


def measure(folder: Path, reps: int) -> list[tuple[str, float, float, float]]:
    """(source, decode s, open+get s, load s, trainer s) per source: means over the videos."""
    cases = [
        ("decord video", "videos", "decord", decord_floor),
        ("PyAV video", "videos", "pyav", pyav_floor),
        ("JPEG frames", "frames", "decord", jpeg_floor),
    ]
    rows = []
    for name, source, backend, floor in cases:
        root = folder / source
        dataset = VideoClipDataset(
            root / "train.txt",
            root,
            clip=ClipSize(SEGMENTS),
            reading=Reading(source=source, backend=backend),
            augment=Augmentation(seed=SEED),
        )
        times = np.mean([time_item(dataset, i, floor, reps) for i in range(len(dataset))], axis=0)
        rows.append((name, *times.tolist()))
        print(
            f"{name}: decode {1000 * times[0]:.1f} ms, open+get {1000 * times[1]:.1f} ms, "
            f"load {1000 * times[2]:.1f} ms, trainer {1000 * times[3]:.1f} ms, ratios "
            f"{times[1] / times[0]:.2f} {times[2] / times[0]:.2f}",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), args.videos)
        rows = measure(Path(tmp), args.reps)
    load_after = os.getloadavg()[0]
    table = [
        f"| {name} | {1000 * d:.1f} | {1000 * s:.1f} | {1000 * lo:.1f} | {1000 * (lo - s):.1f} | "
        f"{s / d:.2f} | {lo / d:.2f} | {'met' if lo / d <= 1.2 else 'NOT met'} | "
        f"{1000 * n:.1f} | {(lo + n) / d:.2f} |"
        for name, d, s, lo, n in rows
    ]
    body = "\n".join(
        [
            f"One train clip ({SEGMENTS} segments, multi-scale crop + flip + resize to 224 + normalise, crops "
            f"drawn at short side 256) from {WIDTH}x{HEIGHT} H.264 videos of {FRAMES} frames or their "
            f"JPEG frames; one process, one thread; mean over {args.videos} videos of the median of "
            f"{args.reps} interleaved reps. decode: exactly the frames the dataset samples, decoded "
            "straight with the same library and calls, opening included (the floor); open+get: "
            "the same through tsmcli's frame source, opened as the dataset opens it (PyAV given "
            "the list's frame count); load: `collate_clips([dataset[i]])`, all a DataLoader "
            "worker does for the item (sample, decode, draw the crop box and flip, copy the "
            "uint8 crop into the batch); load - open+get: the sampling, box and copy. Target: "
            "load <= 1.2x decode. trainer: `ClipBatch.model_input`, the resize, flip and "
            "normalise the trainer runs on its device after the transfer, timed on this CPU "
            "(what a CPU-only run adds to its step; on a GPU, a few kernels per clip); "
            "load + trainer / decode: the whole per-clip CPU cost of a CPU-only run.",
            "",
            "| source | decode ms | open+get ms | load ms | load - open+get ms | open+get / decode "
            "| load / decode | target | trainer ms (this CPU) | load + trainer / decode |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *table,
            "",
            f"Load average (1 min) {load_before:.2f} before, {load_after:.2f} after: above the core "
            "count means other work shared the CPU and absolute times are inflated.",
        ]
    )
    print("\n".join(table))
    path = write_section("loader", "Data loading: clip loading against bare decoding", body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
