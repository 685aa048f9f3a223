"""tsm extract --flow: flow folders in the official layout, with the values of the motion, and
the reliability of frame extraction (folders published whole, finished ones skipped, failures
recorded without stopping the run, workers that write what one process writes)."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tsmcli.cli import cli
from tsmcli.data import extract_job
from tsmcli.data.extract import extract
from tsmcli.data.flow import dequantise
from tsmcli.errors import UsageError

SHIFT = 2  # pixels a frame the texture moves right


def write_moving_texture(path: Path, num_frames: int = 8, size: int = 48, dx: int = SHIFT):
    """A smooth random texture translated ``dx`` pixels right every frame (wrapping)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size // 4, size // 4, 3)).astype(np.uint8)
    texture = np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for k in range(num_frames):
            image = np.ascontiguousarray(np.roll(texture, dx * k, axis=1))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def flow_names(count: int) -> set[str]:
    return {f"flow_{axis}_{k:05d}.jpg" for axis in "xy" for k in range(1, count + 1)}


def read_flow(folder: Path, axis: str) -> np.ndarray:
    count = len(list(folder.glob(f"flow_{axis}_*.jpg")))
    images = [Image.open(folder / f"flow_{axis}_{k:05d}.jpg") for k in range(1, count + 1)]
    return np.stack([np.asarray(image) for image in images])  # (N, H, W) uint8


