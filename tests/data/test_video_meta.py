"""What a container says besides its pixels: a video stored on its side comes out upright from
every frame source and both backends; an image or an audio file given as a video is one line
saying what it is, from every opener; frame times from timestamps."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from odd_videos import upright_pattern, write_rotated

from tsmcli.data.decode import DecordVideo, PyAVVideo, open_video, probe_video
from tsmcli.data.live import open_source
from tsmcli.data.video_meta import frame_times, quarter_turns, steady
from tsmcli.data.windows import SeekingPyAV
from tsmcli.errors import DataError


def as_images(frames: torch.Tensor) -> np.ndarray:
    return frames.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)


def every_source(path) -> dict[str, np.ndarray]:
    """Frames 1 and 3 of ``path`` from each frame source, ``(2, H, W, 3)``."""
    with open_source(path) as live:
        streamed = [f.image for f in live]
    decord = DecordVideo(path)
    return {
        "decord": as_images(decord.get([1, 3])),
        "decord, in order": as_images(torch.cat(list(decord.iter_frames([1, 3])))),
        "pyav": as_images(PyAVVideo(path).get([1, 3])),
        "pyav, count given": as_images(PyAVVideo(path, num_frames=4).get([1, 3])),
        "pyav, seeking": as_images(SeekingPyAV(path, 4, 8.0).get([1, 3])),
        "live": as_images(torch.stack([streamed[1], streamed[3]])),
    }


@pytest.mark.parametrize(
    ("name", "degrees", "how"),
    [
        ("portrait.mp4", 90, "matrix"),
        ("upside_down.mp4", 180, "matrix"),
        ("other_way.mov", -90, "matrix"),
        ("tagged.mkv", 90, "tag"),
    ],
)
def test_a_video_stored_on_its_side_comes_out_upright_from_every_source(
    tmp_path, name, degrees, how
):
    upright = upright_pattern()  # 48 x 32, portrait
    path = write_rotated(tmp_path / name, upright, degrees, how)
    with av.open(str(path)) as container:  # the file holds the frames turned
        stored = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert stored.shape != upright.shape or np.abs(stored.astype(int) - upright).mean() > 40
    for source, frames in every_source(path).items():
        assert frames.shape == (2, 48, 32, 3), source
        error = np.abs(frames.astype(int) - upright).mean(axis=(1, 2, 3))
        assert (error < 6).all(), (source, error)  # compression noise only


def test_quarter_turns_reads_the_tag_first_then_the_display_matrix():
    class Stream:
        def __init__(self, metadata):
            self.metadata = metadata

    class Frame:
        def __init__(self, rotation):
            self.rotation = rotation

    assert quarter_turns(Stream({}), Frame(0)) == 0
    assert quarter_turns(Stream({}), Frame(90)) == 1  # counter-clockwise
    assert quarter_turns(Stream({}), Frame(-90)) == 3
    assert quarter_turns(Stream({}), Frame(-180)) == 2
    assert quarter_turns(Stream({"ROTATE": "90"}), Frame(0)) == 3  # the tag turns clockwise
    assert quarter_turns(Stream({"rotate": "270"}), Frame(-90)) == 1  # the tag wins, as decord
    assert quarter_turns(Stream({}), Frame(45)) == 0  # not a quarter turn: left as coded


@pytest.fixture(scope="module")
def not_videos(tmp_path_factory):
    """A PNG, a JPEG (which decord opens as a one-frame video) and an audio-only M4A."""
    from PIL import Image

    root = tmp_path_factory.mktemp("not_videos")
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    picture.save(root / "photo.png")
    picture.save(root / "photo.jpg")
    with av.open(str(root / "voice.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(8):
            samples = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            samples.sample_rate = 16000
            for packet in stream.encode(samples):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return root


def openers():
    yield "decord", lambda path: open_video(path, "decord")
    yield "pyav", lambda path: open_video(path, "pyav")
    yield "pyav, count given", lambda path: PyAVVideo(path, num_frames=8).get([0])
    yield "pyav, seeking", lambda path: SeekingPyAV(path, 8, 8.0)
    yield "probe", probe_video
    yield "stream", lambda path: open_source(path).close()


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("photo.png", "is an image, not a video; give a video or a folder of frames"),
        ("photo.jpg", "is an image, not a video; give a video or a folder of frames"),
        ("voice.m4a", "has no video stream (audio only?); give a video"),
    ],
)
def test_an_image_or_audio_file_is_one_line_saying_what_it_is(not_videos, name, says):
    path = not_videos / name
    for opener_name, opener in openers():
        with pytest.raises(DataError) as info:
            opener(path)
        assert str(info.value) == f"{path}: {says}", opener_name


def test_frame_times_count_from_the_first_frame_and_refuse_disorder():
    assert frame_times([1000, 1250, 1500], 1 / 1000).tolist() == [0.0, 0.25, 0.5]
    assert frame_times([3, 1, 2]) is None  # out of presentation order
    assert frame_times([0, 0, 1]) is None  # repeated stamps
    assert frame_times([0, None, 2]) is None
    assert frame_times([]) is None
    assert steady(np.arange(30) / 25 + 0.004, 25.0)  # jitter well inside a frame
    assert not steady(np.array([0.0, 0.25, 0.5, 0.5625]), 8.0)  # 4 then 16 fps