def failures(dst: Path) -> dict[str, str]:
    with open(dst / "failures.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    return {Path(path).name: reason for path, reason in rows[1:]}


@pytest.mark.parametrize("method", ["dis", "tvl1", "farneback"])
def test_flow_images_are_numbered_from_one_and_hold_the_motion(tmp_path, method):
    write_moving_texture(tmp_path / "src" / "a" / "clip.mp4", num_frames=8)
    result = extract(
        tmp_path / "src", tmp_path / "dst", short_side=0, workers=1, flow=True, method=method
    )
    folder = tmp_path / "dst" / "a" / "clip"
    assert {p.name for p in folder.iterdir()} == flow_names(7)  # 8 frames: 7 flows
    assert (result.done, result.frames) == (1, 7)
    x, y = read_flow(folder, "x"), read_flow(folder, "y")
    assert x.shape == y.shape == (7, 48, 48)
    inner = (slice(None), slice(8, -8), slice(8, -8))  # away from the wrapping edge
    # quantised as dense_flow: 2 px right is round(255 * (2 + 20) / 40) = 140; none down, 128
    assert abs(float(np.median(x[inner])) - 140) <= 3
    assert abs(float(np.median(y[inner])) - 128) <= 3
    assert abs(float(np.median(dequantise(x[inner], 20.0))) - SHIFT) < 0.5


def test_a_larger_bound_maps_the_same_motion_nearer_the_middle(tmp_path):
    write_moving_texture(tmp_path / "src" / "clip.mp4", num_frames=4)
    extract(
        tmp_path / "src",
        tmp_path / "dst",
        short_side=0,
        workers=1,
        flow=True,
        method="dis",
        bound=40.0,
    )
    x = read_flow(tmp_path / "dst" / "clip", "x")[:, 8:-8, 8:-8]
    assert abs(float(np.median(x)) - round(255 * (SHIFT + 40) / 80)) <= 2  # 134


def test_bad_videos_are_recorded_and_the_rest_extracted(tmp_path, make_video):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_moving_texture(src / "good.mp4", num_frames=4)
    make_video(src / "still.mp4", num_frames=1)
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.mp4").write_text("this is not a video\n")
    data = make_video(tmp_path / "whole" / "cut.mkv", num_frames=48).read_bytes()
    (src / "cut.mkv").write_bytes(data[: len(data) // 2])

    result = extract(src, dst, short_side=0, workers=1, flow=True, method="dis")

    assert (result.done, result.failed, result.frames) == (1, 4, 3)
    reasons = failures(dst)
    assert set(reasons) == {"still.mp4", "empty.mp4", "text.mp4", "cut.mkv"}
    assert reasons["still.mp4"] == "has one frame, and optical flow needs two"
    assert "0 bytes" in reasons["empty.mp4"] and "truncated" in reasons["cut.mkv"]
    assert sorted(p.name for p in dst.iterdir()) == ["failures.csv", "good"]
    assert list(dst.rglob(".*")) == []  # no half-written folder


def test_a_failure_mid_write_publishes_nothing_and_a_rerun_skips_what_was_finished(
    tmp_path, monkeypatch
):
    write_moving_texture(tmp_path / "src" / "long.mp4", num_frames=40)  # 3 batches of frames
    write_moving_texture(tmp_path / "src" / "short.mp4", num_frames=6)
    dst = tmp_path / "dst"
    real_write = extract_job._write_jpegs

    def write_then_die(images, folder, start, quality, templates=extract_job.FRAME_TEMPLATE):
        if start > 0:  # the long video's second batch
            raise RuntimeError("disk on fire")
        return real_write(images, folder, start, quality, templates)

    monkeypatch.setattr(extract_job, "_write_jpegs", write_then_die)
    first = extract(tmp_path / "src", dst, short_side=0, workers=1, flow=True, method="dis")
    assert (first.done, first.failed) == (1, 1)
    assert "disk on fire" in failures(dst)["long.mp4"]
    assert not (dst / "long").exists() and list(dst.rglob(".*")) == []
    short = {p.name: p.stat().st_mtime_ns for p in (dst / "short").iterdir()}

    monkeypatch.setattr(extract_job, "_write_jpegs", real_write)
    second = extract(tmp_path / "src", dst, short_side=0, workers=1, flow=True, method="dis")
    assert (second.done, second.skipped, second.failed, second.frames) == (1, 1, 0, 39)
    assert {p.name for p in (dst / "long").iterdir()} == flow_names(39)
    assert {p.name: p.stat().st_mtime_ns for p in (dst / "short").iterdir()} == short
    assert failures(dst) == {}


def test_two_workers_write_the_same_flow_as_one(tmp_path):
    for k in range(3):
        write_moving_texture(tmp_path / "src" / f"clip{k}.mp4", num_frames=5, dx=k + 1)
    one = extract(
        tmp_path / "src", tmp_path / "one", short_side=0, workers=1, flow=True, method="dis"
    )
    two = extract(
        tmp_path / "src", tmp_path / "two", short_side=0, workers=2, flow=True, method="dis"
    )
    assert (one.done, one.frames) == (two.done, two.frames) == (3, 12)
    for k in range(3):
        for name in flow_names(4):
            assert (tmp_path / "one" / f"clip{k}" / name).read_bytes() == (
                tmp_path / "two" / f"clip{k}" / name
            ).read_bytes()


def test_salvage_counts_the_flow_frames_of_a_folder_a_dead_worker_published(tmp_path):
    folder = tmp_path / "dst" / "clip"
    folder.mkdir(parents=True)
    for name in flow_names(5):
        (folder / name).write_bytes(b"jpeg")
    job = extract_job.Job(tmp_path / "clip.mp4", folder, None, flow=True)
    assert extract_job.salvage(job, pid=999_999_999) == (job, 5, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "raft"}, "--method must be one of dis, tvl1, farneback, got 'raft'"),
        ({"bound": 0.0}, "--bound must be a positive number of pixels, got 0.0"),
    ],
)
def test_bad_flow_options_are_refused_before_any_work(tmp_path, make_video, kwargs, message):
    make_video(tmp_path / "src" / "clip.mp4")
    with pytest.raises(UsageError) as info:
        extract(tmp_path / "src", tmp_path / "dst", flow=True, **kwargs)
    assert str(info.value) == message
    assert not (tmp_path / "dst").exists()


def test_the_command_counts_flow_frames(tmp_path):
    write_moving_texture(tmp_path / "src" / "clip.mp4", num_frames=5)
    result = CliRunner().invoke(
        cli,
        [
            "extract",
            str(tmp_path / "src"),
            str(tmp_path / "dst"),
            "--flow",
            "--method",
            "dis",
            "--short-side",
            "0",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("extracted 1 video (4 flow frames) in ")
    assert {p.name for p in (tmp_path / "dst" / "clip").iterdir()} == flow_names(4)
